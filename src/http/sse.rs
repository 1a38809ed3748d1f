//! Rendering a live answer as OpenAI `chat.completion.chunk` server-sent events. The last chunk
//! carries `usage`, `cost_usd` and `duration_seconds`, then `data: [DONE]`. An error after
//! content was sent is a final `data: {"error": …}` event. If the client goes away, the body is
//! dropped with its [`Run`], which records the run as cancelled with what it cost.
//!
//! The chat endpoint's chunks are written straight as bytes, and the events the upstream has
//! already delivered go out in one write, the first of them with the response head
//! ([`Pieces`], which the other doors' relays use too). The first piece is never waited for;
//! each later one waits only for its first event. A stream that ends within the first piece is
//! recorded before the head is written (a client gone by then does not make it cancelled). The
//! playground, and `valid_json_chunks`, build each chunk as a JSON value first.

use std::io::Write as _;

use actix_web::Error;
use bytes::Bytes;
use flowgate_actors::answer::LiveStream;
use flowgate_actors::completion::{StreamEvent, Usage};
use flowgate_actors::engine::Run;
use flowgate_actors::error::GatewayError;
use flowgate_actors::provider::{delivered, EventStream};
use flowgate_actors::structured::extract_json;
use futures::{FutureExt, Stream, StreamExt};
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
    let mut out = Vec::with_capacity(256);
    write_event(&mut out, data);
    Bytes::from(out)
}

/// One `data:` event, appended to `out`: the JSON written straight into it (`Value`'s
/// `Display`, through `format!`, took ~3% of a streamed request's worker time).
fn write_event(out: &mut Vec<u8>, data: &Value) {
    out.extend_from_slice(b"data: ");
    write_json(out, data);
    out.extend_from_slice(b"\n\n");
}

