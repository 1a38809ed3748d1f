//! The conformance suite every provider adapter passes: the same OpenAI-shaped requests go
//! through flowgate to each provider kind's route on the mock upstream, which speaks that
//! provider's documented wire format. The client must see the same OpenAI answers whatever the
//! provider; what reached the provider is checked in the provider's own shape. Each check runs
//! as its own test for each adapter (`openai::streams_text_with_usage_last`, …), against a
//! gateway that serves that adapter alone, so one adapter's failure never hides another's.

mod common;

use common::*;
use serde_json::{json, Value};

/// One provider kind under test.
struct Kind {
    /// Provider name in the config and in `x-flowgate-provider`.
    name: &'static str,
    /// The `[providers.<name>]` table (without its header).
    config: fn(&MockUpstream) -> String,
    /// The provider model id to serve `conf-<name>` with (may carry mock directives).
    model: &'static str,
    /// The text of the last user turn, as the provider received it.
    last_user_text: fn(&Value) -> Option<String>,
    /// The tool names the provider received.
    tool_names: fn(&Value) -> Vec<String>,
    /// Whether the provider received an inline image.
    has_inline_image: fn(&Value) -> bool,
}

/// The text of the last message (a string, or its first text part or block).
fn last_message_text(body: &Value) -> Option<String> {
    let last = body["messages"].as_array()?.last()?;
    match &last["content"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .find_map(|p| p["text"].as_str().map(String::from)),
        _ => None,
    }
}

/// The strings at `pointer` in each item of `list` (an array, or nothing).
fn names_at(list: &Value, pointer: &str) -> Vec<String> {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.pointer(pointer)?.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether any content block of any message is `block`.
fn any_block(body: &Value, block: impl Fn(&Value) -> bool) -> bool {
    body["messages"].as_array().is_some_and(|m| {
        m.iter().any(|m| {
            m["content"]
                .as_array()
                .is_some_and(|b| b.iter().any(&block))
        })
    })
}

fn openai_tools(body: &Value) -> Vec<String> {
    names_at(&body["tools"], "/function/name")
}

fn openai_image(body: &Value) -> bool {
    body.to_string().contains("\"image_url\"")
}

fn anthropic_tools(body: &Value) -> Vec<String> {
    names_at(&body["tools"], "/name")
}

fn anthropic_image(body: &Value) -> bool {
    any_block(body, |b| b["type"] == "image")
}

fn gemini_text(body: &Value) -> Option<String> {
    let last = body["contents"].as_array()?.last()?;
    last["parts"]
        .as_array()?
        .iter()
        .find_map(|p| p["text"].as_str().map(String::from))
}

fn gemini_tools(body: &Value) -> Vec<String> {
    body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| names_at(&t["functionDeclarations"], "/name"))
        .collect()
}

fn gemini_image(body: &Value) -> bool {
    let text = body.to_string();
    text.contains("\"inlineData\"") || text.contains("\"inline_data\"")
}

fn bedrock_text(body: &Value) -> Option<String> {
    let last = body["messages"].as_array()?.last()?;
    last["content"]
        .as_array()?
        .iter()
        .find_map(|b| b["text"].as_str().map(String::from))
}

fn bedrock_tools(body: &Value) -> Vec<String> {
    names_at(&body["toolConfig"]["tools"], "/toolSpec/name")
}

fn bedrock_image(body: &Value) -> bool {
    any_block(body, |b| b.get("image").is_some())
}

