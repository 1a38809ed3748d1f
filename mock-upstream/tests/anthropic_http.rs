//! The Anthropic Messages route (`POST /v1/messages`) over real HTTP: its exact wire format,
//! its validation and its scripted faults.

use std::time::{Duration, Instant};

use flowgate_mock_upstream::MockUpstream;
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn messages_url(mock: &MockUpstream) -> String {
    format!("{}/v1/messages", mock.url())
}

async fn post(mock: &MockUpstream, body: Value) -> reqwest::Response {
    client()
        .post(messages_url(mock))
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn message(model: &str, text: &str) -> Value {
    json!({
        "model": model,
        "max_tokens": 256,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": text}]
    })
}

fn weather_tool() -> Value {
    json!({
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city", "days"]
        }
    })
}

/// Reads a body chunk by chunk until it ends or fails; returns the text and whether it failed.
async fn read_all(mut response: reqwest::Response) -> (String, bool) {
    let mut out = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk),
            Ok(None) => return (String::from_utf8(out).unwrap(), false),
            Err(_) => return (String::from_utf8(out).unwrap(), true),
        }
    }
}

/// Splits an SSE body into `(event, data)` pairs, checking that each `event:` line names the
/// `type` of its data.
fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (event, data) = e
                .split_once('\n')
                .unwrap_or_else(|| panic!("bad event {e:?}"));
            let event = event
                .strip_prefix("event: ")
                .expect("event line")
                .to_string();
            let data: Value =
                serde_json::from_str(data.strip_prefix("data: ").expect("data line")).unwrap();
            assert_eq!(data["type"], event.as_str(), "{e}");
            (event, data)
        })
        .collect()
}

async fn stream(mock: &MockUpstream, mut body: Value) -> (Vec<(String, Value)>, bool) {
    body["stream"] = json!(true);
    let response = post(mock, body).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (raw, failed) = read_all(response).await;
    (sse_events(&raw), failed)
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(e, _)| e.as_str()).collect()
}

#[tokio::test]
async fn echo_message_has_the_anthropic_shape() {
    let mock = MockUpstream::start();
    let response = post(&mock, message("claude-sonnet-4-5", "Hello there, mock!")).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    let v: Value = response.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    // "You are terse." + "Hello there, mock!" = 32 chars → 8 tokens; 18 chars → 5.
    assert_eq!(
        v,
        json!({
            "id": v["id"],
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "Hello there, mock!"}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {
                "input_tokens": 8,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 5,
                "service_tier": "standard"
            }
        })
    );
    let recorded = &mock.requests()[0];
    assert_eq!(recorded.path, "/v1/messages");
    assert_eq!(recorded.headers["x-api-key"], "sk-ant-test");
}

#[tokio::test]
async fn headers_and_required_fields_are_checked() {
    let mock = MockUpstream::start();
    let body = message("claude", "hi");

    let r = client()
        .post(messages_url(&mock))
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert!(v["request_id"].as_str().unwrap().starts_with("req_"));

    let r = client()
        .post(messages_url(&mock))
        .header("x-api-key", "k")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("anthropic-version"));

    let invalid = |mutate: &dyn Fn(&mut Value), expected: &'static str| {
        let mut body = message("claude", "hi");
        mutate(&mut body);
        let mock = &mock;
        async move {
            let r = post(mock, body).await;
            assert_eq!(r.status(), 400, "{expected}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["type"], "invalid_request_error");
            let message = v["error"]["message"].as_str().unwrap().to_string();
            assert!(
                message.contains(expected),
                "{message} should say {expected}"
            );
        }
    };
    invalid(
        &|b| {
            b.as_object_mut().unwrap().remove("max_tokens");
        },
        "max_tokens: Field required",
    )
    .await;
    invalid(
        &|b| {
            b.as_object_mut().unwrap().remove("messages");
        },
        "messages: Field required",
    )
    .await;
    invalid(&|b| b["messages"] = json!([]), "at least one message").await;
    invalid(
        &|b| b["messages"] = json!([{"role": "system", "content": "x"}]),
        "messages.0.role",
    )
    .await;
    invalid(
        &|b| b["messages"] = json!([{"role": "user", "content": [{"type": "text", "text": " "}]}]),
        "non-whitespace",
    )
    .await;
    invalid(&|b| b["temperature"] = json!(1.5), "temperature").await;
    invalid(
        &|b| b["tools"] = json!([{"name": "f", "input_schema": {"type": "array"}}]),
        "input_schema",
    )
    .await;
    invalid(
        &|b| {
            b["messages"] = json!([
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "r"}]}
            ])
        },
        "unexpected `tool_use_id`",
    )
    .await;
    // Thinking rules.
    invalid(
        &|b| b["thinking"] = json!({"type": "enabled", "budget_tokens": 100}),
        "budget_tokens",
    )
    .await;
    invalid(
        &|b| b["thinking"] = json!({"type": "enabled", "budget_tokens": 1024}),
        "must be greater than `thinking.budget_tokens`",
    )
    .await;
    invalid(
        &|b| {
            b["max_tokens"] = json!(2000);
            b["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
            b["temperature"] = json!(0.5);
        },
        "temperature",
    )
    .await;
    invalid(
        &|b| {
            b["max_tokens"] = json!(2000);
            b["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
            b["tools"] = json!([weather_tool()]);
            b["tool_choice"] = json!({"type": "any"});
        },
        "tool_choice forces tool use",
    )
    .await;
    assert!(mock.requests().iter().all(|r| r.path == "/v1/messages"));
}

#[tokio::test]
async fn tool_results_rich_content_and_system_blocks_are_accepted() {
    let mock = MockUpstream::start();
    let body = json!({
        "model": "claude",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "days": 1}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                {"type": "text", "text": "Summarise"}
            ]}
        ],
        "tools": [weather_tool()]
    });
    let r = post(&mock, body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], "Summarise");
    assert_eq!(v["stop_reason"], "end_turn");
}

