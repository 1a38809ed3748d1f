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
use flowgate_actors::provider::EventStream;
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

async fn next<R: Relay>(mut s: State<R>) -> Option<(Result<Bytes, Error>, State<R>)> {
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
        if let Some(bytes) = s.out.take() {
            return Some((Ok(bytes), s));
        }
    }
}

/// The SSE body of a live stream, written by `relay`.
pub(in crate::http) fn relay<R: Relay>(
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
    futures::stream::unfold(state, next)
}
