//! The `openai` adapter's flavors through the real binary: what reached the upstream for each
//! OpenAI-compatible API (Mistral, DeepSeek, Groq, OpenRouter, OpenAI reasoning models, Azure),
//! requests refused before any call, and upstream errors mapped to the gateway's kinds.
//!
//! Most tests run against the project's mock upstream, which records requests. Two things it
//! cannot do are covered by a small scripted server in this file ([`Scripted`]): show the query
//! string (Azure's `api-version`) and answer with a chosen error body (an OpenAI error `code`).

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use flowgate_mock_upstream::raw::read_head;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One provider of each flavor under test, all pointed at the mock upstream, and a model each.
fn flavors_config(upstream: &MockUpstream) -> String {
    let mut config = String::new();
    for (name, flavor) in [
        ("mistral", "mistral"),
        ("deepseek", "deepseek"),
        ("groq", "groq"),
        ("openrouter", "openrouter"),
        ("oai", "openai"),
    ] {
        config += &openai_provider(
            name,
            flavor,
            &upstream.base_url(),
            Some(&format!("{name}-secret")),
        );
    }
    config += &azure_provider("azure", &upstream.url());
    for (id, provider, model, supports) in [
        (
            "c-mistral",
            "mistral",
            "mistral-small-latest",
            "supports = { tools = true, structured_output = true, json_mode = true }",
        ),
        (
            "c-deepseek",
            "deepseek",
            "deepseek-chat",
            "supports = { tools = true, structured_output = true, json_mode = true, images = true }",
        ),
        (
            "c-groq",
            "groq",
            "llama-3.3-70b-versatile",
            "supports = { tools = true, pdf = true, images = true }",
        ),
        (
            "c-openrouter",
            "openrouter",
            "openai/o3",
            "supports = { reasoning = true, pdf = true }",
        ),
        ("c-o3", "oai", "o3-mini", "supports = { reasoning = true }"),
        ("c-gpt", "oai", "gpt-4o-mini", ""),
        ("c-azure", "azure", "my-gpt4o-deployment", ""),
    ] {
        config += &model_table(id, &[offer(provider, model, 1.0, 1.0)], supports);
    }
    config
}

/// A `[providers.<name>]` table of the `openai` type and `flavor`, at `base_url`, with `api_key`
/// if any.
fn openai_provider(name: &str, flavor: &str, base_url: &str, api_key: Option<&str>) -> String {
    let mut table = format!(
        "\n[providers.{name}]\ntype = \"openai\"\nflavor = \"{flavor}\"\nbase_url = \"{base_url}\"\n"
    );
    if let Some(key) = api_key {
        table += &format!("api_key = \"{key}\"\n");
    }
    table
}

/// A `[providers.<name>]` table of the `azure` type at `endpoint`.
fn azure_provider(name: &str, endpoint: &str) -> String {
    format!(
        r#"
[providers.{name}]
type = "azure"
endpoint = "{endpoint}"
api_key = "azure-secret"
api_version = "2024-10-21"
"#
    )
}

fn setup() -> Setup {
    Setup::start(|data, upstream| base_config(data, None) + &flavors_config(upstream))
}

impl Setup {
    /// The body of the only request the mock received.
    fn sent(&self) -> Value {
        let requests = self.upstream.requests();
        assert_eq!(requests.len(), 1, "{requests:#?}");
        requests[0].body.clone()
    }
}

