//! End-to-end tests of the OpenAI routes over real HTTP.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flowgate_mock_upstream::{MockUpstream, Options};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn post(mock: &MockUpstream, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth("sk-test")
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": text}
    ]})
}

/// Reads a body chunk by chunk until it ends or fails; returns the bytes and whether it
/// failed.
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

/// Splits an SSE body into its `data:` payloads.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad event {e:?}"))
                .to_string()
        })
        .collect()
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city", "days"],
            "additionalProperties": false
        }
    }})
}

#[tokio::test]
async fn echo_completion_has_the_openai_shape() {
    let mock = MockUpstream::start();
    let response = post(&mock, chat("gpt-4o-mini", "Hello there, mock!")).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert!(response.headers().contains_key("x-request-id"));
    let v: Value = response.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "gpt-4o-mini");
    assert!(v["system_fingerprint"].as_str().unwrap().starts_with("fp_"));
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[0]["message"]["role"], "assistant");
    assert_eq!(choices[0]["message"]["content"], "Hello there, mock!");
    assert_eq!(choices[0]["message"]["refusal"], Value::Null);
    assert!(choices[0]["message"].get("tool_calls").is_none());
    assert_eq!(choices[0]["logprobs"], Value::Null);
    assert_eq!(choices[0]["finish_reason"], "stop");
    // "You are terse." + "Hello there, mock!" = 14 + 18 = 32 chars → 8; 18 chars → 5.
    assert_eq!(
        v["usage"],
        json!({
            "prompt_tokens": 8,
            "completion_tokens": 5,
            "total_tokens": 13,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0
            }
        })
    );
}

#[tokio::test]
async fn n_gives_identical_indexed_choices() {
    let mock = MockUpstream::start();
    let mut body = chat("m", "hi");
    body["n"] = json!(3);
    let v: Value = post(&mock, body).await.json().await.unwrap();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["message"]["content"], "hi");
    }
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn streaming_sequence_with_usage() {
    let mock = MockUpstream::start();
    let text = "The quick brown fox jumps over the lazy dog";
    let mut body = chat("gpt-4o;chunk_delay_ms=1", text);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = post(&mock, body).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (raw, failed) = read_all(response).await;
    assert!(!failed);
    let events = sse_data(&raw);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    for c in &chunks {
        assert_eq!(c["id"], id);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-4o");
        assert!(c["created"].is_u64());
        assert!(c["system_fingerprint"].is_string());
    }
    assert_eq!(
        chunks[0]["choices"],
        json!([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null},
                "logprobs": null, "finish_reason": null}])
    );
    let content_chunks = &chunks[1..chunks.len() - 2];
    assert!(
        content_chunks.len() > 3,
        "content is split into several chunks"
    );
    let streamed: String = content_chunks
        .iter()
        .map(|c| {
            assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
            c["choices"][0]["delta"]["content"].as_str().unwrap()
        })
        .collect();
    assert_eq!(streamed, text);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["usage"], Value::Null);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 11);
    assert_eq!(usage["usage"]["total_tokens"], 11 + 15);
}

