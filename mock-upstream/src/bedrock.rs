//! The Amazon Bedrock Converse API wire format: `POST /model/{modelId}/converse` (JSON) and
//! `/converse-stream` (`application/vnd.amazon.eventstream` frames), with Bedrock's error
//! bodies and `x-amzn-ErrorType` header.
//!
//! The request must carry a SigV4 `authorization` header (its shape is checked, its
//! signature is not: the mock does not know the secret). The model id is taken from the
//! path, percent-decoded, and scripts the request like every other route (see
//! [`crate::directives`]). The Converse request is validated the way Bedrock validates it
//! (the conversation starts with a user turn and alternates, no blank text, tool blocks need
//! a `toolConfig`, tool results answer the previous turn's tool uses, image formats, document
//! names), turned into an OpenAI-shaped request for [`crate::answer::answer`], and the answer
//! is sent back in Converse shape.
//!
//! Besides the common directives, the Bedrock routes honour `exception=<type>` (see
//! [`stream_exception`]) to script an exception frame inside a ConverseStream.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::answer::{self, MockAnswer};
use crate::directives::Directives;
use crate::ids;
use crate::script::{self, Outcome, Piece};
use crate::state::State;

/// The body sent for the `malformed` directive on `/converse`: truncated JSON.
pub const MALFORMED_BODY: &str = r#"{"output": {"message": {"role": "assistant", "content": ["#;
/// The content type of ConverseStream responses.
pub const EVENT_STREAM_CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";

const IMAGE_FORMATS: [&str; 4] = ["png", "jpeg", "gif", "webp"];
const DOCUMENT_FORMATS: [&str; 9] = [
    "pdf", "csv", "doc", "docx", "xls", "xlsx", "html", "txt", "md",
];

/// Bedrock's error type and message for a scripted `status`.
pub fn error_for_status(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => (
            "ValidationException",
            "Malformed input request, please reformat your input and try again. (mock upstream)",
        ),
        401 => (
            "UnrecognizedClientException",
            "The security token included in the request is invalid. (mock upstream)",
        ),
        403 => (
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID. (mock upstream)",
        ),
        404 => (
            "ResourceNotFoundException",
            "Could not resolve the foundation model from the provided model identifier. \
             (mock upstream)",
        ),
        408 => (
            "ModelTimeoutException",
            "Model has timed out in processing the request. (mock upstream)",
        ),
        413 => (
            "ValidationException",
            "Input is too long for requested model. (mock upstream)",
        ),
        424 => (
            "ModelErrorException",
            "The model returned an error while processing the request. (mock upstream)",
        ),
        429 => (
            "ThrottlingException",
            "Too many requests, please wait before trying again. (mock upstream)",
        ),
        503 => (
            "ServiceUnavailableException",
            "Bedrock is unable to process your request. (mock upstream)",
        ),
        500..=599 => (
            "InternalServerException",
            "The server encountered an internal error. (mock upstream)",
        ),
        _ => ("ValidationException", "Scripted error (mock upstream)"),
    }
}

