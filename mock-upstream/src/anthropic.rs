//! The Anthropic Messages API wire format: `POST /v1/messages` (JSON and SSE) and
//! Anthropic-style errors (`{"type":"error","error":{"type":…,"message":…},"request_id":…}`).
//!
//! Claude on Vertex AI speaks it too, at
//! `POST /v1/projects/{p}/locations/{l}/publishers/anthropic/models/{model}:rawPredict`
//! (`:streamRawPredict` to stream): authenticated by `Authorization: Bearer` (any token;
//! Google's `401 UNAUTHENTICATED` without one), the model (URL-decoded, directives included)
//! in the path and not in the body, `"anthropic_version": "vertex-2023-10-16"` in the body
//! instead of the header, and `stream: true` exactly on `:streamRawPredict`.
//!
//! The request is checked the way the real API checks it (the `x-api-key` and
//! `anthropic-version` headers, required fields, roles, empty text blocks, `tool_result`
//! blocks answering the previous turn's `tool_use`, the rules around `thinking`), converted
//! to the OpenAI shape and answered by [`crate::answer`]; the answer is rendered as a
//! `message` object or as Anthropic's event stream (`message_start`, `content_block_start`,
//! `ping`, `content_block_delta` with `text_delta` / `input_json_delta` / `thinking_delta`,
//! `content_block_stop`, `message_delta`, `message_stop`).
//!
//! Besides the shared [`directives`](crate::directives), the model string may carry these,
//! understood only here:
//!
//! | directive | effect |
//! |---|---|
//! | `cache_read=N` | report N `cache_read_input_tokens` |
//! | `cache_write=N` | report N `cache_creation_input_tokens` |
//! | `refusal` | `stop_reason: "refusal"` |
//! | `prompt_too_long` | 400 `invalid_request_error` "prompt is too long: …" |
//! | `stream_error=N` | streaming: after N content deltas, an `error` event (`overloaded_error`) ends the stream |

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::answer::{self, tokens_for_chars};
use crate::directives::Directives;
use crate::ids;
use crate::script::{self, Outcome, Piece};
use crate::state::State;

/// The body sent for the `malformed` directive: truncated JSON.
pub const MALFORMED_BODY: &str = r#"{"id": "msg_x", "type": "message", "content": ["#;
/// The thinking the mock does when `thinking` is enabled.
pub const THINKING_TEXT: &str = "The user wants an answer; I will give it plainly.";
/// Smallest `thinking.budget_tokens` the API accepts.
const MIN_THINKING_BUDGET: u64 = 1024;
/// The `anthropic_version` Vertex AI requires in the body.
pub const VERTEX_VERSION: &str = "vertex-2023-10-16";

/// Directives only this route understands (see the module documentation).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Extra {
    cache_read: u64,
    cache_write: u64,
    refusal: bool,
    prompt_too_long: bool,
    stream_error: Option<usize>,
}

impl Extra {
    fn parse(model: &str) -> Extra {
        let mut extra = Extra::default();
        for part in model.split(';').skip(1) {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (part.trim(), None),
            };
            let num = || value.and_then(|v| v.parse::<u64>().ok());
            match key {
                "cache_read" => extra.cache_read = num().unwrap_or(extra.cache_read),
                "cache_write" => extra.cache_write = num().unwrap_or(extra.cache_write),
                "refusal" => extra.refusal = true,
                "prompt_too_long" => extra.prompt_too_long = true,
                "stream_error" => {
                    extra.stream_error =
                        Some(num().map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX)))
                }
                _ => {}
            }
        }
        extra
    }
}

/// An Anthropic error body.
pub fn error_body(kind: &str, message: &str) -> Value {
    json!({
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": ids::with_prefix("req_"),
    })
}