#[tokio::test]
async fn streaming_without_usage_has_no_usage_chunk() {
    let mock = MockUpstream::start();
    let mut body = chat("m", "short");
    body["stream"] = json!(true);
    let (raw, failed) = read_all(post(&mock, body).await).await;
    assert!(!failed);
    let events = sse_data(&raw);
    assert_eq!(events.len(), 4, "role, content, finish, [DONE]: {events:?}");
    assert_eq!(events[3], "[DONE]");
    let finish: Value = serde_json::from_str(&events[2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(finish.get("usage").is_none());
}

#[tokio::test]
async fn forced_tool_choice_gives_a_tool_call() {
    let mock = MockUpstream::start();
    let body = json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [weather_tool()],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}
    });
    let v: Value = post(&mock, body.clone()).await.json().await.unwrap();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string());
    assert!(args["days"].as_i64().unwrap() >= 1);

    // Streamed: id/name first, then argument fragments that concatenate to JSON.
    let mut body = body;
    body["stream"] = json!(true);
    let (raw, _) = read_all(post(&mock, body).await).await;
    let events = sse_data(&raw);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let first_call = &chunks[1]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(first_call["index"], 0);
    assert!(first_call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(first_call["function"]["name"], "get_weather");
    assert_eq!(first_call["function"]["arguments"], "");
    let arguments: String = chunks[2..chunks.len() - 1]
        .iter()
        .map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap()
        })
        .collect();
    let parsed: Value = serde_json::from_str(&arguments).unwrap();
    assert!(parsed["city"].is_string());
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test]
async fn json_schema_content_validates() {
    let mock = MockUpstream::start();
    let body = json!({
        "model": "gpt-4o-2024-08-06",
        "messages": [{"role": "user", "content": "Alice is 30"}],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "Person",
            "strict": true,
            "schema": {
                "$defs": {"Pet": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}},
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "age": {"type": "integer"},
                    "email": {"type": "string", "format": "email"},
                    "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}},
                    "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}]}
                },
                "required": ["name", "age", "email", "pets", "nickname"],
                "additionalProperties": false
            }
        }}
    });
    let v: Value = post(&mock, body).await.json().await.unwrap();
    let content: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    for key in ["name", "age", "email", "pets", "nickname"] {
        assert!(content.get(key).is_some(), "{key} missing in {content}");
    }
    assert!(content["age"].is_i64());
    assert!(content["pets"][0]["name"].is_string());
}

#[tokio::test]
async fn scripted_429_with_retry_after() {
    let mock = MockUpstream::start();
    let response = post(&mock, chat("gpt-4o;status=429;retry_after=2", "hi")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "2");
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["error"]["type"], "requests");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["param"], Value::Null);
    assert!(v["error"]["message"].is_string());
}

#[tokio::test]
async fn scripted_500_error_body() {
    let mock = MockUpstream::start();
    let response = post(&mock, chat("gpt-4o;status=503", "hi")).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_none());
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["error"]["type"], "server_error");
}

#[tokio::test]
async fn fail_first_fails_then_succeeds() {
    let mock = MockUpstream::start();
    let model = "gpt-4o;status=500;fail_first=1";
    assert_eq!(post(&mock, chat(model, "a")).await.status(), 500);
    let ok = post(&mock, chat(model, "b")).await;
    assert_eq!(ok.status(), 200);
    let v: Value = ok.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "b");
    assert_eq!(post(&mock, chat(model, "c")).await.status(), 200);
    // Counters are per exact model string.
    let other = "gpt-4o;status=500;fail_first=2";
    assert_eq!(post(&mock, chat(other, "a")).await.status(), 500);
    assert_eq!(post(&mock, chat(other, "a")).await.status(), 500);
    assert_eq!(post(&mock, chat(other, "a")).await.status(), 200);
}

