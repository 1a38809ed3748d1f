//! The `gemini` and `vertex` adapters through the real binary, against the mock upstream's
//! Gemini API / Vertex AI routes: what reaches the provider (paths, credentials, the
//! translated body), what the client gets back (content, tool calls, finish reasons, usage,
//! cost), streaming, errors and fallback, the Vertex OAuth token flow, and media.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use flowgate_mock_upstream::raw::read_head;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const GEMINI_MODELS: &str = "/v1beta/models";
const VERTEX_MODELS: &str =
    "/v1/projects/flowgate-test/locations/us-central1/publishers/google/models";
const FLASH_SUPPORTS: &str = "supports = { structured_output = true, json_mode = true, tools = true, images = true, pdf = true, audio = true }";

fn gemini_config(upstream: &MockUpstream, allow_private_networks: bool) -> String {
    let google =
        |directives: &str| offer("google", &format!("gemini-2.0-flash{directives}"), 1.0, 1.0);
    let flash = Prices::new(0.10, 0.40).cached(0.025);
    let thinking = Prices::new(0.30, 2.50).cached(0.03);
    let thinking = priced_offer("google", "gemini-2.5-flash;thoughts=40;cached=8", thinking);
    let providers = format!(
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
"#,
        url = upstream.url(),
        key = service_account(upstream),
    );
    let backup = backup_offer(1.0, 1.0);
    providers
        + &[
            model_table(
                "gem-flash",
                &[priced_offer("google", "gemini-2.0-flash", flash)],
                FLASH_SUPPORTS,
            ),
            model_table(
                "gem-thinking",
                &[thinking],
                "supports = { reasoning = true }",
            ),
            model_table(
                "gem-ratelimited",
                &[google(";status=429;retry_after=7")],
                "",
            ),
            model_table(
                "gem-overloaded",
                &[google(";status=503"), backup_offer(2.0, 4.0)],
                "",
            ),
            model_table(
                "gem-badrequest",
                &[google(";status=400"), backup.clone()],
                "",
            ),
            model_table("gem-too-long", &[google(";too_long")], ""),
            model_table("gem-blocked", &[google(";block=SAFETY")], ""),
            model_table("gem-cut-early", &[google(";cut_after=0"), backup], ""),
            model_table(
                "vertex-pro",
                &[offer("vertexai", "gemini-2.5-pro", 1.25, 10.0)],
                "",
            ),
        ]
        .concat()
}

fn setup_with(allow_private_networks: bool) -> Setup {
    Setup::with_models(|upstream| gemini_config(upstream, allow_private_networks))
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
                if read_head(&mut socket, &mut Vec::new()).await.is_none() {
                    return;
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
    let (call, args) = answered_tool_call(&body);
    assert_eq!(call["function"]["name"], "User");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(args, json!({"name": "string", "age": 0}));

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
    let (_, chunks) = stream_text(&s.gw, json!({"model": "gem-flash"}), text, "google").await;
    assert_eq!(finish_reasons(&chunks), ["stop"]);
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
    let (_, chunks) = stream_ok(
        &s.gw,
        json!({"model": "gem-flash", "messages": user("Jason is 25"),
            "tools": [user_name_tool(), {"type": "function", "function": {"name": "Noop"}}],
            "tool_choice": "required"}),
    )
    .await;
    let calls: Vec<_> = streamed_tool_calls(&chunks)
        .into_iter()
        .map(|call| {
            assert!(call.id.starts_with("call_"), "{call:?}");
            assert_eq!(call.deltas, 1, "each arrives whole: {call:?}");
            (call.name, call.arguments)
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("User".to_string(), "{\"name\":\"string\"}".to_string()),
            ("Noop".to_string(), "{}".to_string())
        ]
    );
    assert_eq!(finish_reasons(&chunks).last().unwrap(), "tool_calls");
}

#[tokio::test]
async fn google_errors_map_to_openai_errors_and_fall_back() {
    let s = setup();
    // The retry-after is from Google's RetryInfo detail.
    assert_rate_limited(&s.gw, "gem-ratelimited", "7").await;

    // 503 UNAVAILABLE: overloaded, the next provider answers.
    answered_by_backup(&s.gw, "gem-overloaded", "google", 503, "overloaded").await;
    // Streaming too, invisibly.
    stream_from(&s.gw, "gem-overloaded", "hello there", "backup").await;
    // A stream cut before its first chunk falls back as well.
    stream_from(&s.gw, "gem-cut-early", "abcdefghijkl", "backup").await;

    // INVALID_ARGUMENT is the client's fault: no fallback.
    let body = assert_bad_request(&s.gw, "gem-badrequest").await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("400 INVALID_ARGUMENT"));

    let (status, _, body) = ask(&s.gw, "gem-too-long", "hi").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded");

    let (status, _, body) = ask(&s.gw, "gem-blocked", "hi").await;
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
    stream_from(&s.gw, "vertex-pro", "streamed question", "vertexai").await;
    let (status, _, body) = ask(&s.gw, "vertex-pro", "Vertex, one more").await;
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
