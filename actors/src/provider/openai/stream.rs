//! The stream: chunks into events; `[DONE]` (or a finish reason) is the clean end.

use std::collections::VecDeque;

use serde::Deserialize;
use serde_json::Value;

use super::response::{classify, failed_finish, text_or_parts, UpstreamError, UsageBody};
use crate::completion::{FinishReason, StreamEvent};
use crate::error::{ErrorKind, GatewayError};
use crate::provider::adapter::Flow;
use crate::provider::sse::SseEvent;

#[derive(Deserialize)]
pub(super) struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<UsageBody>,
    /// Groq's usage in the last chunk, before it supported `stream_options`.
    #[serde(default)]
    x_groq: Option<XGroq>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
pub(super) struct XGroq {
    #[serde(default)]
    usage: Option<UsageBody>,
}

#[derive(Deserialize)]
pub(super) struct ChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct Delta {
    #[serde(default, deserialize_with = "text_or_parts")]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<DeltaToolCall>>,
}

#[derive(Deserialize)]
pub(super) struct DeltaToolCall {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<DeltaFunction>,
}

#[derive(Deserialize)]
pub(super) struct DeltaFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// Turns one stream chunk into events; empty deltas produce none. Whether it had a finish
/// reason; a finish reason that means failure ([`failed_finish`]) is returned as an error with
/// the reason.
pub(super) fn chunk_events(
    chunk: Chunk,
    out: &mut VecDeque<StreamEvent>,
) -> Result<bool, (ErrorKind, String)> {
    let mut finished = false;
    for choice in chunk.choices {
        let delta = choice.delta.unwrap_or_default();
        if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
            out.push_back(StreamEvent::Content {
                index: choice.index,
                text,
            });
        }
        for call in delta.tool_calls.unwrap_or_default() {
            let (name, arguments) = match call.function {
                Some(f) => (f.name, f.arguments.unwrap_or_default()),
                None => (None, String::new()),
            };
            if call.id.is_none() && name.is_none() && arguments.is_empty() {
                continue;
            }
            out.push_back(StreamEvent::ToolCall {
                index: choice.index,
                call: call.index,
                id: call.id,
                name,
                arguments,
            });
        }
        if let Some(reason) = choice.finish_reason {
            if let Some(kind) = failed_finish(&reason) {
                return Err((kind, reason));
            }
            out.push_back(StreamEvent::Finish {
                index: choice.index,
                reason: FinishReason::from_openai(&reason),
            });
            finished = true;
        }
    }
    if let Some(usage) = chunk.usage.or(chunk.x_groq.and_then(|x| x.usage)) {
        out.push_back(StreamEvent::Usage(usage.into()));
    }
    Ok(finished)
}

/// What an OpenAI stream remembers between chunks.
#[derive(Debug, Default)]
pub struct OpenAiStream {
    /// `[DONE]` or a finish reason was seen: the end of the body is not a cut.
    pub(super) clean_end: bool,
}

