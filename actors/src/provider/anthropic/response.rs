//! Answers and errors: the completion of a message, and the error kind of an error object
//! (its `type` first, then the HTTP status).

use serde::Deserialize;
use serde_json::Value;

use crate::completion::{AssistantMessage, Choice, Completion, FinishReason, ToolCallOut, Usage};
use crate::error::{ErrorKind, GatewayError};
use crate::provider::http::{self, kind_for_status};

// ---- response wire types ----

#[derive(Deserialize)]
pub struct MessageResponse {
    pub(super) content: Vec<ResponseBlock>,
    #[serde(default)]
    pub(super) stop_reason: Option<String>,
    #[serde(default)]
    pub(super) usage: UsageBody,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum ResponseBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        #[serde(default)]
        id: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        input: Value,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    /// `redacted_thinking`, server tools, citations… nothing a client is shown.
    #[serde(other)]
    Other,
}

/// Token counts; every field optional because stream events carry parts of it.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq)]
pub(super) struct UsageBody {
    #[serde(default)]
    pub(super) input_tokens: Option<u64>,
    #[serde(default)]
    pub(super) output_tokens: Option<u64>,
    #[serde(default)]
    pub(super) cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub(super) cache_read_input_tokens: Option<u64>,
}

impl UsageBody {
    /// Fields present in `later` replace ours (`message_delta` counts are cumulative).
    pub(super) fn merge(&mut self, later: &UsageBody) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    /// `thinking_chars`: characters of thinking seen, for an estimate of the reasoning tokens
    /// (Anthropic counts them in `output_tokens` without breaking them out).
    pub(super) fn to_usage(self, thinking_chars: usize) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let written = self.cache_creation_input_tokens.unwrap_or(0);
        let output = self.output_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: self.input_tokens.unwrap_or(0) + read + written,
            completion_tokens: output,
            cached_tokens: read,
            reasoning_tokens: (thinking_chars.div_ceil(4) as u64).min(output),
            cache_write_tokens: written,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ErrorEnvelope {
    pub(super) error: ErrorBody,
}

#[derive(Debug, Deserialize)]
pub(super) struct ErrorBody {
    #[serde(rename = "type", default)]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) message: Option<String>,
}

// ---- answer translation ----

pub(super) fn finish_reason(stop_reason: Option<&str>) -> FinishReason {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        // end_turn, stop_sequence, pause_turn
        _ => FinishReason::Stop,
    }
}

pub(super) fn completion_from(response: MessageResponse, answer_tool: Option<&str>) -> Completion {
    let mut text = String::new();
    let mut structured = None;
    let mut tool_calls = Vec::new();
    let mut thinking_chars = 0;
    for block in response.content {
        match block {
            ResponseBlock::Text { text: t } => text.push_str(&t),
            ResponseBlock::ToolUse { name, input, .. } if Some(name.as_str()) == answer_tool => {
                structured = Some(input.to_string());
            }
            ResponseBlock::ToolUse { id, name, input } => tool_calls.push(ToolCallOut {
                id,
                name,
                arguments: input.to_string(),
            }),
            ResponseBlock::Thinking { thinking } => thinking_chars += thinking.chars().count(),
            ResponseBlock::Other => {}
        }
    }
    let mut finish = finish_reason(response.stop_reason.as_deref());
    if finish == FinishReason::ToolCalls && tool_calls.is_empty() {
        finish = FinishReason::Stop;
    }
    let content = match structured {
        Some(json) => Some(json),
        None if text.is_empty() && !tool_calls.is_empty() => None,
        None => Some(text),
    };
    Completion {
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                content,
                tool_calls,
                refusal: None,
            },
            finish_reason: finish,
        }],
        usage: response.usage.to_usage(thinking_chars),
    }
}

// ---- errors ----

