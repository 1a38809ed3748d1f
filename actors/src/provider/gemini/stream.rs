//! The stream: `streamGenerateContent` chunks into events; a finish reason is the clean end,
//! and the last usage (each chunk carries running totals) goes out when the body ends.

use std::collections::{HashMap, VecDeque};

use super::response::{
    arguments_text, blocked, error_kind, finish_reason, new_call_id, GenerateResponse,
};
use crate::completion::{StreamEvent, Usage};
use crate::error::{ErrorKind, GatewayError};
use crate::provider::adapter::Flow;
use crate::provider::sse::SseEvent;

/// What a Gemini stream remembers between chunks.
#[derive(Debug, Default)]
pub struct GeminiStream {
    /// Tool calls seen so far, per candidate.
    calls: HashMap<u32, u32>,
    /// The latest `usageMetadata` (each chunk carries the running totals).
    usage: Option<Usage>,
    /// A finish reason was seen: the end of the body is not a cut.
    finish_seen: bool,
}

impl GeminiStream {
    /// One server-sent event. An error drops the events of the same read that are not out yet.
    pub(super) fn on_event(
        &mut self,
        name: &str,
        event: SseEvent,
        out: &mut VecDeque<StreamEvent>,
    ) -> Result<Flow, GatewayError> {
        let parsed = serde_json::from_str::<GenerateResponse>(&event.data);
        let result = match parsed {
            Ok(chunk) => self.absorb(name, chunk, out),
            Err(e) => Err(GatewayError::new(
                ErrorKind::UpstreamMalformed,
                format!("provider `{name}` sent a malformed chunk: {e}"),
            )),
        };
        if let Err(error) = result {
            out.clear();
            return Err(error);
        }
        Ok(Flow::More)
    }

    pub(super) fn finish_seen(&self) -> bool {
        self.finish_seen
    }

    /// The usage goes out last, once the body has ended cleanly.
    pub(super) fn on_end(&mut self, out: &mut VecDeque<StreamEvent>) {
        if let Some(usage) = self.usage.take() {
            out.push_back(StreamEvent::Usage(usage));
        }
    }