#[tokio::test]
async fn streaming_has_the_exact_event_sequence() {
    let mock = MockUpstream::start();
    let text = "The quick brown fox jumps over the lazy dog";
    let (events, failed) = stream(&mock, message("claude-haiku-4-5;chunk_delay_ms=1", text)).await;
    assert!(!failed);
    let deltas = events.len() - 6;
    assert!(deltas > 3, "the text is split into several deltas");
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", deltas));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names(&events), expected);

    let start = &events[0].1["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(start["type"], "message");
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["model"], "claude-haiku-4-5");
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["stop_reason"], Value::Null);
    assert_eq!(start["usage"]["input_tokens"], 15);
    assert_eq!(start["usage"]["output_tokens"], 1);
    assert_eq!(
        events[1].1,
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    let streamed: String = events[3..3 + deltas]
        .iter()
        .map(|(_, d)| {
            assert_eq!(d["index"], 0);
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(streamed, text);
    assert_eq!(
        events[3 + deltas].1,
        json!({"type": "content_block_stop", "index": 0})
    );
    assert_eq!(
        events[4 + deltas].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 11}})
    );
}

#[tokio::test]
async fn forced_tool_choice_gives_tool_use_blocks() {
    let mock = MockUpstream::start();
    let mut body = message("claude", "Weather in Paris?");
    body["tools"] = json!([{"name": "noop", "input_schema": {"type": "object"}}, weather_tool()]);
    body["tool_choice"] = json!({"type": "tool", "name": "get_weather"});
    let v: Value = post(&mock, body.clone()).await.json().await.unwrap();
    assert_eq!(v["stop_reason"], "tool_use");
    let content = v["content"].as_array().unwrap();
    assert_eq!(content.len(), 1);
    assert_eq!(content[0]["type"], "tool_use");
    assert!(content[0]["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(content[0]["name"], "get_weather");
    assert!(content[0]["input"]["city"].is_string());
    assert!(content[0]["input"]["days"].as_i64().unwrap() >= 1);

    // `any` calls every tool, or one with disable_parallel_tool_use.
    body["tool_choice"] = json!({"type": "any"});
    let v: Value = post(&mock, body.clone()).await.json().await.unwrap();
    assert_eq!(v["content"].as_array().unwrap().len(), 2);
    body["tool_choice"] = json!({"type": "any", "disable_parallel_tool_use": true});
    let v: Value = post(&mock, body.clone()).await.json().await.unwrap();
    assert_eq!(v["content"].as_array().unwrap().len(), 1);
    // `auto` and `none` answer in text.
    body["tool_choice"] = json!({"type": "auto"});
    let v: Value = post(&mock, body.clone()).await.json().await.unwrap();
    assert_eq!(v["content"][0]["type"], "text");

    // Streamed: the start carries id and name, then an empty fragment, then the input.
    body["tool_choice"] = json!({"type": "tool", "name": "get_weather"});
    let (events, _) = stream(&mock, body).await;
    assert_eq!(
        names(&events)[..4],
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta"
        ]
    );
    let block = &events[1].1["content_block"];
    assert_eq!(block["type"], "tool_use");
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(block["name"], "get_weather");
    assert_eq!(block["input"], json!({}));
    assert_eq!(
        events[3].1["delta"],
        json!({"type": "input_json_delta", "partial_json": ""})
    );
    let input: String = events
        .iter()
        .filter(|(e, _)| e == "content_block_delta")
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    let input: Value = serde_json::from_str(&input).unwrap();
    assert!(input["city"].is_string());
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn thinking_comes_first_and_counts_as_output() {
    let mock = MockUpstream::start();
    let mut body = message("claude-sonnet-4-5", "Hello");
    body["max_tokens"] = json!(4096);
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    let v: Value = post(&mock, body.clone()).await.json().await.unwrap();
    assert_eq!(v["content"][0]["type"], "thinking");
    assert!(v["content"][0]["thinking"].as_str().unwrap().len() > 10);
    assert!(v["content"][0]["signature"].is_string());
    assert_eq!(v["content"][1], json!({"type": "text", "text": "Hello"}));
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 2);

    let (events, _) = stream(&mock, body).await;
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "thinking", "thinking": ""})
    );
    let kinds: Vec<&str> = events
        .iter()
        .filter(|(e, _)| e == "content_block_delta")
        .map(|(_, d)| d["delta"]["type"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"thinking_delta"));
    assert!(kinds.contains(&"signature_delta"));
    assert_eq!(*kinds.last().unwrap(), "text_delta");
}