/// The error type and body Anthropic sends with `status`.
pub fn status_error_body(status: u16, model: &str) -> Value {
    let (kind, message) = match status {
        400 => (
            "invalid_request_error",
            "Scripted error 400 (mock upstream)".to_string(),
        ),
        401 => ("authentication_error", "invalid x-api-key".to_string()),
        403 => (
            "permission_error",
            "Your API key does not have permission to use the specified resource.".to_string(),
        ),
        404 => ("not_found_error", format!("model: {model}")),
        413 => (
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.".to_string(),
        ),
        429 => (
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50 requests \
             per minute. (mock upstream)"
                .to_string(),
        ),
        529 => ("overloaded_error", "Overloaded".to_string()),
        500..=599 => ("api_error", "Internal server error".to_string()),
        _ => (
            "invalid_request_error",
            format!("Scripted error {status} (mock upstream)"),
        ),
    };
    error_body(kind, &message)
}

fn error_response(status: u16, body: &Value, retry_after: Option<String>) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::build(status);
    response.insert_header(("request-id", ids::with_prefix("req_")));
    if let Some(retry_after) = retry_after {
        response.insert_header(("retry-after", retry_after));
    }
    response.json(body)
}

fn invalid(message: &str) -> HttpResponse {
    error_response(400, &error_body("invalid_request_error", message), None)
}

fn header(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn text_of(blocks: &[Value]) -> String {
    blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The blocks of a `content` (a string is one text block).
fn blocks_of(content: &Value) -> Vec<Value> {
    match content {
        Value::String(text) => vec![json!({"type": "text", "text": text})],
        Value::Array(blocks) => blocks.clone(),
        _ => Vec::new(),
    }
}

fn tool_use_ids(message: &Value) -> Vec<&str> {
    match message.get("content") {
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
            .filter_map(|b| b.get("id").and_then(Value::as_str))
            .collect(),
        _ => Vec::new(),
    }
}

/// Checks a request like the Messages API does; the error message on failure.
fn validate(body: &Value) -> Result<(), String> {
    if !body.is_object() {
        return Err("The request body is not valid JSON.".to_string());
    }
    if !body.get("model").is_some_and(Value::is_string) {
        return Err("model: Field required".to_string());
    }
    let max_tokens = match body.get("max_tokens") {
        None | Some(Value::Null) => return Err("max_tokens: Field required".to_string()),
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .ok_or("max_tokens: Input should be greater than or equal to 1")?,
    };
    let messages = match body.get("messages") {
        Some(Value::Array(messages)) => messages,
        _ => return Err("messages: Field required".to_string()),
    };
    if messages.is_empty() {
        return Err("messages: at least one message is required".to_string());
    }
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str);
        if !matches!(role, Some("user" | "assistant")) {
            return Err(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
        let content = message.get("content").unwrap_or(&Value::Null);
        if !(content.is_string() || content.is_array()) {
            return Err(format!("messages.{i}.content: Field required"));
        }
        for (j, block) in blocks_of(content).iter().enumerate() {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                    if text.trim().is_empty() {
                        return Err(
                            "messages: text content blocks must contain non-whitespace text"
                                .to_string(),
                        );
                    }
                }
                Some("tool_result") => {
                    let id = block
                        .get("tool_use_id")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let previous = i.checked_sub(1).map(|p| &messages[p]);
                    let answered = previous.is_some_and(|p| {
                        p.get("role").and_then(Value::as_str) == Some("assistant")
                            && tool_use_ids(p).contains(&id)
                    });
                    if role != Some("user") || !answered {
                        return Err(format!(
                            "messages.{i}.content.{j}: unexpected `tool_use_id` found in \
                             `tool_result` blocks: {id}. Each `tool_result` block must have a \
                             corresponding `tool_use` block in the previous message."
                        ));
                    }
                }
                Some(_) => {}
                None => return Err(format!("messages.{i}.content.{j}.type: Field required")),
            }
        }
    }
    if let Some(t) = body.get("temperature").and_then(Value::as_f64) {
        if !(0.0..=1.0).contains(&t) {
            return Err("temperature: Input should be less than or equal to 1".to_string());
        }
    }
    for (i, tool) in body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if !tool.get("name").is_some_and(Value::is_string) {
            return Err(format!("tools.{i}.name: Field required"));
        }
        if tool.get("input_schema").and_then(|s| s.get("type")) != Some(&json!("object")) {
            return Err(format!(
                "tools.{i}.input_schema.type: Input should be 'object'"
            ));
        }
    }
    if body.pointer("/thinking/type").and_then(Value::as_str) == Some("enabled") {
        let budget = body
            .pointer("/thinking/budget_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if budget < MIN_THINKING_BUDGET {
            return Err(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
                    .to_string(),
            );
        }
        if max_tokens <= budget {
            return Err("`max_tokens` must be greater than `thinking.budget_tokens`".to_string());
        }
        if body
            .get("temperature")
            .and_then(Value::as_f64)
            .is_some_and(|t| t != 1.0)
        {
            return Err("`temperature` may only be set to 1 when thinking is enabled.".to_string());
        }
        if body
            .get("top_p")
            .and_then(Value::as_f64)
            .is_some_and(|p| p < 0.95)
        {
            return Err(
                "`top_p` must be greater than or equal to 0.95 when thinking is enabled."
                    .to_string(),
            );
        }
        if matches!(
            body.pointer("/tool_choice/type").and_then(Value::as_str),
            Some("any" | "tool")
        ) {
            return Err(
                "Thinking may not be enabled when tool_choice forces tool use.".to_string(),
            );
        }
    }
    Ok(())
}

