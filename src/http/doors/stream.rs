//! Relays a live answer as a door's own server-sent events. The door says what each engine
//! event becomes ([`Relay`]); this loop feeds the run, records it once the stream ends (or
//! fails), and drops it with the body when the client goes away (recorded as cancelled with
//! what it cost). The body goes out in pieces, as the chat endpoint's does ([`Pieces`]).

use actix_web::Error;
use bytes::{Bytes, BytesMut};
use flowgate_actors::answer::LiveStream;
use flowgate_actors::completion::StreamEvent;
use flowgate_actors::engine::Run;
use flowgate_actors::error::GatewayError;
use flowgate_actors::provider::EventStream;
use futures::Stream;

use serde_json::Value;

use crate::http::sse::{
    next_for_piece, pieces_body, Pieces, MAX_BYTES_PER_PIECE, MAX_EVENTS_PER_PIECE,
};

/// What a door writes for a stream's events.
pub(in crate::http) trait Relay: Send + 'static {
    /// Writes what `event` becomes (possibly nothing).
    fn event(&mut self, event: &StreamEvent, out: &mut Events);
    /// The stream failed after it started; the run is recorded with `error`.
    fn failed(&mut self, error: &GatewayError, out: &mut Events);
    /// The stream ended well; `run` is recorded right after.
    fn finished(&mut self, run: &Run, out: &mut Events);
}

/// Server-sent events, written in one buffer per piece.
#[derive(Default)]
pub(in crate::http) struct Events(BytesMut);

impl Events {
    /// `event: <name>` and its JSON `data:`.
    pub(in crate::http) fn push(&mut self, name: &str, data: &Value) {
        self.0.extend_from_slice(b"event: ");
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b"\ndata: ");
        self.0.extend_from_slice(data.to_string().as_bytes());
        self.0.extend_from_slice(b"\n\n");
    }

    fn take(&mut self) -> Option<Bytes> {
        (!self.0.is_empty()).then(|| self.0.split().freeze())
    }

    /// The events written, as text (tests).
    #[cfg(test)]
    pub(in crate::http) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

struct State<R> {
    run: Option<Run>,
    first: Option<StreamEvent>,
    rest: EventStream,
    relay: R,
    out: Events,
    done: bool,
}

impl<R: Relay> Pieces for State<R> {
    async fn piece(&mut self, wait: bool) -> Option<Bytes> {
        let mut events = 0;
        while !self.done {
            let Some(item) = next_for_piece(
                &mut self.first,
                &mut self.rest,
                wait && self.out.0.is_empty(),
                wait,
            )
            .await
            else {
                break;
            };
            let before = self.out.0.len();
            match item {
                Some(Ok(ev)) => {
                    if let Some(run) = self.run.as_mut() {
                        run.push_event(&ev);
                    }
                    self.relay.event(&ev, &mut self.out);
                }
                Some(Err(error)) => {
                    self.done = true;
                    let error = match self.run.take() {
                        Some(run) => run.fail(error),
                        None => error,
                    };
                    self.relay.failed(&error, &mut self.out);
                }
                None => {
                    self.done = true;
                    if let Some(run) = self.run.take() {
                        self.relay.finished(&run, &mut self.out);
                        run.finish_stream();
                    }
                }
            }
            events += usize::from(self.out.0.len() > before);
            if events >= MAX_EVENTS_PER_PIECE || self.out.0.len() >= MAX_BYTES_PER_PIECE {
                break;
            }
        }
        self.out.take()
    }
}