fn kinds() -> Vec<Kind> {
    vec![
        Kind {
            name: "conf_openai",
            config: |u| {
                format!(
                    "type = \"openai\"\nbase_url = \"{}\"\napi_key = \"k-openai\"\n",
                    u.base_url()
                )
            },
            model: "gpt-4o-mini",
            last_user_text: last_message_text,
            tool_names: openai_tools,
            has_inline_image: openai_image,
        },
        Kind {
            name: "conf_azure",
            config: |u| {
                format!(
                    "type = \"azure\"\nendpoint = \"{}\"\napi_key = \"k-azure\"\n",
                    u.url()
                )
            },
            model: "my-deployment",
            last_user_text: last_message_text,
            tool_names: openai_tools,
            has_inline_image: openai_image,
        },
        Kind {
            name: "conf_anthropic",
            config: |u| {
                format!(
                    "type = \"anthropic\"\nbase_url = \"{}\"\napi_key = \"k-anthropic\"\n",
                    u.url()
                )
            },
            model: "claude-3-5-haiku-20241022",
            last_user_text: last_message_text,
            tool_names: anthropic_tools,
            has_inline_image: anthropic_image,
        },
        Kind {
            name: "conf_gemini",
            config: |u| {
                format!(
                    "type = \"gemini\"\nbase_url = \"{}\"\napi_key = \"k-gemini\"\n",
                    u.url()
                )
            },
            model: "gemini-2.0-flash",
            last_user_text: gemini_text,
            tool_names: gemini_tools,
            has_inline_image: gemini_image,
        },
        Kind {
            name: "conf_vertex",
            config: |u| {
                format!(
                    "type = \"vertex\"\nproject = \"p\"\nregion = \"us-central1\"\nbase_url = \"{}\"\naccess_token = \"k-vertex\"\n",
                    u.url()
                )
            },
            model: "gemini-2.0-flash",
            last_user_text: gemini_text,
            tool_names: gemini_tools,
            has_inline_image: gemini_image,
        },
        Kind {
            name: "conf_bedrock",
            config: |u| {
                format!(
                    "type = \"bedrock\"\nregion = \"us-east-1\"\naccess_key_id = \"AKIDCONFORMANCE\"\nsecret_access_key = \"k-bedrock\"\nbase_url = \"{}\"\n",
                    u.url()
                )
            },
            model: "anthropic.claude-3-5-haiku-20241022-v1:0",
            last_user_text: bedrock_text,
            tool_names: bedrock_tools,
            has_inline_image: bedrock_image,
        },
    ]
}

const SECRETS: [&str; 6] = [
    "k-openai",
    "k-azure",
    "k-anthropic",
    "k-gemini",
    "k-vertex",
    "k-bedrock",
];

/// A gateway serving one provider kind, next to the mock upstream.
fn start_for(kind: &Kind) -> Setup {
    Setup::with_models(|upstream| {
        let supports = "supports = { structured_output = true, json_mode = true, tools = true, parallel_tools = true, images = true, pdf = true }";
        let mut config = String::new();
        {
            let name = kind.name;
            let offer = |model: &str| offer(name, model, 1.0, 2.0);
            config += &format!("\n[providers.{name}]\n{}", (kind.config)(upstream));
            config += &model_table(&format!("conf-{name}"), &[offer(kind.model)], supports);
            config += &model_table(
                &format!("conf-{name}-429"),
                &[offer(&format!("{};status=429;retry_after=3", kind.model))],
                supports,
            );
            config += &model_table(
                &format!("conf-{name}-500"),
                &[offer(&format!("{};status=500", kind.model))],
                &format!("{supports}\nfallback = {{ unavailable = [\"mock-echo\"] }}"),
            );
        }
        config
    })
}

fn assert_no_secret(kind: &Kind, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{}: a provider secret leaked: {text}",
            kind.name
        );
    }
}

async fn answers_text_the_same_way(s: &Setup, kind: &Kind) {
    s.upstream.clear();
    let model = format!("conf-{}", kind.name);
    let text = format!("Hello from {}", kind.name);
    let (status, headers, body) = chat(
        &s.gw,
        json!({"model": model, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": text}
        ], "temperature": 0.5, "max_tokens": 100}),
    )
    .await;
    assert_eq!(status, 200, "{}: {body}", kind.name);
    assert_eq!(headers["x-flowgate-provider"], kind.name);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"], text,
        "{}",
        kind.name
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{}", kind.name);
    let usage = &body["usage"];
    assert!(
        usage["prompt_tokens"].as_u64().unwrap() > 0,
        "{}",
        kind.name
    );
    assert_cost(&body, expected_cost(usage, 1.0, 2.0));
    assert_no_secret(kind, &body.to_string());

    let requests = s.upstream.requests();
    assert_eq!(requests.len(), 1, "{}", kind.name);
    let sent = &requests[0].body;
    assert_eq!(
        (kind.last_user_text)(sent).as_deref(),
        Some(text.as_str()),
        "{}: {sent}",
        kind.name
    );
    assert!(
        sent.to_string().contains("Be brief."),
        "{}: the system prompt reached the provider: {sent}",
        kind.name
    );
}

