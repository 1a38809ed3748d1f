//! A live answer as Responses API stream events: `response.created` and
//! `response.in_progress`; per output item `response.output_item.added`, its content
//! (`response.content_part.added`, `response.output_text.delta`, `.done`,
//! `response.content_part.done`; or `response.function_call_arguments.delta`, `.done`) and
//! `response.output_item.done`; then `response.completed` (or `response.incomplete`) with the
//! whole response. An error after the stream started is an `error` event, then
//! `response.failed`.

use flowgate_actors::completion::{FinishReason, StreamEvent};
use flowgate_actors::engine::Run;
use flowgate_actors::error::GatewayError;
use serde_json::{json, Map, Value};

use super::response::{
    call_item, call_item_id, message_item, message_item_id, response, status, usage, ResponseState,
};
use crate::http::doors::stream::{Events, Relay};

/// What has been streamed of one response.
pub(in crate::http) struct ResponseStream {
    echo: Map<String, Value>,
    id: String,
    /// The hex of the run id, for item ids.
    hex: String,
    created_at: u64,
    model: String,
    sequence: u64,
    started: bool,
    items: Vec<StreamItem>,
    /// The text item being written, by its output index.
    open_text: Option<usize>,
    finish: FinishReason,
}

enum StreamItem {
    Text {
        id: String,
        text: String,
        done: bool,
    },
    Call {
        id: String,
        call: u32,
        call_id: String,
        name: String,
        arguments: String,
        done: bool,
    },
}

impl ResponseStream {
    pub(in crate::http) fn new(
        echo: Map<String, Value>,
        id: String,
        hex: String,
        created_at: u64,
        model: String,
    ) -> ResponseStream {
        ResponseStream {
            echo,
            id,
            hex,
            created_at,
            model,
            sequence: 0,
            started: false,
            items: Vec::new(),
            open_text: None,
            finish: FinishReason::Stop,
        }
    }

    fn push(&mut self, out: &mut Events, name: &str, mut data: Value) {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.push(name, &data);
    }

    fn body(&self, status: &str, output: Vec<Value>, usage: Value, error: Value) -> Value {
        let incomplete = match status {
            "incomplete" => super::response::status(self.finish).1,
            _ => Value::Null,
        };
        response(
            &self.echo,
            ResponseState {
                id: &self.id,
                created_at: self.created_at,
                model: &self.model,
                status,
                incomplete_details: incomplete,
                error,
                output,
                usage,
            },
        )
    }

    fn start(&mut self, out: &mut Events) {
        if self.started {
            return;
        }
        self.started = true;
        let body = self.body("in_progress", vec![], Value::Null, Value::Null);
        self.push(out, "response.created", json!({ "response": body }));
        let body = self.body("in_progress", vec![], Value::Null, Value::Null);
        self.push(out, "response.in_progress", json!({ "response": body }));
    }

    fn item_json(item: &StreamItem) -> Value {
        match item {
            StreamItem::Text { id, text, done } => message_item(
                id,
                text,
                false,
                if *done { "completed" } else { "in_progress" },
            ),
            StreamItem::Call {
                id,
                call_id,
                name,
                arguments,
                done,
                ..
            } => call_item(
                id,
                call_id,
                name,
                arguments,
                if *done { "completed" } else { "in_progress" },
            ),
        }
    }

