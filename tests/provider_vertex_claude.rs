//! Claude on Vertex AI through the real binary: one `vertex` provider serves a Gemini model
//! (`generateContent`) and a Claude model (`rawPredict` / `streamRawPredict`, Anthropic's
//! format), against the mock upstream. What reaches Vertex (paths, the Bearer token, the body
//! with `anthropic_version` and without `model`), what the client gets back (text, tool
//! calls, streams, usage and cost), errors, and one OAuth token for both model families.

mod common;

use common::*;
use serde_json::json;

const LOCATION: &str = "/v1/projects/flowgate-test/locations/us-east5";
const CLAUDE: &str = "claude-3-7-sonnet@20250219";
const SUPPORTS: &str = "supports = { structured_output = true, json_mode = true, tools = true, parallel_tools = true, images = true, pdf = true, reasoning = true }";

fn vertex_config(upstream: &MockUpstream) -> String {
    let provider = format!(
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
"#,
        url = upstream.url(),
        key = service_account(upstream),
    );
    let gemini = offer("vertexai", "gemini-2.5-pro", 1.25, 10.0);
    let cases = [
        ("vx-claude", "", false),
        ("vx-claude-cached", ";cache_read=100;cache_write=40", false),
        ("vx-claude-overloaded", ";status=529", true),
        ("vx-claude-ratelimited", ";status=429;retry_after=7", false),
        ("vx-claude-badtoken", ";status=401", false),
    ];
    provider
        + &model_table("vx-gemini", &[gemini], SUPPORTS)
        + &claude_models("vertexai", CLAUDE, &cases, SUPPORTS)
}

fn setup() -> Setup {
    Setup::with_models(vertex_config)
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
    assert_cost(&body, CLAUDE_PRICES.cost(usage, 0.0));
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
    let body = assert_claude_forced_tool_call(&s.gw, "vx-claude-cached").await;
    // Cache reads and writes are priced as on Anthropic's own API.
    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 100);
    assert_cost(&body, CLAUDE_PRICES.cost(usage, 40.0));

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
    assert_claude_streams_two_tool_calls(&s.gw, "vx-claude").await;
    let sent = claude_requests(&s.upstream).pop().unwrap();
    assert_eq!(sent.path, claude_path("streamRawPredict"));
    assert_eq!(sent.body["tool_choice"], json!({"type": "any"}));
}

#[tokio::test]
async fn claude_streams_through_stream_raw_predict() {
    let s = setup();
    let text = "The quick brown fox jumps over the lazy dog";
    let (_, chunks) = stream_text(&s.gw, json!({"model": "vx-claude"}), text, "vertexai").await;
    assert!(finish_reasons(&chunks).iter().any(|f| f == "stop"));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let usage = &last["usage"];
    assert_eq!(usage["completion_tokens"], 11);
    assert_cost(last, CLAUDE_PRICES.cost(usage, 0.0));

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
        let events = stream_from(&s.gw, model, "streamed question", "vertexai").await;
        let content = streamed_content(&stream_chunks(&events));
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
    answered_by_backup(&s.gw, "vx-claude-overloaded", "vertexai", 529, "overloaded").await;

    assert_rate_limited(&s.gw, "vx-claude-ratelimited", "7").await;

    // A rejected token is an auth error without the token, and is not used again.
    let (status, _, body) = ask(&s.gw, "vx-claude-badtoken", "hi").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_auth");
    assert!(!body.to_string().contains("mock-token"), "{body}");
    let (status, _, body) = ask(&s.gw, "vx-gemini", "again").await;
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