/// Messages Anthropic sends (as `invalid_request_error`) when the prompt does not fit.
pub(super) fn is_context_overflow(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "prompt is too long",
        "exceed context limit",
        "exceeds the context window",
        "context window exceeded",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

/// The error kind of an Anthropic error: its `type` first (the most precise), then its
/// HTTP status.
pub(super) fn error_kind(
    status: Option<u16>,
    error_type: Option<&str>,
    message: &str,
) -> ErrorKind {
    let by_type = match error_type {
        Some("overloaded_error") => Some(ErrorKind::Overloaded),
        Some("rate_limit_error") => Some(ErrorKind::RateLimited),
        Some("request_too_large") => Some(ErrorKind::ContextTooLong),
        Some("authentication_error" | "permission_error") => Some(ErrorKind::UpstreamAuth),
        Some("api_error") => Some(ErrorKind::UpstreamServer),
        Some("timeout_error") => Some(ErrorKind::Timeout),
        Some("invalid_request_error" | "not_found_error") => Some(ErrorKind::UpstreamBadRequest),
        _ => None,
    };
    let kind = by_type
        .or(status.map(kind_for_status))
        .unwrap_or(ErrorKind::UpstreamServer);
    if kind == ErrorKind::UpstreamBadRequest && is_context_overflow(message) {
        ErrorKind::ContextTooLong
    } else {
        kind
    }
}

/// An `error` object sent with a 200 (in the body or mid-stream).
pub(super) fn error_event(
    name: &str,
    secrets: &[&str],
    error: ErrorBody,
    during: &str,
) -> GatewayError {
    let message = error.message.unwrap_or_default();
    let kind = error_kind(None, error.kind.as_deref(), &message);
    let message = if kind == ErrorKind::UpstreamAuth {
        format!("provider `{name}` rejected its credentials")
    } else {
        format!(
            "provider `{name}` sent an error {during}: {}: {}",
            http::scrub(error.kind.as_deref().unwrap_or("error"), secrets),
            http::scrub(&message, secrets)
        )
    };
    GatewayError::new(kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn response(value: Value) -> MessageResponse {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn response_maps_text_tool_calls_thinking_and_cache_usage() {
        let c = completion_from(
            response(json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
                "content": [
                    {"type": "thinking", "thinking": "abcdefgh", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "xyz"},
                    {"type": "text", "text": "Let me check. "},
                    {"type": "text", "text": "One moment."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 20, "cache_creation_input_tokens": 30,
                    "cache_read_input_tokens": 40, "service_tier": "standard"}
            })),
            None,
        );
        let choice = &c.choices[0];
        assert_eq!(choice.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            choice.message.content.as_deref(),
            Some("Let me check. One moment.")
        );
        assert_eq!(
            choice.message.tool_calls,
            vec![ToolCallOut {
                id: "toolu_1".into(),
                name: "weather".into(),
                arguments: r#"{"city":"Paris"}"#.into()
            }]
        );
        assert_eq!(
            c.usage,
            Usage {
                prompt_tokens: 80,
                completion_tokens: 20,
                cached_tokens: 40,
                cache_write_tokens: 30,
                reasoning_tokens: 2,
            }
        );

        // Tool calls alone: no content. Null cache fields are zero.
        let c = completion_from(
            response(
                json!({"content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": null}}),
            ),
            None,
        );
        assert_eq!(c.choices[0].message.content, None);
        assert_eq!(c.choices[0].message.tool_calls[0].arguments, "{}");
        assert_eq!(c.usage.prompt_tokens, 3);

        // The structured answer's tool is content, with finish reason stop.
        let c = completion_from(
            response(
                json!({"content": [{"type": "tool_use", "id": "t", "name": "Person", "input": {"name": "Alice"}}],
                "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}}),
            ),
            Some("Person"),
        );
        assert_eq!(
            c.choices[0].message.content.as_deref(),
            Some(r#"{"name":"Alice"}"#)
        );
        assert!(c.choices[0].message.tool_calls.is_empty());
        assert_eq!(c.choices[0].finish_reason, FinishReason::Stop);

        for (reason, expected) in [
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::Stop),
            ("pause_turn", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("model_context_window_exceeded", FinishReason::Length),
            ("refusal", FinishReason::ContentFilter),
        ] {
            let c = completion_from(
                response(
                    json!({"content": [{"type": "text", "text": "x"}], "stop_reason": reason}),
                ),
                None,
            );
            assert_eq!(c.choices[0].finish_reason, expected, "{reason}");
        }
        assert!(serde_json::from_value::<MessageResponse>(json!({"id": "x"})).is_err());
    }

    #[test]
    fn errors_map_by_type_then_status() {
        for (status, error_type, message, expected) in [
            (
                Some(529),
                Some("overloaded_error"),
                "Overloaded",
                ErrorKind::Overloaded,
            ),
            (
                Some(500),
                Some("overloaded_error"),
                "Overloaded",
                ErrorKind::Overloaded,
            ),
            (Some(529), None, "", ErrorKind::Overloaded),
            (
                Some(429),
                Some("rate_limit_error"),
                "slow down",
                ErrorKind::RateLimited,
            ),
            (
                Some(413),
                Some("request_too_large"),
                "too big",
                ErrorKind::ContextTooLong,
            ),
            (Some(413), None, "<html>", ErrorKind::ContextTooLong),
            (
                Some(400),
                Some("invalid_request_error"),
                "prompt is too long: 210000 tokens > 200000 maximum",
                ErrorKind::ContextTooLong,
            ),
            (
                Some(400),
                Some("invalid_request_error"),
                "input length and `max_tokens` exceed context limit: 1 + 2 > 3",
                ErrorKind::ContextTooLong,
            ),
            (
                Some(400),
                Some("invalid_request_error"),
                "messages: field required",
                ErrorKind::UpstreamBadRequest,
            ),
            (
                Some(404),
                Some("not_found_error"),
                "model: x",
                ErrorKind::UpstreamBadRequest,
            ),
            (
                Some(401),
                Some("authentication_error"),
                "invalid x-api-key",
                ErrorKind::UpstreamAuth,
            ),
            (
                Some(403),
                Some("permission_error"),
                "no",
                ErrorKind::UpstreamAuth,
            ),
            (
                Some(500),
                Some("api_error"),
                "Internal",
                ErrorKind::UpstreamServer,
            ),
            (Some(502), None, "bad gateway", ErrorKind::UpstreamServer),
            (None, Some("something_new"), "?", ErrorKind::UpstreamServer),
        ] {
            assert_eq!(
                error_kind(status, error_type, message),
                expected,
                "{status:?} {error_type:?}"
            );
        }
    }
}