/// One server-sent event: `[DONE]`, an error object, or a chunk.
pub(super) fn on_event(
    name: &str,
    stream: &mut OpenAiStream,
    event: SseEvent,
    out: &mut VecDeque<StreamEvent>,
) -> Result<Flow, GatewayError> {
    if event.data == "[DONE]" {
        stream.clean_end = true;
        return Ok(Flow::Done);
    }
    match serde_json::from_str::<Chunk>(&event.data) {
        Ok(Chunk {
            error: Some(error), ..
        }) => {
            let error = UpstreamError::from_value(&error);
            let message = format!(
                "provider `{name}` sent an error mid-stream: {}",
                error.message.as_deref().unwrap_or_default()
            );
            Err(GatewayError::new(classify(None, &error), message))
        }
        Ok(chunk) => match chunk_events(chunk, out) {
            Ok(finished) => {
                stream.clean_end |= finished;
                Ok(Flow::More)
            }
            Err((kind, reason)) => Err(GatewayError::new(
                kind,
                format!("provider `{name}` gave up on the answer (finish reason `{reason}`)"),
            )),
        },
        Err(e) => Err(GatewayError::new(
            ErrorKind::UpstreamMalformed,
            format!("provider `{name}` sent a malformed chunk: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use tokio::time::Instant;

    use super::*;
    use crate::provider::openai::OpenAi;
    use crate::provider::{driver, http};
    use serde_json::json;

    #[test]
    fn chunks_become_events_and_empty_deltas_vanish() {
        let mut out = VecDeque::new();
        let chunk: Chunk = serde_json::from_value(json!({
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]
        }))
        .unwrap();
        chunk_events(chunk, &mut out).unwrap();
        assert!(out.is_empty());
        let chunk: Chunk = serde_json::from_value(json!({
            "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "f", "arguments": ""}}]}, "finish_reason": null}]
        }))
        .unwrap();
        chunk_events(chunk, &mut out).unwrap();
        let chunk: Chunk = serde_json::from_value(json!({
            "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}
        }))
        .unwrap();
        chunk_events(chunk, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], StreamEvent::ToolCall { id: Some(id), .. } if id == "call_1"));
        assert!(matches!(&out[1], StreamEvent::Usage(u) if u.prompt_tokens == 3));
    }

    #[test]
    fn stream_quirks_reasoning_deltas_groq_usage_and_failed_finishes() {
        let mut out = VecDeque::new();
        // DeepSeek / OpenRouter reasoning deltas are not content.
        let chunk: Chunk = serde_json::from_value(json!({"choices": [{"index": 0,
            "delta": {"content": null, "reasoning_content": "hmm", "reasoning": "hmm"}}]}))
        .unwrap();
        chunk_events(chunk, &mut out).unwrap();
        assert!(out.is_empty());
        // Groq's x_groq usage; content_filter passes through.
        let chunk: Chunk = serde_json::from_value(json!({"choices": [{"index": 0, "delta": {},
            "finish_reason": "content_filter"}],
            "x_groq": {"usage": {"prompt_tokens": 5, "completion_tokens": 2}}}))
        .unwrap();
        chunk_events(chunk, &mut out).unwrap();
        assert!(matches!(
            out[0],
            StreamEvent::Finish {
                reason: FinishReason::ContentFilter,
                ..
            }
        ));
        assert!(matches!(&out[1], StreamEvent::Usage(u) if u.prompt_tokens == 5));
        // DeepSeek ran out of capacity mid-answer: an error, not a normal end.
        let chunk: Chunk = serde_json::from_value(json!({"choices": [{"index": 0,
            "delta": {"content": "par"}, "finish_reason": "insufficient_system_resource"}]}))
        .unwrap();
        let err = chunk_events(chunk, &mut out).unwrap_err();
        assert_eq!(err.0, ErrorKind::Overloaded);
        assert!(matches!(&out[2], StreamEvent::Content { text, .. } if text == "par"));
    }

    /// Runs the stream state machine over SSE `events` (one body chunk each).
    async fn events_of(events: &[&str]) -> Vec<Result<StreamEvent, GatewayError>> {
        let chunks: Vec<Result<bytes::Bytes, http::Error>> = events
            .iter()
            .map(|e| Ok(bytes::Bytes::from(format!("data: {e}\n\n"))))
            .collect();
        driver::events::<OpenAi>(
            "p".to_string(),
            futures::stream::iter(chunks).boxed(),
            OpenAiStream::default(),
            Duration::from_secs(5),
            Instant::now() + Duration::from_secs(5),
        )
        .collect()
        .await
    }

    #[actix_rt::test]
    async fn streams_end_with_an_error_after_what_was_already_decoded() {
        let content = r#"{"choices": [{"index": 0, "delta": {"content": "par"}}]}"#;
        // DeepSeek ran out of capacity.
        let out = events_of(&[
            content,
            r#"{"choices": [{"index": 0, "delta": {}, "finish_reason": "insufficient_system_resource"}]}"#,
        ])
        .await;
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], Ok(StreamEvent::Content { text, .. }) if text == "par"));
        let err = out[1].as_ref().unwrap_err();
        assert_eq!(err.kind, ErrorKind::Overloaded);
        assert!(
            err.message.contains("insufficient_system_resource"),
            "{err}"
        );
        // An error object mid-stream is classified like an HTTP error body.
        let out = events_of(&[
            content,
            r#"{"error": {"message": "This model's maximum context length is 8192 tokens", "code": "context_length_exceeded"}}"#,
        ])
        .await;
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].as_ref().unwrap_err().kind, ErrorKind::ContextTooLong);
        // A normal end: finish, usage, [DONE].
        let out = events_of(&[
            content,
            r#"{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}"#,
            r#"{"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}"#,
            "[DONE]",
        ])
        .await;
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(Result::is_ok));
        // Cut before [DONE] or a finish reason.
        let out = events_of(&[content]).await;
        assert_eq!(
            out.last().unwrap().as_ref().unwrap_err().kind,
            ErrorKind::UpstreamConnection
        );
    }
}
