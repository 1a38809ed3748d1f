//! Answers and errors: candidates into choices, and Google's error status into an error kind.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::request::Content;
use crate::completion::{AssistantMessage, Choice, Completion, FinishReason, ToolCallOut, Usage};
use crate::error::{ErrorKind, GatewayError};
use crate::provider::http::kind_for_status;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct GenerateResponse {
    #[serde(default)]
    pub(super) candidates: Vec<Candidate>,
    #[serde(default)]
    pub(super) prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    pub(super) usage_metadata: Option<UsageMetadata>,
    /// Only in a stream that fails midway.
    #[serde(default)]
    pub(super) error: Option<ErrorBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Candidate {
    #[serde(default)]
    pub(super) content: Option<Content>,
    #[serde(default)]
    pub(super) finish_reason: Option<String>,
    /// Omitted for 0 (proto3 JSON).
    #[serde(default)]
    pub(super) index: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PromptFeedback {
    #[serde(default)]
    pub(super) block_reason: Option<String>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub(super) struct UsageMetadata {
    #[serde(default)]
    pub(super) prompt_token_count: u64,
    #[serde(default)]
    pub(super) candidates_token_count: u64,
    #[serde(default)]
    pub(super) cached_content_token_count: u64,
    #[serde(default)]
    pub(super) thoughts_token_count: u64,
}

impl From<UsageMetadata> for Usage {
    fn from(u: UsageMetadata) -> Usage {
        Usage {
            prompt_tokens: u.prompt_token_count,
            completion_tokens: u.candidates_token_count + u.thoughts_token_count,
            cached_tokens: u.cached_content_token_count,
            reasoning_tokens: u.thoughts_token_count,
            cache_write_tokens: 0,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ErrorEnvelope {
    pub(super) error: ErrorBody,
}

/// Google's error: `{"code": 429, "message": "…", "status": "RESOURCE_EXHAUSTED",
/// "details": [...]}`.
#[derive(Deserialize, Default)]
pub(super) struct ErrorBody {
    #[serde(default)]
    pub(super) code: Option<u16>,
    #[serde(default)]
    pub(super) message: Option<String>,
    #[serde(default)]
    pub(super) status: Option<String>,
    #[serde(default)]
    pub(super) details: Vec<Value>,
}

/// Parses an error body: an object, or (`streamGenerateContent` without SSE) an array.
pub(super) fn parse_error_body(bytes: &[u8]) -> Option<ErrorBody> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let value = match value {
        Value::Array(items) => items.into_iter().next()?,
        other => other,
    };
    serde_json::from_value::<ErrorEnvelope>(value)
        .ok()
        .map(|e| e.error)
}

// ---- response translation ----

/// A fresh tool-call id: `call_` and 24 random alphanumeric characters.
pub(super) fn new_call_id() -> String {
    let mut id = String::with_capacity(29);
    id.push_str("call_");
    id.extend(std::iter::repeat_with(fastrand::alphanumeric).take(24));
    id
}

/// Gemini's finish reason; `STOP` with function calls is OpenAI's `tool_calls`.
pub(super) fn finish_reason(reason: Option<&str>, has_calls: bool) -> FinishReason {
    match reason {
        Some("MAX_TOKENS") => FinishReason::Length,
        Some(
            "SAFETY"
            | "RECITATION"
            | "BLOCKLIST"
            | "PROHIBITED_CONTENT"
            | "SPII"
            | "IMAGE_SAFETY"
            | "IMAGE_PROHIBITED_CONTENT"
            | "IMAGE_RECITATION",
        ) => FinishReason::ContentFilter,
        _ if has_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

pub(super) fn arguments_text(args: Option<Value>) -> String {
    match args {
        None | Some(Value::Null) => "{}".to_string(),
        Some(args) => args.to_string(),
    }
}

pub(super) fn blocked(name: &str, reason: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::ContentFiltered,
        format!("provider `{name}` blocked the prompt ({reason})"),
    )
}

pub(super) fn choice_from(candidate: Candidate, position: usize) -> Choice {
    let index = candidate.index.unwrap_or(position as u32);
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
        if part.thought == Some(true) {
            continue;
        }
        if let Some(call) = part.function_call {
            tool_calls.push(ToolCallOut {
                id: new_call_id(),
                name: call.name,
                arguments: arguments_text(call.args),
            });
        } else if let Some(t) = part.text {
            text.get_or_insert_with(String::new).push_str(&t);
        }
    }
    let finish_reason = finish_reason(candidate.finish_reason.as_deref(), !tool_calls.is_empty());
    if text.is_none() && tool_calls.is_empty() && finish_reason != FinishReason::ContentFilter {
        text = Some(String::new());
    }
    Choice {
        index,
        message: AssistantMessage {
            content: text,
            tool_calls,
            refusal: None,
        },
        finish_reason,
    }
}

pub(super) fn completion_from(
    name: &str,
    response: GenerateResponse,
) -> Result<Completion, GatewayError> {
    if response.candidates.is_empty() {
        if let Some(reason) = response.prompt_feedback.and_then(|f| f.block_reason) {
            return Err(blocked(name, &reason));
        }
        return Err(GatewayError::new(
            ErrorKind::UpstreamMalformed,
            format!("provider `{name}` sent a response with no candidates"),
        )
        .with_upstream_status(200));
    }
    let mut choices: Vec<Choice> = response
        .candidates
        .into_iter()
        .enumerate()
        .map(|(position, candidate)| choice_from(candidate, position))
        .collect();
    choices.sort_by_key(|c| c.index);
    Ok(Completion {
        choices,
        usage: response.usage_metadata.map(Usage::from).unwrap_or_default(),
    })
}

// ---- errors ----

/// Whether an `INVALID_ARGUMENT` message says the prompt is too long.
pub(super) fn is_context_too_long(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    (m.contains("input token count") && (m.contains("exceeds") || m.contains("only supports")))
        || m.contains("exceeds the maximum number of tokens")
        || m.contains("context window")
}

/// Maps an HTTP status and Google's `error.status` to the gateway's error kind.
pub(super) fn error_kind(
    status: u16,
    google_status: Option<&str>,
    message: &str,
    details: &[Value],
) -> ErrorKind {
    let reason = |wanted: &str| {
        details
            .iter()
            .any(|d| d.get("reason").and_then(Value::as_str) == Some(wanted))
    };
    // A bad API key is a 400 INVALID_ARGUMENT with this reason.
    if reason("API_KEY_INVALID") || reason("API_KEY_EXPIRED") || reason("ACCESS_TOKEN_EXPIRED") {
        return ErrorKind::UpstreamAuth;
    }
    match google_status {
        Some("RESOURCE_EXHAUSTED") => ErrorKind::RateLimited,
        Some("UNAVAILABLE") => ErrorKind::Overloaded,
        Some("PERMISSION_DENIED" | "UNAUTHENTICATED") => ErrorKind::UpstreamAuth,
        // Billing, region or API not enabled: this provider cannot serve, another may.
        Some("FAILED_PRECONDITION") => ErrorKind::UpstreamAuth,
        Some("DEADLINE_EXCEEDED") => ErrorKind::Timeout,
        Some("INTERNAL" | "UNKNOWN" | "DATA_LOSS" | "ABORTED") => ErrorKind::UpstreamServer,
        Some("INVALID_ARGUMENT" | "OUT_OF_RANGE") if is_context_too_long(message) => {
            ErrorKind::ContextTooLong
        }
        Some("INVALID_ARGUMENT" | "OUT_OF_RANGE" | "NOT_FOUND") => ErrorKind::UpstreamBadRequest,
        _ => match status {
            503 => ErrorKind::Overloaded,
            504 => ErrorKind::Timeout,
            400 if is_context_too_long(message) => ErrorKind::ContextTooLong,
            status => kind_for_status(status),
        },
    }
}

/// `RetryInfo.retryDelay` (`"37s"`, `"1.5s"`) from the error details.
pub(super) fn retry_delay(details: &[Value]) -> Option<Duration> {
    details.iter().find_map(|d| {
        let delay = d.get("retryDelay")?.as_str()?;
        let seconds = delay.strip_suffix('s')?.trim().parse::<f64>().ok()?;
        Duration::try_from_secs_f64(seconds).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn response(value: Value) -> GenerateResponse {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn responses_map_text_tool_calls_finish_reasons_and_usage() {
        let c = completion_from(
            "google",
            response(json!({
                "candidates": [{"content": {"role": "model", "parts": [
                    {"text": "Let me think", "thought": true},
                    {"text": "Hello "}, {"text": "world"}
                ]}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 7,
                    "cachedContentTokenCount": 4, "totalTokenCount": 22},
                "modelVersion": "gemini-2.5-flash", "responseId": "abc"
            })),
        )
        .unwrap();
        assert_eq!(c.choices[0].message.content.as_deref(), Some("Hello world"));
        assert_eq!(c.choices[0].finish_reason, FinishReason::Stop);
        assert_eq!(
            c.usage,
            Usage {
                prompt_tokens: 10,
                completion_tokens: 12,
                cached_tokens: 4,
                reasoning_tokens: 7,
                cache_write_tokens: 0
            }
        );

        let c = completion_from(
            "google",
            response(json!({
                "candidates": [{"content": {"role": "model", "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2ln"},
                    {"functionCall": {"name": "noop"}}
                ]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2}
            })),
        )
        .unwrap();
        let choice = &c.choices[0];
        assert_eq!(choice.finish_reason, FinishReason::ToolCalls);
        assert_eq!(choice.message.content, None);
        let calls = &choice.message.tool_calls;
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments, "{\"city\":\"Paris\"}");
        assert_eq!(calls[1].arguments, "{}");
        assert!(calls[0].id.starts_with("call_") && calls[0].id.len() == 29);
        assert_ne!(calls[0].id, calls[1].id);

        for (reason, expected) in [
            ("MAX_TOKENS", FinishReason::Length),
            ("SAFETY", FinishReason::ContentFilter),
            ("RECITATION", FinishReason::ContentFilter),
            ("BLOCKLIST", FinishReason::ContentFilter),
            ("PROHIBITED_CONTENT", FinishReason::ContentFilter),
            ("SPII", FinishReason::ContentFilter),
            ("OTHER", FinishReason::Stop),
            ("MALFORMED_FUNCTION_CALL", FinishReason::Stop),
        ] {
            let c = completion_from(
                "google",
                response(json!({"candidates": [{"finishReason": reason}, {"finishReason": reason, "index": 1,
                    "content": {"parts": [{"text": "x"}]}}]})),
            )
            .unwrap();
            assert_eq!(c.choices[0].finish_reason, expected, "{reason}");
            assert_eq!(c.choices[1].index, 1);
            assert_eq!(c.choices[1].message.content.as_deref(), Some("x"));
        }
        let filtered = completion_from(
            "google",
            response(json!({"candidates": [{"finishReason": "SAFETY"}]})),
        )
        .unwrap();
        assert_eq!(filtered.choices[0].message.content, None);

        let err = completion_from(
            "google",
            response(json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}})),
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ContentFiltered);
        assert!(err.message.contains("SAFETY"), "{}", err.message);
        let err = completion_from("google", response(json!({}))).unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamMalformed);
    }

    #[test]
    fn google_errors_map_to_kinds() {
        let none: &[Value] = &[];
        assert_eq!(
            error_kind(429, Some("RESOURCE_EXHAUSTED"), "quota", none),
            ErrorKind::RateLimited
        );
        assert_eq!(
            error_kind(503, Some("UNAVAILABLE"), "overloaded", none),
            ErrorKind::Overloaded
        );
        assert_eq!(error_kind(503, None, "", none), ErrorKind::Overloaded);
        assert_eq!(
            error_kind(500, Some("INTERNAL"), "", none),
            ErrorKind::UpstreamServer
        );
        assert_eq!(error_kind(500, None, "", none), ErrorKind::UpstreamServer);
        assert_eq!(
            error_kind(403, Some("PERMISSION_DENIED"), "", none),
            ErrorKind::UpstreamAuth
        );
        assert_eq!(
            error_kind(401, Some("UNAUTHENTICATED"), "", none),
            ErrorKind::UpstreamAuth
        );
        assert_eq!(
            error_kind(504, Some("DEADLINE_EXCEEDED"), "", none),
            ErrorKind::Timeout
        );
        assert_eq!(
            error_kind(
                400,
                Some("INVALID_ARGUMENT"),
                "Invalid value at 'contents'",
                none
            ),
            ErrorKind::UpstreamBadRequest
        );
        assert_eq!(
            error_kind(404, Some("NOT_FOUND"), "models/x is not found", none),
            ErrorKind::UpstreamBadRequest
        );
        assert_eq!(
            error_kind(
                400,
                Some("INVALID_ARGUMENT"),
                "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
                none
            ),
            ErrorKind::ContextTooLong
        );
        assert_eq!(
            error_kind(
                400,
                Some("INVALID_ARGUMENT"),
                "Unable to submit request because the input token count is 1200000 but model only supports up to 1048576.",
                none
            ),
            ErrorKind::ContextTooLong
        );
        let key_invalid = [
            json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}),
        ];
        assert_eq!(
            error_kind(
                400,
                Some("INVALID_ARGUMENT"),
                "API key not valid.",
                &key_invalid
            ),
            ErrorKind::UpstreamAuth
        );
        let retry = [
            json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure"}),
            json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}),
        ];
        assert_eq!(retry_delay(&retry), Some(Duration::from_secs(37)));
        assert_eq!(
            retry_delay(&[json!({"retryDelay": "0.5s"})]),
            Some(Duration::from_millis(500))
        );
        assert_eq!(retry_delay(none), None);
        let parsed = parse_error_body(
            br#"[{"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}]"#,
        )
        .unwrap();
        assert_eq!(parsed.status.as_deref(), Some("RESOURCE_EXHAUSTED"));
    }
}
