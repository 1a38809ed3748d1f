//! The engine's answer and errors in the Anthropic Messages shapes: a `message` object with
//! `text` and `tool_use` content blocks, and `{"type": "error", "error": {type, message}}`.

use flowgate_actors::completion::{AssistantMessage, FinishReason, ToolCallOut, Usage};
use flowgate_actors::error::GatewayError;
use serde_json::{json, Map, Value};

/// Anthropic's `stop_reason` for a finish reason.
pub(super) fn stop_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
    }
}

/// Anthropic's `usage`: its `input_tokens` leave out what was read from or written to the
/// prompt cache, which it counts apart.
pub(super) fn usage(usage: &Usage) -> Value {
    let cached = usage.cached_tokens.min(usage.prompt_tokens);
    let written = usage.cache_write_tokens.min(usage.prompt_tokens - cached);
    json!({
        "input_tokens": usage.prompt_tokens - cached - written,
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    })
}

/// A tool call's arguments as the `input` object of a `tool_use` block. Arguments that are not
/// a JSON object (a model's malformed call) are kept as text under `_raw`, never dropped.
pub(super) fn tool_input(call: &ToolCallOut) -> Value {
    match serde_json::from_str::<Value>(&call.arguments) {
        Ok(object @ Value::Object(_)) => object,
        _ if call.arguments.trim().is_empty() => Value::Object(Map::new()),
        _ => json!({ "_raw": call.arguments }),
    }
}

/// The content blocks of an assistant message: its text, then its tool calls.
pub(super) fn content_blocks(message: &AssistantMessage) -> Vec<Value> {
    let mut blocks = Vec::with_capacity(1 + message.tool_calls.len());
    let text = message
        .content
        .as_deref()
        .or(message.refusal.as_deref())
        .unwrap_or_default();
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    for call in &message.tool_calls {
        blocks.push(json!({
            "type": "tool_use",
            "id": call.id,
            "name": call.name,
            "input": tool_input(call),
        }));
    }
    blocks
}

/// Anthropic's error `type` for the status a gateway error answers with.
pub(in crate::http) fn error_type(status: u16) -> &'static str {
    match status {
        400 | 415 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        408 | 504 => "timeout_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// The Anthropic error body, with flowgate's `details` (the attempts) beside the message.
pub(in crate::http) fn error_body(error: &GatewayError) -> Value {
    let openai = error.body();
    let mut inner = json!({
        "type": error_type(error.status_code().as_u16()),
        "message": error.message,
    });
    if let Some(details) = openai.pointer("/error/details").filter(|d| !d.is_null()) {
        inner["details"] = details.clone();
    }
    if let Some(param) = &error.param {
        inner["param"] = json!(param);
    }
    json!({"type": "error", "error": inner})
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_actors::error::ErrorKind;

    #[test]
    fn blocks_carry_text_then_tool_uses_with_parsed_input() {
        let message = AssistantMessage {
            content: Some("Checking".into()),
            tool_calls: vec![
                ToolCallOut {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: "{\"city\":\"Paris\"}".into(),
                },
                ToolCallOut {
                    id: "call_2".into(),
                    name: "broken".into(),
                    arguments: "{\"city\":".into(),
                },
            ],
            refusal: None,
        };
        assert_eq!(
            Value::Array(content_blocks(&message)),
            json!([
                {"type": "text", "text": "Checking"},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "broken", "input": {"_raw": "{\"city\":"}}
            ])
        );
    }

    #[test]
    fn usage_counts_cache_reads_and_writes_apart() {
        let u = Usage {
            prompt_tokens: 100,
            completion_tokens: 7,
            cached_tokens: 30,
            reasoning_tokens: 0,
            cache_write_tokens: 20,
        };
        assert_eq!(
            usage(&u),
            json!({"input_tokens": 50, "output_tokens": 7,
                   "cache_creation_input_tokens": 20, "cache_read_input_tokens": 30})
        );
    }

    #[test]
    fn errors_take_anthropic_types_by_status() {
        let body = error_body(&GatewayError::invalid("bad").with_param("max_tokens"));
        assert_eq!(
            body,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "bad",
                                              "param": "max_tokens"}})
        );
        let e = GatewayError::new(ErrorKind::Unauthorized, "invalid API key");
        assert_eq!(error_body(&e)["error"]["type"], "authentication_error");
        let e = GatewayError::new(ErrorKind::ModelNotFound, "no");
        assert_eq!(error_body(&e)["error"]["type"], "not_found_error");
        let e = GatewayError::new(ErrorKind::UpstreamServer, "boom");
        assert_eq!(error_body(&e)["error"]["type"], "api_error");
        assert_eq!(stop_reason(FinishReason::ToolCalls), "tool_use");
    }
}
