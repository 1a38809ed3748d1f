//! Relays a live answer as a door's own server-sent events. The door says what each engine
//! event becomes ([`Relay`]); this loop feeds the run, records it once the stream ends (or
//! fails), and drops it with the body when the client goes away (recorded as cancelled with
//! what it cost).

use actix_web::Error;
use bytes::{Bytes, BytesMut};
use flowgate_actors::answer::LiveStream;
use flowgate_actors::completion::StreamEvent;
use flowgate_actors::engine::Run;
use flowgate_actors::error::GatewayError;
use flowgate_actors::provider::{delivered, EventStream};
use futures::{Stream, StreamExt};
use serde_json::Value;

/// What a door writes for a stream's events.
pub(in crate::http) trait Relay: Send + 'static {
    /// Writes what `event` becomes (possibly nothing).
    fn event(&mut self, event: &StreamEvent, out: &mut Events);
    /// The stream failed after it started; the run is recorded with `error`.
    fn failed(&mut self, error: &GatewayError, out: &mut Events);
    /// The stream ended well; `run` is recorded right after.
    fn finished(&mut self, run: &Run, out: &mut Events);
}

/// Server-sent events, written in one buffer per step.
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

/// Events written in one piece at most, and bytes past which a piece goes out.
const MAX_EVENTS_PER_WRITE: usize = 64;
const MAX_BYTES_PER_WRITE: usize = 16 * 1024;

/// The next piece of the body: what the next event becomes, and after it what every event the
/// upstream has already delivered becomes (up to a bound), without waiting for one that has
/// not come.
async fn next<R: Relay>(mut s: State<R>) -> Option<(Result<Bytes, Error>, State<R>)> {
    let mut events = 0;
    while !s.done {
        let item = match s.first.take() {
            Some(first) => Some(Ok(first)),
            // The first event of a piece may be waited for; the others must be there already.
            None if s.out.0.is_empty() => s.rest.next().await,
            None => match delivered(&mut s.rest).await {
                Some(item) => item,
                None => break,
            },
        };
        match item {
            Some(Ok(ev)) => {
                if let Some(run) = s.run.as_mut() {
                    run.push_event(&ev);
                }
                s.relay.event(&ev, &mut s.out);
            }
            Some(Err(error)) => {
                s.done = true;
                let error = match s.run.take() {
                    Some(run) => run.fail(error),
                    None => error,
                };
                s.relay.failed(&error, &mut s.out);
            }
            None => {
                s.done = true;
                if let Some(run) = s.run.take() {
                    s.relay.finished(&run, &mut s.out);
                    run.finish_stream();
                }
            }
        }
        events += 1;
        if events >= MAX_EVENTS_PER_WRITE || s.out.0.len() >= MAX_BYTES_PER_WRITE {
            break;
        }
    }
    let bytes = s.out.take()?;
    Some((Ok(bytes), s))
}

/// The SSE body of a live stream, written by `relay`. The first piece is gathered before the
/// response goes out: actix writes what it holds whenever the body is not ready, so it would
/// otherwise send the head on its own.
pub(in crate::http) async fn relay<R: Relay>(
    run: Run,
    live: LiveStream,
    relay: R,
) -> impl Stream<Item = Result<Bytes, Error>> {
    let state = State {
        run: Some(run),
        first: Some(live.first),
        rest: live.rest,
        relay,
        out: Events::default(),
        done: false,
    };
    let (first, rest) = match next(state).await {
        Some((piece, rest)) => (Some(piece), Some(rest)),
        None => (None, None),
    };
    let rest = futures::stream::unfold(rest, |rest| async move {
        let (piece, rest) = next(rest?).await?;
        Some((piece, Some(rest)))
    });
    futures::stream::iter(first).chain(rest)
}

/// A stream handed over the way hyper hands over a response body: by another task, one item
/// at a time, each only once the one before was taken.
#[cfg(test)]
pub(in crate::http) fn handed_over(events: Vec<StreamEvent>) -> EventStream {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Events the upstream has delivered go out in one piece, though each waits for the task
    /// that hands them over; the stream's end closes the body.
    #[tokio::test]
    async fn delivered_events_go_out_in_one_piece() {
        let state = State {
            run: None,
            first: Some(content("a")),
            rest: handed_over(["b", "c", "d"].map(content).to_vec()),
            relay: Lines,
            out: Events::default(),
            done: false,
        };
        let (piece, state) = next(state).await.expect("a first piece");
        assert_eq!(&piece.unwrap()[..], b"a\nb\nc\nd\n");
        assert!(state.done, "the stream's end was taken with the piece");
        assert!(next(state).await.is_none());
    }
}