/// The Anthropic request in the OpenAI shape [`answer::answer`] reads.
fn to_openai(body: &Value) -> Value {
    let mut messages = Vec::new();
    match body.get("system") {
        Some(Value::String(text)) => messages.push(json!({"role": "system", "content": text})),
        Some(Value::Array(blocks)) => {
            messages.push(json!({"role": "system", "content": text_of(blocks)}));
        }
        _ => {}
    }
    for message in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or("user");
        let blocks = blocks_of(message.get("content").unwrap_or(&Value::Null));
        let mut parts = Vec::new();
        let mut tool_calls = Vec::new();
        for block in &blocks {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => parts.push(json!({"type": "text", "text": block["text"]})),
                Some("image") => {
                    let url = match block.pointer("/source/type").and_then(Value::as_str) {
                        Some("base64") => format!(
                            "data:{};base64,{}",
                            block
                                .pointer("/source/media_type")
                                .and_then(Value::as_str)
                                .unwrap_or(""),
                            block
                                .pointer("/source/data")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                        ),
                        _ => block
                            .pointer("/source/url")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                    };
                    parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                }
                Some("document") => parts.push(json!({"type": "file", "file": {
                    "filename": block.get("title"),
                    "file_data": block.pointer("/source/data"),
                }})),
                Some("tool_use") => tool_calls.push(json!({
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": block["input"].to_string()},
                })),
                Some("tool_result") => {
                    let content = match block.get("content") {
                        Some(Value::String(text)) => text.clone(),
                        Some(Value::Array(inner)) => text_of(inner),
                        _ => String::new(),
                    };
                    messages.push(json!({
                        "role": "tool",
                        "tool_call_id": block["tool_use_id"],
                        "content": content,
                    }));
                }
                _ => {}
            }
        }
        if role == "assistant" {
            let mut out = json!({"role": "assistant", "content": text_of(&blocks)});
            if !tool_calls.is_empty() {
                out["tool_calls"] = Value::Array(tool_calls);
            }
            messages.push(out);
        } else if !parts.is_empty() {
            messages.push(json!({"role": "user", "content": parts}));
        }
    }
    let mut request = Map::new();
    request.insert(
        "model".into(),
        body.get("model").cloned().unwrap_or(Value::Null),
    );
    request.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t["name"],
                    "description": t.get("description"),
                    "parameters": t.get("input_schema"),
                }})
            })
            .collect();
        request.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = body.get("tool_choice") {
        let openai = match choice.get("type").and_then(Value::as_str) {
            Some("any") => json!("required"),
            Some("tool") => json!({"type": "function", "function": {"name": choice["name"]}}),
            Some("none") => json!("none"),
            _ => json!("auto"),
        };
        request.insert("tool_choice".into(), openai);
        if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            request.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    // Structured outputs (`output_format`, a beta of the real API).
    if let Some(schema) = body.pointer("/output_format/schema") {
        request.insert(
            "response_format".into(),
            json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}),
        );
    }
    Value::Object(request)
}