    /// Ends item `index`: its closing events, then `response.output_item.done`.
    fn close(&mut self, index: usize, out: &mut Events) {
        let Some(item) = self.items.get_mut(index) else {
            return;
        };
        let closing = match item {
            StreamItem::Text { done: true, .. } | StreamItem::Call { done: true, .. } => return,
            StreamItem::Text { id, text, done } => {
                *done = true;
                let part = json!({"type": "output_text", "text": text, "annotations": []});
                vec![
                    (
                        "response.output_text.done",
                        json!({"item_id": id, "output_index": index, "content_index": 0,
                               "text": text, "logprobs": []}),
                    ),
                    (
                        "response.content_part.done",
                        json!({"item_id": id, "output_index": index, "content_index": 0,
                               "part": part}),
                    ),
                ]
            }
            StreamItem::Call {
                id,
                name,
                arguments,
                done,
                ..
            } => {
                *done = true;
                vec![(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "name": name,
                           "arguments": arguments}),
                )]
            }
        };
        let item = Self::item_json(&self.items[index]);
        for (name, data) in closing {
            self.push(out, name, data);
        }
        self.push(
            out,
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        if self.open_text == Some(index) {
            self.open_text = None;
        }
    }

    fn open(&mut self, item: StreamItem, out: &mut Events) -> usize {
        if let Some(text) = self.open_text {
            self.close(text, out);
        }
        let index = self.items.len();
        let mut added = Self::item_json(&item);
        if matches!(item, StreamItem::Text { .. }) {
            added["content"] = json!([]);
        }
        self.items.push(item);
        self.push(
            out,
            "response.output_item.added",
            json!({"output_index": index, "item": added}),
        );
        index
    }

    fn text(&mut self, delta: &str, out: &mut Events) {
        let index = match self.open_text {
            Some(index) => index,
            None => {
                let id = match self
                    .items
                    .iter()
                    .any(|i| matches!(i, StreamItem::Text { .. }))
                {
                    false => message_item_id(&self.hex),
                    true => format!("{}_{}", message_item_id(&self.hex), self.items.len()),
                };
                let index = self.open(
                    StreamItem::Text {
                        id: id.clone(),
                        text: String::new(),
                        done: false,
                    },
                    out,
                );
                self.open_text = Some(index);
                self.push(
                    out,
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                           "part": {"type": "output_text", "text": "", "annotations": []}}),
                );
                index
            }
        };
        let Some(StreamItem::Text { id, text, .. }) = self.items.get_mut(index) else {
            return;
        };
        text.push_str(delta);
        let id = id.clone();
        self.push(
            out,
            "response.output_text.delta",
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta,
                   "logprobs": []}),
        );
    }

    fn call(
        &mut self,
        call: u32,
        id: &Option<String>,
        name: &Option<String>,
        args: &str,
        out: &mut Events,
    ) {
        let known = self
            .items
            .iter()
            .position(|i| matches!(i, StreamItem::Call { call: c, .. } if *c == call));
        let index = match known {
            Some(index) => index,
            None => {
                let calls = self
                    .items
                    .iter()
                    .filter(|i| matches!(i, StreamItem::Call { .. }))
                    .count();
                self.open(
                    StreamItem::Call {
                        id: call_item_id(&self.hex, calls),
                        call,
                        call_id: id.clone().unwrap_or_default(),
                        name: name.clone().unwrap_or_default(),
                        arguments: String::new(),
                        done: false,
                    },
                    out,
                )
            }
        };
        if args.is_empty() {
            return;
        }
        let Some(StreamItem::Call { id, arguments, .. }) = self.items.get_mut(index) else {
            return;
        };
        arguments.push_str(args);
        let id = id.clone();
        self.push(
            out,
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": index, "delta": args}),
        );
    }
}

impl Relay for ResponseStream {
    fn event(&mut self, event: &StreamEvent, out: &mut Events) {
        match event {
            // One output: the Responses API has no `n`.
            StreamEvent::Content { index: 0, text } => {
                self.start(out);
                self.text(text, out);
            }
            StreamEvent::ToolCall {
                index: 0,
                call,
                id,
                name,
                arguments,
            } => {
                self.start(out);
                self.call(*call, id, name, arguments, out);
            }
            StreamEvent::Finish { index: 0, reason } => self.finish = *reason,
            _ => {}
        }
    }

    fn failed(&mut self, error: &GatewayError, out: &mut Events) {
        self.start(out);
        let body = error.body();
        let code = body.pointer("/error/code").cloned().unwrap_or(Value::Null);
        self.push(
            out,
            "error",
            json!({"code": code, "message": error.message, "param": error.param}),
        );
        let output = self.items.iter().map(Self::item_json).collect();
        let failure = json!({"code": code, "message": error.message});
        let body = self.body("failed", output, Value::Null, failure);
        self.push(out, "response.failed", json!({ "response": body }));
    }

