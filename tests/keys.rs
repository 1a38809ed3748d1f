//! Virtual keys through the real binary: the admin API (and its refusals), rate limits that
//! admit exactly their number, budgets that stop spend, allowlists, revocation, tenants'
//! limits, and spend that survives a restart.

mod common;

use common::*;
use serde_json::{json, Value};

const ADMIN_KEY: &str = "admin-secret-key";
const TENANT_KEY: &str = "default-tenant-key";
const ACME_KEY: &str = "acme-tenant-key";

fn config(data_dir: &std::path::Path, upstream: &MockUpstream) -> String {
    // Priced high enough that a few requests spend a cent.
    let model = |id: &str| model_table(id, &[offer("upstream", "gpt-4o-mini", 100.0, 200.0)], "");
    // Always down, with the catalog's fallback to `up-b`.
    let down = model_table(
        "down",
        &[offer("upstream", "gpt-4o-mini;status=503", 1.0, 1.0)],
        "fallback = { unavailable = [\"up-b\"] }",
    );
    base_config(data_dir, Some(upstream))
        + &format!(
            "\n[auth]\napi_keys = [\"{TENANT_KEY}\"]\n[auth.tenants.acme]\napi_keys = [\"{ACME_KEY}\"]\n\
             [auth.tenants.acme.limits]\nrpm = 3\n\
             [admin]\napi_keys = [\"{ADMIN_KEY}\"]\n"
        )
        + &model("up-a")
        + &model("up-b")
        + &down
}