/// A Bedrock error response: `{"message": …}` with `x-amzn-ErrorType`.
fn error_response(
    status: u16,
    error_type: &str,
    message: &str,
    retry_after: Option<String>,
) -> HttpResponse {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::build(code);
    response
        .insert_header((
            "x-amzn-ErrorType",
            format!("{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        ))
        .insert_header(("x-amzn-RequestId", request_id()));
    if let Some(retry_after) = retry_after {
        response.insert_header(("retry-after", retry_after));
    }
    response.json(json!({ "message": message }))
}

fn validation(message: impl Into<String>) -> HttpResponse {
    let message = format!("{} (mock upstream)", message.into());
    error_response(400, "ValidationException", &message, None)
}

fn request_id() -> String {
    let token = ids::unique_token().to_ascii_lowercase();
    format!(
        "{}-{}-{}-{}-{}",
        &token[0..8],
        &token[8..12],
        &token[12..16],
        &token[16..20],
        &token[20..24]
    )
}

/// Decodes `%XX` escapes; `None` on a bad escape or invalid UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Checks the shape of a SigV4 `authorization` header and its `x-amz-date`.
pub(crate) fn check_auth(req: &HttpRequest) -> Result<(), Box<HttpResponse>> {
    let denied = |error_type: &str, message: &str| {
        Err(Box::new(error_response(
            403,
            error_type,
            &format!("{message} (mock upstream)"),
            None,
        )))
    };
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let Some(auth) = header("authorization") else {
        return denied("AccessDeniedException", "Missing Authentication Token");
    };
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256 Credential=") else {
        return denied(
            "AccessDeniedException",
            "Authorization header requires the AWS4-HMAC-SHA256 algorithm with a Credential",
        );
    };
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for (i, part) in rest.split(',').enumerate() {
        let part = part.trim();
        if i == 0 {
            credential = Some(part);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let scope: Vec<&str> = credential.unwrap_or("").split('/').collect();
    let scope_ok = scope.len() == 5
        && !scope[0].is_empty()
        && scope[1].len() == 8
        && scope[1].bytes().all(|b| b.is_ascii_digit())
        && !scope[2].is_empty()
        && scope[3] == "bedrock"
        && scope[4] == "aws4_request";
    if !scope_ok {
        return denied(
            "IncompleteSignatureException",
            "Credential must have the form <key>/<date>/<region>/bedrock/aws4_request",
        );
    }
    let signed: Vec<&str> = signed_headers.unwrap_or("").split(';').collect();
    if !signed.contains(&"host") || !signed.contains(&"x-amz-date") {
        return denied(
            "IncompleteSignatureException",
            "SignedHeaders must include host and x-amz-date",
        );
    }
    if !signature.is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())) {
        return denied(
            "InvalidSignatureException",
            "Signature must be 64 hex digits",
        );
    }
    let date_ok = header("x-amz-date").is_some_and(|d| {
        d.len() == 16 && d.as_bytes()[8] == b'T' && d.ends_with('Z') && d.starts_with(scope[1])
    });
    if !date_ok {
        return denied(
            "IncompleteSignatureException",
            "x-amz-date must be present and match the credential scope date",
        );
    }
    if header("x-amz-security-token").is_some() && !signed.contains(&"x-amz-security-token") {
        return denied(
            "IncompleteSignatureException",
            "x-amz-security-token must be signed",
        );
    }
    Ok(())
}

fn blocks(message: &Value) -> &[Value] {
    message
        .get("content")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn is_blank(text: &str) -> bool {
    text.trim().is_empty()
}

fn valid_document_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 200
        && name.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || c.is_whitespace()
                || matches!(c, '-' | '(' | ')' | '[' | ']')
        })
        && !name
            .chars()
            .zip(name.chars().skip(1))
            .any(|(a, b)| a.is_whitespace() && b.is_whitespace())
}

fn valid_base64(text: Option<&Value>) -> bool {
    text.and_then(Value::as_str)
        .is_some_and(|t| base64::engine::general_purpose::STANDARD.decode(t).is_ok())
}