    fn finished(&mut self, run: &Run, out: &mut Events) {
        self.start(out);
        for index in 0..self.items.len() {
            self.close(index, out);
        }
        let (status, _) = status(self.finish);
        let output = self.items.iter().map(Self::item_json).collect();
        let mut body = self.body(status, output, usage(&run.streamed_usage()), Value::Null);
        // flowgate's additions, as on the last Chat Completions chunk.
        body["cost_usd"] = json!(run.streamed_cost());
        body["duration_seconds"] = json!(run.duration_seconds());
        let name = match status {
            "incomplete" => "response.incomplete",
            _ => "response.completed",
        };
        self.push(out, name, json!({ "response": body }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(out: &Events) -> Vec<Value> {
        out.text()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').unwrap();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(name.strip_prefix("event: ").unwrap(), data["type"]);
                data
            })
            .collect()
    }

    #[test]
    fn text_then_a_call_stream_as_two_items_in_order() {
        let mut relay = ResponseStream::new(Map::new(), "resp_x".into(), "x".into(), 1, "m".into());
        let mut out = Events::default();
        for event in [
            StreamEvent::Content {
                index: 0,
                text: "Hel".into(),
            },
            StreamEvent::Content {
                index: 0,
                text: "lo".into(),
            },
            StreamEvent::ToolCall {
                index: 0,
                call: 0,
                id: Some("call_1".into()),
                name: Some("f".into()),
                arguments: "{\"a\"".into(),
            },
            StreamEvent::ToolCall {
                index: 0,
                call: 0,
                id: None,
                name: None,
                arguments: ":1}".into(),
            },
        ] {
            relay.event(&event, &mut out);
        }
        let all = events(&out);
        let types: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
            ]
        );
        let sequence: Vec<u64> = all
            .iter()
            .map(|e| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(sequence, (0..12).collect::<Vec<_>>());
        assert_eq!(all[0]["response"]["status"], "in_progress");
        assert_eq!(all[2]["item"]["content"], json!([]));
        assert_eq!(all[6]["text"], "Hello");
        assert_eq!(all[8]["item"]["content"][0]["text"], "Hello");
        assert_eq!(
            all[9]["item"],
            json!({"type": "function_call", "id": "fc_x_0", "call_id": "call_1", "name": "f",
                   "arguments": "", "status": "in_progress"})
        );
        assert_eq!(all[11]["output_index"], 1);
        assert_eq!(all[11]["delta"], ":1}");

        let mut out = Events::default();
        relay.close(1, &mut out);
        let all = events(&out);
        assert_eq!(all[0]["type"], "response.function_call_arguments.done");
        assert_eq!(all[0]["arguments"], "{\"a\":1}");
        assert_eq!(all[1]["item"]["status"], "completed");
    }

    #[test]
    fn a_failure_is_an_error_event_then_response_failed() {
        let mut relay = ResponseStream::new(Map::new(), "resp_x".into(), "x".into(), 1, "m".into());
        let mut out = Events::default();
        relay.event(
            &StreamEvent::Content {
                index: 0,
                text: "Hi".into(),
            },
            &mut out,
        );
        let mut out = Events::default();
        relay.failed(
            &GatewayError::new(flowgate_actors::error::ErrorKind::UpstreamConnection, "cut"),
            &mut out,
        );
        let all = events(&out);
        assert_eq!(all[0]["type"], "error");
        assert_eq!(all[0]["message"], "cut");
        assert_eq!(all[1]["type"], "response.failed");
        assert_eq!(all[1]["response"]["status"], "failed");
        assert_eq!(all[1]["response"]["error"]["message"], "cut");
        assert_eq!(all[1]["response"]["output"][0]["content"][0]["text"], "Hi");
    }
}
