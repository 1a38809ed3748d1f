//! The `anthropic` adapter through the real binary, against the mock upstream's Messages API:
//! what reaches Anthropic (headers, translated body) and what the OpenAI-shaped client gets
//! back (content, tool calls, finish reasons, usage and cost), streaming, and errors.

mod common;

use common::*;
use serde_json::{json, Value};

const SUPPORTS: &str = "supports = { structured_output = true, json_mode = true, tools = true, parallel_tools = true, images = true, pdf = true, audio = true, reasoning = true }";

fn claude_config(upstream: &MockUpstream) -> String {
    let provider = format!(
        r#"
[providers.claude]
type = "anthropic"
base_url = "{}"
api_key = "anthropic-secret"

[providers.claude.breaker]
failure_threshold = 100
"#,
        upstream.url()
    );
    let cases = [
        ("claude-test", "", false),
        ("claude-cached", ";cache_read=100;cache_write=40", false),
        ("claude-overloaded", ";status=529", true),
        (
            "claude-overloaded-alone",
            ";status=529;retry_after=3",
            false,
        ),
        ("claude-ratelimited", ";status=429;retry_after=7", false),
        ("claude-badrequest", ";status=400", true),
        ("claude-too-long", ";prompt_too_long", true),
        ("claude-badkey", ";status=401", false),
        ("claude-cut-early", ";cut_after=0", true),
        (
            "claude-stream-error",
            ";stream_error=2;chunk_chars=4",
            false,
        ),
    ];
    provider + &claude_models("claude", "claude-sonnet-4-5", &cases, SUPPORTS)
}

fn setup() -> Setup {
    Setup::with_models(claude_config)
}

#[tokio::test]
async fn conversation_with_media_and_tool_results_is_translated() {
    let s = setup();
    let (status, headers, body) = chat(
        &s.gw,
        json!({
            "model": "support/claude-test",
            "messages": [
                {"role": "system", "content": "You are a support agent."},
                {"role": "developer", "content": "Answer in English."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/receipt.jpg"}},
                    {"type": "file", "file": {"filename": "invoice.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQ="}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_02", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_01", "content": "sunny"},
                {"role": "tool", "tool_call_id": "toolu_02", "content": "rainy"},
                {"role": "user", "content": "Thanks, now summarise."}
            ],
            "tools": [weather_tool()],
            "tool_choice": "auto",
            "parallel_tool_calls": false,
            "temperature": 1.5,
            "stop": ["###"],
            "user": "customer-7",
            "seed": 42,
            "metadata": {"ticket": "T-1"}
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-provider"], "claude");
    assert_eq!(headers["x-flowgate-model"], "claude-test");
    assert_eq!(body["object"], "chat.completion");
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "Thanks, now summarise.");
    assert_eq!(choice["finish_reason"], "stop");
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert!(
        usage["prompt_tokens_details"]["cached_tokens"].is_number(),
        "{usage}"
    );
    assert_cost(&body, CLAUDE_PRICES.cost(usage, 0.0));
    assert!(!body.to_string().contains("anthropic-secret"));

    let requests = s.upstream.requests();
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.headers["x-api-key"], "anthropic-secret");
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert!(!sent.headers.contains_key("authorization"));
    assert_eq!(
        sent.body,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 8192,
            "system": "You are a support agent.\n\nAnswer in English.",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/receipt.jpg"}},
                    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQ="}, "title": "invoice.pdf"}
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"city": "Rome"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_02", "content": [{"type": "text", "text": "rainy"}]},
                    {"type": "text", "text": "Thanks, now summarise."}
                ]}
            ],
            "tools": [{"name": "get_weather", "description": "Weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
            "temperature": 1.0,
            "stop_sequences": ["###"],
            "metadata": {"user_id": "customer-7"}
        })
    );
}

#[tokio::test]
async fn tool_calls_come_back_and_cache_tokens_are_priced() {
    let s = setup();
    let body = assert_claude_forced_tool_call(&s.gw, "claude-cached").await;

    let sent = &s.upstream.requests()[0].body;
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "get_weather"})
    );
    assert_eq!(sent["max_tokens"], 200);
    assert_eq!(
        sent["model"],
        "claude-sonnet-4-5;cache_read=100;cache_write=40"
    );

    // input_tokens + 100 read + 40 written; the reads are the cached tokens.
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 140, "{usage}");
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 100);
    assert_cost(&body, CLAUDE_PRICES.cost(usage, 40.0));
}

#[tokio::test]
async fn structured_outputs_and_json_mode() {
    let s = setup();
    let schema = user_schema();
    let (status, _, body) = chat(
        &s.gw,
        json!({
            "model": "claude-test",
            "messages": [{"role": "user", "content": "Jason is 25"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "UserDetail", "schema": schema, "strict": true}}
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert!(choice["message"].get("tool_calls").is_none(), "{choice}");
    let content: Value =
        serde_json::from_str(choice["message"]["content"].as_str().unwrap()).unwrap();
    assert!(
        content["name"].is_string() && content["age"].is_i64(),
        "{content}"
    );
    let sent = &s.upstream.requests()[0].body;
    assert_eq!(sent["tools"][0]["name"], "UserDetail");
    assert_eq!(sent["tools"][0]["input_schema"], schema);
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "UserDetail"})
    );

    // Streamed, the answer tool's input arrives as content.
    let (_, chunks) = stream_ok(
        &s.gw,
        json!({
            "model": "claude-test",
            "messages": [{"role": "user", "content": "Jason is 25"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "UserDetail", "schema": schema}}
        }),
    )
    .await;
    let content: Value = serde_json::from_str(&streamed_content(&chunks)).unwrap();
    assert!(content["age"].is_i64(), "{content}");
    assert!(chunks
        .iter()
        .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()));
    assert!(finish_reasons(&chunks).iter().any(|f| f == "stop"));

    let (status, _, _) = chat(
        &s.gw,
        // JSON mode answers are validated as JSON: the mock echoes this user message, which is.
        json!({"model": "claude-test", "messages": [{"role": "system", "content": "Extract."},
            {"role": "user", "content": "{\"name\": \"Jason\", \"age\": 25}"}], "response_format": {"type": "json_object"}}),
    )
    .await;
    assert_eq!(status, 200);
    let sent = &s.upstream.requests()[2].body;
    let system = sent["system"].as_str().unwrap();
    assert!(system.starts_with("Extract.\n\n"), "{system}");
    assert!(system.contains("single valid JSON object"), "{system}");
}

