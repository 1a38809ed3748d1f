//! Claude on Vertex AI through the real binary: one `vertex` provider serves a Gemini model
//! (`generateContent`) and a Claude model (`rawPredict` / `streamRawPredict`, Anthropic's
//! format), against the mock upstream. What reaches Vertex (paths, the Bearer token, the body
//! with `anthropic_version` and without `model`), what the client gets back (text, tool
//! calls, streams, usage and cost), errors, and one OAuth token for both model families.

mod common;

use common::*;
use serde_json::{json, Value};

/// The throwaway RSA key of the test service account.
const TEST_KEY: &str = include_str!("fixtures/gcp-test-key.pem");
const LOCATION: &str = "/v1/projects/flowgate-test/locations/us-east5";
const CLAUDE: &str = "claude-3-7-sonnet@20250219";
const CLAUDE_PRICES: &str = "input_per_mtok = 3.0, output_per_mtok = 15.0, cached_input_per_mtok = 0.30, cache_write_per_mtok = 3.75";
const SUPPORTS: &str = "supports = { structured_output = true, json_mode = true, tools = true, parallel_tools = true, images = true, pdf = true, reasoning = true }";

fn service_account(upstream: &MockUpstream) -> String {
    serde_json::to_string_pretty(&json!({
        "type": "service_account",
        "project_id": "flowgate-test",
        "private_key_id": "0123456789abcdef",
        "private_key": TEST_KEY,
        "client_email": "flowgate@flowgate-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": format!("{}/token", upstream.url()),
    }))
    .unwrap()
}