/// Validates a Converse request the way Bedrock does; the error is the message of a 400
/// `ValidationException`.
fn validate(request: &Value) -> Result<(), String> {
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return Err(String::from("The messages field is required."));
    };
    if messages.is_empty() {
        return Err(String::from(
            "A conversation must start with a user message. Try again with a conversation \
             that starts with a user message.",
        ));
    }
    let has_tool_config = request.pointer("/toolConfig/tools").is_some();
    let mut previous_tool_uses: Vec<String> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let expected = if i % 2 == 0 { "user" } else { "assistant" };
        if i == 0 && role != "user" {
            return Err(String::from(
                "A conversation must start with a user message. Try again with a conversation \
                 that starts with a user message.",
            ));
        }
        if role != expected {
            return Err(String::from(
                "A conversation must alternate between user and assistant roles. Make sure the \
                 conversation alternates between user and assistant roles and try again.",
            ));
        }
        let content = blocks(message);
        if content.is_empty() {
            return Err(format!(
                "The content field in the Message object at messages.{i} is empty. Add a \
                 ContentBlock object to the content field and try again."
            ));
        }
        let mut tool_uses = Vec::new();
        for (j, block) in content.iter().enumerate() {
            let at = format!("messages.{i}.content.{j}");
            if let Some(text) = block.get("text") {
                if text.as_str().is_none_or(is_blank) {
                    return Err(format!(
                        "The text field in the ContentBlock object at {at} is blank. Add text \
                         to the text field, and try again."
                    ));
                }
            } else if let Some(image) = block.get("image") {
                let format = image.get("format").and_then(Value::as_str).unwrap_or("");
                if !IMAGE_FORMATS.contains(&format) {
                    return Err(format!(
                        "The value at {at}.image.format failed to satisfy constraint: Member \
                         must satisfy enum value set: [png, jpeg, gif, webp]"
                    ));
                }
                if !valid_base64(image.pointer("/source/bytes")) {
                    return Err(format!("{at}.image.source.bytes must be base64"));
                }
            } else if let Some(document) = block.get("document") {
                let format = document.get("format").and_then(Value::as_str).unwrap_or("");
                if !DOCUMENT_FORMATS.contains(&format) {
                    return Err(format!(
                        "The value at {at}.document.format failed to satisfy constraint"
                    ));
                }
                let name = document.get("name").and_then(Value::as_str).unwrap_or("");
                if !valid_document_name(name) {
                    return Err(format!(
                        "The value at {at}.document.name failed to satisfy constraint: Member \
                         must satisfy regular expression pattern: \
                         [a-zA-Z0-9\\s\\-\\(\\)\\[\\]]+ (no consecutive whitespace)"
                    ));
                }
                if !valid_base64(document.pointer("/source/bytes")) {
                    return Err(format!("{at}.document.source.bytes must be base64"));
                }
            } else if let Some(tool_use) = block.get("toolUse") {
                if role != "assistant" {
                    return Err(format!(
                        "toolUse blocks are only allowed in assistant messages ({at})"
                    ));
                }
                if !tool_use.get("input").is_some_and(Value::is_object) {
                    return Err(format!("{at}.toolUse.input must be an object"));
                }
                let id = tool_use
                    .get("toolUseId")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                tool_uses.push(id.to_string());
            } else if let Some(result) = block.get("toolResult") {
                if role != "user" {
                    return Err(format!(
                        "toolResult blocks are only allowed in user messages ({at})"
                    ));
                }
                let id = result
                    .get("toolUseId")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if !previous_tool_uses.iter().any(|u| u == id) {
                    return Err(format!(
                        "The toolUseId {id} in the toolResult block at {at} does not match a \
                         toolUse block of the previous assistant turn."
                    ));
                }
            } else if block.get("cachePoint").is_none() && block.get("reasoningContent").is_none() {
                return Err(format!("Unknown content block at {at}"));
            }
            if (block.get("toolUse").is_some() || block.get("toolResult").is_some())
                && !has_tool_config
            {
                return Err(String::from(
                    "The toolConfig field must be defined when using toolUse and toolResult \
                     content blocks.",
                ));
            }
        }
        previous_tool_uses = tool_uses;
    }
    if let Some(temperature) = request.pointer("/inferenceConfig/temperature") {
        if !temperature
            .as_f64()
            .is_some_and(|t| (0.0..=1.0).contains(&t))
        {
            return Err(String::from(
                "The value at inferenceConfig.temperature failed to satisfy constraint: Member \
                 must be between 0 and 1",
            ));
        }
    }
    if let Some(system) = request.get("system") {
        let ok = system.as_array().is_some_and(|blocks| {
            blocks.iter().all(|b| {
                b.get("text")
                    .and_then(Value::as_str)
                    .is_some_and(|t| !is_blank(t))
                    || b.get("cachePoint").is_some()
            })
        });
        if !ok {
            return Err(String::from(
                "system must be a list of non-blank text blocks",
            ));
        }
    }
    if let Some(tool_config) = request.get("toolConfig") {
        let tools = tool_config
            .get("tools")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if tools.is_empty() {
            return Err(String::from(
                "The value at toolConfig.tools failed to satisfy constraint: Member must have \
                 length greater than or equal to 1",
            ));
        }
        for (k, tool) in tools.iter().enumerate() {
            let name = tool
                .pointer("/toolSpec/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !name_ok {
                return Err(format!(
                    "The value at toolConfig.tools.{k}.toolSpec.name failed to satisfy \
                     constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+"
                ));
            }
            if !tool
                .pointer("/toolSpec/inputSchema/json")
                .is_some_and(Value::is_object)
            {
                return Err(format!(
                    "toolConfig.tools.{k}.toolSpec.inputSchema.json must be a JSON Schema object"
                ));
            }
        }
        if let Some(choice) = tool_config.pointer("/toolChoice/tool/name") {
            let known = tools
                .iter()
                .any(|t| t.pointer("/toolSpec/name") == Some(choice));
            if !known {
                return Err(format!(
                    "toolConfig.toolChoice.tool.name {choice} is not one of the tools"
                ));
            }
        }
    }
    Ok(())
}

