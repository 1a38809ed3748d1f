//! Runs search over HTTP: filters on the real binary's recorded runs, the fields a UI can offer,
//! bad queries refused with a 400 that says what is allowed, and tenants kept apart.

mod common;

use common::*;
use serde_json::{json, Value};

const KEYS: &str = "\n[auth]\napi_keys = [\"default-key\"]\n[auth.tenants.acme]\napi_keys = [\"acme-key\"]\n[admin]\napi_keys = [\"admin-key\"]\n";

fn start() -> (tempfile::TempDir, Flowgate) {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(&dir.path().join("data"), None)
        + &model_table("mock-two", &[offer("mock", "mock-two", 1.0, 2.0)], "")
        + KEYS;
    let gw = Flowgate::start(dir.path(), &config);
    (dir, gw)
}

async fn post(gw: &Flowgate, key: &str, path: &str, body: Value) -> (u16, Value) {
    let response = client()
        .post(format!("{}{path}", gw.url))
        .bearer_auth(key)
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

async fn get(gw: &Flowgate, key: &str, path: &str) -> (u16, Value) {
    let response = client()
        .get(format!("{}{path}", gw.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// Sends one request; returns its run id.
async fn send(gw: &Flowgate, key: &str, body: Value) -> String {
    let (status, headers, answer) = chat_as(gw, key, body).await;
    assert!(status == 200 || status == 404, "{answer}");
    run_id(&headers)
}

#[tokio::test]
async fn runs_are_found_by_their_fields_newest_first_in_pages() {
    let (_dir, gw) = start();
    let mut echo = Vec::new();
    let mut two = Vec::new();
    for i in 0..6 {
        echo.push(
            send(
                &gw,
                "default-key",
                json!({"model": "shop/mock-echo", "messages": user(&format!("order {i} for Zanzibar")),
                       "metadata": {"customer": format!("c{}", i % 2)}}),
            )
            .await,
        );
        two.push(
            send(
                &gw,
                "default-key",
                json!({"model": "shop/mock-two", "messages": user(&format!("plain {i}"))}),
            )
            .await,
        );
    }
    let failed = send(
        &gw,
        "default-key",
        json!({"model": "shop/no-such-model", "messages": user("x")}),
    )
    .await;
    send(
        &gw,
        "default-key",
        json!({"model": "other/mock-echo", "messages": user("Zanzibar elsewhere")}),
    )
    .await;

    let search = "/api/agents/shop/runs/search";
    // By model and status: newest first, paged with the cursor.
    let query = json!([{"field": "model", "operator": "is", "values": ["mock-two"]},
                       {"field": "status", "operator": "is", "values": ["success"]}]);
    let (status, first) = post(
        &gw,
        "default-key",
        search,
        json!({"field_queries": query, "limit": 4}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["count"], 6, "{first}");
    assert_eq!(first["count_is_exact"], true);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = post(
        &gw,
        "default-key",
        search,
        json!({"field_queries": query, "limit": 4, "cursor": cursor}),
    )
    .await;
    assert!(second["next_cursor"].is_null(), "{second}");
    let mut found = ids(&first);
    found.extend(ids(&second));
    let newest_first: Vec<String> = two.iter().rev().cloned().collect();
    assert_eq!(found, newest_first);
    let item = &first["items"][0];
    assert_eq!(item["input_preview"], "plain 5");
    assert!(item["url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/runs/{}", newest_first[0])));

    // Errors, free text, metadata.
    let (_, errors) = post(
        &gw,
        "default-key",
        search,
        json!({"field_queries": [{"field": "status", "operator": "is", "values": ["error"]}]}),
    )
    .await;
    assert_eq!(ids(&errors), vec![failed.clone()]);
    let (_, text) = post(&gw, "default-key", search,
        json!({"field_queries": [{"field": "text", "operator": "contains", "values": ["zanzibar"]},
                                 {"field": "metadata.customer", "operator": "is", "values": ["c1"]}]})).await;
    let want: Vec<String> = [5, 3, 1].iter().map(|i| echo[*i].clone()).collect();
    assert_eq!(ids(&text), want, "{text}");

    // All agents of the tenant, narrowed by agent.
    let (_, everywhere) = post(&gw, "default-key", "/api/runs/search",
        json!({"field_queries": [{"field": "text", "operator": "contains", "values": ["Zanzibar"]}]})).await;
    assert_eq!(
        everywhere["items"].as_array().unwrap().len(),
        7,
        "{everywhere}"
    );
    let (_, other) = post(
        &gw,
        "default-key",
        "/api/runs/search",
        json!({"field_queries": [{"field": "agent", "operator": "is", "values": ["other"]}]}),
    )
    .await;
    assert_eq!(other["items"].as_array().unwrap().len(), 1);

    // What a UI can offer.
    let (status, fields) = get(&gw, "default-key", "/api/agents/shop/runs/search/fields").await;
    assert_eq!(status, 200);
    let model = fields["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "model")
        .unwrap();
    // A run whose model is unknown is filed under the model string it sent.
    assert_eq!(
        model["values"],
        json!(["mock-echo", "mock-two", "shop/no-such-model"])
    );
    let status_field = fields["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "status")
        .unwrap();
    assert_eq!(status_field["operators"], json!(["is", "is not"]));
}

#[tokio::test]
async fn a_bad_query_is_a_400_that_says_what_is_allowed() {
    let (_dir, gw) = start();
    let search = "/api/agents/shop/runs/search";
    for (body, param, says) in [
        (
            json!({"field_queries": [{"field": "colour", "operator": "is", "values": ["red"]}]}),
            "field",
            "unknown field",
        ),
        (
            json!({"field_queries": [{"field": "status", "operator": "contains", "values": ["err"]}]}),
            "operator",
            "`is`, `is not`",
        ),
        (
            json!({"field_queries": [{"field": "cost_usd", "operator": "greater than", "values": ["much"]}]}),
            "values",
            "a number",
        ),
        (
            json!({"field_queries": [], "cursor": "yesterday"}),
            "cursor",
            "cursor",
        ),
        (
            json!({"field_queries": [], "limit": 100000}),
            "limit",
            "between 1 and",
        ),
    ] {
        let (status, error) = post(&gw, "default-key", search, body.clone()).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
        assert!(
            error["error"]["message"].as_str().unwrap().contains(says),
            "{body}: {error}"
        );
    }
    // Bounded: too many queries, a body past the small-body bound, not JSON.
    let many: Vec<Value> = (0..21)
        .map(|_| json!({"field": "status", "operator": "is", "values": ["error"]}))
        .collect();
    assert_eq!(
        post(&gw, "default-key", search, json!({"field_queries": many}))
            .await
            .0,
        400
    );
    let huge = "x".repeat(100 * 1024);
    assert_eq!(
        post(
            &gw,
            "default-key",
            search,
            json!({"field_queries": [{"field": "text", "operator": "contains", "values": [huge]}]})
        )
        .await
        .0,
        413
    );
    assert_eq!(
        post(&gw, "default-key", search, json!("not an object"))
            .await
            .0,
        400
    );
    assert_eq!(
        post(
            &gw,
            "default-key",
            "/api/agents/not%20a%20slug/runs/search",
            json!({})
        )
        .await
        .0,
        400
    );
    // Environments are an agent's: across agents they cannot be resolved.
    let (status, error) = post(
        &gw,
        "default-key",
        "/api/runs/search",
        json!({"field_queries": [{"field": "version", "operator": "is", "values": ["production"]}]}),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("environment"));
    // Without a key: refused.
    assert_eq!(post(&gw, "", search, json!({})).await.0, 401);
}

#[tokio::test]
async fn no_tenant_finds_another_tenants_runs() {
    let (_dir, gw) = start();
    let acme = send(
        &gw,
        "acme-key",
        json!({"model": "shop/mock-echo", "messages": user("acme secret")}),
    )
    .await;
    send(
        &gw,
        "default-key",
        json!({"model": "shop/mock-echo", "messages": user("default words")}),
    )
    .await;
    let query =
        json!({"field_queries": [{"field": "text", "operator": "contains", "values": ["secret"]}]});
    let (_, mine) = post(
        &gw,
        "acme-key",
        "/api/agents/shop/runs/search",
        query.clone(),
    )
    .await;
    assert_eq!(ids(&mine), vec![acme.clone()]);
    for path in ["/api/agents/shop/runs/search", "/api/runs/search"] {
        let (status, theirs) = post(&gw, "default-key", path, query.clone()).await;
        assert_eq!(status, 200);
        assert!(ids(&theirs).is_empty(), "{path}: {theirs}");
        let (_, all) = post(&gw, "default-key", path, json!({})).await;
        assert!(!ids(&all).contains(&acme), "{path}");
    }
    // The fields of another tenant's agent show none of its values.
    let (_, fields) = get(&gw, "default-key", "/api/runs/search/fields").await;
    let text = fields.to_string();
    assert!(text.contains("mock-echo"));
    // An admin names the tenant it reads.
    let response = client()
        .post(format!("{}/api/runs/search", gw.url))
        .bearer_auth("admin-key")
        .header("x-flowgate-tenant", "acme")
        .json(&query)
        .send()
        .await
        .unwrap();
    let page: Value = response.json().await.unwrap();
    assert_eq!(ids(&page), vec![acme]);
}