async fn send(request: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn admin(
    gw: &Flowgate,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    key: &str,
) -> (u16, Value) {
    let mut request = client()
        .request(method, format!("{}{path}", gw.url))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let (status, _, body) = send(request).await;
    (status, body)
}

async fn create(gw: &Flowgate, body: Value) -> Value {
    let (status, key) = admin(
        gw,
        reqwest::Method::POST,
        "/api/admin/keys",
        Some(body),
        ADMIN_KEY,
    )
    .await;
    assert_eq!(status, 201, "{key}");
    key
}

fn ask_body(model: &str) -> Value {
    json!({"model": model, "messages": user("hello")})
}

#[actix_rt::test]
async fn a_key_with_rpm_10_admits_exactly_10_of_30_at_once() {
    let setup = Setup::start(config);
    let gw = &setup.gw;
    let key = create(gw, json!({"name": "ten", "rpm": 10})).await;
    let secret = key["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("fg-") && secret.len() > 40);
    let answers = futures::future::join_all((0..30).map(|_| {
        send(
            client()
                .post(gw.chat_url())
                .bearer_auth(&secret)
                .json(&ask_body("up-a")),
        )
    }))
    .await;
    let ok = answers.iter().filter(|(s, _, _)| *s == 200).count();
    assert_eq!(ok, 10);
    // Each admitted answer says how many are left this minute: 9 down to 0, once each.
    let mut left: Vec<u32> = answers
        .iter()
        .filter(|(s, _, _)| *s == 200)
        .map(|(_, h, _)| {
            assert_eq!(h["x-ratelimit-limit-requests"], "10");
            h["x-ratelimit-remaining-requests"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    left.sort_unstable();
    assert_eq!(left, (0..10).collect::<Vec<u32>>());
    for (status, headers, body) in answers.iter().filter(|(s, _, _)| *s != 200) {
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(headers["x-ratelimit-limit-requests"], "10");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    }
    // The key reads its own use.
    let (status, own) = admin(gw, reqwest::Method::GET, "/api/keys/self", None, &secret).await;
    assert_eq!(status, 200);
    assert_eq!(own["key"]["usage"]["requests_this_minute"], 10);
    assert_eq!(own["key"]["name"], "ten");
    assert!(own["key"].get("secret").is_none() && own["key"].get("digest").is_none());
}

#[actix_rt::test]
async fn a_budget_stops_spend_within_one_request_and_survives_a_restart() {
    let setup = Setup::start(config);
    let key = create(
        &setup.gw,
        json!({"name": "cent", "budgets": [{"period": "day", "usd": 0.01, "soft_usd": 0.005}]}),
    )
    .await;
    let (id, secret) = (
        key["id"].as_str().unwrap().to_string(),
        key["secret"].as_str().unwrap().to_string(),
    );
    let mut paid = Vec::new();
    let refused = loop {
        let (status, _, body) = send(
            client()
                .post(setup.gw.chat_url())
                .bearer_auth(&secret)
                .json(&ask_body("up-a")),
        )
        .await;
        if status != 200 {
            break (status, body);
        }
        paid.push(body["cost_usd"].as_f64().unwrap());
        assert!(paid.len() < 100, "the budget never stopped the key");
    };
    assert_eq!(refused.0, 429, "{}", refused.1);
    assert_eq!(refused.1["error"]["code"], "insufficient_quota");
    assert_eq!(refused.1["error"]["type"], "insufficient_quota");
    let spent: f64 = paid.iter().sum();
    let most = paid.iter().cloned().fold(0.0, f64::max);
    // One request at a time: the spend passes the budget by at most the last one's cost.
    assert!(
        spent >= 0.01 && spent <= 0.01 + most + 1e-9,
        "{spent} {paid:?}"
    );
    let (_, view) = admin(
        &setup.gw,
        reqwest::Method::GET,
        &format!("/api/admin/keys/{id}"),
        None,
        ADMIN_KEY,
    )
    .await;
    let recorded = view["usage"]["budgets"][0]["spent_usd"].as_f64().unwrap();
    assert!((recorded - spent).abs() < 1e-9, "{recorded} vs {spent}");
    assert_eq!(view["usage"]["budgets"][0]["remaining_usd"], 0.0);

    let metrics = metrics(&setup.gw).await;
    assert_sample(
        &metrics,
        "flowgate_key_requests_refused_total{reason=\"quota\",subject=\"key cent\"} 1",
    );
    assert_sample(
        &metrics,
        "flowgate_key_budget_remaining_usd{period=\"day\",subject=\"key cent\"} 0",
    );
    assert_sample(
        &metrics,
        "flowgate_key_budget_alerts_total{subject=\"key cent\"} 1",
    );

    // Another key of the tenant still works: the budget is the key's.
    let (status, _, _) = send(
        client()
            .post(setup.gw.chat_url())
            .bearer_auth(TENANT_KEY)
            .json(&ask_body("up-a")),
    )
    .await;
    assert_eq!(status, 200);

    // A restart keeps the spend: still refused.
    let Setup { dir, upstream, gw } = setup;
    gw.stop();
    let gw = Flowgate::start_with(&dir.path().join("flowgate.toml"));
    let (status, _, body) = send(
        client()
            .post(gw.chat_url())
            .bearer_auth(&secret)
            .json(&ask_body("up-a")),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_quota");
    drop(upstream);
}

#[actix_rt::test]
async fn allowlists_revocation_and_patches_take_effect_at_once() {
    let setup = Setup::start(config);
    let gw = &setup.gw;
    let key = create(
        gw,
        json!({"name": "only-a", "models": ["up-a"], "agents": ["support*"]}),
    )
    .await;
    let (id, secret) = (
        key["id"].as_str().unwrap().to_string(),
        key["secret"].as_str().unwrap().to_string(),
    );
    assert_eq!(key["warnings"], json!([]));
    let call = |model: &str| {
        send(
            client()
                .post(gw.chat_url())
                .bearer_auth(&secret)
                .json(&ask_body(model)),
        )
    };
    assert_eq!(call("support-bot/up-a").await.0, 200);
    let (status, _, body) = call("support-bot/up-b").await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("up-b"));
    assert_eq!(call("sales/up-a").await.0, 403);

    // A patch opens the other model; a `null` removes a limit.
    let (status, patched) = admin(
        gw,
        reqwest::Method::PATCH,
        &format!("/api/admin/keys/{id}"),
        Some(json!({"models": ["up-*"], "rpm": null})),
        ADMIN_KEY,
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(call("support-bot/up-b").await.0, 200);

    // Revoked: 401 at once, and it stays revoked.
    let (status, revoked) = admin(
        gw,
        reqwest::Method::DELETE,
        &format!("/api/admin/keys/{id}"),
        None,
        ADMIN_KEY,
    )
    .await;
    assert_eq!(status, 200);
    assert!(revoked["revoked_at"].is_string());
    let (status, _, body) = call("support-bot/up-a").await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("revoked"));
    let (status, _) = admin(
        gw,
        reqwest::Method::PATCH,
        &format!("/api/admin/keys/{id}"),
        Some(json!({"rpm": 5})),
        ADMIN_KEY,
    )
    .await;
    assert_eq!(status, 400);
}

#[actix_rt::test]
async fn bad_admin_requests_are_clear_4xx_and_change_nothing() {
    let setup = Setup::start(config);
    let gw = &setup.gw;
    let post = |body: Value, key: &'static str| {
        admin(
            gw,
            reqwest::Method::POST,
            "/api/admin/keys",
            Some(body),
            key,
        )
    };
    let cases = [
        (json!({"name": "x", "colour": "red"}), 400, "colour"),
        (
            json!({"name": "x", "budgets": [{"period": "day", "usd": -1}]}),
            400,
            "usd",
        ),
        (
            json!({"name": "x", "budgets": [{"period": "year", "usd": 1}]}),
            400,
            "period",
        ),
        (json!({"name": "x", "rpm": 0}), 400, "rpm"),
        (json!({"name": "x", "rpm": -3}), 400, "rpm"),
        (
            json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
            400,
            "past",
        ),
        (json!({"name": "x", "models": ["a b"]}), 400, "models"),
        (json!({"rpm": 5}), 400, "name"),
        (json!({"name": "x", "tenant": "Not A Slug"}), 400, "tenant"),
    ];
    for (body, status, word) in cases {
        let (got, answer) = post(body.clone(), ADMIN_KEY).await;
        assert_eq!(got, status, "{body} → {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(word), "{body} → {message}");
    }
    // A client key is not an admin key; no key at all is a 401.
    assert_eq!(post(json!({"name": "x"}), TENANT_KEY).await.0, 403);
    let (status, _, _) = send(client().get(format!("{}/api/admin/keys", gw.url))).await;
    assert_eq!(status, 401);
    // Nothing was made.
    let (_, list) = admin(gw, reqwest::Method::GET, "/api/admin/keys", None, ADMIN_KEY).await;
    assert_eq!(list["data"], json!([]));

    // A pattern that matches no model is a warning, not an error.
    let key = create(gw, json!({"name": "typo", "models": ["gtp-4*"]})).await;
    assert_eq!(key["warnings"].as_array().unwrap().len(), 1);
    // Another tenant's key is not found when acting for this one.
    let id = key["id"].as_str().unwrap();
    let (status, _, _) = send(
        client()
            .delete(format!("{}/api/admin/keys/{id}", gw.url))
            .bearer_auth(ADMIN_KEY)
            .header("x-flowgate-tenant", "acme"),
    )
    .await;
    assert_eq!(status, 404);
    let (_, still) = admin(
        gw,
        reqwest::Method::GET,
        &format!("/api/admin/keys/{id}"),
        None,
        ADMIN_KEY,
    )
    .await;
    assert!(still["revoked_at"].is_null());
}

#[actix_rt::test]
async fn last_use_is_kept_across_a_restart() {
    let setup = Setup::start(config);
    let key = create(&setup.gw, json!({"name": "plain"})).await;
    let (id, secret) = (
        key["id"].as_str().unwrap().to_string(),
        key["secret"].as_str().unwrap().to_string(),
    );
    assert!(key["last_used_at"].is_null());
    let (status, _, _) = send(
        client()
            .post(setup.gw.chat_url())
            .bearer_auth(&secret)
            .json(&ask_body("up-a")),
    )
    .await;
    assert_eq!(status, 200);
    let Setup { dir, upstream, gw } = setup;
    gw.stop();
    let gw = Flowgate::start_with(&dir.path().join("flowgate.toml"));
    let (_, view) = admin(
        &gw,
        reqwest::Method::GET,
        &format!("/api/admin/keys/{id}"),
        None,
        ADMIN_KEY,
    )
    .await;
    assert!(view["last_used_at"].is_string(), "{view}");
    drop(upstream);
}

#[actix_rt::test]
async fn a_tenant_limit_holds_for_every_key_of_the_tenant() {
    let setup = Setup::start(config);
    let gw = &setup.gw;
    let key = create(gw, json!({"name": "acme-bot", "tenant": "acme"})).await;
    let secret = key["secret"].as_str().unwrap().to_string();
    // acme may send 3 a minute, whichever key it uses.
    let mut statuses = Vec::new();
    for token in [ACME_KEY, secret.as_str(), ACME_KEY, secret.as_str()] {
        let (status, _, body) = send(
            client()
                .post(gw.chat_url())
                .bearer_auth(token)
                .json(&ask_body("up-a")),
        )
        .await;
        statuses.push(status);
        if status == 429 {
            assert!(body["error"]["message"].as_str().unwrap().contains("acme"));
        }
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    // The default tenant has no limit.
    for _ in 0..4 {
        let (status, _, _) = send(
            client()
                .post(gw.chat_url())
                .bearer_auth(TENANT_KEY)
                .json(&ask_body("up-a")),
        )
        .await;
        assert_eq!(status, 200);
    }
}

#[actix_rt::test]
async fn the_cli_creates_lists_and_revokes_keys_through_the_admin_api() {
    let setup = Setup::start(config);
    let gw = &setup.gw;
    let cli = |args: &[&str], admin_key: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .arg("keys")
            .args(args)
            .env("FLOWGATE_URL", &gw.url)
            .env("FLOWGATE_ADMIN_KEY", admin_key)
            .output()
            .expect("run the cli");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(
        &[
            "create",
            "ci-bot",
            "--rpm",
            "5",
            "--daily-usd",
            "2.5",
            "--models",
            "up-a,up-b",
        ],
        ADMIN_KEY,
    );
    assert!(ok, "{err}");
    let key: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(key["rpm"], 5);
    assert_eq!(key["budgets"][0]["usd"], 2.5);
    assert_eq!(key["models"], json!(["up-a", "up-b"]));
    let secret = key["secret"].as_str().unwrap();
    let (status, _, _) = send(
        client()
            .post(gw.chat_url())
            .bearer_auth(secret)
            .json(&ask_body("up-a")),
    )
    .await;
    assert_eq!(status, 200);

    let (ok, out, _) = cli(&["list"], ADMIN_KEY);
    assert!(ok);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["data"][0]["name"], "ci-bot");
    assert!(!out.contains(secret), "a list never shows a secret");

    let id = key["id"].as_str().unwrap();
    let (ok, _, _) = cli(&["revoke", id], ADMIN_KEY);
    assert!(ok);
    let (status, _, _) = send(
        client()
            .post(gw.chat_url())
            .bearer_auth(secret)
            .json(&ask_body("up-a")),
    )
    .await;
    assert_eq!(status, 401);

    // A wrong admin key: a failure that says why.
    let (ok, _, err) = cli(&["list"], "not-an-admin-key");
    assert!(!ok);
    assert!(err.contains("401"), "{err}");
}

#[actix_rt::test]
async fn fallbacks_stay_within_a_keys_allowlist() {
    let setup = Setup::start(config);
    let gw = &setup.gw;
    let ask =
        |key: String, body: Value| send(client().post(gw.chat_url()).bearer_auth(key).json(&body));
    // Without an allowlist the catalog falls back from `down` to `up-b`.
    let (status, headers, body) = ask(TENANT_KEY.into(), ask_body("down")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-model"], "up-b");
    // A key limited to `down` and `up-a` never gets an answer from `up-b`.
    let key = create(gw, json!({"name": "narrow", "models": ["down", "up-a"]})).await;
    let secret = key["secret"].as_str().unwrap().to_string();
    let (status, headers, body) = ask(secret.clone(), ask_body("down")).await;
    assert_ne!(status, 200, "{body}");
    assert!(headers.get("x-flowgate-model").is_none_or(|m| m != "up-b"));
    // A fallback it names must be allowed too.
    let (status, _, body) = ask(
        secret.clone(),
        json!({"model": "down", "messages": user("hi"), "use_fallback": ["up-b"]}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["param"], "use_fallback");
    let (status, headers, body) = ask(
        secret,
        json!({"model": "down", "messages": user("hi"), "use_fallback": ["up-a"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-model"], "up-a");
}