/// The SSE body of a live stream, written by `relay`.
pub(in crate::http) async fn relay<R: Relay>(
    run: Run,
    live: LiveStream,
    relay: R,
) -> impl Stream<Item = Result<Bytes, Error>> {
    pieces_body(State {
        run: Some(run),
        first: Some(live.first),
        rest: live.rest,
        relay,
        out: Events::default(),
        done: false,
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::sse::handed_over;
    use futures::StreamExt;

    /// Writes each event's text as one line.
    struct Lines;

    impl Relay for Lines {
        fn event(&mut self, event: &StreamEvent, out: &mut Events) {
            if let StreamEvent::Content { text, .. } = event {
                out.0.extend_from_slice(text.as_bytes());
                out.0.extend_from_slice(b"\n");
            }
        }
        fn failed(&mut self, _: &GatewayError, _: &mut Events) {}
        fn finished(&mut self, _: &Run, _: &mut Events) {}
    }

    fn content(text: &str) -> StreamEvent {
        StreamEvent::Content {
            index: 0,
            text: text.into(),
        }
    }

    fn state(first: StreamEvent, rest: EventStream) -> State<Lines> {
        State {
            run: None,
            first: Some(first),
            rest,
            relay: Lines,
            out: Events::default(),
            done: false,
        }
    }

    /// Events the upstream has delivered go out in one piece, though each waits for the task
    /// that hands them over; the stream's end closes the body.
    #[tokio::test]
    async fn delivered_events_go_out_in_one_piece() {
        let rest = handed_over(["b", "c", "d"].map(content).to_vec());
        let mut state = state(content("a"), rest);
        let piece = state.piece(true).await.expect("a piece");
        assert_eq!(&piece[..], b"a\nb\nc\nd\n");
        assert!(state.done, "the stream's end was taken with the piece");
        assert!(state.piece(true).await.is_none());
    }

    /// Events that write nothing do not count toward a piece's bound: a run of them longer than
    /// the bound neither ends the body nor loses what follows.
    #[tokio::test]
    async fn events_that_write_nothing_do_not_end_the_body() {
        let mut rest = vec![StreamEvent::Usage(Default::default()); MAX_EVENTS_PER_PIECE * 2];
        rest.push(content("b"));
        let mut state = state(
            StreamEvent::Usage(Default::default()),
            futures::stream::iter(rest.into_iter().map(Ok)).boxed(),
        );
        let piece = state.piece(true).await.expect("a piece");
        assert_eq!(&piece[..], b"b\n");
        assert!(state.done);
    }

    /// The body's first piece, gathered before the body is returned, is what is ready at once
    /// (the first event goes out without delay), ready at the body's first poll so that it
    /// leaves with the response head; what the upstream delivers next is the next piece.
    #[tokio::test]
    async fn the_first_piece_is_what_is_ready_and_goes_with_the_body() {
        let rest = handed_over(["b", "c"].map(content).to_vec());
        let mut body = Box::pin(pieces_body(state(content("a"), rest)).await);
        let first = futures::FutureExt::now_or_never(body.next()).expect("ready at once");
        assert_eq!(&first.expect("a piece").expect("bytes")[..], b"a\n");
        let next = body.next().await.expect("a second piece").expect("bytes");
        assert_eq!(&next[..], b"b\nc\n");
        assert!(body.next().await.is_none());
    }

    /// A piece holds at most its bound of events that wrote something; the rest follow in the
    /// next pieces, in order and none lost.
    #[tokio::test]
    async fn pieces_split_at_their_bound_in_order() {
        let texts: Vec<String> = (0..MAX_EVENTS_PER_PIECE + 36)
            .map(|i| i.to_string())
            .collect();
        let rest = futures::stream::iter(
            texts[1..]
                .iter()
                .map(|t| Ok(content(t)))
                .collect::<Vec<_>>(),
        )
        .boxed();
        let mut state = state(content(&texts[0]), rest);
        let mut pieces = Vec::new();
        while let Some(piece) = state.piece(true).await {
            pieces.push(String::from_utf8(piece.to_vec()).unwrap());
        }
        let lines: Vec<usize> = pieces.iter().map(|p| p.lines().count()).collect();
        assert_eq!(lines, [MAX_EVENTS_PER_PIECE, 36]);
        assert_eq!(
            pieces.concat(),
            texts.iter().map(|t| format!("{t}\n")).collect::<String>()
        );
    }

    /// The first piece is not waited for: an answer whose first event writes nothing, from an
    /// upstream that sends nothing more for now, gets its response (and head) at once.
    #[tokio::test]
    async fn the_first_piece_is_not_waited_for() {
        let usage = StreamEvent::Usage(Default::default());
        let body = pieces_body(state(usage, futures::stream::pending().boxed()));
        // A guard against a hang, not a timing: the body comes after two scheduler turns.
        let body = tokio::time::timeout(std::time::Duration::from_secs(10), body)
            .await
            .expect("the body without waiting for the upstream");
        let mut body = Box::pin(body);
        assert!(
            futures::FutureExt::now_or_never(body.next()).is_none(),
            "nothing to write yet"
        );
    }
}
