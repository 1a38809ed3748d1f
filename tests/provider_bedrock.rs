//! The `bedrock` adapter through the real binary, against the mock upstream's Converse
//! routes: what reached Bedrock (model id encoded in the path, a SigV4 `authorization` for the
//! configured key and region, the translated Converse body), what the client gets back
//! (content, tool calls, finish reasons, usage, cost at the catalog's prices), streaming,
//! error mapping and fallback, and no credential in any answer.

mod common;

use common::*;
use serde_json::{json, Value};

const CLAUDE: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";
const CLAUDE_PATH: &str = "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0";
const PNG: &str = "data:image/png;base64,iVBORw0KGgo=";
const PDF: &str = "data:application/pdf;base64,JVBERi0xLjQK";

fn models(upstream: &MockUpstream) -> String {
    let claude = |directives: &str| offer("aws", &format!("{CLAUDE};{directives}"), 1.0, 1.0);
    let haiku = Prices::new(0.80, 4.00).cached(0.08).cache_write(1.00);
    let sonnet = "us.anthropic.claude-sonnet-4-20250514-v1:0";
    let backup = backup_offer(1.0, 1.0);
    let structured = |more: &str| {
        format!("supports = {{ structured_output = true, json_mode = true, tools = true{more} }}")
    };
    let provider = format!(
        r#"
[providers.aws]
type = "bedrock"
region = "us-east-1"
access_key_id = "AKIDEXAMPLE"
secret_access_key = "bedrock-secret"
base_url = "{url}"
"#,
        url = upstream.url()
    );
    provider
        + &[
            model_table(
                "br-claude",
                &[priced_offer("aws", CLAUDE, haiku)],
                &structured(", parallel_tools = true, images = true, pdf = true"),
            ),
            model_table(
                "br-sonnet",
                &[offer("aws", sonnet, 3.00, 15.00)],
                "supports = { tools = true, reasoning = true }",
            ),
            model_table(
                "br-nova",
                &[offer("aws", "amazon.nova-lite-v1:0", 0.06, 0.24)],
                &structured(", images = true"),
            ),
            model_table(
                "br-llama",
                &[offer("aws", "meta.llama3-1-8b-instruct-v1:0", 0.22, 0.22)],
                &structured(""),
            ),
            model_table("br-throttled", &[claude("status=429;retry_after=5")], ""),
            model_table(
                "br-unavailable",
                &[claude("status=503"), backup_offer(2.0, 4.0)],
                "",
            ),
            model_table("br-too-long", &[claude("status=413")], ""),
            model_table(
                "br-stream-throttled",
                &[
                    claude("cut_after=0;exception=throttlingException"),
                    backup.clone(),
                ],
                "",
            ),
            model_table(
                "br-stream-broken",
                &[
                    claude("chunk_chars=3;cut_after=2;exception=modelStreamErrorException"),
                    backup,
                ],
                "",
            ),
        ]
        .concat()
}

fn setup() -> Setup {
    Setup::with_models(models)
}

/// The requests that reached the Bedrock routes.
fn bedrock_requests(upstream: &MockUpstream) -> Vec<flowgate_mock_upstream::RecordedRequest> {
    upstream
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/model/"))
        .collect()
}

fn assert_no_secret(what: &str) {
    assert!(
        !what.contains("bedrock-secret"),
        "the secret leaked: {what}"
    );
}