/// One tool call of the reply.
#[derive(Debug, Clone, PartialEq)]
struct ToolUse {
    id: String,
    name: String,
    input: Value,
    json: String,
}

/// What the mock answers, in Anthropic's terms.
#[derive(Debug, Clone, PartialEq)]
struct Reply {
    id: String,
    model: String,
    thinking: Option<String>,
    text: Option<String>,
    tool_uses: Vec<ToolUse>,
    stop_reason: &'static str,
    stop_sequence: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    cache_read: u64,
    cache_write: u64,
}

fn reply(body: &Value, d: &Directives, extra: &Extra) -> Reply {
    let answer = answer::answer(&to_openai(body));
    let thinking = (body.pointer("/thinking/type").and_then(Value::as_str) == Some("enabled"))
        .then(|| THINKING_TEXT.to_string());
    let thinking_tokens = thinking
        .as_deref()
        .map_or(0, |t| tokens_for_chars(t.chars().count()));
    let max_tokens = body.get("max_tokens").and_then(Value::as_u64).unwrap_or(1);
    let tool_uses: Vec<ToolUse> = answer
        .tool_calls
        .iter()
        .map(|call| {
            let input: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
            ToolUse {
                id: ids::with_prefix("toolu_"),
                name: call.name.clone(),
                json: input.to_string(),
                input,
            }
        })
        .collect();
    let mut stop_reason = if tool_uses.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    };
    let mut stop_sequence = None;
    let mut output_tokens = answer.completion_tokens;
    let text = answer.content.map(|mut text| {
        let stops = body
            .get("stop_sequences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty());
        if let Some((at, stop)) = stops
            .filter_map(|s| text.find(s).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at)
        {
            text.truncate(at);
            stop_reason = "stop_sequence";
            stop_sequence = Some(stop.to_string());
        }
        output_tokens = tokens_for_chars(text.chars().count());
        if output_tokens > max_tokens {
            let chars = usize::try_from(max_tokens.saturating_mul(4)).unwrap_or(usize::MAX);
            text = text.chars().take(chars).collect();
            output_tokens = max_tokens;
            stop_reason = "max_tokens";
            stop_sequence = None;
        }
        text
    });
    if extra.refusal {
        stop_reason = "refusal";
    }
    Reply {
        id: ids::with_prefix("msg_"),
        model: d.base.clone(),
        thinking,
        text: text.filter(|t| !t.is_empty()),
        tool_uses,
        stop_reason,
        stop_sequence,
        input_tokens: answer.prompt_tokens,
        output_tokens: output_tokens + thinking_tokens,
        cache_read: extra.cache_read,
        cache_write: extra.cache_write,
    }
}

