//! A live answer as Anthropic Messages stream events: `message_start`, then per content block
//! `content_block_start`, its `content_block_delta`s (`text_delta`, `input_json_delta`) and
//! `content_block_stop`, then `message_delta` (stop reason and usage) and `message_stop`. An
//! error after the stream started is an `error` event.

use flowgate_actors::completion::{FinishReason, StreamEvent};
use flowgate_actors::engine::Run;
use flowgate_actors::error::GatewayError;
use serde_json::{json, Value};

use super::response::{error_body, stop_reason, usage};
use crate::http::doors::stream::{Events, Relay};

/// What is open of the message being streamed.
pub(in crate::http) struct MessageStream {
    id: String,
    model: String,
    started: bool,
    /// Blocks started so far; the last one is open.
    blocks: u32,
    open: Option<OpenBlock>,
    /// Tool call (by its index in the choice) → its block.
    calls: Vec<(u32, u32)>,
    finish: FinishReason,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    Text(u32),
    Tool(u32),
}

impl MessageStream {
    pub(in crate::http) fn new(id: String, model: String) -> MessageStream {
        MessageStream {
            id,
            model,
            started: false,
            blocks: 0,
            open: None,
            calls: Vec::new(),
            finish: FinishReason::Stop,
        }
    }

    fn start(&mut self, out: &mut Events) {
        if self.started {
            return;
        }
        self.started = true;
        out.push(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "content": [],
                "model": self.model, "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        );
    }

    fn close(&mut self, out: &mut Events) {
        if let Some(OpenBlock::Text(index) | OpenBlock::Tool(index)) = self.open.take() {
            out.push(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn open(&mut self, block: Value, out: &mut Events) -> u32 {
        self.close(out);
        let index = self.blocks;
        self.blocks += 1;
        out.push(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    fn delta(out: &mut Events, index: u32, delta: Value) {
        out.push(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }
}

impl Relay for MessageStream {
    fn event(&mut self, event: &StreamEvent, out: &mut Events) {
        match event {
            // One message: the Messages API has no `n`.
            StreamEvent::Content { index: 0, text } => {
                self.start(out);
                let index = match self.open {
                    Some(OpenBlock::Text(index)) => index,
                    _ => {
                        let index = self.open(json!({"type": "text", "text": ""}), out);
                        self.open = Some(OpenBlock::Text(index));
                        index
                    }
                };
                Self::delta(out, index, json!({"type": "text_delta", "text": text}));
            }
            StreamEvent::ToolCall {
                index: 0,
                call,
                id,
                name,
                arguments,
            } => {
                self.start(out);
                let known = self.calls.iter().find(|(c, _)| c == call).map(|&(_, b)| b);
                let index = match (known, id) {
                    (Some(index), _) => index,
                    (None, id) => {
                        let block = json!({
                            "type": "tool_use",
                            "id": id.clone().unwrap_or_default(),
                            "name": name.clone().unwrap_or_default(),
                            "input": {},
                        });
                        let index = self.open(block, out);
                        self.open = Some(OpenBlock::Tool(index));
                        self.calls.push((*call, index));
                        index
                    }
                };
                if !arguments.is_empty() {
                    Self::delta(
                        out,
                        index,
                        json!({"type": "input_json_delta", "partial_json": arguments}),
                    );
                }
            }
            StreamEvent::Finish { index: 0, reason } => self.finish = *reason,
            _ => {}
        }
    }

    fn failed(&mut self, error: &GatewayError, out: &mut Events) {
        out.push("error", &error_body(error));
    }

    fn finished(&mut self, run: &Run, out: &mut Events) {
        self.start(out);
        self.close(out);
        let mut delta = json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(self.finish), "stop_sequence": null},
            "usage": usage(&run.streamed_usage()),
        });
        // flowgate's additions, as on the last Chat Completions chunk.
        delta["cost_usd"] = json!(run.streamed_cost());
        delta["duration_seconds"] = json!(run.duration_seconds());
        out.push("message_delta", &delta);
        out.push("message_stop", &json!({"type": "message_stop"}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_of(text: &str) -> Vec<(String, Value)> {
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').unwrap();
                (
                    name.strip_prefix("event: ").unwrap().to_string(),
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn text_then_tool_call_make_two_blocks() {
        let mut relay = MessageStream::new("msg_1".into(), "claude".into());
        let mut out = Events::default();
        for event in [
            StreamEvent::Content {
                index: 0,
                text: "Hi".into(),
            },
            StreamEvent::Content {
                index: 0,
                text: " there".into(),
            },
            StreamEvent::ToolCall {
                index: 0,
                call: 0,
                id: Some("call_1".into()),
                name: Some("f".into()),
                arguments: "{\"a\":".into(),
            },
            StreamEvent::ToolCall {
                index: 0,
                call: 0,
                id: None,
                name: None,
                arguments: "1}".into(),
            },
            StreamEvent::Finish {
                index: 0,
                reason: FinishReason::ToolCalls,
            },
        ] {
            relay.event(&event, &mut out);
        }
        let events = data_of(&out.text());
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
            ]
        );
        assert_eq!(events[0].1["message"]["id"], "msg_1");
        assert_eq!(
            events[1].1,
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}})
        );
        assert_eq!(events[3].1["delta"]["text"], " there");
        assert_eq!(
            events[5].1["content_block"],
            json!({"type": "tool_use", "id": "call_1", "name": "f", "input": {}})
        );
        assert_eq!(
            events[7].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "1}"})
        );
        assert_eq!(events[7].1["index"], 1);
        assert_eq!(relay.finish, FinishReason::ToolCalls);

        let mut out = Events::default();
        relay.failed(
            &GatewayError::new(flowgate_actors::error::ErrorKind::Overloaded, "busy"),
            &mut out,
        );
        let events = data_of(&out.text());
        assert_eq!(events[0].0, "error");
        assert_eq!(events[0].1["error"]["type"], "overloaded_error");
    }
}