#[tokio::test]
async fn stop_sequences_max_tokens_cache_usage_and_refusal() {
    let mock = MockUpstream::start();
    let mut body = message("claude", "alpha beta STOP gamma");
    body["stop_sequences"] = json!(["STOP", "beta"]);
    let v: Value = post(&mock, body).await.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], "alpha ");
    assert_eq!(v["stop_reason"], "stop_sequence");
    assert_eq!(v["stop_sequence"], "beta");

    let mut body = message("claude", "one two three four five six seven eight");
    body["max_tokens"] = json!(2);
    let v: Value = post(&mock, body).await.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], "one two ");
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 2);

    let v: Value = post(&mock, message("claude;cache_read=100;cache_write=40", "hi"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["usage"]["cache_read_input_tokens"], 100);
    assert_eq!(v["usage"]["cache_creation_input_tokens"], 40);
    assert_eq!(
        v["usage"]["cache_creation"]["ephemeral_5m_input_tokens"],
        40
    );
    assert_eq!(v["model"], "claude");

    let v: Value = post(&mock, message("claude;refusal", "hi"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["stop_reason"], "refusal");
}

#[tokio::test]
async fn scripted_errors_have_anthropic_bodies() {
    let mock = MockUpstream::start();
    for (status, kind) in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ] {
        let r = post(&mock, message(&format!("claude;status={status}"), "hi")).await;
        assert_eq!(r.status(), status);
        assert!(r.headers().contains_key("request-id"));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], kind, "{status}");
        assert!(v["error"]["message"].is_string());
    }
    let r = post(&mock, message("claude;status=529;retry_after=2", "hi")).await;
    assert_eq!(r.headers()["retry-after"], "2");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "Overloaded");

    let r = post(&mock, message("claude;prompt_too_long", "hi")).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("prompt is too long"));

    let model = "claude;status=529;fail_first=1";
    assert_eq!(post(&mock, message(model, "a")).await.status(), 529);
    assert_eq!(post(&mock, message(model, "b")).await.status(), 200);

    let r = post(&mock, message("claude;malformed", "hi")).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
}

#[tokio::test]
async fn streams_can_be_cut_or_end_with_an_error_event() {
    let mock = MockUpstream::start();
    let text = "one two three four five six seven eight";
    let (events, failed) = stream(&mock, message("claude;cut_after=2", text)).await;
    assert!(failed, "the body must end abnormally");
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta"
        ]
    );

    let (events, failed) = stream(&mock, message("claude;stream_error=1", text)).await;
    assert!(!failed);
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(
        events[4].1,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );

    // Non-streaming: half a body, then an abort.
    let (raw, failed) = read_all(post(&mock, message("claude;cut_after=0", "hello")).await).await;
    assert!(failed);
    assert!(serde_json::from_str::<Value>(&raw).is_err());
}

#[tokio::test]
async fn delays_apply() {
    let mock = MockUpstream::start();
    let start = Instant::now();
    assert_eq!(
        post(&mock, message("claude;delay_ms=150", "hi"))
            .await
            .status(),
        200
    );
    assert!(start.elapsed() >= Duration::from_millis(150));

    let mut body = message("claude;ttfb_ms=300", "hi");
    body["stream"] = json!(true);
    let start = Instant::now();
    let response = post(&mock, body).await;
    let headers_at = start.elapsed();
    let (raw, failed) = read_all(response).await;
    assert!(!failed && raw.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    assert!(headers_at < Duration::from_millis(250), "{headers_at:?}");
    assert!(start.elapsed() >= Duration::from_millis(300));

    let result = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .post(messages_url(&mock))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .json(&message("claude;hang", "hi"))
        .send()
        .await;
    assert!(result.unwrap_err().is_timeout());
}
