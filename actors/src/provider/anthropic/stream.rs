//! The stream: Messages API events into stream events; `message_stop` is the clean end.

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;
use serde_json::Value;

use super::response::{error_event, finish_reason, ErrorBody, ResponseBlock, UsageBody};
use crate::completion::{FinishReason, StreamEvent};
use crate::error::{ErrorKind, GatewayError};
use crate::provider::adapter::Flow;
use crate::provider::sse::SseEvent;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum StreamBody {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: ResponseBlock,
    },
    ContentBlockDelta {
        index: u32,
        delta: DeltaBody,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<UsageBody>,
    },
    MessageStop,
    Error {
        error: ErrorBody,
    },
    /// `ping` and event types added later.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
pub(super) struct StartMessage {
    #[serde(default)]
    pub(super) usage: UsageBody,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum DeltaBody {
    TextDelta {
        #[serde(default)]
        text: String,
    },
    InputJsonDelta {
        #[serde(default)]
        partial_json: String,
    },
    ThinkingDelta {
        #[serde(default)]
        thinking: String,
    },
    /// `signature_delta`, `citations_delta`…
    #[serde(other)]
    Other,
}

#[derive(Deserialize, Default)]
pub(super) struct MessageDeltaBody {
    #[serde(default)]
    pub(super) stop_reason: Option<String>,
}

/// What a content block of a stream turns into.
#[derive(Debug, Clone, Copy)]
pub(super) enum BlockState {
    Text,
    /// Tool call number `call`; `args` once a non-empty fragment was sent.
    Tool {
        call: u32,
        args: bool,
    },
    /// The structured answer's tool: its input is content.
    Answer {
        args: bool,
    },
    Thinking,
    Ignored,
}

/// Turns stream events into [`StreamEvent`]s; no event for empty deltas.
#[derive(Debug, Default)]
pub(super) struct StreamTranslator {
    pub(super) answer_tool: Option<String>,
    pub(super) blocks: HashMap<u32, BlockState>,
    pub(super) calls: u32,
    pub(super) usage: UsageBody,
    pub(super) thinking_chars: usize,
    /// `message_stop` arrived.
    pub(super) stopped: bool,
}

impl StreamTranslator {
    fn new(answer_tool: Option<String>) -> Self {
        StreamTranslator {
            answer_tool,
            ..Self::default()
        }
    }

