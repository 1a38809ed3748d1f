//! The `gemini` and `vertex` adapters through the real binary, against the mock upstream's
//! Gemini API / Vertex AI routes: what reaches the provider (paths, credentials, the
//! translated body), what the client gets back (content, tool calls, finish reasons, usage,
//! cost), streaming, errors and fallback, the Vertex OAuth token flow, and media.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The throwaway RSA key of the test service account.
const TEST_KEY: &str = include_str!("fixtures/gcp-test-key.pem");
const GEMINI_MODELS: &str = "/v1beta/models";
const VERTEX_MODELS: &str =
    "/v1/projects/flowgate-test/locations/us-central1/publishers/google/models";

fn service_account(upstream: &MockUpstream) -> String {
    serde_json::to_string_pretty(&json!({
        "type": "service_account",
        "project_id": "flowgate-test",
        "private_key_id": "0123456789abcdef",
        "private_key": TEST_KEY,
        "client_email": "flowgate@flowgate-test.iam.gserviceaccount.com",
        "client_id": "1",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": format!("{}/token", upstream.url()),
    }))
    .unwrap()
}

fn gemini_config(upstream: &MockUpstream, allow_private_networks: bool) -> String {
    format!(
        r#"
[media]
allow_private_networks = {allow_private_networks}

[providers.google]
type = "gemini"
base_url = "{url}"
api_key = "gemini-secret"

[providers.vertexai]
type = "vertex"
project = "flowgate-test"
region = "us-central1"
base_url = "{url}"
credentials_json = '''
{key}
'''

[models."gem-flash"]
providers = [{{ provider = "google", model = "gemini-2.0-flash", input_per_mtok = 0.10, output_per_mtok = 0.40, cached_input_per_mtok = 0.025 }}]
supports = {{ structured_output = true, json_mode = true, tools = true, images = true, pdf = true, audio = true }}

[models."gem-thinking"]
providers = [{{ provider = "google", model = "gemini-2.5-flash;thoughts=40;cached=8", input_per_mtok = 0.30, output_per_mtok = 2.50, cached_input_per_mtok = 0.03 }}]
supports = {{ reasoning = true }}

[models."gem-ratelimited"]
providers = [{{ provider = "google", model = "gemini-2.0-flash;status=429;retry_after=7", input_per_mtok = 1.0, output_per_mtok = 1.0 }}]

[models."gem-overloaded"]
providers = [
  {{ provider = "google", model = "gemini-2.0-flash;status=503", input_per_mtok = 1.0, output_per_mtok = 1.0 }},
  {{ provider = "backup", model = "gpt-4o-mini", input_per_mtok = 2.0, output_per_mtok = 4.0 }},
]

[models."gem-badrequest"]
providers = [
  {{ provider = "google", model = "gemini-2.0-flash;status=400", input_per_mtok = 1.0, output_per_mtok = 1.0 }},
  {{ provider = "backup", model = "gpt-4o-mini", input_per_mtok = 1.0, output_per_mtok = 1.0 }},
]

[models."gem-too-long"]
providers = [{{ provider = "google", model = "gemini-2.0-flash;too_long", input_per_mtok = 1.0, output_per_mtok = 1.0 }}]

[models."gem-blocked"]
providers = [{{ provider = "google", model = "gemini-2.0-flash;block=SAFETY", input_per_mtok = 1.0, output_per_mtok = 1.0 }}]

[models."gem-cut-early"]
providers = [
  {{ provider = "google", model = "gemini-2.0-flash;cut_after=0", input_per_mtok = 1.0, output_per_mtok = 1.0 }},
  {{ provider = "backup", model = "gpt-4o-mini", input_per_mtok = 1.0, output_per_mtok = 1.0 }},
]

[models."vertex-pro"]
providers = [{{ provider = "vertexai", model = "gemini-2.5-pro", input_per_mtok = 1.25, output_per_mtok = 10.0 }}]
"#,
        url = upstream.url(),
        key = service_account(upstream),
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    upstream: MockUpstream,
    gw: Flowgate,
}

fn setup_with(allow_private_networks: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let upstream = MockUpstream::start();
    let config = base_config(&dir.path().join("data"), Some(&upstream))
        + &gemini_config(&upstream, allow_private_networks);
    let gw = Flowgate::start(dir.path(), &config);
    Setup {
        _dir: dir,
        upstream,
        gw,
    }
}

fn setup() -> Setup {
    setup_with(true)
}

/// The requests that reached a `generateContent` route.
fn generate_requests(upstream: &MockUpstream) -> Vec<flowgate_mock_upstream::RecordedRequest> {
    upstream
        .requests()
        .into_iter()
        .filter(|r| {
            r.path.contains(":generateContent") || r.path.contains(":streamGenerateContent")
        })
        .collect()
}

fn assert_cost(body: &Value, expected: f64) {
    let cost = body["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - expected).abs() < 1e-15,
        "cost {cost} != expected {expected}"
    );
}

/// A one-image HTTP server on loopback; counts the downloads.
async fn serve_image(bytes: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    bytes.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(bytes).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (format!("http://{addr}/cat.png"), hits)
}

#[tokio::test]
async fn gemini_adapter_translates_the_request_and_prices_the_answer() {
    let s = setup();
    let tools = json!([{"type": "function", "function": {"name": "User", "description": "a user",
        "parameters": {"$schema": "http://json-schema.org/draft-07/schema#", "title": "User",
            "type": "object", "additionalProperties": false,
            "properties": {"name": {"type": "string", "title": "Name"}, "age": {"type": "integer"}},
            "required": ["name", "age"]}}}]);
    let (status, headers, body) = chat(
        &s.gw,
        json!({
            "model": "extract/gem-flash",
            "messages": [{"role": "system", "content": "Extract."}, {"role": "user", "content": "Jason is 25"}],
            "tools": tools,
            "tool_choice": {"type": "function", "function": {"name": "User"}},
            "temperature": 0.3,
            "top_p": 0.8,
            "max_tokens": 50,
            "stop": ["END"],
            "seed": 7,
            "metadata": {"customer": "acme"},
            "use_fallback": "never",
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-provider"], "google");
    assert_eq!(headers["x-flowgate-model"], "gem-flash");
    let message = &body["choices"][0]["message"];
    let call = &message["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "User");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"name": "string", "age": 0}));
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");

    // What reached Gemini: the model in the path, the key in its header, the translated body.
    let requests = s.upstream.requests();
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(
        sent.path,
        format!("{GEMINI_MODELS}/gemini-2.0-flash:generateContent")
    );
    assert_eq!(sent.headers["x-goog-api-key"], "gemini-secret");
    assert!(!sent.headers.contains_key("authorization"));
    assert_eq!(
        sent.body,
        json!({
            "contents": [{"role": "user", "parts": [{"text": "Jason is 25"}]}],
            "systemInstruction": {"parts": [{"text": "Extract."}]},
            "tools": [{"functionDeclarations": [{"name": "User", "description": "a user", "parameters": {
                "type": "OBJECT",
                "properties": {"name": {"type": "STRING"}, "age": {"type": "INTEGER"}},
                "required": ["name", "age"]}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["User"]}},
            "generationConfig": {"temperature": 0.3, "topP": 0.8, "maxOutputTokens": 50,
                "stopSequences": ["END"], "seed": 7}
        })
    );

    // "Extract." + "Jason is 25" = 19 chars → 5 tokens; {"age":0,"name":"string"} = 25 → 7.
    assert_eq!(body["usage"]["prompt_tokens"], 5);
    assert_eq!(body["usage"]["completion_tokens"], 7);
    assert_eq!(body["usage"]["total_tokens"], 12);
    assert_cost(&body, (5.0 * 0.10 + 7.0 * 0.40) / 1e6);
    assert!(!body.to_string().contains("gemini-secret"));
}

#[tokio::test]
async fn thoughts_are_hidden_but_counted_and_cached_tokens_priced() {
    let s = setup();
    let text = "Why is the sky blue? Answer in one line.";
    assert_eq!(text.len(), 40);
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "gem-thinking", "messages": user(text), "reasoning_effort": "low"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], text);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let usage = &body["usage"];
    // 40 chars → 10 prompt tokens (8 cached); 10 answer tokens + 40 thinking tokens.
    assert_eq!(usage["prompt_tokens"], 10);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 8);
    assert_eq!(usage["completion_tokens"], 50);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 40);
    assert_cost(&body, (2.0 * 0.30 + 8.0 * 0.03 + 50.0 * 2.50) / 1e6);
    let sent = &s.upstream.requests()[0];
    assert_eq!(
        sent.path,
        format!("{GEMINI_MODELS}/gemini-2.5-flash;thoughts=40;cached=8:generateContent")
    );
    assert_eq!(
        sent.body["generationConfig"],
        json!({"thinkingConfig": {"thinkingBudget": 1024}})
    );
}

#[tokio::test]
async fn conversations_with_tools_images_and_schemas_are_translated() {
    let s = setup();
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\nnot-really-a-png";
    let (image_url, downloads) = serve_image(PNG).await;
    let schema = json!({
        "type": "object", "additionalProperties": false,
        "properties": {"city": {"type": "string"}, "forecast": {"$ref": "#/$defs/Forecast"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
        "required": ["city", "forecast", "note"],
        "$defs": {"Forecast": {"type": "object", "additionalProperties": false,
            "properties": {"temp": {"type": "integer"}, "sky": {"type": "string", "enum": ["clear", "cloudy"]}},
            "required": ["temp", "sky"]}}
    });
    let (status, _, body) = chat(
        &s.gw,
        json!({
            "model": "gem-flash",
            "messages": [
                {"role": "developer", "content": "Answer in JSON."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is the weather where these were taken?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}},
                    {"type": "image_url", "image_url": {"url": image_url}},
                    {"type": "image_url", "image_url": {"url": "gs://flowgate-test/dog.jpg"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "locate", "arguments": "{\"image\": 1}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_2", "content": "{\"temp\": 21, \"sky\": \"clear\"}"},
                {"role": "tool", "tool_call_id": "call_1", "content": "Paris"},
                {"role": "user", "content": "Summarize."}
            ],
            "tools": [
                {"type": "function", "function": {"name": "locate", "parameters": {"type": "object", "properties": {"image": {"type": "integer"}}}}},
                {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
            ],
            "response_format": {"type": "json_schema", "json_schema": {"name": "Weather", "strict": true, "schema": schema}}
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let content: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        content,
        json!({"city": "string", "forecast": {"temp": 0, "sky": "clear"}, "note": "string"})
    );
    assert_eq!(downloads.load(Ordering::SeqCst), 1);

    let sent = &generate_requests(&s.upstream)[0];
    assert_eq!(
        sent.body["systemInstruction"],
        json!({"parts": [{"text": "Answer in JSON."}]})
    );
    assert_eq!(
        sent.body["contents"],
        json!([
            {"role": "user", "parts": [
                {"text": "What is the weather where these were taken?"},
                {"inlineData": {"mimeType": "image/png", "data": "aGVsbG8="}},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgpub3QtcmVhbGx5LWEtcG5n"}},
                {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://flowgate-test/dog.jpg"}}
            ]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "locate", "args": {"image": 1}}, "thoughtSignature": "skip_thought_signature_validator"},
                {"functionCall": {"name": "weather", "args": {"city": "Paris"}}}
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "weather", "response": {"temp": 21, "sky": "clear"}}},
                {"functionResponse": {"name": "locate", "response": {"result": "Paris"}}},
                {"text": "Summarize."}
            ]}
        ])
    );
    assert_eq!(
        sent.body["generationConfig"],
        json!({"responseMimeType": "application/json", "responseSchema": {
            "type": "OBJECT",
            "properties": {
                "city": {"type": "STRING"},
                "forecast": {"type": "OBJECT", "properties": {"temp": {"type": "INTEGER"},
                    "sky": {"type": "STRING", "enum": ["clear", "cloudy"]}}, "required": ["temp", "sky"]},
                "note": {"type": "STRING", "nullable": true}
            },
            "required": ["city", "forecast", "note"]
        }})
    );
    assert!(sent.body.get("toolConfig").is_none());

    // json_object mode.
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "gem-flash", "messages": user("Give me JSON"), "response_format": {"type": "json_object"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "{}");
    let sent = generate_requests(&s.upstream).pop().unwrap();
    assert_eq!(
        sent.body["generationConfig"],
        json!({"responseMimeType": "application/json"})
    );
}

#[tokio::test]
async fn streams_carry_text_tool_calls_usage_and_cost() {
    let s = setup();
    let text = "The quick brown fox jumps over the lazy dog";
    let (status, headers, events) = chat_stream(
        &s.gw,
        json!({"model": "gem-flash", "stream": true, "messages": user(text)}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-flowgate-provider"], "google");
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
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("stop")]);
    let last = chunks.last().unwrap();
    // 43 chars → 11 tokens each way.
    assert_eq!(last["usage"]["prompt_tokens"], 11);
    assert_eq!(last["usage"]["completion_tokens"], 11);
    assert_cost(last, (11.0 * 0.10 + 11.0 * 0.40) / 1e6);
    let sent = &s.upstream.requests()[0];
    assert_eq!(
        sent.path,
        format!("{GEMINI_MODELS}/gemini-2.0-flash:streamGenerateContent")
    );
    assert_eq!(sent.headers["x-goog-api-key"], "gemini-secret");

    // Tool calls: each arrives whole, with its id and name.
    let (status, _, events) = chat_stream(
        &s.gw,
        json!({"model": "gem-flash", "stream": true, "messages": user("Jason is 25"),
            "tools": [
                {"type": "function", "function": {"name": "User", "parameters": {"type": "object",
                    "properties": {"name": {"type": "string"}}, "required": ["name"]}}},
                {"type": "function", "function": {"name": "Noop"}}],
            "tool_choice": "required"}),
    )
    .await;
    assert_eq!(status, 200);
    let mut calls = Vec::new();
    let mut finish = None;
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(e).unwrap();
        for call in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert!(call["id"].as_str().unwrap().starts_with("call_"));
            calls.push((
                call["index"].as_u64().unwrap(),
                call["function"]["name"].as_str().unwrap().to_string(),
                call["function"]["arguments"].as_str().unwrap().to_string(),
            ));
        }
        if let Some(f) = chunk["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    assert_eq!(
        calls,
        [
            (0, "User".to_string(), "{\"name\":\"string\"}".to_string()),
            (1, "Noop".to_string(), "{}".to_string())
        ]
    );
    assert_eq!(finish.as_deref(), Some("tool_calls"));
}

#[tokio::test]
async fn google_errors_map_to_openai_errors_and_fall_back() {
    let s = setup();
    let (status, headers, body) = chat(
        &s.gw,
        json!({"model": "gem-ratelimited", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    // From Google's RetryInfo detail.
    assert_eq!(headers["retry-after"], "7");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["details"]["attempts"][0]["status"], 429);

    // 503 UNAVAILABLE: overloaded, the next provider answers.
    let (status, headers, body) = chat(
        &s.gw,
        json!({"model": "gem-overloaded", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-provider"], "backup");
    assert_eq!(body["choices"][0]["message"]["content"], "hi");
    let run_id = headers["x-flowgate-run-id"].to_str().unwrap();
    let (_, run) = get_json(&s.gw, &format!("/api/runs/{run_id}")).await;
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{run}");
    assert_eq!(attempts[0]["provider"], "google");
    assert_eq!(attempts[0]["status"], 503);
    assert_eq!(attempts[0]["error"], "overloaded");
    assert_eq!(attempts[1]["provider"], "backup");
    // Streaming too, invisibly.
    let (status, headers, events) = chat_stream(
        &s.gw,
        json!({"model": "gem-overloaded", "stream": true, "messages": user("hello there")}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-flowgate-provider"], "backup");
    assert_eq!(events.last().unwrap(), "[DONE]");
    // A stream cut before its first chunk falls back as well.
    let (status, headers, events) = chat_stream(
        &s.gw,
        json!({"model": "gem-cut-early", "stream": true, "messages": user("abcdefghijkl")}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-flowgate-provider"], "backup");
    assert_eq!(events.last().unwrap(), "[DONE]");

    // INVALID_ARGUMENT is the client's fault: no fallback.
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "gem-badrequest", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "upstream_bad_request");
    assert_eq!(
        body["error"]["details"]["attempts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("400 INVALID_ARGUMENT"));

    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "gem-too-long", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded");

    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "gem-blocked", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "content_filter");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("SAFETY"));
    assert!(!body.to_string().contains("gemini-secret"));
}

#[tokio::test]
async fn vertex_gets_one_token_and_reuses_it() {
    let s = setup();
    // Concurrent first requests: one token exchange between them.
    let first = (0..6).map(|i| {
        chat(
            &s.gw,
            json!({"model": "vertex-pro", "messages": user(&format!("question {i}"))}),
        )
    });
    for (status, headers, body) in futures::future::join_all(first).await {
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-flowgate-provider"], "vertexai");
        assert!(!body.to_string().contains("mock-token"));
    }
    let (status, _, events) = chat_stream(
        &s.gw,
        json!({"model": "vertex-pro", "stream": true, "messages": user("streamed question")}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "vertex-pro", "messages": user("Vertex, one more")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Vertex, one more");
    // "Vertex, one more": 16 chars → 4 tokens each way.
    assert_cost(&body, (4.0 * 1.25 + 4.0 * 10.0) / 1e6);

    let requests = s.upstream.requests();
    let token_calls = requests.iter().filter(|r| r.path == "/token").count();
    assert_eq!(token_calls, 1, "the token is fetched once and reused");
    let generate = generate_requests(&s.upstream);
    assert_eq!(generate.len(), 8);
    let bearer = &generate[0].headers["authorization"];
    assert!(bearer.starts_with("Bearer mock-token-"), "{bearer}");
    for r in &generate {
        assert_eq!(&r.headers["authorization"], bearer);
        assert!(!r.headers.contains_key("x-goog-api-key"));
        assert!(
            r.path == format!("{VERTEX_MODELS}/gemini-2.5-pro:generateContent")
                || r.path == format!("{VERTEX_MODELS}/gemini-2.5-pro:streamGenerateContent"),
            "{}",
            r.path
        );
    }
}

#[tokio::test]
async fn media_urls_to_private_networks_are_refused_by_default() {
    let s = setup_with(false);
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    let (image_url, downloads) = serve_image(PNG).await;
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "gem-flash", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": image_url}}
        ]}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "media_url_refused");
    assert_eq!(downloads.load(Ordering::SeqCst), 0);
    assert!(generate_requests(&s.upstream).is_empty());

    // Data URIs need no download.
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "gem-flash", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}
        ]}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = &generate_requests(&s.upstream)[0];
    assert_eq!(
        sent.body["contents"][0]["parts"][1],
        json!({"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}})
    );
}