#[tokio::test]
async fn converse_request_is_signed_translated_and_priced() {
    let s = setup();
    let (status, headers, body) = chat(
        &s.gw,
        json!({
            "model": "br-claude",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                    {"type": "file", "file": {"file_data": PDF, "filename": "Q3 report_final.pdf"}}
                ]}
            ],
            "temperature": 1.7,
            "top_p": 0.8,
            "max_completion_tokens": 300,
            "stop": ["END"],
            "metadata": {"customer": "acme"}
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-provider"], "aws");
    assert_eq!(headers["x-flowgate-model"], "br-claude");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "What is in these?"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // "Be brief." (9) + "What is in these?" (17) = 26 chars → 7 tokens; 17 → 5.
    assert_eq!(body["usage"]["prompt_tokens"], 7);
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(body["usage"]["total_tokens"], 12);
    assert_cost(&body, (7.0 * 0.80 + 5.0 * 4.00) / 1e6);
    assert_no_secret(&body.to_string());

    let requests = bedrock_requests(&s.upstream);
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent.path, format!("{CLAUDE_PATH}/converse"));
    let auth = &sent.headers["authorization"];
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
        "{auth}"
    );
    assert!(
        auth.contains("/us-east-1/bedrock/aws4_request, SignedHeaders="),
        "{auth}"
    );
    assert!(auth.contains("host") && auth.contains("x-amz-date"));
    assert_no_secret(auth);
    assert_eq!(sent.headers["x-amz-date"].len(), 16);
    assert_eq!(
        sent.body,
        json!({
            "messages": [{"role": "user", "content": [
                {"text": "What is in these?"},
                {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
                {"document": {"format": "pdf", "name": "Q3 report final", "source": {"bytes": "JVBERi0xLjQK"}}}
            ]}],
            "system": [{"text": "Be brief."}],
            "inferenceConfig": {"maxTokens": 300, "temperature": 1.0, "topP": 0.8, "stopSequences": ["END"]}
        })
    );
}