fn base64_of(value: Option<&Value>) -> &str {
    value.and_then(Value::as_str).unwrap_or("")
}

/// The OpenAI chat-completions request equivalent to a (valid) Converse request.
pub fn to_openai(request: &Value, model: &str) -> Value {
    let mut messages = Vec::new();
    let system: Vec<&str> = request
        .get("system")
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system.join("\n")}));
    }
    for message in request
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or("user");
        let mut parts = Vec::new();
        let mut tool_calls = Vec::new();
        for block in blocks(message) {
            if let Some(text) = block.get("text").and_then(Value::as_str) {
                parts.push(json!({"type": "text", "text": text}));
            } else if let Some(image) = block.get("image") {
                let format = image.get("format").and_then(Value::as_str).unwrap_or("png");
                let data = base64_of(image.pointer("/source/bytes"));
                parts.push(json!({"type": "image_url",
                    "image_url": {"url": format!("data:image/{format};base64,{data}")}}));
            } else if let Some(document) = block.get("document") {
                let data = base64_of(document.pointer("/source/bytes"));
                parts.push(json!({"type": "file", "file": {
                    "filename": document.get("name"),
                    "file_data": format!("data:application/pdf;base64,{data}"),
                }}));
            } else if let Some(tool_use) = block.get("toolUse") {
                tool_calls.push(json!({
                    "id": tool_use.get("toolUseId"),
                    "type": "function",
                    "function": {
                        "name": tool_use.get("name"),
                        "arguments": tool_use.get("input").map(Value::to_string).unwrap_or_default(),
                    }
                }));
            } else if let Some(result) = block.get("toolResult") {
                let content: Vec<String> = result
                    .get("content")
                    .and_then(Value::as_array)
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(|item| match (item.get("text"), item.get("json")) {
                                (Some(Value::String(text)), _) => Some(text.clone()),
                                (_, Some(json)) => Some(json.to_string()),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": result.get("toolUseId"),
                    "content": content.join("\n"),
                }));
            }
        }
        if role == "assistant" {
            let text: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            let mut out = json!({"role": "assistant", "content": if text.is_empty() {
                Value::Null
            } else {
                Value::String(text.concat())
            }});
            if !tool_calls.is_empty() {
                out["tool_calls"] = Value::Array(tool_calls);
            }
            messages.push(out);
        } else if !parts.is_empty() {
            messages.push(json!({"role": "user", "content": parts}));
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), Value::Array(messages));
    if let Some(config) = request.get("inferenceConfig") {
        for (from, to) in [
            ("maxTokens", "max_tokens"),
            ("temperature", "temperature"),
            ("topP", "top_p"),
            ("stopSequences", "stop"),
        ] {
            if let Some(value) = config.get(from) {
                out.insert(to.into(), value.clone());
            }
        }
    }
    if let Some(tool_config) = request.get("toolConfig") {
        let tools: Vec<Value> = tool_config
            .get("tools")
            .and_then(Value::as_array)
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(|t| t.get("toolSpec"))
                    .map(|spec| {
                        let mut function = json!({
                            "name": spec.get("name"),
                            "parameters": spec.pointer("/inputSchema/json"),
                        });
                        if let Some(description) = spec.get("description") {
                            function["description"] = description.clone();
                        }
                        json!({"type": "function", "function": function})
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = tool_config.get("toolChoice") {
            let choice = if let Some(name) = choice.pointer("/tool/name") {
                json!({"type": "function", "function": {"name": name}})
            } else if choice.get("any").is_some() {
                json!("required")
            } else {
                json!("auto")
            };
            out.insert("tool_choice".into(), choice);
        }
    }
    Value::Object(out)
}

/// The answer with `maxTokens` applied: a text answer longer than the limit is cut to
/// `maxTokens * 4` characters and stops with `max_tokens`.
fn limited(mut answer: MockAnswer, request: &Value) -> (MockAnswer, &'static str) {
    let limit = request
        .pointer("/inferenceConfig/maxTokens")
        .and_then(Value::as_u64);
    if !answer.tool_calls.is_empty() {
        return (answer, "tool_use");
    }
    match (limit, answer.content.as_mut()) {
        (Some(limit), Some(content)) if answer.completion_tokens > limit => {
            let chars = usize::try_from(limit.saturating_mul(4)).unwrap_or(usize::MAX);
            *content = content.chars().take(chars).collect();
            answer.completion_tokens = limit;
            (answer, "max_tokens")
        }
        _ => (answer, "end_turn"),
    }
}

/// Bedrock-style tool use ids (`tooluse_…`), one per call of the answer.
fn tool_use_ids(answer: &MockAnswer) -> Vec<String> {
    answer
        .tool_calls
        .iter()
        .map(|_| ids::with_prefix("tooluse_"))
        .collect()
}

fn usage_json(answer: &MockAnswer) -> Value {
    json!({
        "inputTokens": answer.prompt_tokens,
        "outputTokens": answer.completion_tokens,
        "totalTokens": answer.prompt_tokens + answer.completion_tokens,
    })
}

fn arguments_value(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| json!({}))
}