    /// An `error` event comes back as its body.
    fn push(
        &mut self,
        event: StreamBody,
        out: &mut VecDeque<StreamEvent>,
    ) -> Result<(), ErrorBody> {
        match event {
            StreamBody::MessageStart { message } => self.usage.merge(&message.usage),
            StreamBody::ContentBlockStart {
                index,
                content_block,
            } => {
                let state = match content_block {
                    ResponseBlock::Text { text } => {
                        if !text.is_empty() {
                            out.push_back(StreamEvent::Content { index: 0, text });
                        }
                        BlockState::Text
                    }
                    ResponseBlock::ToolUse { name, input, .. }
                        if self.answer_tool.as_deref() == Some(name.as_str()) =>
                    {
                        let args = has_input(&input);
                        if args {
                            out.push_back(StreamEvent::Content {
                                index: 0,
                                text: input.to_string(),
                            });
                        }
                        BlockState::Answer { args }
                    }
                    ResponseBlock::ToolUse { id, name, input } => {
                        let call = self.calls;
                        self.calls += 1;
                        let args = has_input(&input);
                        out.push_back(StreamEvent::ToolCall {
                            index: 0,
                            call,
                            id: Some(id),
                            name: Some(name),
                            arguments: if args {
                                input.to_string()
                            } else {
                                String::new()
                            },
                        });
                        BlockState::Tool { call, args }
                    }
                    ResponseBlock::Thinking { thinking } => {
                        self.thinking_chars += thinking.chars().count();
                        BlockState::Thinking
                    }
                    ResponseBlock::Other => BlockState::Ignored,
                };
                self.blocks.insert(index, state);
            }
            StreamBody::ContentBlockDelta { index, delta } => {
                match (self.blocks.get_mut(&index), delta) {
                    (Some(BlockState::Text) | None, DeltaBody::TextDelta { text })
                        if !text.is_empty() =>
                    {
                        out.push_back(StreamEvent::Content { index: 0, text });
                    }
                    (
                        Some(BlockState::Tool { call, args }),
                        DeltaBody::InputJsonDelta { partial_json },
                    ) if !partial_json.is_empty() => {
                        *args = true;
                        out.push_back(StreamEvent::ToolCall {
                            index: 0,
                            call: *call,
                            id: None,
                            name: None,
                            arguments: partial_json,
                        });
                    }
                    (
                        Some(BlockState::Answer { args }),
                        DeltaBody::InputJsonDelta { partial_json },
                    ) if !partial_json.is_empty() => {
                        *args = true;
                        out.push_back(StreamEvent::Content {
                            index: 0,
                            text: partial_json,
                        });
                    }
                    (_, DeltaBody::ThinkingDelta { thinking }) => {
                        self.thinking_chars += thinking.chars().count();
                    }
                    // Empty deltas, signatures, citations: nothing to show.
                    _ => {}
                }
            }
            StreamBody::ContentBlockStop { index } => match self.blocks.get(&index) {
                // A tool without parameters streams no input: its arguments are `{}`.
                Some(BlockState::Tool { call, args: false }) => {
                    out.push_back(StreamEvent::ToolCall {
                        index: 0,
                        call: *call,
                        id: None,
                        name: None,
                        arguments: "{}".to_string(),
                    });
                }
                Some(BlockState::Answer { args: false }) => {
                    out.push_back(StreamEvent::Content {
                        index: 0,
                        text: "{}".to_string(),
                    });
                }
                _ => {}
            },
            StreamBody::MessageDelta { delta, usage } => {
                if let Some(usage) = usage {
                    self.usage.merge(&usage);
                }
                if let Some(reason) = delta.stop_reason {
                    let mut reason = finish_reason(Some(&reason));
                    if reason == FinishReason::ToolCalls && self.calls == 0 {
                        // Only the structured answer's tool was called.
                        reason = FinishReason::Stop;
                    }
                    out.push_back(StreamEvent::Finish { index: 0, reason });
                    out.push_back(StreamEvent::Usage(self.usage.to_usage(self.thinking_chars)));
                }
            }
            StreamBody::MessageStop => self.stopped = true,
            StreamBody::Error { error } => return Err(error),
            StreamBody::Other => {}
        }
        Ok(())
    }
}

/// Whether a `content_block_start` already carries tool input (Anthropic sends `{}`).
pub(super) fn has_input(input: &Value) -> bool {
    match input {
        Value::Object(map) => !map.is_empty(),
        Value::Null => false,
        _ => true,
    }
}

/// What an Anthropic stream remembers between events.
pub struct AnthropicStream {
    /// The API key or OAuth token, scrubbed from error messages.
    pub(super) secret: String,
    pub(super) translator: StreamTranslator,
}

impl AnthropicStream {
    pub(super) fn new(secret: String, answer_tool: Option<String>) -> AnthropicStream {
        AnthropicStream {
            secret,
            translator: StreamTranslator::new(answer_tool),
        }
    }

    /// `message_stop` arrived.
    pub(super) fn stopped(&self) -> bool {
        self.translator.stopped
    }

