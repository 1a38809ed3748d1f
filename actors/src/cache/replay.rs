//! A complete answer as stream events: how a stored answer is served to a streaming request.

use futures::StreamExt;

use super::StoredAnswer;
use crate::answer::LiveStream;
use crate::completion::{Completion, StreamEvent};
use crate::provider::EventStream;

/// Characters per content (or tool-call arguments) chunk of a replayed answer.
pub const REPLAY_CHUNK_CHARS: usize = 64;

/// The events that stream `completion`, in the order a provider sends them: for each choice its
/// content in chunks of `chunk_chars` characters, then each tool call (id and name with an
/// empty first fragment, then the arguments in chunks), then its finish reason; the usage
/// last. Accumulating them gives `completion` back (a refusal has no stream event and is lost).
pub fn completion_events(completion: &Completion, chunk_chars: usize) -> Vec<StreamEvent> {
    let chunk_chars = chunk_chars.max(1);
    let chunks = |text: &str| -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        chars
            .chunks(chunk_chars)
            .map(|piece| piece.iter().collect())
            .collect()
    };
    let mut events = Vec::new();
    for choice in &completion.choices {
        let index = choice.index;
        if let Some(content) = &choice.message.content {
            events.extend(
                chunks(content)
                    .into_iter()
                    .map(|text| StreamEvent::Content { index, text }),
            );
        }
        for (call, tool) in (0u32..).zip(&choice.message.tool_calls) {
            events.push(StreamEvent::ToolCall {
                index,
                call,
                id: Some(tool.id.clone()),
                name: Some(tool.name.clone()),
                arguments: String::new(),
            });
            events.extend(chunks(&tool.arguments).into_iter().map(|arguments| {
                StreamEvent::ToolCall {
                    index,
                    call,
                    id: None,
                    name: None,
                    arguments,
                }
            }));
        }
        events.push(StreamEvent::Finish {
            index,
            reason: choice.finish_reason,
        });
    }
    events.push(StreamEvent::Usage(completion.usage));
    events
}

/// A stored answer as a stream of events, all available at once.
pub fn replay_stream(stored: &StoredAnswer) -> EventStream {
    let events = completion_events(&stored.completion, REPLAY_CHUNK_CHARS);
    futures::stream::iter(events.into_iter().map(Ok)).boxed()
}

impl StoredAnswer {
    /// The stored answer as a live stream, ready for the SSE renderer (its first event split
    /// off as a provider's would be).
    pub fn replay(&self) -> LiveStream {
        let mut events = completion_events(&self.completion, REPLAY_CHUNK_CHARS).into_iter();
        // Never empty: the usage comes last.
        let first = events
            .next()
            .unwrap_or(StreamEvent::Usage(self.completion.usage));
        LiveStream {
            first,
            rest: futures::stream::iter(events.map(Ok)).boxed(),
            model: self.model.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::completion::{
        AssistantMessage, Choice, CompletionAccumulator, FinishReason, ToolCallOut, Usage,
    };

    fn completion() -> Completion {
        Completion {
            choices: vec![
                Choice {
                    index: 0,
                    message: AssistantMessage {
                        content: Some("Un café, s'il vous plaît — merci beaucoup!".into()),
                        tool_calls: vec![],
                        refusal: None,
                    },
                    finish_reason: FinishReason::Stop,
                },
                Choice {
                    index: 1,
                    message: AssistantMessage {
                        content: None,
                        tool_calls: vec![
                            ToolCallOut {
                                id: "call_1".into(),
                                name: "User".into(),
                                arguments: r#"{"name": "Jason", "age": 25}"#.into(),
                            },
                            ToolCallOut {
                                id: "call_2".into(),
                                name: "Other".into(),
                                arguments: "{}".into(),
                            },
                        ],
                        refusal: None,
                    },
                    finish_reason: FinishReason::ToolCalls,
                },
            ],
            usage: Usage {
                prompt_tokens: 12,
                completion_tokens: 34,
                cached_tokens: 2,
                ..Usage::default()
            },
        }
    }

    #[test]
    fn events_accumulate_back_into_the_completion() {
        let original = completion();
        for chunk_chars in [1, 3, 16, 1000] {
            let events = completion_events(&original, chunk_chars);
            assert_eq!(events.last(), Some(&StreamEvent::Usage(original.usage)));
            let mut acc = CompletionAccumulator::default();
            for event in &events {
                acc.push(event);
            }
            assert_eq!(acc.finish(), original, "chunk_chars = {chunk_chars}");
        }
        // Chunks are cut on characters, not bytes.
        let sizes: Vec<usize> = completion_events(&original, 3)
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Content { text, .. } => Some(text.chars().count()),
                _ => None,
            })
            .collect();
        assert_eq!(sizes.len(), 14);
        assert!(sizes.iter().all(|&n| n == 3));
    }

    #[actix_rt::test]
    async fn a_stored_answer_replays_as_a_live_stream() {
        let stored = StoredAnswer {
            completion: completion(),
            model: "m".into(),
            provider: "p".into(),
            provider_model: "pm".into(),
            source_run_id: uuid::Uuid::now_v7(),
            stored_at_ms: 0,
        };
        let live = stored.replay();
        assert_eq!(live.model, "m");
        let mut acc = CompletionAccumulator::default();
        acc.push(&live.first);
        let rest: Vec<_> = live.rest.collect().await;
        for event in rest {
            acc.push(&event.unwrap());
        }
        assert_eq!(acc.finish(), stored.completion);
        let all: Vec<_> = replay_stream(&stored).collect().await;
        assert_eq!(
            all.len(),
            completion_events(&stored.completion, REPLAY_CHUNK_CHARS).len()
        );
    }
}