/// The Converse response body for an answer.
pub fn converse_body(answer: &MockAnswer, stop_reason: &str, latency_ms: u64) -> Value {
    let mut content = Vec::new();
    if let Some(text) = answer.content.as_deref().filter(|t| !t.is_empty()) {
        content.push(json!({ "text": text }));
    }
    for (call, id) in answer.tool_calls.iter().zip(tool_use_ids(answer)) {
        content.push(json!({"toolUse": {
            "toolUseId": id,
            "name": call.name,
            "input": arguments_value(&call.arguments),
        }}));
    }
    json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason,
        "usage": usage_json(answer),
        "metrics": {"latencyMs": latency_ms},
    })
}

/// One event-stream message: `:event-type`, `:content-type: application/json`,
/// `:message-type: event`, and the JSON payload (with Bedrock's `p` padding field).
pub fn event_frame(event_type: &str, mut payload: Value) -> Bytes {
    if let Value::Object(map) = &mut payload {
        let pad = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0";
        map.insert(
            "p".into(),
            json!(&pad[..(event_type.len() % pad.len()) + 1]),
        );
    }
    frame(
        vec![
            (":event-type", event_type.to_string()),
            (":content-type", "application/json".to_string()),
            (":message-type", "event".to_string()),
        ],
        payload.to_string().into_bytes(),
    )
}

/// One event-stream exception message (`:message-type: exception`).
pub fn exception_frame(exception_type: &str, message: &str) -> Bytes {
    frame(
        vec![
            (":exception-type", exception_type.to_string()),
            (":content-type", "application/json".to_string()),
            (":message-type", "exception".to_string()),
        ],
        json!({ "message": message }).to_string().into_bytes(),
    )
}