#[tokio::test]
async fn malformed_body_is_not_json() {
    let mock = MockUpstream::start();
    let response = post(&mock, chat("gpt-4o;malformed", "hi")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
}

#[tokio::test]
async fn cut_after_aborts_the_stream() {
    let mock = MockUpstream::start();
    let mut body = chat(
        "gpt-4o;cut_after=2",
        "one two three four five six seven eight",
    );
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = post(&mock, body).await;
    assert_eq!(response.status(), 200);
    let (raw, failed) = read_all(response).await;
    assert!(failed, "the body must end abnormally");
    assert!(!raw.contains("[DONE]"));
    let events = sse_data(&raw);
    assert_eq!(events.len(), 3, "role chunk + 2 content chunks: {events:?}");
    assert!(!raw.contains("finish_reason\":\"stop"));

    // Non-streaming: half a body, then an abort.
    let response = post(&mock, chat("gpt-4o;cut_after=0", "hello")).await;
    assert_eq!(response.status(), 200);
    let (raw, failed) = read_all(response).await;
    assert!(failed);
    assert!(serde_json::from_str::<Value>(&raw).is_err());
}

#[tokio::test]
async fn delays_are_applied() {
    let mock = MockUpstream::start();
    let start = Instant::now();
    let response = post(&mock, chat("m;delay_ms=150", "hi")).await;
    assert_eq!(response.status(), 200);
    assert!(start.elapsed() >= Duration::from_millis(150));

    // ttfb: headers first, the first chunk later.
    let mut body = chat("m;ttfb_ms=300", "hi");
    body["stream"] = json!(true);
    let start = Instant::now();
    let response = post(&mock, body).await;
    let headers_at = start.elapsed();
    let (raw, failed) = read_all(response).await;
    assert!(!failed && raw.ends_with("data: [DONE]\n\n"));
    assert!(headers_at < Duration::from_millis(250), "{headers_at:?}");
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn hang_never_answers_and_drop_still_stops() {
    let mock = MockUpstream::start();
    let result = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth("k")
        .json(&chat("m;hang", "hi"))
        .send()
        .await;
    assert!(result.unwrap_err().is_timeout());
    let start = Instant::now();
    drop(mock);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn request_validation_errors() {
    let mock = MockUpstream::start();
    let url = format!("{}/chat/completions", mock.base_url());

    let response = client()
        .post(&url)
        .json(&chat("m", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let v: Value = response.json().await.unwrap();
    assert_eq!(
        v["error"]["type"], "invalid_request_error",
        "missing key: {v}"
    );
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(v["error"]["param"], Value::Null);

    let response = client()
        .post(&url)
        .bearer_auth("k")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let response = post(&mock, json!({"model": "m"})).await;
    assert_eq!(response.status(), 400);
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["error"]["param"], "messages");

    let response = post(&mock, json!({"messages": []})).await;
    assert_eq!(response.status(), 400);

    let response = client()
        .post(format!("{}/nope", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["error"]["message"], "Invalid URL (POST /v1/nope)");
}

#[tokio::test]
async fn models_route() {
    let mock = MockUpstream::start();
    let v: Value = client()
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v,
        json!({"object": "list", "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]})
    );
}

#[tokio::test]
async fn requests_are_recorded() {
    let mock = MockUpstream::start_with_workers(1);
    let body = chat("gpt-4o", "record me");
    client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth("sk-abc")
        .header("X-Custom-Header", "Value-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    client()
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap();

    let recorded = mock.requests();
    assert_eq!(recorded.len(), 2);
    assert_eq!(mock.count(), 2);
    assert_eq!(recorded[0].method, "POST");
    assert_eq!(recorded[0].path, "/v1/chat/completions");
    assert_eq!(recorded[0].headers["authorization"], "Bearer sk-abc");
    assert_eq!(recorded[0].headers["x-custom-header"], "Value-1");
    assert_eq!(recorded[0].headers["content-type"], "application/json");
    assert_eq!(recorded[0].body, body);
    assert_eq!(recorded[1].method, "GET");
    assert_eq!(recorded[1].body, Value::Null);

    // The control endpoint shows the same list and is not recorded itself.
    let control = format!("{}/_mock/requests", mock.url());
    let listed: Value = client()
        .get(&control)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[0]["headers"]["x-custom-header"], "Value-1");
    assert_eq!(listed[0]["body"], body);
    let response = client().delete(&control).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(mock.requests().is_empty());
    assert_eq!(mock.count(), 0);

    post(&mock, chat("m", "again")).await;
    assert_eq!(mock.count(), 1);
    mock.clear();
    assert_eq!(mock.count(), 0);
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn recording_can_be_disabled() {
    let mock = MockUpstream::start_with(Options {
        workers: 1,
        record: false,
    });
    assert_eq!(post(&mock, chat("m", "x")).await.status(), 200);
    assert_eq!(post(&mock, chat("m", "y")).await.status(), 200);
    assert!(mock.requests().is_empty());
    assert_eq!(mock.count(), 2);
}

#[tokio::test]
async fn concurrent_requests() {
    let mock = MockUpstream::start_with_workers(2);
    let futures: Vec<_> = (0..50)
        .map(|i| {
            let base = mock.base_url();
            async move {
                let v: Value = client()
                    .post(format!("{base}/chat/completions"))
                    .bearer_auth("k")
                    .json(&chat("m;delay_ms=20", &format!("msg {i}")))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(v["choices"][0]["message"]["content"], format!("msg {i}"));
            }
        })
        .collect();
    futures::future::join_all(futures).await;
    assert_eq!(mock.count(), 50);
}

#[tokio::test]
async fn binary_prints_its_address_and_serves() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowgate-mock-upstream"))
        .args(["--listen", "127.0.0.1:0", "--workers", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim_end()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"));
    let result = client().get(format!("{url}/v1/models")).send().await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(result.unwrap().status(), 200);
}