fn vertex_config(upstream: &MockUpstream) -> String {
    let claude = |suffix: &str| {
        format!(r#"{{ provider = "vertexai", model = "{CLAUDE}{suffix}", {CLAUDE_PRICES} }}"#)
    };
    let backup = r#"{ provider = "backup", model = "gpt-4o-mini", input_per_mtok = 0.15, output_per_mtok = 0.60 }"#;
    let mut config = format!(
        r#"
[providers.vertexai]
type = "vertex"
project = "flowgate-test"
region = "us-east5"
base_url = "{url}"
credentials_json = '''
{key}
'''

[providers.vertexai.breaker]
failure_threshold = 100

[models."vx-gemini"]
providers = [{{ provider = "vertexai", model = "gemini-2.5-pro", input_per_mtok = 1.25, output_per_mtok = 10.0 }}]
{SUPPORTS}
"#,
        url = upstream.url(),
        key = service_account(upstream),
    );
    for (id, providers) in [
        ("vx-claude", vec![claude("")]),
        (
            "vx-claude-cached",
            vec![claude(";cache_read=100;cache_write=40")],
        ),
        (
            "vx-claude-overloaded",
            vec![claude(";status=529"), backup.to_string()],
        ),
        (
            "vx-claude-ratelimited",
            vec![claude(";status=429;retry_after=7")],
        ),
        ("vx-claude-badtoken", vec![claude(";status=401")]),
    ] {
        config.push_str(&format!(
            "\n[models.\"{id}\"]\nproviders = [{}]\n{SUPPORTS}\n",
            providers.join(", ")
        ));
    }
    config
}

struct Setup {
    _dir: tempfile::TempDir,
    upstream: MockUpstream,
    gw: Flowgate,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let upstream = MockUpstream::start();
    let config = base_config(&dir.path().join("data"), Some(&upstream)) + &vertex_config(&upstream);
    let gw = Flowgate::start(dir.path(), &config);
    Setup {
        _dir: dir,
        upstream,
        gw,
    }
}

fn claude_path(method: &str) -> String {
    format!("{LOCATION}/publishers/anthropic/models/{CLAUDE}:{method}")
}

/// The requests that reached Claude's `rawPredict` / `streamRawPredict` routes.
fn claude_requests(upstream: &MockUpstream) -> Vec<flowgate_mock_upstream::RecordedRequest> {
    upstream
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/publishers/anthropic/"))
        .collect()
}

/// The cost at the Claude prices, from the usage the client saw (no cache writes).
fn claude_cost(usage: &Value) -> f64 {
    let prompt = usage["prompt_tokens"].as_f64().unwrap();
    let cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_f64()
        .unwrap_or(0.0);
    let completion = usage["completion_tokens"].as_f64().unwrap();
    ((prompt - cached) * 3.0 + cached * 0.30 + completion * 15.0) / 1e6
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
}

/// The content and the `[DONE]`-less chunks of a stream.
fn stream_chunks(events: &[String]) -> Vec<Value> {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

#[tokio::test]
async fn claude_text_goes_to_raw_predict_with_the_vertex_body() {
    let s = setup();
    let (status, headers, body) = chat(
        &s.gw,
        json!({
            "model": "vx-claude",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello from Vertex"}
            ],
            "temperature": 0.5,
            "stop": ["###"],
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-provider"], "vertexai");
    assert_eq!(headers["x-flowgate-model"], "vx-claude");
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["content"], "Hello from Vertex");
    assert_eq!(choice["finish_reason"], "stop");
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0);
    assert!((body["cost_usd"].as_f64().unwrap() - claude_cost(usage)).abs() < 1e-15);
    assert!(!body.to_string().contains("mock-token"));

    let requests = s.upstream.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/token".to_string(), claude_path("rawPredict")]);
    let sent = &requests[1];
    assert_eq!(sent.method, "POST");
    assert!(
        sent.headers["authorization"].starts_with("Bearer mock-token-"),
        "{:?}",
        sent.headers
    );
    assert!(!sent.headers.contains_key("x-api-key"));
    assert!(!sent.headers.contains_key("anthropic-version"));
    assert_eq!(
        sent.body,
        json!({
            "anthropic_version": "vertex-2023-10-16",
            "max_tokens": 8192,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello from Vertex"}]}],
            "temperature": 0.5,
            "stop_sequences": ["###"]
        })
    );
}

#[tokio::test]
async fn claude_tool_calls_come_back_plain_and_streamed() {
    let s = setup();
    let (status, _, body) = chat(
        &s.gw,
        json!({
            "model": "vx-claude-cached",
            "messages": user("Weather in Paris?"),
            "tools": [weather_tool()],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_completion_tokens": 200
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("toolu_"), "{call}");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{args}");
    // Cache reads and writes are priced as on Anthropic's own API.
    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 100);
    let input = usage["prompt_tokens"].as_f64().unwrap() - 140.0;
    let completion = usage["completion_tokens"].as_f64().unwrap();
    let expected = (input * 3.0 + 100.0 * 0.30 + 40.0 * 3.75 + completion * 15.0) / 1e6;
    assert!((body["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-15);

    let sent = &claude_requests(&s.upstream)[0];
    assert_eq!(
        sent.path,
        format!("{LOCATION}/publishers/anthropic/models/{CLAUDE};cache_read=100;cache_write=40:rawPredict")
    );
    assert_eq!(
        sent.body["tool_choice"],
        json!({"type": "tool", "name": "get_weather"})
    );
    assert_eq!(sent.body["tools"][0]["name"], "get_weather");
    assert_eq!(sent.body["max_tokens"], 200);
    assert!(sent.body.get("model").is_none());

    // Streamed: id and name first, then the argument fragments.
    let (status, _, events) = chat_stream(
        &s.gw,
        json!({"model": "vx-claude", "stream": true, "messages": user("Weather in Paris and Rome?"),
            "tools": [weather_tool(), {"type": "function", "function": {"name": "now"}}],
            "tool_choice": "required"}),
    )
    .await;
    assert_eq!(status, 200);
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finish = None;
    for chunk in stream_chunks(&events) {
        if let Some(reason) = chunk["choices"][0]["finish_reason"].as_str() {
            finish = Some(reason.to_string());
        }
        for call in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = call["index"].as_u64().unwrap() as usize;
            if let Some(name) = call["function"]["name"].as_str() {
                assert_eq!(index, calls.len());
                let id = call["id"].as_str().unwrap().to_string();
                calls.push((id, name.to_string(), String::new()));
            }
            calls[index]
                .2
                .push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].0.starts_with("toolu_"));
    assert_eq!(calls[0].1, "get_weather");
    assert!(serde_json::from_str::<Value>(&calls[0].2).unwrap()["city"].is_string());
    assert_eq!((calls[1].1.as_str(), calls[1].2.as_str()), ("now", "{}"));
    let sent = claude_requests(&s.upstream).pop().unwrap();
    assert_eq!(sent.path, claude_path("streamRawPredict"));
    assert_eq!(sent.body["tool_choice"], json!({"type": "any"}));
}

#[tokio::test]
async fn claude_streams_through_stream_raw_predict() {
    let s = setup();
    let text = "The quick brown fox jumps over the lazy dog";
    let (status, headers, events) = chat_stream(
        &s.gw,
        json!({"model": "vx-claude", "stream": true, "messages": user(text)}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["x-flowgate-provider"], "vertexai");
    let chunks = stream_chunks(&events);
    assert!(chunks.len() > 3, "content arrives in several chunks");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, text);
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let usage = &last["usage"];
    assert_eq!(usage["completion_tokens"], 11);
    assert!((last["cost_usd"].as_f64().unwrap() - claude_cost(usage)).abs() < 1e-15);

    let sent = &claude_requests(&s.upstream)[0];
    assert_eq!(sent.path, claude_path("streamRawPredict"));
    assert!(sent.headers["authorization"].starts_with("Bearer mock-token-"));
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.body["anthropic_version"], "vertex-2023-10-16");
    assert!(sent.body.get("model").is_none());
}

#[tokio::test]
async fn one_token_serves_gemini_and_claude() {
    let s = setup();
    // Concurrent first requests of both families: one token exchange between them all.
    let first = (0..6).map(|i| {
        let model = if i % 2 == 0 { "vx-gemini" } else { "vx-claude" };
        chat(
            &s.gw,
            json!({"model": model, "messages": user(&format!("question {i}"))}),
        )
    });
    for (i, (status, headers, body)) in futures::future::join_all(first)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-flowgate-provider"], "vertexai");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            format!("question {i}")
        );
    }
    for model in ["vx-gemini", "vx-claude"] {
        let (status, _, events) = chat_stream(
            &s.gw,
            json!({"model": model, "stream": true, "messages": user("streamed question")}),
        )
        .await;
        assert_eq!(status, 200);
        let content: String = stream_chunks(&events)
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(String::from)
            })
            .collect();
        assert_eq!(content, "streamed question", "{model}");
    }

    let requests = s.upstream.requests();
    let tokens = requests.iter().filter(|r| r.path == "/token").count();
    assert_eq!(tokens, 1, "one token for both families");
    let calls: Vec<_> = requests.iter().filter(|r| r.path != "/token").collect();
    assert_eq!(calls.len(), 8);
    let gemini = format!("{LOCATION}/publishers/google/models/gemini-2.5-pro");
    let count = |path: &str| calls.iter().filter(|r| r.path == path).count();
    assert_eq!(count(&format!("{gemini}:generateContent")), 3);
    assert_eq!(count(&format!("{gemini}:streamGenerateContent")), 1);
    assert_eq!(count(&claude_path("rawPredict")), 3);
    assert_eq!(count(&claude_path("streamRawPredict")), 1);
    let bearer = &calls[0].headers["authorization"];
    assert!(bearer.starts_with("Bearer mock-token-"), "{bearer}");
    assert!(calls.iter().all(|r| &r.headers["authorization"] == bearer));
}