#[tokio::test]
async fn tool_calls_round_trip_through_tool_use_blocks() {
    let s = setup();
    let tools = json!([weather_tool()]);
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "br-nova", "messages": user("Weather in Paris?"), "tools": tools,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], Value::Null);
    let (call, args) = answered_tool_call(&body);
    let id = call["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("tooluse_"), "{id}");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(args, json!({"city": "string"}));
    assert_cost(&body, expected_cost(&body["usage"], 0.06, 0.24));
    let sent = &bedrock_requests(&s.upstream)[0];
    assert_eq!(sent.path, "/model/amazon.nova-lite-v1%3A0/converse");
    assert_eq!(
        sent.body["toolConfig"],
        json!({"tools": [{"toolSpec": {"name": "get_weather", "description": "Weather for a city",
            "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}}],
            "toolChoice": {"tool": {"name": "get_weather"}}})
    );

    // The next turn: the tool call and its result, merged into alternating turns.
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "br-nova", "tools": tools, "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": id, "content": "{\"temp\": 21}"},
            {"role": "user", "content": "Summarize it"}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Summarize it");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let sent = &bedrock_requests(&s.upstream)[1];
    assert_eq!(
        sent.body["messages"],
        json!([
            {"role": "user", "content": [{"text": "Weather in Paris?"}]},
            {"role": "assistant", "content": [{"toolUse": {"toolUseId": id, "name": "get_weather", "input": {"city": "string"}}}]},
            {"role": "user", "content": [
                {"toolResult": {"toolUseId": id, "content": [{"json": {"temp": 21}}]}},
                {"text": "Summarize it"}
            ]}
        ])
    );
    assert!(sent.body["toolConfig"].get("toolChoice").is_none());
}

#[tokio::test]
async fn structured_output_uses_a_forced_tool_or_the_system_prompt() {
    let s = setup();
    let schema = user_schema();
    let request = |model: &str| {
        json!({"model": model, "messages": user("Jason is 25"),
            "response_format": {"type": "json_schema", "json_schema": {"name": "UserDetail", "schema": schema}}})
    };
    let (status, _, body) = chat(&s.gw, request("br-claude")).await;
    assert_eq!(status, 200, "{body}");
    let message = &body["choices"][0]["message"];
    assert!(message.get("tool_calls").is_none() || message["tool_calls"].is_null());
    let content: Value = serde_json::from_str(message["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"name": "string", "age": 0}));
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let sent = &bedrock_requests(&s.upstream)[0];
    assert_eq!(
        sent.body["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "UserDetail"}})
    );
    assert_eq!(
        sent.body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"],
        schema
    );

    // Llama cannot be forced to call a tool: the schema goes into the system prompt.
    let (status, _, body) = chat(&s.gw, request("br-llama")).await;
    assert_eq!(status, 200, "{body}");
    let content: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"name": "string", "age": 0}));
    let sent = &bedrock_requests(&s.upstream)[1];
    assert_eq!(
        sent.path,
        "/model/meta.llama3-1-8b-instruct-v1%3A0/converse"
    );
    assert!(sent.body.get("toolConfig").is_none());
    assert!(sent.body["system"][0]["text"]
        .as_str()
        .unwrap()
        .contains("JSON schema"));
}

#[tokio::test]
async fn reasoning_effort_becomes_a_thinking_budget() {
    let s = setup();
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "br-sonnet-high", "messages": user("Think hard"), "temperature": 0.3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = &bedrock_requests(&s.upstream)[0];
    assert_eq!(
        sent.path,
        "/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/converse"
    );
    assert_eq!(
        sent.body["additionalModelRequestFields"],
        json!({"thinking": {"type": "enabled", "budget_tokens": 16384}})
    );
    assert_eq!(sent.body["inferenceConfig"], json!({"maxTokens": 24576}));
}

#[tokio::test]
async fn streaming_text_and_tool_calls() {
    let s = setup();
    let text = "The quick brown fox jumps over the lazy dog";
    let request = json!({"model": "br-claude", "stream_options": {"include_usage": true}});
    let (_, chunks) = stream_text(&s.gw, request, text, "aws").await;
    assert_eq!(finish_reasons(&chunks), ["stop"]);
    let last = chunks.last().unwrap();
    // 43 chars → 11 tokens each way.
    assert_eq!(last["usage"]["prompt_tokens"], 11);
    assert_eq!(last["usage"]["completion_tokens"], 11);
    assert_cost(last, (11.0 * 0.80 + 11.0 * 4.00) / 1e6);
    let sent = &bedrock_requests(&s.upstream)[0];
    assert_eq!(sent.path, format!("{CLAUDE_PATH}/converse-stream"));
    assert_eq!(sent.headers["accept"], "application/vnd.amazon.eventstream");

    let (_, chunks) = stream_ok(
        &s.gw,
        json!({"model": "br-claude", "messages": user("Jason is 25"),
            "tools": [user_name_tool()], "tool_choice": "required"}),
    )
    .await;
    let call = streamed_tool_call(&chunks);
    assert!(call.id.starts_with("tooluse_"), "{call:?}");
    assert_eq!(call.name, "User");
    assert_eq!(
        serde_json::from_str::<Value>(&call.arguments).unwrap(),
        json!({"name": "string"})
    );
    assert_eq!(finish_reasons(&chunks).last().unwrap(), "tool_calls");
    assert_eq!(
        bedrock_requests(&s.upstream)[1].body["toolConfig"]["toolChoice"],
        json!({"any": {}})
    );
}

#[tokio::test]
async fn errors_map_to_openai_statuses_and_fall_back() {
    let s = setup();
    let mut seen = Vec::new();
    let body = assert_rate_limited(&s.gw, "br-throttled", "5").await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("ThrottlingException"));
    seen.push(body.to_string());

    let (status, _, body) = ask(&s.gw, "br-too-long", "hi").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    seen.push(body.to_string());

    // 503: the next provider answers, invisibly.
    let (body, run) = answered_by_backup(&s.gw, "br-unavailable", "aws", 503, "overloaded").await;
    seen.push(body.to_string());
    seen.push(run.to_string());

    // A stream exception before any content falls back too.
    seen.extend(stream_from(&s.gw, "br-stream-throttled", "hello", "backup").await);

    // After content, the exception ends the stream with an error event.
    let (_, chunks, last) = stream_cut(&s.gw, "br-stream-broken", "abcdefghijkl", "aws").await;
    assert_eq!(last["error"]["code"], "upstream_server_error", "{last}");
    assert!(last["error"]["message"]
        .as_str()
        .unwrap()
        .contains("modelStreamErrorException"));
    assert_eq!(streamed_content(&chunks), "abcdef");
    seen.extend(chunks.iter().chain([&last]).map(Value::to_string));

    for text in &seen {
        assert_no_secret(text);
    }
    for request in bedrock_requests(&s.upstream) {
        assert_no_secret(&request.headers["authorization"]);
    }
}