fn frame(headers: Vec<(&'static str, String)>, payload: Vec<u8>) -> Bytes {
    let message = headers
        .into_iter()
        .fold(Message::new(payload), |message, (name, value)| {
            message.add_header(Header::new(name, HeaderValue::String(value.into())))
        });
    let mut out = Vec::new();
    // Writing to a Vec only fails for headers or payloads over the format's limits.
    if write_message_to(&message, &mut out).is_err() {
        out.clear();
    }
    Bytes::from(out)
}

/// The frames of a streamed answer, with their [`Piece`] roles.
fn stream_pieces(
    answer: &MockAnswer,
    stop_reason: &str,
    chunk_chars: usize,
    latency_ms: u64,
) -> Vec<(Piece, Bytes)> {
    let mut pieces = vec![(
        Piece::Head,
        event_frame("messageStart", json!({"role": "assistant"})),
    )];
    let mut index = 0;
    if let Some(text) = answer.content.as_deref().filter(|t| !t.is_empty()) {
        for piece in answer::chunks(text, chunk_chars) {
            let delta = json!({"contentBlockIndex": index, "delta": {"text": piece}});
            pieces.push((Piece::Content, event_frame("contentBlockDelta", delta)));
        }
        let stop = json!({ "contentBlockIndex": index });
        pieces.push((Piece::Head, event_frame("contentBlockStop", stop)));
        index += 1;
    }
    for (call, id) in answer.tool_calls.iter().zip(tool_use_ids(answer)) {
        let start = json!({"contentBlockIndex": index,
            "start": {"toolUse": {"toolUseId": id, "name": call.name}}});
        pieces.push((Piece::Content, event_frame("contentBlockStart", start)));
        for piece in answer::chunks(&call.arguments, chunk_chars) {
            let delta = json!({"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}});
            pieces.push((Piece::Content, event_frame("contentBlockDelta", delta)));
        }
        let stop = json!({ "contentBlockIndex": index });
        pieces.push((Piece::Head, event_frame("contentBlockStop", stop)));
        index += 1;
    }
    pieces.push((
        Piece::Tail,
        event_frame("messageStop", json!({ "stopReason": stop_reason })),
    ));
    pieces.push((
        Piece::Tail,
        event_frame(
            "metadata",
            json!({"usage": usage_json(answer), "metrics": {"latencyMs": latency_ms}}),
        ),
    ));
    pieces
}

/// The Bedrock-only directive `exception=<type>` of a model string (e.g.
/// `exception=throttlingException`): ConverseStream sends that exception frame after the
/// content frames that `cut_after` lets through (all of them by default), instead of
/// `messageStop` and `metadata`; Converse answers with the exception's HTTP error.
pub fn stream_exception(model: &str) -> Option<&str> {
    model
        .split(';')
        .skip(1)
        .filter_map(|part| part.trim().strip_prefix("exception="))
        .map(str::trim)
        .find(|t| !t.is_empty())
}

/// The HTTP status and error type (`ThrottlingException`) of a stream exception type.
fn exception_status(exception: &str) -> (u16, String) {
    let status = match exception {
        "throttlingException" => 429,
        "validationException" => 400,
        "modelStreamErrorException" => 424,
        "serviceUnavailableException" => 503,
        "modelTimeoutException" => 408,
        _ => 500,
    };
    let mut chars = exception.chars();
    let error_type = match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => "InternalServerException".to_string(),
    };
    (status, error_type)
}

/// Index of the first piece not sent when cutting after `n` content pieces (as
/// `cut_after` does).
fn cut_index(pieces: &[(Piece, Bytes)], n: usize) -> usize {
    let mut content_seen = 0;
    for (i, (kind, _)) in pieces.iter().enumerate() {
        match kind {
            Piece::Tail => return i,
            Piece::Content if content_seen == n => return i,
            Piece::Content => content_seen += 1,
            Piece::Head => {}
        }
    }
    pieces.len()
}

/// `POST /model/{modelId}/converse` and `/converse-stream`.
pub(crate) async fn converse(req: &HttpRequest, body: &Bytes, state: &State) -> HttpResponse {
    let started = Instant::now();
    let path = req.path();
    let stream = path.ends_with("/converse-stream");
    let suffix = if stream {
        "/converse-stream"
    } else {
        "/converse"
    };
    let raw_id = path
        .strip_prefix("/model/")
        .and_then(|p| p.strip_suffix(suffix))
        .unwrap_or("");
    if let Err(denied) = check_auth(req) {
        return *denied;
    }
    let Some(model) = percent_decode(raw_id).filter(|m| !m.is_empty() && !m.contains('/')) else {
        return validation(format!(
            "The provided model identifier `{raw_id}` is invalid."
        ));
    };
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return validation("Malformed input request: the body is not valid JSON.");
    };
    if let Err(message) = validate(&request) {
        return validation(message);
    }

    let d = Directives::parse(&model);
    match script::run(&d, &model, state).await {
        Outcome::Fail(status) => {
            let (error_type, message) = error_for_status(status);
            return error_response(status, error_type, message, d.retry_after_header());
        }
        Outcome::Malformed if stream => {
            let good = event_frame("messageStart", json!({"role": "assistant"}));
            let mut bad =
                event_frame("contentBlockDelta", json!({"delta": {"text": "x"}})).to_vec();
            if let Some(last) = bad.last_mut() {
                *last ^= 0xff;
            }
            let mut bytes = good.to_vec();
            bytes.extend_from_slice(&bad);
            return HttpResponse::Ok()
                .content_type(EVENT_STREAM_CONTENT_TYPE)
                .body(bytes);
        }
        Outcome::Malformed => {
            return HttpResponse::Ok()
                .content_type("application/json")
                .body(MALFORMED_BODY);
        }
        Outcome::Proceed => {}
    }
    let exception = stream_exception(&model);
    if let (Some(exception), false) = (exception, stream) {
        let (status, error_type) = exception_status(exception);
        let message = format!("Scripted {exception} (mock upstream)");
        return error_response(status, &error_type, &message, d.retry_after_header());
    }

    let openai = to_openai(&request, &d.base);
    let (answer, stop_reason) = limited(answer::answer(&openai), &request);
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut response = HttpResponse::Ok();
    response.insert_header(("x-amzn-RequestId", request_id()));
    if stream {
        let mut pieces = stream_pieces(&answer, stop_reason, d.chunk_chars(), latency_ms);
        let mut d = d;
        if let Some(exception) = exception {
            // The exception replaces the rest of the stream after `cut_after` content frames
            // (all of them by default); the stream then ends cleanly.
            pieces.truncate(cut_index(&pieces, d.cut_after.take().unwrap_or(usize::MAX)));
            let message = format!("Scripted {exception} (mock upstream)");
            pieces.push((Piece::Tail, exception_frame(exception, &message)));
        }
        return response
            .content_type(EVENT_STREAM_CONTENT_TYPE)
            .streaming(script::paced_body(pieces, &d));
    }
    let bytes = Bytes::from(converse_body(&answer, stop_reason, latency_ms).to_string());
    response.content_type("application/json");
    if d.cut_after.is_some() {
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
    fn percent_decoding() {
        assert_eq!(
            percent_decode("anthropic.claude-3-5-sonnet-20240620-v1%3A0").as_deref(),
            Some("anthropic.claude-3-5-sonnet-20240620-v1:0")
        );
        assert_eq!(
            percent_decode("a%3Bstatus%3D429").as_deref(),
            Some("a;status=429")
        );
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
    }

    #[test]
    fn document_names() {
        assert!(valid_document_name("Quarterly report (2024) [final]"));
        assert!(!valid_document_name("report.pdf"));
        assert!(!valid_document_name("two  spaces"));
        assert!(!valid_document_name(""));
    }

    #[test]
    fn converse_request_becomes_openai_shape() {
        let request = json!({
            "system": [{"text": "Be brief."}],
            "messages": [
                {"role": "user", "content": [{"text": "weather?"}]},
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "w", "input": {"c": "P"}}}]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "t1", "content": [{"json": {"t": 20}}]}},
                    {"text": "thanks"}
                ]}
            ],
            "inferenceConfig": {"maxTokens": 10, "temperature": 0.5, "stopSequences": ["X"]},
            "toolConfig": {"tools": [{"toolSpec": {"name": "w", "inputSchema": {"json": {"type": "object"}}}}],
                "toolChoice": {"tool": {"name": "w"}}}
        });
        assert!(validate(&request).is_ok());
        let openai = to_openai(&request, "m");
        assert_eq!(
            openai,
            json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function",
                        "function": {"name": "w", "arguments": "{\"c\":\"P\"}"}}]},
                    {"role": "tool", "tool_call_id": "t1", "content": "{\"t\":20}"},
                    {"role": "user", "content": [{"type": "text", "text": "thanks"}]}
                ],
                "max_tokens": 10, "temperature": 0.5, "stop": ["X"],
                "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
                "tool_choice": {"type": "function", "function": {"name": "w"}}
            })
        );
    }

    #[test]
    fn frames_roundtrip() {
        use aws_smithy_eventstream::frame::read_message_from;
        let frame = event_frame("contentBlockDelta", json!({"delta": {"text": "hi"}}));
        let message = read_message_from(frame).unwrap();
        let payload: Value = serde_json::from_slice(message.payload()).unwrap();
        assert_eq!(payload["delta"]["text"], "hi");
        assert_eq!(message.headers().len(), 3);
    }
}
