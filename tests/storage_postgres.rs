//! flowgate on PostgreSQL, the real binary: a run recorded by one instance is readable
//! through it and through a second instance on the same database (the start of the
//! multi-instance story); `flowgate migrate` applies the schema once.
//!
//! The server is `FLOWGATE_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`,
//! which `tests/run.sh` makes sure of). Each test works in a schema of its own, dropped at
//! the end. An unreachable server fails the tests.

mod common;

use std::process::Command;

use common::postgres::*;
use common::ui::{browser, csrf_of, sign_in};
use common::*;
use serde_json::{json, Value};

async fn post_json(gw: &Flowgate, path: &str, body: Value) -> (u16, Value) {
    let response = client()
        .post(format!("{}{path}", gw.url))
        .bearer_auth("any")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn a_run_recorded_by_one_instance_is_read_through_another() {
    let schema = schema_name("runs");
    let _cleanup = DropSchema(schema.clone());
    let storage = storage_config(&schema);
    let setup = Setup::start(|data, upstream| {
        base_config(data, Some(upstream))
            + &storage
            + &model_table(
                "pg-model",
                &[offer("upstream", "gpt-4o-mini", 1.0, 2.0)],
                "",
            )
    });
    let (status, headers, body) = ask(&setup.gw, "pg-agent/pg-model", "hello postgres").await;
    assert_eq!(status, 200, "{body}");
    let id = run_id(&headers);
    assert_eq!(setup.upstream.requests().len(), 1);

    // Written by the recorder within its flush interval.
    let path = format!("/api/runs/{id}");
    let (status, run) = poll_until(250, || get_json(&setup.gw, &path), |(s, _)| *s == 200).await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["id"], id.as_str());
    assert_eq!(run["agent"], "pg-agent");

    // A second instance, with a data directory of its own, on the same database.
    let other_dir = tempfile::tempdir().unwrap();
    let other_config =
        base_config(&other_dir.path().join("data"), Some(&setup.upstream)) + &storage;
    let other = Flowgate::start(other_dir.path(), &other_config);
    let (status, seen) = get_json(&other, &path).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["id"], id.as_str());
    assert_eq!(seen["agent"], "pg-agent");
    assert_eq!(seen["output"], run["output"]);
    let (status, page) = get_json(&other, "/api/agents/pg-agent/runs").await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);

    // Searched (free text, in SQL) and shared through one instance, opened through the other.
    let (status, found) = post_json(
        &other,
        "/api/runs/search",
        json!({"field_queries": [{"field": "text", "operator": "contains", "values": ["POSTGRES"]}]}),
    )
    .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["items"][0]["id"], id.as_str(), "{found}");
    assert_eq!(found["count"], 1, "{found}");
    let (status, share) = post_json(&setup.gw, &format!("/api/runs/{id}/share"), json!({})).await;
    assert_eq!(status, 201, "{share}");
    let token = share["token"].as_str().unwrap();
    let (status, shared) = get_json(&other, &format!("/share/{token}")).await;
    assert_eq!(status, 200, "{shared}");

    // The stats the first instance's recorder wrote, read through the second.
    let (status, agents) = poll_until(
        250,
        || get_json(&other, "/api/agents"),
        |(_, list)| !strings_at(&list["agents"], "agent").is_empty(),
    )
    .await;
    assert_eq!(status, 200, "{agents}");
    assert_eq!(
        strings_at(&agents["agents"], "agent"),
        ["pg-agent"],
        "{agents}"
    );
    other.stop();
    setup.gw.stop();
}