    /// Turns one chunk into events; empty parts and thoughts produce none.
    pub(super) fn absorb(
        &mut self,
        name: &str,
        chunk: GenerateResponse,
        out: &mut VecDeque<StreamEvent>,
    ) -> Result<(), GatewayError> {
        if let Some(error) = chunk.error {
            let message = error.message.unwrap_or_default();
            let kind = error_kind(
                error.code.unwrap_or(500),
                error.status.as_deref(),
                &message,
                &error.details,
            );
            return Err(GatewayError::new(
                kind,
                format!("provider `{}` sent an error mid-stream: {message}", name),
            ));
        }
        if chunk.candidates.is_empty() {
            if let Some(reason) = chunk.prompt_feedback.and_then(|f| f.block_reason) {
                return Err(blocked(name, &reason));
            }
        }
        for (position, candidate) in chunk.candidates.into_iter().enumerate() {
            let index = candidate.index.unwrap_or(position as u32);
            for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
                if part.thought == Some(true) {
                    continue;
                }
                if let Some(call) = part.function_call {
                    let count = self.calls.entry(index).or_insert(0);
                    out.push_back(StreamEvent::ToolCall {
                        index,
                        call: *count,
                        id: Some(new_call_id()),
                        name: Some(call.name),
                        arguments: arguments_text(call.args),
                    });
                    *count += 1;
                } else if let Some(text) = part.text.filter(|t| !t.is_empty()) {
                    out.push_back(StreamEvent::Content { index, text });
                }
            }
            if let Some(reason) = candidate.finish_reason {
                let has_calls = self.calls.get(&index).is_some_and(|n| *n > 0);
                out.push_back(StreamEvent::Finish {
                    index,
                    reason: finish_reason(Some(&reason), has_calls),
                });
                self.finish_seen = true;
            }
        }
        if let Some(usage) = chunk.usage_metadata {
            self.usage = Some(usage.into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures::StreamExt;
    use serde_json::{json, Value};
    use tokio::time::Instant;

    use super::*;
    use crate::completion::FinishReason;
    use crate::provider::gemini::Gemini;
    use crate::provider::{driver, http};

    fn response(value: Value) -> GenerateResponse {
        serde_json::from_value(value).unwrap()
    }

    /// A stream's state and the events it has made so far.
    fn state() -> (GeminiStream, VecDeque<StreamEvent>) {
        (GeminiStream::default(), VecDeque::new())
    }

    #[test]
    fn stream_chunks_become_events() {
        let (mut s, mut pending) = state();
        for chunk in [
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "thinking", "thought": true}]}}],
                "usageMetadata": {"promptTokenCount": 5}}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "lo"}, {"functionCall": {"name": "f", "args": {"a": 1}}}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "g", "args": {}}}]},
                "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3, "thoughtsTokenCount": 2}}),
        ] {
            s.absorb("google", response(chunk), &mut pending).unwrap();
        }
        let events: Vec<StreamEvent> = pending.drain(..).collect();
        assert_eq!(events.len(), 5, "{events:?}");
        assert_eq!(
            events[0],
            StreamEvent::Content {
                index: 0,
                text: "Hel".into()
            }
        );
        assert_eq!(
            events[1],
            StreamEvent::Content {
                index: 0,
                text: "lo".into()
            }
        );
        assert!(
            matches!(&events[2], StreamEvent::ToolCall { call: 0, id: Some(id), name: Some(n), arguments, .. }
            if id.starts_with("call_") && n == "f" && arguments == "{\"a\":1}")
        );
        assert!(
            matches!(&events[3], StreamEvent::ToolCall { call: 1, name: Some(n), arguments, .. }
            if n == "g" && arguments == "{}")
        );
        assert_eq!(
            events[4],
            StreamEvent::Finish {
                index: 0,
                reason: FinishReason::ToolCalls
            }
        );
        assert!(s.finish_seen);
        assert_eq!(
            s.usage,
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 5,
                reasoning_tokens: 2,
                ..Usage::default()
            })
        );

        let (mut s, mut pending) = state();
        let err = s
            .absorb(
                "google",
                response(json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}})),
                &mut pending,
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ContentFiltered);
        let err = s
            .absorb(
                "google",
                response(
                    json!({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}),
                ),
                &mut pending,
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Overloaded);
    }

    #[actix_rt::test]
    async fn streams_end_with_usage_or_fail_when_cut() {
        let sse = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hi\"}], \"role\": \"model\"}, \"index\": 0}]}\r\n\r\n\
                   data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"\"}], \"role\": \"model\"}, \"finishReason\": \"STOP\", \"index\": 0}], \
                   \"usageMetadata\": {\"promptTokenCount\": 2, \"candidatesTokenCount\": 1, \"totalTokenCount\": 3}}\r\n\r\n";
        let run = |body: &'static str| async move {
            let chunks: Vec<Result<Bytes, http::Error>> = body
                .as_bytes()
                .chunks(7)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            driver::events::<Gemini>(
                "google".into(),
                futures::stream::iter(chunks).boxed(),
                GeminiStream::default(),
                Duration::from_secs(1),
                Instant::now() + Duration::from_secs(5),
            )
            .collect::<Vec<_>>()
            .await
        };
        let events = run(sse).await;
        let events: Vec<StreamEvent> = events.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            events,
            vec![
                StreamEvent::Content {
                    index: 0,
                    text: "Hi".into()
                },
                StreamEvent::Finish {
                    index: 0,
                    reason: FinishReason::Stop
                },
                StreamEvent::Usage(Usage {
                    prompt_tokens: 2,
                    completion_tokens: 1,
                    ..Usage::default()
                }),
            ]
        );
        let cut = &sse[..sse
            .find("data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"\"}]")
            .unwrap()];
        let events = run(cut).await;
        assert_eq!(events.len(), 2);
        let err = events[1].as_ref().unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamConnection);
        let events = run("data: {not json\n\n").await;
        assert_eq!(
            events[0].as_ref().unwrap_err().kind,
            ErrorKind::UpstreamMalformed
        );
    }
}