fn usage_json(reply: &Reply, output_tokens: u64) -> Value {
    json!({
        "input_tokens": reply.input_tokens,
        "cache_creation_input_tokens": reply.cache_write,
        "cache_read_input_tokens": reply.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": reply.cache_write,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    })
}

fn signature() -> String {
    format!("Eq{}", ids::unique_token())
}

/// The non-streaming `message` object.
fn message_json(reply: &Reply) -> Value {
    let mut content = Vec::new();
    if let Some(thinking) = &reply.thinking {
        content.push(json!({"type": "thinking", "thinking": thinking, "signature": signature()}));
    }
    if let Some(text) = &reply.text {
        content.push(json!({"type": "text", "text": text}));
    }
    for tool in &reply.tool_uses {
        content.push(
            json!({"type": "tool_use", "id": tool.id, "name": tool.name, "input": tool.input}),
        );
    }
    json!({
        "id": reply.id,
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": reply.stop_sequence,
        "usage": usage_json(reply, reply.output_tokens),
    })
}

/// One SSE event: `event: <type>\ndata: {json}\n\n`.
fn sse_event(data: &Value) -> Bytes {
    let kind = data
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Serializing a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The events of a streamed reply, tagged for `cut_after`: starts, stops and pings are
/// `Head`, deltas `Content`, `message_delta` and `message_stop` `Tail`.
fn stream_events(reply: &Reply, chunk_chars: usize) -> Vec<(Piece, Value)> {
    let mut start = message_json(reply);
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["stop_sequence"] = Value::Null;
    start["usage"] = usage_json(reply, 1);
    let mut events = vec![(
        Piece::Head,
        json!({"type": "message_start", "message": start}),
    )];
    let mut index = 0;
    // A block: its start, deltas that carry nothing (`lead`, `tail`) around the content ones,
    // its stop.
    let mut block = |events: &mut Vec<(Piece, Value)>,
                     start: Value,
                     lead: Vec<Value>,
                     deltas: Vec<Value>,
                     tail: Vec<Value>| {
        events.push((
            Piece::Head,
            json!({"type": "content_block_start", "index": index, "content_block": start}),
        ));
        if index == 0 {
            events.push((Piece::Head, json!({"type": "ping"})));
        }
        for delta in lead {
            events.push((
                Piece::Head,
                json!({"type": "content_block_delta", "index": index, "delta": delta}),
            ));
        }
        for delta in deltas {
            events.push((
                Piece::Content,
                json!({"type": "content_block_delta", "index": index, "delta": delta}),
            ));
        }
        for delta in tail {
            events.push((
                Piece::Head,
                json!({"type": "content_block_delta", "index": index, "delta": delta}),
            ));
        }
        events.push((
            Piece::Head,
            json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    };
    if let Some(thinking) = &reply.thinking {
        let deltas = answer::chunks(thinking, chunk_chars)
            .into_iter()
            .map(|t| json!({"type": "thinking_delta", "thinking": t}))
            .collect();
        let tail = vec![json!({"type": "signature_delta", "signature": signature()})];
        block(
            &mut events,
            json!({"type": "thinking", "thinking": ""}),
            Vec::new(),
            deltas,
            tail,
        );
    }
    if let Some(text) = &reply.text {
        let deltas = answer::chunks(text, chunk_chars)
            .into_iter()
            .map(|t| json!({"type": "text_delta", "text": t}))
            .collect();
        block(
            &mut events,
            json!({"type": "text", "text": ""}),
            Vec::new(),
            deltas,
            Vec::new(),
        );
    }
    for tool in &reply.tool_uses {
        let start = json!({"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}});
        // The API opens every tool input with an empty fragment.
        let lead = vec![json!({"type": "input_json_delta", "partial_json": ""})];
        let deltas = answer::chunks(&tool.json, chunk_chars)
            .into_iter()
            .map(|p| json!({"type": "input_json_delta", "partial_json": p}))
            .collect();
        block(&mut events, start, lead, deltas, Vec::new());
    }
    if index == 0 {
        events.push((Piece::Head, json!({"type": "ping"})));
    }
    events.push((
        Piece::Tail,
        json!({
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence},
            "usage": {"output_tokens": reply.output_tokens},
        }),
    ));
    events.push((Piece::Tail, json!({"type": "message_stop"})));
    events
}

/// `stream_error=N`: the events up to the (N+1)-th content delta, then an `error` event.
fn with_stream_error(mut events: Vec<(Piece, Value)>, after: usize) -> Vec<(Piece, Value)> {
    let mut seen = 0;
    let at = events
        .iter()
        .position(|(piece, _)| match piece {
            Piece::Tail => true,
            Piece::Content if seen == after => true,
            Piece::Content => {
                seen += 1;
                false
            }
            Piece::Head => false,
        })
        .unwrap_or(events.len());
    events.truncate(at);
    let error = error_body("overloaded_error", "Overloaded");
    events.push((
        Piece::Tail,
        json!({"type": "error", "error": error["error"]}),
    ));
    events
}

/// `POST /v1/messages`.
pub(crate) async fn messages(req: &HttpRequest, body: Value, state: &State) -> HttpResponse {
    if header(req, "x-api-key").is_none() {
        let body = error_body("authentication_error", "x-api-key header is required");
        return error_response(401, &body, None);
    }
    if header(req, "anthropic-version").is_none() {
        return invalid("anthropic-version: header is required");
    }
    if body.get("anthropic_version").is_some() {
        return invalid("anthropic_version: Extra inputs are not permitted");
    }
    respond(body, state).await
}

/// The model and whether to stream, from a Vertex AI path
/// `/v1/projects/{p}/locations/{l}/publishers/anthropic/models/{model}:rawPredict`.
fn parse_vertex_path(path: &str) -> Option<(String, bool)> {
    let (prefix, method) = path.rsplit_once(':')?;
    let stream = match method {
        "rawPredict" => false,
        "streamRawPredict" => true,
        _ => return None,
    };
    let segments: Vec<&str> = prefix.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        [version, "projects", _, "locations", _, "publishers", "anthropic", "models", model]
            if matches!(*version, "v1" | "v1beta1") && !model.is_empty() =>
        {
            Some((crate::gemini::percent_decode(model), stream))
        }
        _ => None,
    }
}

/// `POST …/publishers/anthropic/models/{model}:rawPredict` and `:streamRawPredict`: Claude
/// on Vertex AI.
pub(crate) async fn raw_predict(req: &HttpRequest, mut body: Value, state: &State) -> HttpResponse {
    let Some((model, stream)) = parse_vertex_path(req.path()) else {
        let message = format!(
            "The requested URL {} was not found on this server. (mock upstream)",
            req.path()
        );
        let body = crate::gemini::error_body(404, "NOT_FOUND", &message);
        return HttpResponse::NotFound().json(body);
    };
    if crate::gemini::bearer_token(req).is_none() {
        let body = crate::gemini::error_body(
            401,
            "UNAUTHENTICATED",
            "Request is missing required authentication credential. Expected OAuth 2 access \
             token, login cookie or other valid authentication credential. (mock upstream)",
        );
        return HttpResponse::Unauthorized().json(body);
    }
    let Some(object) = body.as_object_mut() else {
        return invalid("The request body is not valid JSON.");
    };
    if object.contains_key("model") {
        return invalid("model: Extra inputs are not permitted");
    }
    match object.get("anthropic_version").and_then(Value::as_str) {
        None => return invalid("anthropic_version: Field required"),
        Some(VERTEX_VERSION) => {}
        Some(_) => {
            return invalid(&format!(
                "anthropic_version: Input should be '{VERTEX_VERSION}'"
            ))
        }
    }
    if (object.get("stream") == Some(&Value::Bool(true))) != stream {
        return invalid(
            "stream: `stream: true` goes to :streamRawPredict, anything else to :rawPredict \
             (mock upstream)",
        );
    }
    object.insert("model".into(), Value::String(model));
    respond(body, state).await
}

/// Answers a checked Messages request (`model` set): validation, scripted outcomes, then
/// the reply as a `message` or an event stream.
async fn respond(body: Value, state: &State) -> HttpResponse {
    if let Err(message) = validate(&body) {
        return invalid(&message);
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let d = Directives::parse(model);
    let extra = Extra::parse(model);
    match script::run(&d, model, state).await {
        Outcome::Fail(status) => {
            let body = status_error_body(status, &d.base);
            return error_response(status, &body, d.retry_after_header());
        }
        Outcome::Malformed => {
            return HttpResponse::Ok()
                .content_type("application/json")
                .body(MALFORMED_BODY);
        }
        Outcome::Proceed => {}
    }
    if extra.prompt_too_long {
        return invalid("prompt is too long: 212345 tokens > 200000 maximum");
    }

    let reply = reply(&body, &d, &extra);
    let request_id = ids::with_prefix("req_");
    if body.get("stream") == Some(&Value::Bool(true)) {
        let mut events = stream_events(&reply, d.chunk_chars());
        if let Some(after) = extra.stream_error {
            events = with_stream_error(events, after);
        }
        let pieces: Vec<(Piece, Bytes)> = events
            .into_iter()
            .map(|(piece, data)| (piece, sse_event(&data)))
            .collect();
        return HttpResponse::Ok()
            .content_type("text/event-stream; charset=utf-8")
            .insert_header(("cache-control", "no-cache"))
            .insert_header(("request-id", request_id))
            .streaming(script::paced_body(pieces, &d));
    }

    let bytes = Bytes::from(message_json(&reply).to_string());
    let mut response = HttpResponse::Ok();
    response
        .content_type("application/json")
        .insert_header(("request-id", request_id));
    if d.cut_after.is_some() {
        // Half of the JSON, then an aborted connection.
        let half = bytes.len() / 2;
        let pieces = vec![
            (Piece::Head, bytes.slice(..half)),
            (Piece::Tail, bytes.slice(half..)),
        ];
        response.streaming(script::paced_body(pieces, &d))
    } else {
        response.body(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vertex_paths_parse() {
        let base = "/v1/projects/p/locations/us-east5/publishers/anthropic/models";
        assert_eq!(
            parse_vertex_path(&format!("{base}/claude-3-7-sonnet@20250219:rawPredict")),
            Some(("claude-3-7-sonnet@20250219".to_string(), false))
        );
        assert_eq!(
            parse_vertex_path(&format!("{base}/claude-x;status=529%20:streamRawPredict")),
            Some(("claude-x;status=529 ".to_string(), true))
        );
        assert_eq!(
            parse_vertex_path(&format!("{base}/claude-x:generateContent")),
            None
        );
        assert_eq!(
            parse_vertex_path(
                "/v1/projects/p/locations/l/publishers/google/models/gemini:rawPredict"
            ),
            None
        );
    }

    #[test]
    fn extra_directives_parse() {
        let e = Extra::parse(
            "claude;cache_read=10;cache_write=3;refusal;prompt_too_long;stream_error=2",
        );
        assert_eq!(
            e,
            Extra {
                cache_read: 10,
                cache_write: 3,
                refusal: true,
                prompt_too_long: true,
                stream_error: Some(2)
            }
        );
        assert_eq!(Extra::parse("claude;stream_error").stream_error, Some(0));
        assert_eq!(Extra::parse("claude"), Extra::default());
    }

    #[test]
    fn request_converts_to_the_openai_shape() {
        let openai = to_openai(&json!({
            "model": "claude",
            "max_tokens": 10,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
                    {"type": "text", "text": "thanks"}]}
            ],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true}
        }));
        assert_eq!(
            openai["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            openai["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAAA"
        );
        assert_eq!(
            openai["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(
            openai["messages"][3],
            json!({"role": "tool", "tool_call_id": "t1", "content": "ok"})
        );
        assert_eq!(openai["messages"][4]["content"][0]["text"], "thanks");
        assert_eq!(
            openai["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
        assert_eq!(openai["tool_choice"], "required");
        assert_eq!(openai["parallel_tool_calls"], false);
    }
}