/// `value` as JSON, appended to `out` (the chunks' and the completion body's values).
pub(super) fn write_json(out: &mut Vec<u8>, value: &(impl serde::Serialize + ?Sized)) {
    // Writing to a Vec cannot fail, and these values always serialize (a non-finite float is
    // `null`).
    let _ = serde_json::to_writer(&mut *out, value);
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

    /// The start of every chunk of this stream, up to its first choice:
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[`.
    fn wire_prefix(&self) -> Vec<u8> {
        let mut prefix = Vec::with_capacity(96 + self.id.len() + self.model.len());
        prefix.extend_from_slice(b"data: {\"id\":");
        write_json(&mut prefix, &self.id);
        prefix.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        let _ = write!(prefix, "{}", self.created);
        prefix.extend_from_slice(b",\"model\":");
        write_json(&mut prefix, &self.model);
        prefix.extend_from_slice(b",\"choices\":[");
        prefix
    }

    /// Appends the event for one stream event to `out`, as [`render`](Self::render) builds it
    /// (`valid_json_chunks` aside); `false` for events that only feed the run (usage).
    fn write_wire(&mut self, ev: &StreamEvent, prefix: &[u8], out: &mut Vec<u8>) -> bool {
        let index = match ev {
            StreamEvent::Content { index, .. }
            | StreamEvent::ToolCall { index, .. }
            | StreamEvent::Finish { index, .. } => *index,
            StreamEvent::Usage(_) => return false,
        };
        out.extend_from_slice(prefix);
        out.extend_from_slice(b"{\"index\":");
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{index}");
        out.extend_from_slice(b",\"delta\":{");
        match ev {
            StreamEvent::Finish { reason, .. } => {
                out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":");
                write_json(out, reason.as_str());
                out.extend_from_slice(b"}]}\n\n");
                return true;
            }
            _ if !self.started.contains(&index) => {
                self.started.push(index);
                out.extend_from_slice(b"\"role\":\"assistant\",");
            }
            _ => {}
        }
        match ev {
            StreamEvent::Content { text, .. } => {
                out.extend_from_slice(b"\"content\":");
                write_json(out, text);
            }
            StreamEvent::ToolCall {
                call,
                id,
                name,
                arguments,
                ..
            } => {
                out.extend_from_slice(b"\"tool_calls\":[{\"index\":");
                let _ = write!(out, "{call}");
                if let Some(id) = id {
                    out.extend_from_slice(b",\"id\":");
                    write_json(out, id);
                    out.extend_from_slice(b",\"type\":\"function\"");
                }
                out.extend_from_slice(b",\"function\":{");
                if let Some(name) = name {
                    out.extend_from_slice(b"\"name\":");
                    write_json(out, name);
                    out.push(b',');
                }
                out.extend_from_slice(b"\"arguments\":");
                write_json(out, arguments);
                out.extend_from_slice(b"}}]");
            }
            StreamEvent::Finish { .. } | StreamEvent::Usage(_) => {}
        }
        out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
        true
    }

    /// The last chunk (for the playground, which labels it): no choices; the run's usage,
    /// cost and duration.
    fn last_chunk(&self, end: &End) -> Value {
        let mut chunk = self.chunk(json!([]));
        chunk["usage"] = end.usage.to_openai();
        chunk["cost_usd"] = json!(end.cost_usd);
        chunk["duration_seconds"] = json!(end.duration_seconds);
        chunk
    }

    /// Appends the event of [`last_chunk`](Self::last_chunk) to `out`, written straight: its
    /// keys in the order a JSON object's are written (sorted), so the bytes are the same.
    fn write_last(&self, end: &End, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        out.extend_from_slice(b"data: {\"choices\":[],\"cost_usd\":");
        // A float is written as its JSON value would be (a non-finite one as `null`).
        write_json(out, &end.cost_usd);
        let _ = write!(out, ",\"created\":{},\"duration_seconds\":", self.created);
        write_json(out, &end.duration_seconds);
        out.extend_from_slice(b",\"id\":");
        write_json(out, &self.id);
        out.extend_from_slice(b",\"model\":");
        write_json(out, &self.model);
        // The usage too, as `Usage::to_openai` would write (its keys sorted), without the value.
        let usage = &end.usage;
        let _ = write!(
            out,
            ",\"object\":\"chat.completion.chunk\",\"usage\":{{\"completion_tokens\":{},\
             \"completion_tokens_details\":{{\"reasoning_tokens\":{}}},\"prompt_tokens\":{},\
             \"prompt_tokens_details\":{{\"cached_tokens\":{}}},\"total_tokens\":{}}}}}\n\n",
            usage.completion_tokens,
            usage.reasoning_tokens,
            usage.prompt_tokens,
            usage.cached_tokens,
            usage.total_tokens(),
        );
    }
}

/// What the last chunk tells of a stream that ended well, taken from its run.
struct End {
    usage: Usage,
    cost_usd: f64,
    duration_seconds: f64,
}

impl State {
    /// The stream ended well: what its last chunk tells, taken before its run is recorded
    /// (`None` if it was already).
    fn end(&mut self) -> Option<End> {
        self.done = true;
        let run = self.run.take()?;
        let end = End {
            usage: run.streamed_usage(),
            cost_usd: run.streamed_cost(),
            duration_seconds: run.duration_seconds(),
        };
        run.finish_stream();
        Some(end)
    }
}

impl State {
    /// What one item of the stream becomes, if anything; the end and a failure record the run.
    fn frame(&mut self, item: Option<Result<StreamEvent, GatewayError>>) -> Option<Frame> {
        match item {
            Some(Ok(ev)) => {
                if let Some(run) = self.run.as_mut() {
                    run.push_event(&ev);
                }
                self.render(&ev).map(Frame::Chunk)
            }
            Some(Err(error)) => {
                self.done = true;
                let error = match self.run.take() {
                    Some(run) => run.fail(error),
                    None => error,
                };
                Some(Frame::Failed(error.body()))
            }
            None => {
                let end = self.end()?;
                Some(Frame::Last(self.last_chunk(&end)))
            }
        }
    }
}

async fn next(mut s: State) -> Option<(Frame, State)> {
    while !s.done {
        let item = match s.first.take() {
            Some(first) => Some(Ok(first)),
            None => s.rest.next().await,
        };
        if let Some(frame) = s.frame(item) {
            return Some((frame, s));
        }
    }
    None
}

/// The SSE body for a live stream. With `valid_json_chunks`, every content (or tool-call
/// arguments) chunk is the whole valid partial JSON so far instead of a delta.
pub async fn body(
    run: Run,
    live: LiveStream,
    valid_json_chunks: bool,
) -> impl Stream<Item = Result<Bytes, Error>> {
    let state = State::new(run, live, valid_json_chunks);
    let prefix = state.wire_prefix();
    pieces_body(Chat { state, prefix }).await
}

/// Appends what `frame` is on the wire to `out`.
fn write_frame(frame: Frame, out: &mut Vec<u8>) {
    match frame {
        Frame::Chunk(value) | Frame::Failed(value) => write_event(out, &value),
        Frame::Last(chunk) => {
            write_event(out, &chunk);
            out.extend_from_slice(DONE);
        }
    }
}

/// Events written in one piece at most, and bytes past which a piece goes out.
pub(super) const MAX_EVENTS_PER_PIECE: usize = 64;
pub(super) const MAX_BYTES_PER_PIECE: usize = 16 * 1024;

/// A live stream written as a body in pieces, each as few writes as it can: what one event
/// becomes, then what every event the upstream has already delivered becomes (up to
/// [`MAX_EVENTS_PER_PIECE`] events that wrote something, or [`MAX_BYTES_PER_PIECE`]).
pub(super) trait Pieces: 'static {
    /// The next piece. With `wait`, its first event is waited for, the upstream's connection
    /// gets its turns for the others ([`delivered`]), and `None` is the end; without, it holds
    /// only what is ready at once, and `None` may also mean nothing is.
    async fn piece(&mut self, wait: bool) -> Option<Bytes>;
}

/// The body written by `pieces`. Its first piece is gathered before the body is returned, from
/// what is ready at once (the first event, so it goes out without delay): actix writes what it
/// holds whenever the body is not ready, so the response head would otherwise go out on its
/// own, one more write (and read, for the client) a stream.
pub(super) async fn pieces_body<P: Pieces>(
    mut pieces: P,
) -> impl Stream<Item = Result<Bytes, Error>> {
    let first = pieces.piece(false).await;
    let rest = futures::stream::unfold(pieces, |mut pieces| async move {
        let piece = pieces.piece(true).await?;
        Some((piece, pieces))
    });
    futures::stream::iter(first).chain(rest).map(Ok)
}

/// The next event for a piece: the held first event of the stream, else the next one, waited
/// for when `wait`, else only if the upstream has delivered it, giving its connection turns
/// when `turns` ([`delivered`]), else only if it is ready at once (`None`: the piece closes).
pub(super) async fn next_for_piece(
    first: &mut Option<StreamEvent>,
    rest: &mut EventStream,
    wait: bool,
    turns: bool,
) -> Option<Option<Result<StreamEvent, GatewayError>>> {
    if let Some(first) = first.take() {
        return Some(Some(Ok(first)));
    }
    if wait {
        return Some(rest.next().await);
    }
    if turns {
        return delivered(rest).await;
    }
    rest.next().now_or_never()
}

/// The chat endpoint's body.
struct Chat {
    state: State,
    /// [`State::wire_prefix`].
    prefix: Vec<u8>,
}

impl State {
    /// Appends what one item of the stream becomes to `out`: events straight as bytes, or
    /// built as JSON values first with `valid_json_chunks`; the end and a failure as
    /// [`frame`](Self::frame) writes them. Whether it wrote anything.
    fn write_item(
        &mut self,
        item: Option<Result<StreamEvent, GatewayError>>,
        prefix: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        if let (Some(Ok(ev)), None) = (&item, &self.valid_json) {
            if let Some(run) = self.run.as_mut() {
                run.push_event(ev);
            }
            return self.write_wire(ev, prefix, out);
        }
        if item.is_none() {
            // The end: the last chunk written straight too.
            let Some(end) = self.end() else {
                return false;
            };
            self.write_last(&end, out);
            out.extend_from_slice(DONE);
            return true;
        }
        match self.frame(item) {
            Some(frame) => {
                write_frame(frame, out);
                true
            }
            None => false,
        }
    }
}

impl Pieces for Chat {
    async fn piece(&mut self, wait: bool) -> Option<Bytes> {
        let Chat { state: s, prefix } = self;
        let mut out = Vec::with_capacity(512);
        let mut events = 0;
        while !s.done {
            let Some(item) =
                next_for_piece(&mut s.first, &mut s.rest, wait && out.is_empty(), wait).await
            else {
                break;
            };
            events += usize::from(s.write_item(item, prefix, &mut out));
            if events >= MAX_EVENTS_PER_PIECE || out.len() >= MAX_BYTES_PER_PIECE {
                break;
            }
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }
}

/// A stream handed over the way hyper hands over a response body: by another task, one item
/// at a time, each only once the one before was taken (tests).
#[cfg(test)]
pub(super) fn handed_over(events: Vec<StreamEvent>) -> EventStream {
    use futures::SinkExt;
    let (mut tx, rx) = futures::channel::mpsc::channel(0);
    tokio::spawn(async move {
        for ev in events {
            if tx.send(Ok(ev)).await.is_err() {
                return;
            }
        }
    });
    rx.boxed()
}

/// The steps of a live stream; the run is recorded when the last one is taken (or when the
/// stream is dropped, as cancelled).
pub(super) fn frames(
    run: Run,
    live: LiveStream,
    valid_json_chunks: bool,
) -> impl Stream<Item = Frame> {
    futures::stream::unfold(State::new(run, live, valid_json_chunks), next)
}

impl State {
    fn new(run: Run, live: LiveStream, valid_json_chunks: bool) -> State {
        State {
            id: run.context().response_id(),
            created: run.context().created_unix(),
            model: live.model,
            run: Some(run),
            first: Some(live.first),
            rest: live.rest,
            started: Vec::new(),
            done: false,
            valid_json: valid_json_chunks.then(Vec::new),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_actors::completion::FinishReason;

    fn content(text: &str) -> StreamEvent {
        StreamEvent::Content {
            index: 0,
            text: text.into(),
        }
    }

    fn stop() -> StreamEvent {
        StreamEvent::Finish {
            index: 0,
            reason: FinishReason::Stop,
        }
    }

    /// The chat body of `s` over `first`, then `rest` handed over as hyper does, and the text
    /// of its next piece.
    async fn next_piece(mut s: State, first: &str, rest: Vec<StreamEvent>) -> (Chat, String) {
        s.first = Some(content(first));
        s.rest = handed_over(rest);
        let prefix = s.wire_prefix();
        let mut chat = Chat { state: s, prefix };
        let piece = chat.piece(true).await.expect("a piece");
        let text = String::from_utf8(piece.to_vec()).unwrap();
        (chat, text)
    }

    fn state() -> State {
        State {
            run: None,
            first: None,
            rest: futures::stream::empty().boxed(),
            id: "agent/0193-\"quoted\"".into(),
            created: 1_733_000_000,
            model: "gpt-4o-mini".into(),
            started: Vec::new(),
            done: false,
            valid_json: None,
        }
    }

    /// Events the upstream has delivered go out in one piece, though each waits for the task
    /// that hands them over (as hyper's body does): one write instead of one per event.
    #[tokio::test]
    async fn delivered_events_go_out_in_one_piece() {
        let (mut wire, text) = next_piece(
            state(),
            "Hel",
            vec![content("lo"), content(" world"), stop()],
        )
        .await;
        let events: Vec<&str> = text.split_terminator("\n\n").collect();
        assert_eq!(events.len(), 4, "{text}");
        assert!(events[1].contains(r#""content":"lo""#), "{text}");
        assert!(events[3].contains(r#""finish_reason":"stop""#), "{text}");
        assert!(wire.state.done, "the stream's end was taken with the piece");
        assert!(wire.piece(true).await.is_none());
    }

    /// With `valid_json_chunks` too, delivered events go out in one piece, each chunk the
    /// whole valid JSON so far.
    #[tokio::test]
    async fn valid_json_chunks_go_out_in_one_piece() {
        let mut s = state();
        s.valid_json = Some(Vec::new());
        let (mut framed, text) =
            next_piece(s, "{\"city\": \"Pa", vec![content("ris\"}"), stop()]).await;
        let events: Vec<&str> = text.split_terminator("\n\n").collect();
        assert_eq!(events.len(), 3, "{text}");
        assert!(
            events[0].contains(r#""content":"{\"city\":\"Pa\"}""#),
            "{text}"
        );
        assert!(
            events[1].contains(r#""content":"{\"city\":\"Paris\"}""#),
            "{text}"
        );
        assert!(events[2].contains(r#""finish_reason":"stop""#), "{text}");
        assert!(framed.state.done);
        assert!(framed.piece(true).await.is_none());
    }

    /// A failure after the stream started is its last event, in the piece where it came.
    #[tokio::test]
    async fn a_failure_closes_the_piece_with_its_error() {
        let mut s = state();
        s.first = Some(content("Hel"));
        s.rest = futures::stream::iter([Err(GatewayError::new(
            flowgate_actors::error::ErrorKind::UpstreamConnection,
            "cut",
        ))])
        .boxed();
        let prefix = s.wire_prefix();
        let mut wire = Chat { state: s, prefix };
        let piece = wire.piece(true).await.expect("a piece");
        let text = std::str::from_utf8(&piece).unwrap();
        let events: Vec<&str> = text.split_terminator("\n\n").collect();
        assert_eq!(events.len(), 2, "{text}");
        assert!(events[0].contains(r#""content":"Hel""#), "{text}");
        assert!(events[1].starts_with(r#"data: {"error":"#), "{text}");
        assert!(events[1].contains("cut"), "{text}");
        assert!(wire.piece(true).await.is_none());
    }

    /// The last chunk written straight is, byte for byte, the one built as a JSON value.
    #[test]
    fn the_last_chunk_written_straight_is_the_value_written() {
        let s = state();
        for end in [
            End {
                usage: Usage {
                    prompt_tokens: 4,
                    completion_tokens: 4,
                    ..Usage::default()
                },
                cost_usd: 3e-6,
                duration_seconds: 0.004882682,
            },
            End {
                usage: Usage::default(),
                cost_usd: 0.0,
                duration_seconds: 12.5,
            },
            End {
                usage: Usage {
                    prompt_tokens: 1_200_000,
                    completion_tokens: 35,
                    cached_tokens: 1_024,
                    reasoning_tokens: 17,
                    cache_write_tokens: 9,
                },
                cost_usd: f64::NAN,
                duration_seconds: 1e-9,
            },
        ] {
            let mut straight = Vec::new();
            s.write_last(&end, &mut straight);
            let mut by_value = Vec::new();
            write_event(&mut by_value, &s.last_chunk(&end));
            assert_eq!(
                String::from_utf8(straight).unwrap(),
                String::from_utf8(by_value).unwrap()
            );
        }
    }

    /// The bytes written straight are, event for event, the chunks built as JSON values.
    #[test]
    fn wire_chunks_are_the_chunks_built_as_values() {
        let events = [
            StreamEvent::Content {
                index: 0,
                text: "Hel\"lo\n<script>\u{1F600}\u{7}".into(),
            },
            StreamEvent::Content {
                index: 0,
                text: String::new(),
            },
            StreamEvent::Content {
                index: 1,
                text: "other choice".into(),
            },
            StreamEvent::ToolCall {
                index: 0,
                call: 2,
                id: Some("call_1".into()),
                name: Some("get_weather".into()),
                arguments: "{\"city\":".into(),
            },
            StreamEvent::ToolCall {
                index: 0,
                call: 2,
                id: None,
                name: None,
                arguments: "\"Paris\"}".into(),
            },
            StreamEvent::Usage(Default::default()),
            StreamEvent::Finish {
                index: 0,
                reason: FinishReason::ToolCalls,
            },
            StreamEvent::Finish {
                index: 1,
                reason: FinishReason::Stop,
            },
        ];
        let (mut by_value, mut by_wire) = (state(), state());
        let prefix = by_wire.wire_prefix();
        for ev in &events {
            let mut out = Vec::new();
            let wrote = by_wire.write_wire(ev, &prefix, &mut out);
            match by_value.render(ev) {
                None => assert!(!wrote && out.is_empty(), "{ev:?}"),
                Some(chunk) => {
                    assert!(wrote, "{ev:?}");
                    let text = std::str::from_utf8(&out).unwrap();
                    let json = text
                        .strip_prefix("data: ")
                        .and_then(|t| t.strip_suffix("\n\n"))
                        .unwrap_or_else(|| panic!("not one SSE event: {text:?}"));
                    let parsed: Value = serde_json::from_str(json).unwrap();
                    assert_eq!(parsed, chunk, "{ev:?}");
                }
            }
        }
    }
}