#[test]
fn flowgate_migrate_applies_the_schema_once() {
    let schema = schema_name("migrate");
    let _cleanup = DropSchema(schema.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flowgate.toml");
    std::fs::write(
        &config,
        base_config(&dir.path().join("data"), None) + &storage_config(&schema),
    )
    .unwrap();
    let migrate = || {
        let output = Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .env("FLOWGATE_LOG", "warn")
            .arg("migrate")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{text}");
        text
    };
    let first = migrate();
    assert!(first.contains("applied migrations [1, 2"), "{first}");
    let second = migrate();
    assert!(second.contains("up to date"), "{second}");
}

#[tokio::test]
async fn a_key_made_or_revoked_through_one_instance_holds_on_another_within_a_second() {
    const ADMIN: &str = "pg-admin-key";
    let schema = schema_name("keys");
    let _cleanup = DropSchema(schema.clone());
    let storage = storage_config(&schema);
    let with_keys = |data: &std::path::Path, upstream: &MockUpstream| {
        base_config(data, Some(upstream))
            + &storage
            + &format!("\n[auth]\napi_keys = [\"config-key\"]\n[admin]\napi_keys = [\"{ADMIN}\"]\n")
            + &model_table(
                "pg-model",
                &[offer("upstream", "gpt-4o-mini", 1.0, 2.0)],
                "",
            )
    };
    let setup = Setup::start(with_keys);
    let other_dir = tempfile::tempdir().unwrap();
    let other = Flowgate::start(
        other_dir.path(),
        &with_keys(&other_dir.path().join("data"), &setup.upstream),
    );
    let created = client()
        .post(format!("{}/api/admin/keys", setup.gw.url))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "shared"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let key: Value = created.json().await.unwrap();
    let secret = key["secret"].as_str().unwrap().to_string();
    let call = |gw: &Flowgate| {
        client()
            .post(gw.chat_url())
            .bearer_auth(&secret)
            .json(&json!({"model": "pg-model", "messages": user("hi")}))
            .send()
    };
    // Made through the first instance, used through the second once it has read the keys.
    let started = std::time::Instant::now();
    loop {
        let status = call(&other).await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        assert_eq!(status, 401);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "never seen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let revoked = client()
        .delete(format!(
            "{}/api/admin/keys/{}",
            setup.gw.url,
            key["id"].as_str().unwrap()
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let started = std::time::Instant::now();
    loop {
        let status = call(&other).await.unwrap().status().as_u16();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        // Read again twice a second: refused within one.
        assert!(
            started.elapsed() < std::time::Duration::from_millis(1200),
            "still accepted after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    other.stop();
    setup.gw.stop();
}

/// A page with the cookie: its status, where it redirects, its HTML.
async fn ui_get(gw: &Flowgate, cookie: &str, path: &str) -> (u16, String, String) {
    let response = browser()
        .get(format!("{}{path}", gw.url))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, location, response.text().await.unwrap())
}

/// Two instances on one database, with a tenant key, an admin key and `[storage]`.
fn two_instances(schema: &str) -> (Vec<tempfile::TempDir>, Flowgate, Flowgate) {
    let storage = storage_config(schema);
    let config = |data: &std::path::Path| {
        base_config(data, None)
            + &storage
            + "\n[auth]\napi_keys = [\"team-key\"]\n[admin]\napi_keys = [\"pg-admin\"]\n"
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Flowgate::start(dir_a.path(), &config(&dir_a.path().join("data")));
    let b = Flowgate::start(dir_b.path(), &config(&dir_b.path().join("data")));
    (vec![dir_a, dir_b], a, b)
}

#[tokio::test]
async fn a_ui_session_made_on_one_instance_works_on_another_until_signed_out_there() {
    let schema = schema_name("ui_sessions");
    let _cleanup = DropSchema(schema.clone());
    let (_dirs, a, b) = two_instances(&schema);

    let cookie = sign_in(&a, "team-key").await;
    // The cookie holds a random id, never the key.
    assert!(!cookie.contains("team-key"), "{cookie}");
    // B knows the session A made: its pages, and the API calls its pages make.
    let (status, location, html) = ui_get(&b, &cookie, "/agents").await;
    assert_eq!(status, 200, "redirected to {location}");
    let csrf = csrf_of(&html);
    let (status, _, body) = ui_get(&b, &cookie, "/api/agents").await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = ui_get(&a, &cookie, "/agents").await;
    assert_eq!(status, 200);

    // A sign-out on B without the session's CSRF token is refused and ends nothing.
    let refused = browser()
        .post(format!("{}/signout", b.url))
        .header("cookie", &cookie)
        .form(&[("csrf", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let (status, _, _) = ui_get(&a, &cookie, "/agents").await;
    assert_eq!(status, 200);

    // Signed out on B: refused on A, pages and API alike.
    let out = browser()
        .post(format!("{}/signout", b.url))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(out.headers()["location"], "/signin");
    let (status, location, _) = ui_get(&a, &cookie, "/agents").await;
    assert_eq!(status, 303);
    assert!(location.starts_with("/signin?next="), "{location}");
    let (status, _, body) = ui_get(&a, &cookie, "/api/agents").await;
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = ui_get(&b, &cookie, "/agents").await;
    assert_eq!(status, 303);

    // Another sign-in is a new session, unaffected.
    let again = sign_in(&b, "team-key").await;
    assert_ne!(again, cookie);
    let (status, _, _) = ui_get(&a, &again, "/agents").await;
    assert_eq!(status, 200);

    // The store keeps neither the cookie nor the key in clear.
    let id = again.split_once('=').unwrap().1.to_string();
    let (client, connection) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = client
        .query(
            &format!("SELECT id_digest, sealed_key, tenant FROM {schema}.ui_sessions"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let (digest, sealed, tenant): (String, Vec<u8>, String) =
        (rows[0].get(0), rows[0].get(1), rows[0].get(2));
    assert_ne!(digest, id);
    assert_eq!(digest.len(), 64);
    assert!(!sealed.windows(8).any(|w| w == b"team-key".as_slice()));
    assert_eq!(tenant, "default");
    a.stop();
    b.stop();
}

#[tokio::test]
async fn revoking_a_key_on_one_instance_ends_its_ui_sessions_on_the_other() {
    let schema = schema_name("ui_revoke");
    let _cleanup = DropSchema(schema.clone());
    let (_dirs, a, b) = two_instances(&schema);
    let created = client()
        .post(format!("{}/api/admin/keys", a.url))
        .bearer_auth("pg-admin")
        .json(&json!({"name": "browser"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let key: Value = created.json().await.unwrap();
    let secret = key["secret"].as_str().unwrap().to_string();

    let cookie = sign_in(&a, &secret).await;
    let keep = sign_in(&a, "team-key").await;
    let (status, _, _) = ui_get(&a, &cookie, "/agents").await;
    assert_eq!(status, 200);
    // Revoked through B, once B has read the key A made (it reads the keys twice a second).
    let revoke = || {
        client()
            .delete(format!(
                "{}/api/admin/keys/{}",
                b.url,
                key["id"].as_str().unwrap()
            ))
            .bearer_auth("pg-admin")
            .send()
    };
    let (status, _) = poll_until(
        100,
        || async { (revoke().await.unwrap().status().as_u16(), ()) },
        |(status, _)| *status != 404,
    )
    .await;
    assert_eq!(status, 200);
    // Ended at the revocation, in the shared store: A refuses it at once, though its own copy
    // of the keys is read again only twice a second.
    let (status, location, _) = ui_get(&a, &cookie, "/agents").await;
    assert_eq!(status, 303, "{location}");
    let (status, _, _) = ui_get(&a, &cookie, "/api/agents").await;
    assert_eq!(status, 401);
    // Another key's session goes on.
    let (status, _, _) = ui_get(&a, &keep, "/agents").await;
    assert_eq!(status, 200);
    a.stop();
    b.stop();
}