#[tokio::test]
async fn mistral_gets_its_own_field_names_and_no_unknown_fields() {
    let s = setup();
    let (status, headers, body) = chat(
        &s.gw,
        json!({
            "model": "c-mistral",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "hello mistral", "name": "jo"},
            ],
            "seed": 42,
            "max_completion_tokens": 64,
            "user": "customer-7",
            "logit_bias": {"1": 5},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-provider"], "mistral");
    let sent = s.sent();
    assert_eq!(sent["model"], "mistral-small-latest");
    assert_eq!(sent["random_seed"], 42);
    assert_eq!(sent["max_tokens"], 64);
    assert_eq!(sent["tool_choice"], "any");
    for gone in ["seed", "max_completion_tokens", "user", "logit_bias"] {
        assert!(sent.get(gone).is_none(), "{gone} reached Mistral: {sent}");
    }
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello mistral"}])
    );

    // Streaming: no stream_options (Mistral sends usage in its last chunk anyway).
    s.upstream.clear();
    let (status, _, events) = chat_stream(
        &s.gw,
        json!({"model": "c-mistral", "stream": true, "messages": user("stream to mistral")}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let sent = s.sent();
    assert_eq!(sent["stream"], true);
    assert!(sent.get("stream_options").is_none(), "{sent}");
}

#[tokio::test]
async fn openai_reasoning_models_get_max_completion_tokens_and_default_sampling() {
    let s = setup();
    let (status, _, body) = chat(
        &s.gw,
        json!({
            "model": "c-o3-high",
            "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}],
            "max_tokens": 300,
            "temperature": 0.3,
            "top_p": 0.5,
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = s.sent();
    assert_eq!(sent["model"], "o3-mini");
    assert_eq!(sent["max_completion_tokens"], 300);
    assert_eq!(sent["reasoning_effort"], "high");
    assert_eq!(sent["messages"][0]["role"], "developer");
    for gone in ["max_tokens", "temperature", "top_p"] {
        assert!(sent.get(gone).is_none(), "{gone}: {sent}");
    }

    // A chat model keeps all of it.
    s.upstream.clear();
    let (status, _, _) = chat(
        &s.gw,
        json!({"model": "c-gpt", "messages": user("hi"), "max_tokens": 300, "temperature": 0.3}),
    )
    .await;
    assert_eq!(status, 200);
    let sent = s.sent();
    assert_eq!(sent["max_tokens"], 300);
    assert_eq!(sent["temperature"], 0.3);
    assert!(sent.get("max_completion_tokens").is_none());
}

#[tokio::test]
async fn deepseek_gets_json_object_with_the_schema_in_the_system_prompt() {
    let s = setup();
    let schema = user_schema();
    let (status, _, body) = chat(
        &s.gw,
        json!({
            "model": "c-deepseek",
            "messages": [{"role": "developer", "content": "Extract the user."}, {"role": "user", "content": "Jason is 25"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "User", "schema": schema, "strict": true}},
            "max_completion_tokens": 100,
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = s.sent();
    assert_eq!(sent["response_format"], json!({"type": "json_object"}));
    assert_eq!(sent["max_tokens"], 100);
    assert!(sent.get("max_completion_tokens").is_none());
    let system = &sent["messages"][0];
    assert_eq!(system["role"], "system");
    let text = system["content"].as_str().unwrap();
    assert!(text.starts_with("Extract the user."), "{text}");
    let embedded: Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    assert_eq!(embedded, schema);
    // The mock answers the schema it finds in the system prompt: still a valid object.
    let content: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(
        content["name"].is_string() && content["age"].is_i64(),
        "{content}"
    );

    // Images are refused before any call: DeepSeek's API is text only.
    s.upstream.clear();
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "c-deepseek", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_by_model");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("image"),
        "{body}"
    );
    assert_eq!(s.upstream.count(), 0);
}

#[tokio::test]
async fn groq_refuses_what_it_documents_as_unsupported_before_any_call() {
    let s = setup();
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "c-groq", "messages": user("two please"), "n": 2}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_by_model");
    assert_eq!(body["error"]["param"], "n");

    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "c-groq", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "summarize"},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}]}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_by_model");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("PDF") && message.contains("groq"),
        "{body}"
    );
    assert_eq!(s.upstream.count(), 0, "nothing reached Groq");

    // What Groq rejects but need not be refused is dropped.
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "c-groq", "messages": [{"role": "user", "content": "hi", "name": "jo"}],
            "logprobs": true, "top_logprobs": 2, "logit_bias": {"1": 1}, "n": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = s.sent();
    for gone in ["logprobs", "top_logprobs", "logit_bias"] {
        assert!(sent.get(gone).is_none(), "{gone}: {sent}");
    }
    assert!(sent["messages"][0].get("name").is_none(), "{sent}");
}

#[tokio::test]
async fn openrouter_gets_the_reasoning_object_and_pdfs() {
    let s = setup();
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "c-openrouter", "reasoning_effort": "low", "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "summarize"},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}]}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = s.sent();
    assert_eq!(sent["model"], "openai/o3");
    assert_eq!(sent["reasoning"], json!({"effort": "low"}));
    assert!(sent.get("reasoning_effort").is_none());
    assert_eq!(sent["messages"][0]["role"], "system");
    assert_eq!(sent["messages"][1]["content"][1]["type"], "file");
    assert_eq!(
        s.upstream.requests()[0].headers["authorization"],
        "Bearer openrouter-secret"
    );
}

#[tokio::test]
async fn azure_puts_the_deployment_in_the_path_and_the_key_in_api_key() {
    let s = setup();
    let _ = ask(&s.gw, "c-azure", "hi azure").await;
    let requests = s.upstream.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let sent = &requests[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(
        sent.path,
        "/openai/deployments/my-gpt4o-deployment/chat/completions"
    );
    assert_eq!(sent.headers["api-key"], "azure-secret");
    assert!(
        !sent.headers.contains_key("authorization"),
        "{:?}",
        sent.headers
    );
    assert_eq!(sent.body["model"], "my-gpt4o-deployment");
    assert_eq!(sent.body["messages"][0]["content"], "hi azure");
}

// ---- a scripted upstream: fixed answers, raw request lines ----

/// What the scripted upstream received: the request line (with the query string) and headers.
#[derive(Debug, Clone)]
struct Received {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 server on the test's runtime that answers every request with one fixed status
/// and JSON body, and records what it received.
struct Scripted {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Scripted {
    async fn start(status: u16, body: Value) -> Scripted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let body = body.to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                let body = body.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut socket).await else {
                        return;
                    };
                    log.lock().unwrap().push(request);
                    let reason = if status < 400 { "OK" } else { "Error" };
                    let response = format!(
                        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Scripted { url, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut data = Vec::new();
    let head_end = read_head(socket, &mut data).await? - 4;
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = data[head_end + 4..].to_vec();
    let mut buf = [0u8; 8192];
    while body.len() < length {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Some(Received {
        request_line,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

/// A gateway whose providers `scripted` (openai type, given flavor) and `scripted-azure`
/// (azure type) both point at `server`, with models `s-openai` and `s-azure`.
fn scripted_gateway(dir: &std::path::Path, server: &Scripted, flavor: &str) -> Flowgate {
    let url = &server.url;
    let config = base_config(&dir.join("data"), None)
        + "\n# One call per request, so each scripted answer maps to one client answer.\n"
        + "[retries]\nmax_retries = 0\n"
        + &openai_provider(
            "scripted",
            flavor,
            &format!("{url}/v1"),
            Some("scripted-secret"),
        )
        + &azure_provider("scripted-azure", url)
        + &model_table("s-openai", &[offer("scripted", "gpt-4o", 1.0, 1.0)], "")
        + &model_table(
            "s-azure",
            &[offer("scripted-azure", "prod-gpt4o", 1.0, 1.0)],
            "",
        );
    Flowgate::start(dir, &config)
}

fn completion(content: &str) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12,
            "prompt_tokens_details": {"cached_tokens": 4}}
    })
}

#[tokio::test]
async fn azure_sends_api_version_and_answers_through_the_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let server = Scripted::start(200, completion("from azure")).await;
    let gw = scripted_gateway(dir.path(), &server, "openai");
    let (status, headers, body) = ask(&gw, "s-azure", "hi").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-provider"], "scripted-azure");
    assert_eq!(body["choices"][0]["message"]["content"], "from azure");
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    let received = server.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(
        request.request_line,
        "POST /openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21 HTTP/1.1"
    );
    assert_eq!(request.header("api-key"), Some("azure-secret"));
    assert_eq!(request.header("authorization"), None);
    assert_eq!(request.body["model"], "prod-gpt4o");
}

/// POSTs `s-openai` to a gateway whose provider answers `status` with `error`; returns the
/// client's status and body.
async fn upstream_error(status: u16, error: Value) -> (reqwest::StatusCode, Value) {
    let dir = tempfile::tempdir().unwrap();
    let server = Scripted::start(status, error).await;
    let gw = scripted_gateway(dir.path(), &server, "openai");
    let (status, _, body) = ask(&gw, "s-openai", "hi").await;
    assert_eq!(server.received().len(), 1, "one upstream call");
    (status, body)
}

#[tokio::test]
async fn openai_error_codes_map_to_gateway_kinds() {
    let (status, body) = upstream_error(
        400,
        json!({"error": {"message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 130001 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert_eq!(body["error"]["details"]["attempts"][0]["status"], 400);
    assert_eq!(
        body["error"]["details"]["attempts"][0]["error"],
        "context_length_exceeded"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length"),
        "{body}"
    );

    let (status, body) = upstream_error(
        400,
        json!({"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
            "type": null, "param": "prompt", "code": "content_filter", "status": 400}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "content_filter");

    let (status, body) = upstream_error(
        503,
        json!({"error": {"message": "The engine is currently overloaded, please try again later",
            "type": "server_error", "param": null, "code": null}}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "overloaded");

    // A plain 400 stays the client's fault.
    let (status, body) = upstream_error(
        400,
        json!({"error": {"message": "Invalid value for 'temperature'", "type": "invalid_request_error",
            "param": "temperature", "code": "invalid_value"}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "upstream_bad_request");
}

#[tokio::test]
async fn mistral_error_shape_is_understood() {
    let dir = tempfile::tempdir().unwrap();
    let server = Scripted::start(
        400,
        json!({"object": "error", "message": "Prompt contains 40000 tokens and 0 draft tokens, too large for model with 32768 maximum context length",
            "type": "invalid_request_message_error", "param": null, "code": "3051"}),
    )
    .await;
    let gw = scripted_gateway(dir.path(), &server, "mistral");
    let (status, _, body) = ask(&gw, "s-openai", "hi").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert!(!body.to_string().contains("scripted-secret"));
}

#[tokio::test]
async fn the_mock_upstreams_scripted_400_is_a_plain_bad_request() {
    // The mock's `status=400` body carries no OpenAI error code, so it maps by status alone.
    let s = Setup::start(|data, upstream| {
        let model = offer("mistral", "mistral-small-latest;status=400", 1.0, 1.0);
        base_config(data, None)
            + &openai_provider("mistral", "mistral", &upstream.base_url(), Some("k"))
            + &model_table("m-400", &[model], "")
    });
    let (status, _, body) = ask(&s.gw, "m-400", "hi").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "upstream_bad_request");
    assert_eq!(s.upstream.count(), 1);
}

#[tokio::test]
async fn ollama_needs_no_key_and_gets_max_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = Scripted::start(200, completion("from ollama")).await;
    let config = base_config(&dir.path().join("data"), None)
        + &openai_provider("local", "ollama", &format!("{}/v1", server.url), None)
        + &model_table("local-llama", &[offer("local", "llama3.2", 0.0, 0.0)], "");
    let gw = Flowgate::start(dir.path(), &config);
    let (status, _, body) = chat(
        &gw,
        json!({"model": "local-llama", "messages": [{"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "hi"}], "max_completion_tokens": 20}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "from ollama");
    let received = server.received();
    let request = &received[0];
    assert_eq!(request.request_line, "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(request.header("authorization"), None);
    assert_eq!(request.body["max_tokens"], 20);
    assert!(request.body.get("max_completion_tokens").is_none());
    assert_eq!(request.body["messages"][0]["role"], "system");
}