async fn streams_text_with_usage_last(s: &Setup, kind: &Kind) {
    let model = format!("conf-{}", kind.name);
    let text = format!("Streaming through {} works fine", kind.name);
    let (status, headers, events) = chat_stream(
        &s.gw,
        json!({"model": model, "stream": true, "messages": user(&text)}),
    )
    .await;
    assert_eq!(status, 200, "{}: {events:?}", kind.name);
    assert_eq!(headers["x-flowgate-provider"], kind.name);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{}: {events:?}",
        kind.name
    );
    let chunks = stream_chunks(&events);
    assert_eq!(streamed_content(&chunks), text, "{}", kind.name);
    let finish = finish_reasons(&chunks);
    assert_eq!(
        finish.first().map(String::as_str),
        Some("stop"),
        "{}",
        kind.name
    );
    let last = chunks.last().unwrap();
    assert!(
        last["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{}: {last}",
        kind.name
    );
    assert_cost(last, expected_cost(&last["usage"], 1.0, 2.0));
}

async fn makes_forced_tool_calls_in_openai_shape(s: &Setup, kind: &Kind) {
    let tools = json!([{"type": "function", "function": {
        "name": "record_user", "description": "Record a user",
        "parameters": {"type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"]}}}]);
    s.upstream.clear();
    let model = format!("conf-{}", kind.name);
    for stream in [false, true] {
        let request = json!({"model": model, "stream": stream, "messages": user("Jason is 25"),
            "tools": tools, "tool_choice": {"type": "function", "function": {"name": "record_user"}}});
        let (name, arguments, finish) = if stream {
            let (status, _, events) = chat_stream(&s.gw, request).await;
            assert_eq!(status, 200, "{}: {events:?}", kind.name);
            let chunks = stream_chunks(&events);
            let call = streamed_tool_call(&chunks);
            let finish = finish_reasons(&chunks).pop().unwrap_or_default();
            (call.name, call.arguments, finish)
        } else {
            let (status, _, body) = chat(&s.gw, request).await;
            assert_eq!(status, 200, "{}: {body}", kind.name);
            let call = &body["choices"][0]["message"]["tool_calls"][0];
            assert!(
                call["id"].as_str().is_some_and(|id| !id.is_empty()),
                "{}: {body}",
                kind.name
            );
            assert_eq!(call["type"], "function");
            (
                call["function"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                call["function"]["arguments"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                body["choices"][0]["finish_reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        };
        assert_eq!(name, "record_user", "{} stream={stream}", kind.name);
        let args: Value = serde_json::from_str(&arguments)
            .unwrap_or_else(|e| panic!("{} stream={stream}: {e}: {arguments}", kind.name));
        assert!(
            args["name"].is_string() && args["age"].is_i64(),
            "{}: {args}",
            kind.name
        );
        assert_eq!(finish, "tool_calls", "{} stream={stream}", kind.name);
    }
    let sent = &s.upstream.requests()[0].body;
    assert_eq!(
        (kind.tool_names)(sent),
        vec!["record_user".to_string()],
        "{}: {sent}",
        kind.name
    );
}

async fn answers_json_schema_requests_with_valid_json(s: &Setup, kind: &Kind) {
    let schema = json!({"type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"], "additionalProperties": false});
    let model = format!("conf-{}", kind.name);
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": model, "messages": user("Paris has 2 million people"),
            "response_format": {"type": "json_schema",
                "json_schema": {"name": "City", "schema": schema, "strict": true}}}),
    )
    .await;
    assert_eq!(status, 200, "{}: {body}", kind.name);
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no content: {body}", kind.name));
    let parsed: Value = serde_json::from_str(content)
        .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {content}", kind.name));
    assert!(
        parsed["city"].is_string() && parsed["population"].is_i64(),
        "{}: {parsed}",
        kind.name
    );
}