#[tokio::test]
async fn reasoning_effort_turns_on_thinking_without_showing_it() {
    let s = setup();
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "claude-test-medium", "temperature": 0.3,
            "messages": [{"role": "user", "content": "Why is the sky blue?"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Why is the sky blue?"
    );
    let usage = &body["usage"];
    assert!(
        usage["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        usage["completion_tokens"].as_u64().unwrap()
            > usage["completion_tokens_details"]["reasoning_tokens"]
                .as_u64()
                .unwrap()
    );
    let sent = &s.upstream.requests()[0].body;
    assert_eq!(
        sent["thinking"],
        json!({"type": "enabled", "budget_tokens": 4096})
    );
    assert_eq!(sent["max_tokens"], 8192 + 4096);
    assert!(sent.get("temperature").is_none());

    // The request field works too, and streaming hides the thinking as well.
    let (_, chunks) = stream_ok(
        &s.gw,
        json!({"model": "claude-test", "reasoning_effort": "low", "max_tokens": 500,
            "messages": [{"role": "user", "content": "Hello"}]}),
    )
    .await;
    assert_eq!(streamed_content(&chunks), "Hello");
    let sent = &s.upstream.requests()[1].body;
    assert_eq!(sent["thinking"]["budget_tokens"], 1024);
    assert_eq!(sent["max_tokens"], 1524);
}

#[tokio::test]
async fn streaming_text_and_tool_calls() {
    let s = setup();
    let text = "The quick brown fox jumps over the lazy dog";
    let (headers, chunks) =
        stream_text(&s.gw, json!({"model": "claude-cached"}), text, "claude").await;
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(finish_reasons(&chunks).iter().any(|f| f == "stop"));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let usage = &last["usage"];
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 100);
    assert_eq!(usage["completion_tokens"], 11);
    assert_cost(last, CLAUDE_PRICES.cost(usage, 40.0));
    assert_eq!(s.upstream.requests()[0].body["stream"], true);

    // The run holds the whole streamed answer.
    let run = run_of(&s.gw, &headers).await;
    assert_eq!(run["output"]["choices"][0]["message"]["content"], text);

    // Tool calls: id and name first, then argument fragments.
    assert_claude_streams_two_tool_calls(&s.gw, "claude-test").await;
}

#[tokio::test]
async fn overload_falls_back_or_is_a_503() {
    let s = setup();
    answered_by_backup(&s.gw, "claude-overloaded", "claude", 529, "overloaded").await;

    // Streaming: the failure happens before any content, so the client never sees it.
    stream_from(&s.gw, "claude-overloaded", "hello there", "backup").await;

    let (status, headers, body) = ask(&s.gw, "claude-overloaded-alone", "hi").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "overloaded");
    assert_eq!(headers["retry-after"], "3");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Overloaded"));
}

#[tokio::test]
async fn rate_limits_bad_requests_and_bad_keys() {
    let s = setup();
    assert_rate_limited(&s.gw, "claude-ratelimited", "7").await;

    // A 400 is the client's fault: no fallback, Anthropic's message passed on.
    let body = assert_bad_request(&s.gw, "claude-badrequest").await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Scripted error 400"));

    // A prompt too long for the window tries the next provider.
    let (status, headers, body) = ask(&s.gw, "claude-too-long", "hi").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-provider"], "backup");
    let run = run_of(&s.gw, &headers).await;
    assert_eq!(run["attempts"][0]["error"], "context_length_exceeded");

    // A rejected key: a gateway error that never shows the key.
    let (status, _, body) = ask(&s.gw, "claude-badkey", "hi").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_auth");
    assert!(!body.to_string().contains("anthropic-secret"));
}

#[tokio::test]
async fn stream_faults_fall_back_early_and_end_with_an_error_late() {
    let s = setup();
    stream_from(&s.gw, "claude-cut-early", "abcdefghijkl", "backup").await;

    let (_, chunks, last) =
        stream_cut(&s.gw, "claude-stream-error", "abcdefghijkl", "claude").await;
    assert_eq!(last["error"]["code"], "overloaded", "{last}");
    assert_eq!(streamed_content(&chunks), "abcdefgh");
}

#[tokio::test]
async fn what_anthropic_cannot_take_is_refused_before_calling_it() {
    let s = setup();
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "claude-test", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Transcribe"},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_by_model");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("audio"),
        "{body}"
    );
    assert_eq!(body["error"]["param"], "messages[0].content[1]");

    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "claude-test", "n": 2, "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_by_model");

    // A plain-http image on a private address is refused by the media guard.
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "claude-test", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": format!("{}/cat.png", s.upstream.url())}}]}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "media_url_refused");
    assert!(
        s.upstream.requests().is_empty(),
        "nothing reached Anthropic"
    );
}
