//! The `anthropic` adapter through the real binary, against the mock upstream's Messages API:
//! what reaches Anthropic (headers, translated body) and what the OpenAI-shaped client gets
//! back (content, tool calls, finish reasons, usage and cost), streaming, and errors.

mod common;

use common::*;
use serde_json::{json, Value};

const PRICES: &str = "input_per_mtok = 3.0, output_per_mtok = 15.0, cached_input_per_mtok = 0.30, cache_write_per_mtok = 3.75";
const SUPPORTS: &str = "supports = { structured_output = true, json_mode = true, tools = true, parallel_tools = true, images = true, pdf = true, audio = true, reasoning = true }";

fn claude_config(upstream: &MockUpstream) -> String {
    let offer = |model: &str| format!(r#"{{ provider = "claude", model = "{model}", {PRICES} }}"#);
    let backup = r#"{ provider = "backup", model = "gpt-4o-mini", input_per_mtok = 0.15, output_per_mtok = 0.60 }"#;
    let model = |id: &str, providers: Vec<String>| {
        format!(
            "\n[models.\"{id}\"]\nproviders = [{}]\n{SUPPORTS}\n",
            providers.join(", ")
        )
    };
    let mut config = format!(
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
    for (id, providers) in [
        ("claude-test", vec![offer("claude-sonnet-4-5")]),
        (
            "claude-cached",
            vec![offer("claude-sonnet-4-5;cache_read=100;cache_write=40")],
        ),
        (
            "claude-overloaded",
            vec![offer("claude-sonnet-4-5;status=529"), backup.to_string()],
        ),
        (
            "claude-overloaded-alone",
            vec![offer("claude-sonnet-4-5;status=529;retry_after=3")],
        ),
        (
            "claude-ratelimited",
            vec![offer("claude-sonnet-4-5;status=429;retry_after=7")],
        ),
        (
            "claude-badrequest",
            vec![offer("claude-sonnet-4-5;status=400"), backup.to_string()],
        ),
        (
            "claude-too-long",
            vec![
                offer("claude-sonnet-4-5;prompt_too_long"),
                backup.to_string(),
            ],
        ),
        ("claude-badkey", vec![offer("claude-sonnet-4-5;status=401")]),
        (
            "claude-cut-early",
            vec![offer("claude-sonnet-4-5;cut_after=0"), backup.to_string()],
        ),
        (
            "claude-stream-error",
            vec![offer("claude-sonnet-4-5;stream_error=2;chunk_chars=4")],
        ),
    ] {
        config.push_str(&model(id, providers));
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
    let config = base_config(&dir.path().join("data"), Some(&upstream)) + &claude_config(&upstream);
    let gw = Flowgate::start(dir.path(), &config);
    Setup {
        _dir: dir,
        upstream,
        gw,
    }
}

/// The cost at the claude prices, from the usage the client saw.
fn claude_cost(usage: &Value) -> f64 {
    let prompt = usage["prompt_tokens"].as_f64().unwrap();
    let cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_f64()
        .unwrap();
    let completion = usage["completion_tokens"].as_f64().unwrap();
    ((prompt - cached) * 3.0 + cached * 0.30 + completion * 15.0) / 1e6
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
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
    assert!((body["cost_usd"].as_f64().unwrap() - claude_cost(usage)).abs() < 1e-15);
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
    let (status, _, body) = chat(
        &s.gw,
        json!({
            "model": "claude-cached",
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
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
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string());

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
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    let input = prompt - 140;
    assert!(input >= 1);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 100);
    let completion = usage["completion_tokens"].as_f64().unwrap();
    let expected = (input as f64 * 3.0 + 100.0 * 0.30 + 40.0 * 3.75 + completion * 15.0) / 1e6;
    assert!(
        (body["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-15,
        "{} != {expected}",
        body["cost_usd"]
    );
}

#[tokio::test]
async fn structured_outputs_and_json_mode() {
    let s = setup();
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"], "additionalProperties": false});
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
    let (status, _, events) = chat_stream(
        &s.gw,
        json!({
            "model": "claude-test",
            "stream": true,
            "messages": [{"role": "user", "content": "Jason is 25"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "UserDetail", "schema": schema}}
        }),
    )
    .await;
    assert_eq!(status, 200);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let content: Value = serde_json::from_str(&streamed).unwrap();
    assert!(content["age"].is_i64(), "{content}");
    assert!(chunks
        .iter()
        .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()));
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));

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
    let (status, _, events) = chat_stream(
        &s.gw,
        json!({"model": "claude-test", "stream": true, "reasoning_effort": "low", "max_tokens": 500,
            "messages": [{"role": "user", "content": "Hello"}]}),
    )
    .await;
    assert_eq!(status, 200);
    let content: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(content, "Hello");
    let sent = &s.upstream.requests()[1].body;
    assert_eq!(sent["thinking"]["budget_tokens"], 1024);
    assert_eq!(sent["max_tokens"], 1524);
}

#[tokio::test]
async fn streaming_text_and_tool_calls() {
    let s = setup();
    let text = "The quick brown fox jumps over the lazy dog";
    let (status, headers, events) = chat_stream(
        &s.gw,
        json!({"model": "claude-cached", "stream": true, "messages": user(text)}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["x-flowgate-provider"], "claude");
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.len() > 3, "content arrives in several chunks");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, text);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let usage = &last["usage"];
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 100);
    assert_eq!(usage["completion_tokens"], 11);
    let input = usage["prompt_tokens"].as_f64().unwrap() - 140.0;
    let expected = (input * 3.0 + 100.0 * 0.30 + 40.0 * 3.75 + 11.0 * 15.0) / 1e6;
    assert!((last["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-15);
    assert_eq!(s.upstream.requests()[0].body["stream"], true);

    // The run holds the whole streamed answer.
    let run_id = headers["x-flowgate-run-id"].to_str().unwrap();
    let (status, run) = get_json(&s.gw, &format!("/api/runs/{run_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(run["output"]["choices"][0]["message"]["content"], text);

    // Tool calls: id and name first, then argument fragments.
    let (status, _, events) = chat_stream(
        &s.gw,
        json!({"model": "claude-test", "stream": true, "messages": user("Weather in Paris and Rome?"),
            "tools": [weather_tool(), {"type": "function", "function": {"name": "now"}}],
            "tool_choice": "required"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finish = None;
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(e).unwrap();
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
                calls.push((
                    call["id"].as_str().unwrap().to_string(),
                    name.to_string(),
                    String::new(),
                ));
            }
            calls[index]
                .2
                .push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    assert_eq!(calls.len(), 2);
    assert!(calls[0].0.starts_with("toolu_"));
    assert_eq!(calls[0].1, "get_weather");
    assert!(serde_json::from_str::<Value>(&calls[0].2).unwrap()["city"].is_string());
    assert_eq!(calls[1].1, "now");
    assert_eq!(calls[1].2, "{}");
}

#[tokio::test]
async fn overload_falls_back_or_is_a_503() {
    let s = setup();
    let (status, headers, body) = chat(
        &s.gw,
        json!({"model": "claude-overloaded", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-provider"], "backup");
    assert_eq!(body["choices"][0]["message"]["content"], "hi");
    let run_id = headers["x-flowgate-run-id"].to_str().unwrap();
    let (_, run) = get_json(&s.gw, &format!("/api/runs/{run_id}")).await;
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{run}");
    assert_eq!(attempts[0]["provider"], "claude");
    assert_eq!(attempts[0]["status"], 529);
    assert_eq!(attempts[0]["error"], "overloaded");
    assert_eq!(attempts[1]["provider"], "backup");

    // Streaming: the failure happens before any content, so the client never sees it.
    let (status, headers, events) = chat_stream(
        &s.gw,
        json!({"model": "claude-overloaded", "stream": true, "messages": user("hello there")}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-flowgate-provider"], "backup");
    assert_eq!(events.last().unwrap(), "[DONE]");

    let (status, headers, body) = chat(
        &s.gw,
        json!({"model": "claude-overloaded-alone", "messages": user("hi")}),
    )
    .await;
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
    let (status, headers, body) = chat(
        &s.gw,
        json!({"model": "claude-ratelimited", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(headers["retry-after"], "7");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["details"]["attempts"][0]["status"], 429);

    // A 400 is the client's fault: no fallback, Anthropic's message passed on.
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "claude-badrequest", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "upstream_bad_request");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Scripted error 400"));
    assert_eq!(
        body["error"]["details"]["attempts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A prompt too long for the window tries the next provider.
    let (status, headers, body) = chat(
        &s.gw,
        json!({"model": "claude-too-long", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-provider"], "backup");
    let run_id = headers["x-flowgate-run-id"].to_str().unwrap();
    let (_, run) = get_json(&s.gw, &format!("/api/runs/{run_id}")).await;
    assert_eq!(run["attempts"][0]["error"], "context_length_exceeded");

    // A rejected key: a gateway error that never shows the key.
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "claude-badkey", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_auth");
    assert!(!body.to_string().contains("anthropic-secret"));
}

#[tokio::test]
async fn stream_faults_fall_back_early_and_end_with_an_error_late() {
    let s = setup();
    let (status, headers, events) = chat_stream(
        &s.gw,
        json!({"model": "claude-cut-early", "stream": true, "messages": user("abcdefghijkl")}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-flowgate-provider"], "backup");
    assert_eq!(events.last().unwrap(), "[DONE]");

    let (status, headers, events) = chat_stream(
        &s.gw,
        json!({"model": "claude-stream-error", "stream": true, "messages": user("abcdefghijkl")}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-flowgate-provider"], "claude");
    assert!(!events.contains(&"[DONE]".to_string()));
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "overloaded", "{last}");
    let content: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(content, "abcdefgh");
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
