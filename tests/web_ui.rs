//! The web UI over HTTP on the real binary: sign-in sessions (cookie flags, wrong keys, foreign
//! origins), the Content-Security-Policy and escaping of every page, the CSRF token on the API
//! calls pages make with the session, tenants kept apart, sign-out. The browser tests
//! (`tests/e2e/test_ui.py`) drive the same pages in Chromium.

mod common;

use common::ui::{browser, csrf_of, sign_in};
use common::*;
use serde_json::{json, Value};

const CONFIG_KEYS: &str = r#"
[auth]
api_keys = ["default-key"]
[auth.tenants.acme]
api_keys = ["acme-key"]
[admin]
api_keys = [{ key = "admin-key", label = "ops" }]
"#;

fn start() -> (tempfile::TempDir, Flowgate) {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(&dir.path().join("data"), None) + CONFIG_KEYS;
    let gw = Flowgate::start(dir.path(), &config);
    (dir, gw)
}

async fn get(gw: &Flowgate, cookie: Option<&str>, path: &str) -> reqwest::Response {
    let mut request = browser().get(format!("{}{path}", gw.url));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_session_sees_its_tenants_pages_escaped_under_a_strict_csp() {
    let (_dir, gw) = start();
    let (status, _, answer) = chat_as(
        &gw,
        "default-key",
        json!({"model": "web/mock-echo", "messages": [{"role": "user", "content": "<script>alert(1)</script>"}]}),
    )
    .await;
    assert_eq!(status, 200);
    let url = answer["choices"][0]["url"].as_str().unwrap().to_string();
    let path = url.strip_prefix(&gw.url).unwrap().to_string();
    assert!(path.starts_with("/runs/"), "{path}");

    // Without a session: to the sign-in page, which brings the reader back.
    let response = get(&gw, None, &path).await;
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with("/signin?next=%2Fruns%2F"),
        "{location}"
    );

    let cookie = sign_in(&gw, "default-key").await;
    // The session opens the pages and `/api/`, never the models.
    let response = browser()
        .post(gw.chat_url())
        .header("cookie", &cookie)
        .json(&json!({"model": "web/mock-echo", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = get(&gw, Some(&cookie), &path).await;
    assert_eq!(response.status(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    let html = response.text().await.unwrap();
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)"), "{html}");
    // No inline script at all: every script is a file of /static.
    for (i, _) in html.match_indices("<script") {
        assert!(
            html[i..].starts_with(r#"<script type="module" src="/static/"#),
            "{}",
            &html[i..i + 80]
        );
    }

    // Every page answers the session; the runs list shows the output as text.
    for page in [
        "/agents",
        "/runs",
        "/agents/web/runs?f=text%7Ccontains%7Calert",
        "/agents/web/versions",
        "/agents/web/benchmarks",
        "/agents/web/reviews",
        "/playground",
        &format!("/playground?run={}", &path[6..]),
        "/cost?days=30",
        "/providers",
    ] {
        let response = get(&gw, Some(&cookie), page).await;
        assert_eq!(response.status(), 200, "{page}");
        let html = response.text().await.unwrap();
        assert!(!html.contains("<script>alert"), "{page}: {html}");
    }
    let runs = get(
        &gw,
        Some(&cookie),
        "/agents/web/runs?f=text%7Ccontains%7Calert",
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(runs.contains("1 run<"), "{runs}");

    // Another tenant's session: the same URL is a 404 that shows nothing of the run.
    let acme = sign_in(&gw, "acme-key").await;
    let response = get(&gw, Some(&acme), &path).await;
    assert_eq!(response.status(), 404);
    assert!(!response.text().await.unwrap().contains("alert"));
    let runs = get(&gw, Some(&acme), "/runs").await.text().await.unwrap();
    assert!(!runs.contains("alert"), "{runs}");
}

#[tokio::test]
async fn sign_in_refuses_wrong_keys_and_foreign_pages_and_sets_a_strict_cookie() {
    let (_dir, gw) = start();
    let response = browser()
        .post(format!("{}/signin", gw.url))
        .form(&[("key", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("set-cookie").is_none());

    let response = browser()
        .post(format!("{}/signin", gw.url))
        .header("origin", "http://evil.example")
        .form(&[("key", "default-key")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.headers().get("set-cookie").is_none());

    let response = browser()
        .post(format!("{}/signin", gw.url))
        .form(&[("key", "default-key"), ("next", "//evil.example/")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    // Only a path of this site is a place to go after signing in.
    assert_eq!(response.headers()["location"], "/agents");
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains("Secure"), "{cookie}");

    // Behind a TLS proxy the cookie is Secure.
    let response = browser()
        .post(format!("{}/signin", gw.url))
        .header("x-forwarded-proto", "https")
        .form(&[("key", "default-key")])
        .send()
        .await
        .unwrap();
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");

    // The scripts and stylesheet are served from the binary.
    let response = get(&gw, None, "/static/app.js").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(get(&gw, None, "/static/nope.js").await.status(), 404);
}

#[tokio::test]
async fn api_calls_with_the_session_need_its_csrf_token_and_sign_out_ends_it() {
    let (_dir, gw) = start();
    let (status, headers, _) = chat_as(
        &gw,
        "default-key",
        json!({"model": "web/mock-echo", "messages": [{"role": "user", "content": "share me"}]}),
    )
    .await;
    assert_eq!(status, 200);
    let run_id = headers["x-flowgate-run-id"].to_str().unwrap().to_string();
    let cookie = sign_in(&gw, "default-key").await;
    let html = get(&gw, Some(&cookie), "/agents")
        .await
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&html);
    let share = |token: Option<String>| {
        let mut request = browser()
            .post(format!("{}/api/runs/{run_id}/share", gw.url))
            .header("cookie", &cookie)
            .json(&json!({}));
        if let Some(token) = token {
            request = request.header("x-flowgate-csrf", token);
        }
        request.send()
    };
    // The cookie alone does not change anything.
    let response = share(None).await.unwrap();
    assert_eq!(response.status(), 403);
    let response = share(Some("wrong".into())).await.unwrap();
    assert_eq!(response.status(), 403);
    let response = share(Some(csrf.clone())).await.unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert!(body["url"].as_str().unwrap().contains("/share/"));
    // Reads need no token; the session reads its own tenant's run.
    let response = get(&gw, Some(&cookie), &format!("/api/runs/{run_id}")).await;
    assert_eq!(response.status(), 200);

    // A tenant session is not an admin: deploying is refused.
    let version: Value = client()
        .get(format!("{}/api/agents/web/versions", gw.url))
        .bearer_auth("default-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let version = version["items"][0]["id"].as_str().unwrap().to_string();
    let deploy = |cookie: String, csrf: String| {
        browser()
            .post(format!(
                "{}/api/agents/web/versions/{version}/deploy",
                gw.url
            ))
            .header("cookie", cookie)
            .header("x-flowgate-csrf", csrf)
            .json(&json!({"environment": "production"}))
            .send()
    };
    assert_eq!(
        deploy(cookie.clone(), csrf.clone()).await.unwrap().status(),
        401
    );
    // An admin session deploys, recorded under the key's label.
    let admin = sign_in(&gw, "admin-key").await;
    let admin_html = get(&gw, Some(&admin), "/agents/web/versions")
        .await
        .text()
        .await
        .unwrap();
    assert!(admin_html.contains(r#"id="deploy""#));
    let response = deploy(admin.clone(), csrf_of(&admin_html)).await.unwrap();
    assert_eq!(response.status(), 200);
    let html = get(&gw, Some(&admin), "/agents/web/versions")
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("by ops"), "{html}");

    // Sign-out needs the token too, then the cookie opens nothing.
    let response = browser()
        .post(format!("{}/signout", gw.url))
        .header("cookie", &cookie)
        .form(&[("csrf", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = browser()
        .post(format!("{}/signout", gw.url))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert!(response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(get(&gw, Some(&cookie), "/agents").await.status(), 303);
    let response = get(&gw, Some(&cookie), &format!("/api/runs/{run_id}")).await;
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_run_page_links_the_turns_of_its_conversation_and_the_agents_other_runs() {
    let (_dir, gw) = start();
    let first = json!([{"role": "user", "content": "first turn"}]);
    let (_, headers, answer) = chat_as(
        &gw,
        "default-key",
        json!({"model": "talk/mock-echo", "messages": first}),
    )
    .await;
    let first_id = headers["x-flowgate-run-id"].to_str().unwrap().to_string();
    let reply = answer["choices"][0]["message"]["content"].clone();
    // The next turn finds the conversation once the recorder stored the first (flushes every
    // 50 ms here).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, headers, _) = chat_as(
        &gw,
        "default-key",
        json!({"model": "talk/mock-echo", "messages": [
            {"role": "user", "content": "first turn"},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "second turn"},
        ]}),
    )
    .await;
    let second_id = headers["x-flowgate-run-id"].to_str().unwrap().to_string();
    let cookie = sign_in(&gw, "default-key").await;
    let html = get(&gw, Some(&cookie), &format!("/runs/{second_id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("<h2>Conversation</h2>"), "{html}");
    assert!(html.contains("<strong>this run</strong>"), "{html}");
    assert!(
        html.contains(&format!(r#"href="/runs/{first_id}""#)),
        "{html}"
    );
    assert!(html.contains(&format!(
        r#"href="/runs/{first_id}" rel="next" id="older-run""#
    )));
    let html = get(&gw, Some(&cookie), &format!("/runs/{first_id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains(&format!(
        r#"href="/runs/{second_id}" rel="prev" id="newer-run""#
    )));
}

#[tokio::test]
async fn evaluation_pages_escape_outputs_and_keep_tenants_apart() {
    let (_dir, gw) = start();
    let script = "<script>alert(2)</script>";
    let (status, _, answer) = chat_as(
        &gw,
        "default-key",
        json!({"model": "evals/mock-echo",
               "messages": [{"role": "user", "content": "Say {{ word }}"}],
               "input": {"word": "hi"}}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let version = answer["version_id"].as_str().unwrap().to_string();
    let api = |method: reqwest::Method, path: &str, body: Value| {
        client()
            .request(method, format!("{}{path}", gw.url))
            .bearer_auth("default-key")
            .json(&body)
            .send()
    };
    let response = api(
        reqwest::Method::POST,
        "/api/agents/evals/datasets",
        json!({"name": "xss", "items": [{"input": {"word": script}, "expected": script}]}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = api(
        reqwest::Method::POST,
        "/api/agents/evals/benchmarks",
        json!({"dataset": "xss", "candidates": [{"version_id": version}]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let id = created["benchmark"]["id"].as_str().unwrap().to_string();
    let page = format!("/agents/evals/benchmarks/{id}?a=0&b=0");
    let cookie = sign_in(&gw, "default-key").await;
    let html = poll_until(
        500,
        || async { get(&gw, Some(&cookie), &page).await.text().await.unwrap() },
        |html| html.contains(r#"data-status="done""#),
    )
    .await;
    // The echoed output, the input and the expected answer are text, never markup.
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(
        html.contains("Say &lt;script&gt;alert(2)&lt;&#x2f;script&gt;"),
        "{html}"
    );
    assert!(html.contains("1 / 1"), "{html}");
    // A person's review of the run shows escaped on the Reviews page.
    let (status, headers, _) = chat_as(
        &gw,
        "default-key",
        json!({"model": "evals/mock-echo", "messages": [{"role": "user", "content": script}]}),
    )
    .await;
    assert_eq!(status, 200);
    // Runs are written within the recorder's flush interval.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let response = api(
        reqwest::Method::POST,
        "/api/agents/evals/reviews",
        json!({"run_id": run_id(&headers), "verdict": "negative", "comment": script}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    for path in ["/agents/evals/reviews", "/agents/evals/benchmarks"] {
        let response = get(&gw, Some(&cookie), path).await;
        assert_eq!(response.status(), 200, "{path}");
        let html = response.text().await.unwrap();
        assert!(!html.contains("<script>alert"), "{path}: {html}");
    }

    // Another tenant: the benchmark's page is a 404; its own pages list nothing of it.
    let acme = sign_in(&gw, "acme-key").await;
    let response = get(&gw, Some(&acme), &page).await;
    assert_eq!(response.status(), 404);
    assert!(!response.text().await.unwrap().contains("xss"));
    let html = get(&gw, Some(&acme), "/agents/evals/benchmarks")
        .await
        .text()
        .await
        .unwrap();
    assert!(!html.contains(&id) && !html.contains("xss"), "{html}");
    let html = get(&gw, Some(&acme), "/agents/evals/reviews")
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("No reviews yet"), "{html}");
}

#[tokio::test]
async fn a_session_outlives_a_restart_and_ends_with_its_revoked_key() {
    let (dir, gw) = start();
    let created = client()
        .post(format!("{}/api/admin/keys", gw.url))
        .bearer_auth("admin-key")
        .json(&json!({"name": "browser"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let key: Value = created.json().await.unwrap();
    let secret = key["secret"].as_str().unwrap().to_string();
    let cookie = sign_in(&gw, &secret).await;
    let other = sign_in(&gw, "default-key").await;
    assert_eq!(get(&gw, Some(&cookie), "/agents").await.status(), 200);

    // Sessions are kept by the store: a restart signs nobody out.
    gw.stop();
    let gw = Flowgate::start_with(&dir.path().join("flowgate.toml"));
    assert_eq!(get(&gw, Some(&cookie), "/agents").await.status(), 200);
    let api = get(&gw, Some(&cookie), "/api/agents").await;
    assert_eq!(api.status(), 200);

    // The key revoked: its session is over, pages and API alike; another key's goes on.
    let revoked = client()
        .delete(format!(
            "{}/api/admin/keys/{}",
            gw.url,
            key["id"].as_str().unwrap()
        ))
        .bearer_auth("admin-key")
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let response = get(&gw, Some(&cookie), "/agents").await;
    assert_eq!(response.status(), 303);
    assert!(response.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/signin"));
    assert_eq!(get(&gw, Some(&cookie), "/api/agents").await.status(), 401);
    assert_eq!(get(&gw, Some(&other), "/agents").await.status(), 200);
    // A made-up cookie is no session.
    let forged = format!("flowgate_session={}", "A".repeat(43));
    assert_eq!(get(&gw, Some(&forged), "/agents").await.status(), 303);
}

/// The models table of a cost page: `(model, runs, cost)` per row, in order.
fn model_rows(html: &str) -> Vec<(String, u64, String)> {
    let table = html
        .split(r#"<table id="models">"#)
        .nth(1)
        .and_then(|t| t.split("</table>").next())
        .unwrap_or_else(|| panic!("no models table: {html}"));
    table
        .split("<tr><td>")
        .skip(1)
        .map(|row| {
            let cells: Vec<&str> = row
                .split("</td>")
                .map(|c| c.rsplit('>').next().unwrap_or(c))
                .collect();
            (
                cells[0].to_string(),
                cells[1].parse().unwrap(),
                cells[2].to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_cost_page_shows_runs_and_cost_per_model_over_its_range() {
    let setup = Setup::start(|data, upstream| {
        base_config(data, Some(upstream))
            + &model_table(
                "up-a",
                &[offer("upstream", "gpt-4o-mini", 1000.0, 2000.0)],
                "",
            )
            + CONFIG_KEYS
    });
    let gw = &setup.gw;
    let ask = |key: &'static str, model: &'static str| {
        chat_as(
            gw,
            key,
            json!({"model": model, "messages": [{"role": "user", "content": "hello"}]}),
        )
    };
    for (key, model) in [
        ("default-key", "shop/mock-echo"),
        ("default-key", "shop/mock-echo"),
        ("default-key", "support/up-a"),
        ("acme-key", "acme-bot/mock-echo"),
    ] {
        let (status, _, answer) = ask(key, model).await;
        assert_eq!(status, 200, "{answer}");
    }

    let cookie = sign_in(gw, "default-key").await;
    for page in ["/cost?days=7", "/cost?days=30", "/cost?days=30&models=1"] {
        let response = get(gw, Some(&cookie), page).await;
        assert_eq!(response.status(), 200, "{page}");
        let html = response.text().await.unwrap();
        // The dearer model first; the runs of each over the range, the tenant's only.
        let rows = model_rows(&html);
        let summary: Vec<(&str, u64)> = rows.iter().map(|(m, r, _)| (m.as_str(), *r)).collect();
        assert_eq!(summary, [("up-a", 1), ("mock-echo", 2)], "{page}: {html}");
        assert_ne!(rows[0].2, "$0", "{page}");
        assert!(html.contains(r#"id="total-runs">3<"#), "{page}");
        // Per model per day, as the agents are.
        let legend = html
            .split(r#"id="model-legend">"#)
            .nth(1)
            .and_then(|l| l.split("</div>").next())
            .unwrap();
        assert!(legend.contains("up-a: 1 runs"), "{legend}");
        assert!(legend.contains("mock-echo: 2 runs"), "{legend}");
        assert!(
            html.contains(r#"aria-label="Cost per day, per model"#),
            "{page}"
        );
    }

    let acme = sign_in(gw, "acme-key").await;
    let html = get(gw, Some(&acme), "/cost?days=7")
        .await
        .text()
        .await
        .unwrap();
    let rows = model_rows(&html);
    assert_eq!(rows.len(), 1, "{html}");
    assert_eq!((rows[0].0.as_str(), rows[0].1), ("mock-echo", 1));
    assert!(!html.contains("up-a"), "{html}");
}
