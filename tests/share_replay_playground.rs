//! Share links, replays and the playground on the real binary: a shared run read without a key
//! (JSON and HTML), revoked links and unknown tokens as 404s, replays recorded with their source
//! and the run they replay, several models compared at once (streamed or not, one failing), and
//! tenants kept apart throughout.

mod common;

use common::*;
use serde_json::{json, Value};

const KEYS: &str =
    "\n[auth]\napi_keys = [\"default-key\"]\n[auth.tenants.acme]\napi_keys = [\"acme-key\"]\n";

/// `mock-two` (dear), `mock-slow` (cheap, 300 ms late) and `mock-broken` (always a 400) on the
/// built-in mock provider, next to the catalog's `mock-echo`.
fn start() -> (tempfile::TempDir, Flowgate) {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(&dir.path().join("data"), None)
        + &model_table("mock-two", &[offer("mock", "mock-two", 1.0, 2.0)], "")
        + &model_table("mock-slow", &[offer("mock", "mock-slow", 0.01, 0.02)], "")
        + &model_table("mock-broken", &[offer("mock", "mock-broken", 1.0, 1.0)], "")
        + "\n[providers.mock.models.\"mock-slow\"]\nlatency_ms = 300\n"
        + "\n[providers.mock.models.\"mock-broken\"]\nfailure_rate = 1.0\nfailure_status = 400\n"
        + KEYS;
    let gw = Flowgate::start(dir.path(), &config);
    (dir, gw)
}