    /// One server-sent event; `message_stop` ends the stream.
    pub(super) fn on_event(
        &mut self,
        name: &str,
        event: SseEvent,
        out: &mut VecDeque<StreamEvent>,
    ) -> Result<Flow, GatewayError> {
        if event.data.trim().is_empty() {
            return Ok(Flow::More);
        }
        let parsed = serde_json::from_str::<StreamBody>(&event.data).map_err(|e| {
            GatewayError::new(
                ErrorKind::UpstreamMalformed,
                format!("provider `{name}` sent a malformed event: {e}"),
            )
        })?;
        self.translator
            .push(parsed, out)
            .map_err(|error| error_event(name, &[&self.secret], error, "mid-stream"))?;
        Ok(if self.translator.stopped {
            Flow::Done
        } else {
            Flow::More
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::completion::Usage;
    use serde_json::json;

    fn translate_stream(
        events: &[Value],
        answer_tool: Option<&str>,
    ) -> Result<Vec<StreamEvent>, ErrorBody> {
        let mut translator = StreamTranslator::new(answer_tool.map(str::to_string));
        let mut out = VecDeque::new();
        for event in events {
            let parsed: StreamBody = serde_json::from_value(event.clone()).unwrap();
            translator.push(parsed, &mut out)?;
        }
        Ok(out.into())
    }

    fn start(input: u64, read: u64, write: u64) -> Value {
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
            "content": [], "model": "claude", "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input, "cache_creation_input_tokens": write,
                "cache_read_input_tokens": read, "output_tokens": 1}}})
    }

    #[test]
    fn stream_events_become_text_tool_calls_finish_and_usage() {
        let events = translate_stream(
            &[
                start(10, 5, 2),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
                json!({"type": "ping"}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm, let me see"}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "abc"}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": ""}}),
                json!({"type": "content_block_stop", "index": 1}),
                json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_a", "name": "weather", "input": {}}}),
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
                json!({"type": "content_block_stop", "index": 2}),
                json!({"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "toolu_b", "name": "now", "input": {}}}),
                json!({"type": "content_block_stop", "index": 3}),
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 42}}),
                json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {}}),
            ],
            None,
        )
        .unwrap();
        let call = |call: u32, id: Option<&str>, name: Option<&str>, arguments: &str| {
            StreamEvent::ToolCall {
                index: 0,
                call,
                id: id.map(String::from),
                name: name.map(String::from),
                arguments: arguments.to_string(),
            }
        };
        assert_eq!(
            events,
            vec![
                StreamEvent::Content {
                    index: 0,
                    text: "Hi".into()
                },
                call(0, Some("toolu_a"), Some("weather"), ""),
                call(0, None, None, "{\"city\":"),
                call(0, None, None, "\"Paris\"}"),
                call(1, Some("toolu_b"), Some("now"), ""),
                call(1, None, None, "{}"),
                StreamEvent::Finish {
                    index: 0,
                    reason: FinishReason::ToolCalls
                },
                StreamEvent::Usage(Usage {
                    prompt_tokens: 17,
                    completion_tokens: 42,
                    cached_tokens: 5,
                    cache_write_tokens: 2,
                    reasoning_tokens: 4,
                }),
            ]
        );
    }

    #[test]
    fn streamed_structured_answer_is_content_and_errors_surface() {
        let events = translate_stream(
            &[
                start(3, 0, 0),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "Person", "input": {}}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"name\""}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ":\"A\"}"}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5, "input_tokens": 4}}),
                json!({"type": "message_stop"}),
            ],
            Some("Person"),
        )
        .unwrap();
        assert_eq!(
            events,
            vec![
                StreamEvent::Content {
                    index: 0,
                    text: "{\"name\"".into()
                },
                StreamEvent::Content {
                    index: 0,
                    text: ":\"A\"}".into()
                },
                StreamEvent::Finish {
                    index: 0,
                    reason: FinishReason::Stop
                },
                StreamEvent::Usage(Usage {
                    prompt_tokens: 4,
                    completion_tokens: 5,
                    ..Usage::default()
                }),
            ]
        );

        let error = translate_stream(
            &[
                start(3, 0, 0),
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ],
            None,
        )
        .unwrap_err();
        assert_eq!(error.kind.as_deref(), Some("overloaded_error"));
        let e = error_event("claude", &["sk-ant-secret"], error, "mid-stream");
        assert_eq!(e.kind, ErrorKind::Overloaded);
        assert_eq!(e.status_code(), 503);
    }
}
