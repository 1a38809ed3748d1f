//! Answers and errors: the completion of a response body, and the error kind of an error body
//! (HTTP or mid-stream), whatever shape the compatible API gives it.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::completion::{AssistantMessage, Choice, Completion, FinishReason, ToolCallOut, Usage};
use crate::error::{ErrorKind, GatewayError};
use crate::provider::adapter::ErrorReply;
use crate::provider::http::kind_for_status;

/// An HTTP error answer: its JSON error in any known shape, or its first 500 characters.
pub(super) fn error_reply(status: u16, body: Option<&[u8]>) -> ErrorReply {
    let (error, text) = match body {
        Some(cut) => {
            let raw = || String::from_utf8_lossy(cut).chars().take(500).collect();
            match serde_json::from_slice::<Value>(cut) {
                Ok(value) => {
                    let error = UpstreamError::from_value(&value);
                    let text = error.message.clone().unwrap_or_else(raw);
                    (error, text)
                }
                Err(_) => {
                    let text: String = raw();
                    let error = UpstreamError {
                        message: Some(text.clone()).filter(|t| !t.trim().is_empty()),
                        ..UpstreamError::default()
                    };
                    (error, text)
                }
            }
        }
        None => (UpstreamError::default(), String::new()),
    };
    ErrorReply::new(classify(Some(status), &error), None, text)
}

/// The completion of a response, unless it has no choices or one of them failed.
pub(super) fn completion(name: &str, parsed: ChatResponse) -> Result<Completion, GatewayError> {
    if parsed.choices.is_empty() {
        return Err(GatewayError::new(
            ErrorKind::UpstreamMalformed,
            format!("provider `{name}` sent a response with no choices"),
        ));
    }
    if let Some((kind, reason)) = parsed.choices.iter().find_map(|c| {
        let reason = c.finish_reason.as_deref()?;
        failed_finish(reason).map(|kind| (kind, reason))
    }) {
        return Err(GatewayError::new(
            kind,
            format!("provider `{name}` gave up on the answer (finish reason `{reason}`)"),
        )
        .with_upstream_status(200));
    }
    Ok(completion_from(parsed))
}

/// An upstream error body, in any of the shapes the compatible APIs use:
/// `{"error": {"message", "type", "code"}}` (OpenAI, Groq, Azure…), `{"error": "…"}`,
/// `{"object": "error", "message", "type", "code"}` (Mistral, vLLM; `code` may be a number,
/// `message` an object) or `{"detail": …}` (validation errors).
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct UpstreamError {
    pub(super) message: Option<String>,
    code: Option<String>,
    kind: Option<String>,
}

impl UpstreamError {
    pub(super) fn from_value(value: &Value) -> UpstreamError {
        let text = |v: Option<&Value>| match v {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        let inner = match value.get("error") {
            Some(Value::String(message)) => {
                return UpstreamError {
                    message: Some(message.clone()),
                    ..UpstreamError::default()
                }
            }
            Some(error @ Value::Object(_)) => error,
            _ => value,
        };
        UpstreamError {
            message: text(inner.get("message")).or_else(|| text(inner.get("detail"))),
            code: text(inner.get("code")),
            kind: text(inner.get("type")),
        }
    }
}

/// The error kind of an upstream error: the status decides, except for the errors the body
/// names more precisely (context too long, content filtered, overloaded). `status` is `None`
/// for an error sent inside a stream.
pub(super) fn classify(status: Option<u16>, error: &UpstreamError) -> ErrorKind {
    let base = status.map_or(ErrorKind::UpstreamServer, kind_for_status);
    let lower = |s: &Option<String>| s.as_deref().unwrap_or("").to_ascii_lowercase();
    let (message, code, kind) = (
        lower(&error.message),
        lower(&error.code),
        lower(&error.kind),
    );
    let context = code == "context_length_exceeded"
        || [
            "context_length_exceeded",
            "maximum context length",
            "context length exceeded",
            "maximum prompt length",
            "context window",
            "prompt is too long",
            "reduce the length of the messages",
        ]
        .iter()
        .any(|p| message.contains(p));
    let filtered = ["content_filter", "content_policy_violation", "moderation"]
        .iter()
        .any(|c| code == *c || kind == *c)
        || [
            "content management policy",
            "content_policy_violation",
            "content filter",
            "flagged",
            "moderation",
        ]
        .iter()
        .any(|p| message.contains(p));
    let overloaded = code.contains("overloaded")
        || kind.contains("overloaded")
        || message.contains("overloaded");
    match status {
        Some(400 | 413 | 422) | None if context => ErrorKind::ContextTooLong,
        // OpenRouter answers 403 when its moderation flags the input.
        Some(400 | 403 | 422) | None if filtered => ErrorKind::ContentFiltered,
        Some(503)
            if overloaded
                || message.is_empty()
                || message.contains("unavailable")
                || message.contains("capacity") =>
        {
            ErrorKind::Overloaded
        }
        Some(500..=599) | None if overloaded => ErrorKind::Overloaded,
        _ => base,
    }
}

/// A finish reason that means the answer failed, not that it ended: DeepSeek's
/// `insufficient_system_resource`, OpenRouter's `error`.
pub(super) fn failed_finish(reason: &str) -> Option<ErrorKind> {
    match reason {
        "insufficient_system_resource" => Some(ErrorKind::Overloaded),
        "error" => Some(ErrorKind::UpstreamServer),
        _ => None,
    }
}

#[derive(Deserialize)]
pub struct ChatResponse {
    #[serde(default)]
    choices: Vec<ResponseChoice>,
    #[serde(default)]
    usage: Option<UsageBody>,
}

#[derive(Deserialize)]
pub(super) struct ResponseChoice {
    #[serde(default)]
    index: u32,
    message: ResponseMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct ResponseMessage {
    /// A string, or (Mistral's reasoning models) a list of parts whose text parts are the
    /// answer; `reasoning_content` (DeepSeek, grok-3-mini) and `reasoning` (OpenRouter) are
    /// not part of it.
    #[serde(default, deserialize_with = "text_or_parts")]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ResponseToolCall>>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct ResponseToolCall {
    #[serde(default)]
    id: String,
    function: ResponseFunction,
}

#[derive(Deserialize)]
pub(super) struct ResponseFunction {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize, Default)]
pub(super) struct UsageBody {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
    /// DeepSeek's name for the cached part of the prompt.
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
pub(super) struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
pub(super) struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

/// One part of a content list; only `text` parts count.
#[derive(Deserialize)]
pub(super) struct ContentChunk {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// `content` as a string, `null`, or a list of parts whose `text` parts are joined.
pub(super) fn text_or_parts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct TextOrParts;