async fn send(
    gw: &Flowgate,
    method: reqwest::Method,
    key: Option<&str>,
    path: &str,
    body: Option<Value>,
    accept: Option<&str>,
) -> (u16, String, String) {
    let mut request = client().request(method, format!("{}{path}", gw.url));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

async fn post(gw: &Flowgate, key: &str, path: &str, body: Value) -> (u16, Value) {
    let (status, _, text) =
        send(gw, reqwest::Method::POST, Some(key), path, Some(body), None).await;
    (status, json_of(&text))
}

async fn get_as(gw: &Flowgate, key: &str, path: &str) -> (u16, Value) {
    let (status, _, text) = send(gw, reqwest::Method::GET, Some(key), path, None, None).await;
    (status, json_of(&text))
}

/// `DELETE` on a share path: status and body.
async fn revoke(gw: &Flowgate, key: &str, path: &str) -> (u16, String, String) {
    send(gw, reqwest::Method::DELETE, Some(key), path, None, None).await
}

/// The shared page, without a key: status, content type, body.
async fn shared(gw: &Flowgate, token: &str, accept: &str) -> (u16, String, String) {
    let path = format!("/share/{token}");
    send(gw, reqwest::Method::GET, None, &path, None, Some(accept)).await
}

/// Sends one chat request; returns its run id.
async fn run(gw: &Flowgate, key: &str, body: Value) -> String {
    let (status, headers, answer) = chat_as(gw, key, body).await;
    assert_eq!(status, 200, "{answer}");
    run_id(&headers)
}

/// The ids of the tenant's runs with this `source`.
async fn runs_from(gw: &Flowgate, key: &str, source: &str) -> Vec<String> {
    let query = json!({"field_queries": [{"field": "source", "operator": "is", "values": [source]}],
                       "limit": 100});
    let (status, page) = post(gw, key, "/api/runs/search", query).await;
    assert_eq!(status, 200, "{page}");
    strings_at(&page["items"], "id")
        .into_iter()
        .map(str::to_string)
        .collect()
}

fn assert_not_found(status: u16, body: &str) {
    assert_eq!(status, 404, "{body}");
    let error = json_of(body);
    assert!(error["error"]["message"].is_string(), "{error}");
}

#[tokio::test]
async fn a_shared_run_is_read_without_a_key_until_revoked() {
    let (_dir, gw) = start();
    let text = "<b>bold</b> & <script>alert(1)</script>";
    let id = run(
        &gw,
        "default-key",
        json!({"model": "shop/mock-echo", "messages": user(text),
               "metadata": {"customer": "internal-customer-7"}}),
    )
    .await;
    let other = run(
        &gw,
        "default-key",
        json!({"model": "shop/mock-echo", "messages": user("other")}),
    )
    .await;
    let share_path = format!("/api/runs/{id}/share");

    // Another tenant can neither share nor revoke it.
    let (status, body) = post(&gw, "acme-key", &share_path, json!({})).await;
    assert_eq!(status, 404, "{body}");

    let (status, first) = post(&gw, "default-key", &share_path, json!({})).await;
    assert_eq!(status, 201, "{first}");
    let token = first["token"].as_str().unwrap().to_string();
    assert!(token.len() >= 22, "{token}");
    assert!(token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(first["url"], format!("{}/share/{token}", gw.url));
    // Shared again: the same link.
    let (status, again) = post(&gw, "default-key", &share_path, json!({})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["token"], token.as_str());

    // JSON for a client that asks for it: that run, nothing of the tenant's.
    let (status, content_type, body) = shared(&gw, &token, "application/json").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let view = json_of(&body);
    assert_eq!(view["id"], id.as_str());
    assert_eq!(view["agent"], "shop");
    assert_eq!(view["messages"][0]["content"], text);
    assert_eq!(view["output"]["choices"][0]["message"]["content"], text);
    assert!(view["cost_usd"].as_f64().unwrap() > 0.0);
    for hidden in [
        "feedback_token",
        "tenant",
        "internal-customer-7",
        "metadata",
        "default",
    ] {
        assert!(!body.contains(hidden), "`{hidden}` shown: {body}");
    }

    // A browser gets a page, with the run's text escaped.
    let (status, content_type, page) = shared(&gw, &token, "text/html,*/*;q=0.8").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
        "{page}"
    );
    assert!(
        !page.contains("<script>") && !page.contains("<b>bold"),
        "{page}"
    );
    assert!(page.contains(&id));
    assert!(!page.contains("internal-customer-7"));

    // The token opens no other run, and the runs API still needs a key.
    let (status, _, body) = send(
        &gw,
        reqwest::Method::GET,
        None,
        &format!("/api/runs/{other}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");

    // Tokens never issued, malformed or oversized: 404 in the OpenAI shape.
    let never = "A".repeat(token.len());
    for bad in [
        never.as_str(),
        "not-a-token",
        &"x".repeat(4000),
        "%3Cscript%3E",
    ] {
        let (status, _, body) = shared(&gw, bad, "application/json").await;
        assert_not_found(status, &body);
    }

    // Another tenant's revoke changes nothing; the owner's closes the link.
    let (status, _, body) = revoke(&gw, "acme-key", &share_path).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(shared(&gw, &token, "application/json").await.0, 200);
    let (status, _, body) = revoke(&gw, "default-key", &share_path).await;
    assert_eq!(status, 204, "{body}");
    for accept in ["application/json", "text/html"] {
        let (status, _, body) = shared(&gw, &token, accept).await;
        assert_not_found(status, &body);
    }
    let (status, _, body) = revoke(&gw, "default-key", &share_path).await;
    assert_eq!(status, 404, "{body}");

    // Shared again after a revoke: a new link; the old one stays closed.
    let (status, renewed) = post(&gw, "default-key", &share_path, json!({})).await;
    assert_eq!(status, 201, "{renewed}");
    assert_ne!(renewed["token"], token.as_str());
    assert_eq!(
        shared(&gw, renewed["token"].as_str().unwrap(), "application/json")
            .await
            .0,
        200
    );
    assert_eq!(shared(&gw, &token, "application/json").await.0, 404);
}

/// A replay or a playground run that gives the same answer as the app's run does not take over
/// its conversation: the app's next turn joins the app's conversation.
#[tokio::test]
async fn the_apps_next_turn_joins_its_conversation_after_a_replay_with_the_same_answer() {
    let (_dir, gw) = start();
    let first = json!([{"role": "user", "content": "Hi there"}]);
    let (status, headers, answer) = chat_as(
        &gw,
        "default-key",
        json!({"model": "talk/mock-echo", "messages": first}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let id = run_id(&headers);
    // Replayed on the same model, then run in the playground: the same answer twice more.
    let (status, replay) = post(
        &gw,
        "default-key",
        &format!("/api/runs/{id}/replay"),
        json!({"model": "mock-echo"}),
    )
    .await;
    assert_eq!(status, 200, "{replay}");
    assert_eq!(
        replay["choices"][0]["message"]["content"],
        answer["choices"][0]["message"]["content"]
    );
    let (status, played) = post(
        &gw,
        "default-key",
        "/api/playground",
        json!({"models": ["mock-echo"], "agent_id": "talk", "messages": first}),
    )
    .await;
    assert_eq!(status, 200, "{played}");
    let mut follow_up = first.as_array().unwrap().clone();
    follow_up.push(answer["choices"][0]["message"].clone());
    follow_up.push(json!({"role": "user", "content": "And then?"}));
    let (status, headers, _) = chat_as(
        &gw,
        "default-key",
        json!({"model": "talk/mock-echo", "messages": follow_up}),
    )
    .await;
    assert_eq!(status, 200);
    let (_, run) = get_as(
        &gw,
        "default-key",
        &format!("/api/runs/{}", run_id(&headers)),
    )
    .await;
    assert_eq!(run["conversation_id"], id.as_str(), "{run}");
}

#[tokio::test]
async fn a_replay_reruns_the_request_on_another_model_and_names_its_source() {
    let (_dir, gw) = start();
    let id = run(
        &gw,
        "default-key",
        json!({"model": "shop/mock-echo", "temperature": 0.3, "max_tokens": 50,
               "messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Hello {{ name }}"}],
               "input": {"name": "Ann"}, "metadata": {"customer": "c1"}}),
    )
    .await;
    let original = get_as(&gw, "default-key", &format!("/api/runs/{id}"))
        .await
        .1;
    let replay_path = format!("/api/runs/{id}/replay");

    // Another tenant's run: 404, and nothing runs.
    let (status, body) = post(&gw, "acme-key", &replay_path, json!({"model": "mock-two"})).await;
    assert_eq!(status, 404, "{body}");
    assert!(runs_from(&gw, "acme-key", "replay").await.is_empty());

    let (status, answer) = post(
        &gw,
        "default-key",
        &replay_path,
        json!({"model": "mock-two"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "mock-two");
    assert_eq!(answer["source"], "replay");
    assert_eq!(answer["replay_of"], id.as_str());
    assert_eq!(answer["choices"][0]["message"]["content"], "Hello Ann");
    let new_id = answer["run_id"].as_str().unwrap().to_string();
    assert_ne!(new_id, id);

    let (status, replayed) = get_as(&gw, "default-key", &format!("/api/runs/{new_id}")).await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["source"], "replay");
    assert_eq!(replayed["replay_of"], id.as_str());
    assert_eq!(replayed["agent"], "shop");
    assert_eq!(replayed["model"], "mock-two");
    assert_eq!(replayed["input"], json!({"name": "Ann"}));
    assert_eq!(replayed["metadata"], json!({"customer": "c1"}));
    assert_eq!(replayed["rendered_messages"], original["rendered_messages"]);
    assert_eq!(replayed["request"]["temperature"], 0.3);
    assert_eq!(replayed["request"]["max_tokens"], 50);
    assert_eq!(
        replayed["request"]["messages"],
        original["request"]["messages"]
    );
    assert_eq!(
        runs_from(&gw, "default-key", "replay").await,
        vec![new_id.clone()]
    );
    assert!(!runs_from(&gw, "default-key", "api").await.contains(&new_id));

    // On a version: the original's own version runs the same input again.
    let version_id = original["version_id"].as_str().unwrap();
    let (status, answer) = post(
        &gw,
        "default-key",
        &replay_path,
        json!({"version_id": version_id}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], "mock-echo");
    assert_eq!(answer["choices"][0]["message"]["content"], "Hello Ann");
    assert_eq!(answer["version_id"], version_id);

    // Bad asks: 4xx in the OpenAI shape, nothing runs.
    for (body, status) in [
        (json!({}), 400),
        (json!({"model": "mock-two", "version_id": version_id}), 400),
        (json!({"model": "no-such-model"}), 400),
        (json!({"model": "x".repeat(5000)}), 400),
        (json!({"model": "mock-two", "temperature": 2}), 400),
        (json!({"version_id": "0".repeat(32)}), 404),
        (json!({"version_id": "../etc"}), 400),
        (json!({"model": "mock-two", "pad": "x".repeat(70_000)}), 413),
    ] {
        let (got, error) = post(&gw, "default-key", &replay_path, body.clone()).await;
        assert_eq!(got, status, "{body}: {error}");
        assert!(error["error"]["message"].is_string(), "{error}");
    }
    let (status, error) = post(
        &gw,
        "default-key",
        &format!("/api/runs/{}/replay", uuid_like()),
        json!({"model": "mock-two"}),
    )
    .await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(runs_from(&gw, "default-key", "replay").await.len(), 2);
}

fn uuid_like() -> &'static str {
    "0190a000-0000-7000-8000-000000000000"
}

fn three_models(stream: bool) -> Value {
    json!({"models": ["mock-echo", "mock-slow", "mock-broken"],
           "messages": user("compare me"), "max_tokens": 20, "stream": stream})
}

#[tokio::test]
async fn the_playground_compares_models_and_one_failing_fails_only_itself() {
    let (_dir, gw) = start();
    let (status, comparison) =
        post(&gw, "default-key", "/api/playground", three_models(false)).await;
    assert_eq!(status, 200, "{comparison}");
    let models = comparison["models"].as_array().unwrap();
    assert_eq!(
        strings_at(&comparison["models"], "model"),
        ["mock-echo", "mock-slow", "mock-broken"]
    );
    for ok in &models[..2] {
        assert_eq!(ok["status"], "success", "{ok}");
        assert_eq!(ok["output"], "compare me");
        assert!(ok["cost_usd"].as_f64().unwrap() > 0.0, "{ok}");
        assert!(ok["usage"]["total_tokens"].as_u64().unwrap() > 0, "{ok}");
        assert!(ok["error"].is_null());
        assert_eq!(
            ok["completion"]["choices"][0]["message"]["content"],
            "compare me"
        );
    }
    assert!(
        models[1]["duration_seconds"].as_f64().unwrap() >= 0.3,
        "{}",
        models[1]
    );
    let broken = &models[2];
    assert_eq!(broken["status"], "error", "{broken}");
    assert!(broken["error"]["message"].is_string(), "{broken}");
    assert!(broken["output"].is_null());
    // mock-slow costs least; mock-echo answers first.
    assert_eq!(comparison["cheapest"], "mock-slow");
    assert_eq!(comparison["fastest"], "mock-echo");
    assert_eq!(models[1]["cheapest"], true);
    assert_eq!(models[0]["fastest"], true);
    assert_eq!(broken["cheapest"], false);

    // Each model's run is recorded as the playground's, the failed one included.
    let recorded = runs_from(&gw, "default-key", "playground").await;
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    for model in models {
        assert!(recorded.contains(&model["run_id"].as_str().unwrap().to_string()));
    }
    let (_, failed) = get_as(
        &gw,
        "default-key",
        &format!("/api/runs/{}", broken["run_id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(failed["status"], "error");
    assert_eq!(failed["source"], "playground");
    assert!(runs_from(&gw, "default-key", "api").await.is_empty());
    assert!(runs_from(&gw, "acme-key", "playground").await.is_empty());
}

#[tokio::test]
async fn the_streamed_playground_labels_each_delta_with_its_model() {
    let (_dir, gw) = start();
    let response = client()
        .post(format!("{}/api/playground", gw.url))
        .bearer_auth("default-key")
        .json(&three_models(true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(&response.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let events: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| json_of(e))
        .collect();

    let mut text = std::collections::HashMap::<String, String>::new();
    let mut errors = Vec::new();
    for event in &events[..events.len() - 1] {
        let model = event["model"].as_str().unwrap().to_string();
        assert!(event["run_id"].is_string(), "{event}");
        match event["type"].as_str().unwrap() {
            "chunk" => {
                assert_eq!(event["chunk"]["object"], "chat.completion.chunk");
                if let Some(delta) = event["chunk"]["choices"][0]["delta"]["content"].as_str() {
                    text.entry(model).or_default().push_str(delta);
                }
            }
            "error" => {
                assert!(event["error"]["message"].is_string(), "{event}");
                errors.push(model);
            }
            other => panic!("unexpected event type {other}: {event}"),
        }
    }
    assert_eq!(
        text.get("mock-echo").map(String::as_str),
        Some("compare me")
    );
    assert_eq!(
        text.get("mock-slow").map(String::as_str),
        Some("compare me")
    );
    assert_eq!(errors, ["mock-broken"]);

    let summary = events.last().unwrap();
    assert_eq!(summary["type"], "summary", "{summary}");
    assert_eq!(
        strings_at(&summary["models"], "model"),
        ["mock-echo", "mock-slow", "mock-broken"]
    );
    assert_eq!(
        strings_at(&summary["models"], "status"),
        ["success", "success", "error"]
    );
    assert_eq!(summary["models"][0]["output"], "compare me");
    assert!(
        summary["models"][1]["usage"]["total_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(summary["cheapest"], "mock-slow");
    assert_eq!(summary["fastest"], "mock-echo");
    assert_eq!(runs_from(&gw, "default-key", "playground").await.len(), 3);
}

#[tokio::test]
async fn the_playground_runs_a_version_on_other_models_with_new_input() {
    let (_dir, gw) = start();
    let (_, _, answer) = chat_as(
        &gw,
        "default-key",
        json!({"model": "shop/mock-echo", "messages": user("Hi {{ name }}"), "input": {"name": "Ann"}}),
    )
    .await;
    let version_id = answer["version_id"].as_str().unwrap();
    let (status, comparison) = post(
        &gw,
        "default-key",
        "/api/playground",
        json!({"models": ["mock-two", "mock-echo"], "agent_id": "shop",
               "version_id": version_id, "input": {"name": "Bob"}}),
    )
    .await;
    assert_eq!(status, 200, "{comparison}");
    assert_eq!(
        strings_at(&comparison["models"], "output"),
        ["Hi Bob", "Hi Bob"]
    );
    // Another tenant has no such version.
    let (status, error) = post(
        &gw,
        "acme-key",
        "/api/playground",
        json!({"models": ["mock-two"], "agent_id": "shop", "version_id": version_id, "input": {"name": "Bob"}}),
    )
    .await;
    assert_eq!(status, 404, "{error}");
}

#[tokio::test]
async fn the_playground_refuses_bad_model_lists_before_running_anything() {
    let (_dir, gw) = start();
    let seven: Vec<String> = (0..7).map(|i| format!("mock-{i}")).collect();
    for (body, says) in [
        (
            json!({"models": seven, "messages": user("x")}),
            "limit of 6",
        ),
        (json!({"models": [], "messages": user("x")}), "at least one"),
        (
            json!({"models": ["mock-echo", "mock-echo"], "messages": user("x")}),
            "twice",
        ),
        (
            json!({"models": ["mock-echo", "no-such-model"], "messages": user("x")}),
            "not a model",
        ),
        (
            json!({"models": ["mock-echo"], "model": "mock-echo", "messages": user("x")}),
            "not `model`",
        ),
        (
            json!({"models": ["mock-echo"], "messages": []}),
            "at least one message",
        ),
        (json!({"models": ["mock-echo"]}), "messages"),
        (
            json!({"models": "mock-echo", "messages": user("x")}),
            "models",
        ),
    ] {
        let (status, error) = post(&gw, "default-key", "/api/playground", body.clone()).await;
        assert_eq!(status, 400, "{body}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{says:?} not in {message:?}");
    }
    let (status, _, _) = send(
        &gw,
        reqwest::Method::POST,
        None,
        "/api/playground",
        Some(three_models(false)),
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert!(runs_from(&gw, "default-key", "playground").await.is_empty());
}