async fn passes_inline_images(s: &Setup, kind: &Kind) {
    // A 1x1 PNG.
    let png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    s.upstream.clear();
    let model = format!("conf-{}", kind.name);
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": model, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe this image"},
            {"type": "image_url", "image_url": {"url": png}}
        ]}]}),
    )
    .await;
    assert_eq!(status, 200, "{}: {body}", kind.name);
    let sent = &s.upstream.requests()[0].body;
    assert!(
        (kind.has_inline_image)(sent),
        "{}: no image reached the provider: {sent}",
        kind.name
    );
}

async fn maps_rate_limits_and_falls_back_on_server_errors(s: &Setup, kind: &Kind) {
    let (status, headers, body) = ask(&s.gw, &format!("conf-{}-429", kind.name), "hi").await;
    assert_eq!(status, 429, "{}: {body}", kind.name);
    assert_eq!(body["error"]["type"], "rate_limit_error", "{}", kind.name);
    assert_eq!(
        headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("3"),
        "{}",
        kind.name
    );
    assert_eq!(
        body["error"]["details"]["attempts"][0]["status"], 429,
        "{}",
        kind.name
    );
    assert_no_secret(kind, &body.to_string());

    let (status, headers, body) =
        ask(&s.gw, &format!("conf-{}-500", kind.name), "fallback please").await;
    assert_eq!(status, 200, "{}: {body}", kind.name);
    assert_eq!(headers["x-flowgate-provider"], "mock", "{}", kind.name);
    let run = run_of(&s.gw, &headers).await;
    assert_eq!(run["attempts"][0]["provider"], kind.name);
    assert_eq!(run["attempts"][0]["status"], 500, "{}: {run}", kind.name);
    assert_no_secret(kind, &run.to_string());
}

/// One test per adapter and check, so that one adapter's failure never hides another's:
/// `cargo test --test conformance bedrock::` runs one adapter, `::streams_text` one check.
macro_rules! adapter_suite {
    ($($adapter:ident => $kind:literal),* $(,)?) => {$(
        mod $adapter {
            use super::*;

            fn setup() -> (Setup, Kind) {
                let kind = kinds()
                    .into_iter()
                    .find(|k| k.name == $kind)
                    .expect("a kind of the suite");
                (start_for(&kind), kind)
            }

            #[tokio::test]
            async fn answers_text_the_same_way() {
                let (s, kind) = setup();
                super::answers_text_the_same_way(&s, &kind).await;
            }

            #[tokio::test]
            async fn streams_text_with_usage_last() {
                let (s, kind) = setup();
                super::streams_text_with_usage_last(&s, &kind).await;
            }

            #[tokio::test]
            async fn makes_forced_tool_calls_in_openai_shape() {
                let (s, kind) = setup();
                super::makes_forced_tool_calls_in_openai_shape(&s, &kind).await;
            }

            #[tokio::test]
            async fn answers_json_schema_requests_with_valid_json() {
                let (s, kind) = setup();
                super::answers_json_schema_requests_with_valid_json(&s, &kind).await;
            }

            #[tokio::test]
            async fn passes_inline_images() {
                let (s, kind) = setup();
                super::passes_inline_images(&s, &kind).await;
            }

            #[tokio::test]
            async fn maps_rate_limits_and_falls_back_on_server_errors() {
                let (s, kind) = setup();
                super::maps_rate_limits_and_falls_back_on_server_errors(&s, &kind).await;
            }
        }
    )*};
}

adapter_suite!(
    openai => "conf_openai",
    azure => "conf_azure",
    anthropic => "conf_anthropic",
    gemini => "conf_gemini",
    vertex => "conf_vertex",
    bedrock => "conf_bedrock",
);