    impl<'de> Visitor<'de> for TextOrParts {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string, null or a list of content parts")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(TextOrParts)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut text: Option<String> = None;
            while let Some(part) = seq.next_element::<ContentChunk>()? {
                if part.kind == "text" {
                    text.get_or_insert_with(String::new)
                        .push_str(part.text.as_deref().unwrap_or(""));
                }
            }
            Ok(text)
        }
    }

    d.deserialize_any(TextOrParts)
}

impl From<UsageBody> for Usage {
    fn from(u: UsageBody) -> Usage {
        let reasoning_tokens = u
            .completion_tokens_details
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0);
        // OpenAI counts reasoning inside `completion_tokens`; xAI reports it beside them (and
        // in `total_tokens`).
        let completion_tokens = if reasoning_tokens > 0
            && u.total_tokens == Some(u.prompt_tokens + u.completion_tokens + reasoning_tokens)
        {
            u.completion_tokens + reasoning_tokens
        } else {
            u.completion_tokens
        };
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens,
            cached_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .or(u.prompt_cache_hit_tokens)
                .unwrap_or(0),
            reasoning_tokens,
            cache_write_tokens: 0,
        }
    }
}

pub(super) fn completion_from(response: ChatResponse) -> Completion {
    Completion {
        choices: response
            .choices
            .into_iter()
            .map(|c| Choice {
                index: c.index,
                finish_reason: c
                    .finish_reason
                    .as_deref()
                    .map(FinishReason::from_openai)
                    .unwrap_or_default(),
                message: AssistantMessage {
                    content: c.message.content,
                    tool_calls: c
                        .message
                        .tool_calls
                        .unwrap_or_default()
                        .into_iter()
                        .map(|t| ToolCallOut {
                            id: t.id,
                            name: t.function.name,
                            arguments: t.function.arguments,
                        })
                        .collect(),
                    refusal: c.message.refusal,
                },
            })
            .collect(),
        usage: response.usage.map(Usage::from).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn response_maps_tool_calls_and_usage() {
        let response: ChatResponse = serde_json::from_value(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 2}}
        }))
        .unwrap();
        let c = completion_from(response);
        assert_eq!(c.choices[0].finish_reason, FinishReason::ToolCalls);
        assert_eq!(c.choices[0].message.tool_calls[0].arguments, "{\"a\":1}");
        assert_eq!(
            c.usage,
            Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                cached_tokens: 4,
                reasoning_tokens: 2,
                ..Usage::default()
            }
        );
    }

    fn usage(value: Value) -> Usage {
        serde_json::from_value::<UsageBody>(value).unwrap().into()
    }

    #[test]
    fn usage_under_other_names() {
        // DeepSeek: cache hits under their own name, reasoning inside completion tokens.
        let u = usage(
            json!({"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
            "prompt_cache_hit_tokens": 60, "prompt_cache_miss_tokens": 40,
            "completion_tokens_details": {"reasoning_tokens": 30}}),
        );
        assert_eq!(
            (u.cached_tokens, u.completion_tokens, u.reasoning_tokens),
            (60, 50, 30)
        );
        // xAI: reasoning beside the completion tokens; it is billed as output.
        let u = usage(
            json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 315,
            "completion_tokens_details": {"reasoning_tokens": 300}}),
        );
        assert_eq!((u.completion_tokens, u.reasoning_tokens), (305, 300));
        // Together, Ollama: no details at all.
        let u = usage(json!({"prompt_tokens": 3, "completion_tokens": 4}));
        assert_eq!(u.total_tokens(), 7);
        assert_eq!(u.cached_tokens + u.reasoning_tokens, 0);
    }

    #[test]
    fn content_may_be_a_list_of_parts_and_reasoning_is_not_content() {
        let response: ChatResponse = serde_json::from_value(json!({"choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": [
                {"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]},
                {"type": "text", "text": "4"}]}},
            {"index": 1, "finish_reason": "stop", "message": {"role": "assistant",
                "content": "4", "reasoning_content": "2+2"}}
        ]}))
        .unwrap();
        let c = completion_from(response);
        assert_eq!(c.choices[0].message.content.as_deref(), Some("4"));
        assert_eq!(c.choices[1].message.content.as_deref(), Some("4"));
    }

    fn classified(status: Option<u16>, body: Value) -> ErrorKind {
        classify(status, &UpstreamError::from_value(&body))
    }

    #[test]
    fn upstream_errors_are_classified_by_code_and_message() {
        let openai = |message: &str, kind: &str, code: Option<&str>| json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
        assert_eq!(
            classified(
                Some(400),
                openai(
                    "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.",
                    "invalid_request_error",
                    Some("context_length_exceeded")
                )
            ),
            ErrorKind::ContextTooLong
        );
        // Groq: the code alone.
        assert_eq!(
            classified(
                Some(400),
                openai(
                    "Please reduce the length of the messages or completion.",
                    "invalid_request_error",
                    Some("context_length_exceeded")
                )
            ),
            ErrorKind::ContextTooLong
        );
        // vLLM / Mistral: top-level message, numeric code.
        assert_eq!(
            classified(
                Some(400),
                json!({"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens", "type": "BadRequestError", "param": null, "code": 400})
            ),
            ErrorKind::ContextTooLong
        );
        // xAI.
        assert_eq!(
            classified(
                Some(400),
                json!({"code": "Client specified an invalid argument", "error": "This model's maximum prompt length is 131072 but the request contains 200000 tokens."})
            ),
            ErrorKind::ContextTooLong
        );
        // Azure content filter, OpenAI image policy, OpenRouter moderation (403).
        assert_eq!(
            classified(
                Some(400),
                json!({"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.", "type": null, "param": "prompt", "code": "content_filter", "status": 400, "innererror": {"code": "ResponsibleAIPolicyViolation"}}})
            ),
            ErrorKind::ContentFiltered
        );
        assert_eq!(
            classified(
                Some(400),
                openai(
                    "Your request was rejected as a result of our safety system.",
                    "invalid_request_error",
                    Some("content_policy_violation")
                )
            ),
            ErrorKind::ContentFiltered
        );
        assert_eq!(
            classified(
                Some(403),
                json!({"error": {"code": 403, "message": "Input was flagged for moderation", "metadata": {"reasons": ["harassment"]}}})
            ),
            ErrorKind::ContentFiltered
        );
        // Overload.
        assert_eq!(
            classified(
                Some(503),
                openai(
                    "The engine is currently overloaded, please try again later",
                    "server_error",
                    None
                )
            ),
            ErrorKind::Overloaded
        );
        assert_eq!(
            classified(Some(503), json!({"error": "Service Unavailable"})),
            ErrorKind::Overloaded
        );
        assert_eq!(
            classified(
                Some(500),
                openai(
                    "The server is overloaded or not ready yet.",
                    "server_error",
                    None
                )
            ),
            ErrorKind::Overloaded
        );
        // Everything else follows the status; auth is never reclassified.
        assert_eq!(
            classified(
                Some(400),
                openai("Scripted error 400", "invalid_request_error", None)
            ),
            ErrorKind::UpstreamBadRequest
        );
        assert_eq!(
            classified(
                Some(422),
                json!({"detail": [{"type": "extra_forbidden", "loc": ["body", "x"], "msg": "Extra inputs are not permitted"}]})
            ),
            ErrorKind::UpstreamBadRequest
        );
        assert_eq!(
            classified(
                Some(401),
                openai(
                    "Incorrect API key provided: flagged-key",
                    "invalid_request_error",
                    Some("invalid_api_key")
                )
            ),
            ErrorKind::UpstreamAuth
        );
        assert_eq!(
            classified(
                Some(403),
                openai("Country not supported", "invalid_request_error", None)
            ),
            ErrorKind::UpstreamAuth
        );
        assert_eq!(
            classified(Some(500), openai("boom", "server_error", None)),
            ErrorKind::UpstreamServer
        );
        assert_eq!(
            classified(
                Some(429),
                openai(
                    "Rate limit reached",
                    "requests",
                    Some("rate_limit_exceeded")
                )
            ),
            ErrorKind::RateLimited
        );
        // Mid-stream errors have no status.
        assert_eq!(
            classified(
                None,
                json!({"message": "maximum context length exceeded", "code": 400})
            ),
            ErrorKind::ContextTooLong
        );
        assert_eq!(
            classified(None, json!({"message": "boom"})),
            ErrorKind::UpstreamServer
        );
    }
}