#[tokio::test]
async fn claude_errors_map_fall_back_and_drop_a_rejected_token() {
    let s = setup();
    // Overloaded: the next provider answers.
    let (status, headers, body) = chat(
        &s.gw,
        json!({"model": "vx-claude-overloaded", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-provider"], "backup");
    let run_id = headers["x-flowgate-run-id"].to_str().unwrap();
    let (_, run) = get_json(&s.gw, &format!("/api/runs/{run_id}")).await;
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["provider"], "vertexai", "{run}");
    assert_eq!(attempts[0]["status"], 529);
    assert_eq!(attempts[0]["error"], "overloaded");

    let (status, headers, body) = chat(
        &s.gw,
        json!({"model": "vx-claude-ratelimited", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(headers["retry-after"], "7");

    // A rejected token is an auth error without the token, and is not used again.
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "vx-claude-badtoken", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_auth");
    assert!(!body.to_string().contains("mock-token"), "{body}");
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "vx-gemini", "messages": user("again")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let requests = s.upstream.requests();
    assert_eq!(requests.iter().filter(|r| r.path == "/token").count(), 2);
    let bearers: Vec<&str> = requests
        .iter()
        .filter(|r| r.path.starts_with("/v1/"))
        .map(|r| r.headers["authorization"].as_str())
        .collect();
    let (last, earlier) = bearers.split_last().unwrap();
    assert!(earlier.iter().all(|b| b != last), "{bearers:?}");
}
