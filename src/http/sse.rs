//! Rendering a live answer as OpenAI `chat.completion.chunk` server-sent events. The last chunk
//! carries `usage`, `cost_usd` and `duration_seconds`, then `data: [DONE]`. An error after
//! content was sent is a final `data: {"error": …}` event. If the client goes away, the body is
//! dropped with its [`Run`], which records the run as cancelled with what it cost.

use actix_web::Error;
use bytes::Bytes;
use flowgate_actors::answer::LiveStream;
use flowgate_actors::completion::StreamEvent;
use flowgate_actors::engine::Run;
use flowgate_actors::provider::EventStream;
use flowgate_actors::structured::extract_json;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};

struct State {
    run: Option<Run>,
    first: Option<StreamEvent>,
    rest: EventStream,
    id: String,
    created: u64,
    model: String,
    /// Choices that have had their `role` delta.
    started: Vec<u32>,
    done: bool,
    /// `stream_options.valid_json_chunks`: each chunk carries the whole valid partial JSON so
    /// far, keyed by (choice, tool call or `u32::MAX` for content).
    valid_json: Option<Vec<((u32, u32), String)>>,
}

/// One `data:` event.
pub(super) fn event(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// The end of an SSE stream.
pub(super) const DONE: &[u8] = b"data: [DONE]\n\n";

/// One step of a live stream, before it is written for the wire (the chat endpoint writes
/// each as an event; the playground labels each with its model first).
pub(super) enum Frame {
    /// A `chat.completion.chunk`.
    Chunk(Value),
    /// The stream failed after it started: the OpenAI error body. The run is recorded.
    Failed(Value),
    /// The last chunk, with `usage`, `cost_usd` and `duration_seconds`. The run is recorded.
    Last(Value),
}

impl State {
    fn chunk(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    fn delta(&mut self, index: u32, mut delta: Value) -> Value {
        if !self.started.contains(&index) {
            self.started.push(index);
            delta["role"] = json!("assistant");
        }
        self.chunk(json!([{
            "index": index,
            "delta": delta,
            "logprobs": null,
            "finish_reason": null,
        }]))
    }

    /// With `valid_json_chunks`, the whole JSON so far of one content or tool-call slot, closed
    /// so it parses; `None` until it starts looking like JSON.
    fn whole_json(&mut self, slot: (u32, u32), text: &str) -> Option<Option<String>> {
        let buffers = self.valid_json.as_mut()?;
        let position = match buffers.iter().position(|(s, _)| *s == slot) {
            Some(p) => p,
            None => {
                buffers.push((slot, String::new()));
                buffers.len() - 1
            }
        };
        let buffer = &mut buffers[position].1;
        buffer.push_str(text);
        Some(extract_json(buffer).map(|v| v.to_string()))
    }

    /// The chunk for one event; `None` for events that only feed the run (usage).
    fn render(&mut self, ev: &StreamEvent) -> Option<Value> {
        match ev {
            StreamEvent::Content { index, text } => {
                let text = match self.whole_json((*index, u32::MAX), text) {
                    None => text.clone(),
                    Some(Some(whole)) => whole,
                    Some(None) => return None,
                };
                Some(self.delta(*index, json!({ "content": text })))
            }
            StreamEvent::ToolCall {
                index,
                call,
                id,
                name,
                arguments,
            } => {
                let mut tool_call =
                    json!({ "index": call, "function": { "arguments": arguments } });
                if let Some(id) = id {
                    tool_call["id"] = json!(id);
                    tool_call["type"] = json!("function");
                }
                if let Some(name) = name {
                    tool_call["function"]["name"] = json!(name);
                }
                Some(self.delta(*index, json!({ "tool_calls": [tool_call] })))
            }
            StreamEvent::Finish { index, reason } => Some(self.chunk(json!([{
                "index": index,
                "delta": {},
                "logprobs": null,
                "finish_reason": reason.as_str(),
            }]))),
            StreamEvent::Usage(_) => None,
        }
    }

    fn last_chunk(&self, run: &Run) -> Value {
        let mut chunk = self.chunk(json!([]));
        chunk["usage"] = run.streamed_usage().to_openai();
        chunk["cost_usd"] = json!(run.streamed_cost());
        chunk["duration_seconds"] = json!(run.duration_seconds());
        chunk
    }
}

async fn next(mut s: State) -> Option<(Frame, State)> {
    loop {
        if s.done {
            return None;
        }
        let item = match s.first.take() {
            Some(first) => Some(Ok(first)),
            None => s.rest.next().await,
        };
        match item {
            Some(Ok(ev)) => {
                if let Some(run) = s.run.as_mut() {
                    run.push_event(&ev);
                }
                if let Some(chunk) = s.render(&ev) {
                    return Some((Frame::Chunk(chunk), s));
                }
            }
            Some(Err(error)) => {
                s.done = true;
                let error = match s.run.take() {
                    Some(run) => run.fail(error),
                    None => error,
                };
                return Some((Frame::Failed(error.body()), s));
            }
            None => {
                s.done = true;
                let run = s.run.take()?;
                let last = s.last_chunk(&run);
                run.finish_stream();
                return Some((Frame::Last(last), s));
            }
        }
    }
}

/// The SSE body for a live stream. With `valid_json_chunks`, every content (or tool-call
/// arguments) chunk is the whole valid partial JSON so far instead of a delta.
pub fn body(
    run: Run,
    live: LiveStream,
    valid_json_chunks: bool,
) -> impl Stream<Item = Result<Bytes, Error>> {
    frames(run, live, valid_json_chunks).map(|frame| {
        Ok(match frame {
            Frame::Chunk(chunk) => event(&chunk),
            Frame::Failed(error) => event(&error),
            Frame::Last(chunk) => {
                let mut bytes = event(&chunk).to_vec();
                bytes.extend_from_slice(DONE);
                Bytes::from(bytes)
            }
        })
    })
}

/// The steps of a live stream; the run is recorded when the last one is taken (or when the
/// stream is dropped, as cancelled).
pub(super) fn frames(
    run: Run,
    live: LiveStream,
    valid_json_chunks: bool,
) -> impl Stream<Item = Frame> {
    let state = State {
        id: run.context().response_id(),
        created: run.context().created_unix(),
        model: live.model,
        run: Some(run),
        first: Some(live.first),
        rest: live.rest,
        started: Vec::new(),
        done: false,
        valid_json: valid_json_chunks.then(Vec::new),
    };
    futures::stream::unfold(state, next)
}
