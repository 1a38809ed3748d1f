//! The provider adapter trait: what one provider's HTTP API has of its own. An adapter builds
//! the request of a call, reads its error bodies, maps its answers and its stream frames, and
//! says when its stream ended cleanly; the shared [`Driver`](super::driver::Driver) does the
//! rest once (send under the first-byte timeout, status → error, the whole-body read under
//! the total timeout, the stream loop with its idle gap and deadline).
//!
//! Dispatch stays static: `ProviderClient` is an enum of `Driver<SomeAdapter>`s, and the
//! stream loop is generic over the adapter, so nothing is boxed or looked up per event.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::http::{self, HeaderMap};
use super::UpstreamRequest;
use crate::completion::{Completion, StreamEvent};
use crate::error::{ErrorKind, GatewayError};

/// An answer that is not what the provider should have sent (with the 200 it came with).
pub fn malformed(name: &str, what: impl fmt::Display) -> GatewayError {
    GatewayError::new(
        ErrorKind::UpstreamMalformed,
        format!("provider `{name}` sent {what}"),
    )
    .with_upstream_status(200)
}

/// A request ready to send, and what the rest of the call needs of it.
pub struct Prepared<'c, C> {
    pub request: http::RequestBuilder<'c>,
    pub call: C,
}

/// An upstream error body, read by the adapter; the driver writes the message.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    /// The provider's name for the error, shown after the HTTP status
    /// (`429 RESOURCE_EXHAUSTED`).
    pub label: Option<String>,
    /// The provider's message (the driver scrubs the secrets out of it).
    pub text: String,
    /// A delay the body asks for, used when the headers name none (Google's `RetryInfo`).
    pub retry_after: Option<Duration>,
    /// The provider rejected the credentials: the message says so and quotes neither the
    /// text nor the label (a rejection may echo the key).
    pub credentials_rejected: bool,
}

impl ErrorReply {
    /// An error of `kind`: its text shown unless it is a credentials error.
    pub fn new(kind: ErrorKind, label: Option<String>, text: String) -> ErrorReply {
        ErrorReply {
            credentials_rejected: kind == ErrorKind::UpstreamAuth,
            kind,
            label,
            text,
            retry_after: None,
        }
    }
}

/// Whether a stream goes on after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read on.
    More,
    /// The stream's own end mark (`[DONE]`, `message_stop`): read no further.
    Done,
}

/// How a streamed body is cut into frames: server-sent events, or AWS event-stream messages.
pub trait Framing: Default + Send + 'static {
    type Frame;

    /// Takes the bytes of one read; `Err` says (after "provider `name` ") what was wrong.
    fn push(&mut self, bytes: &[u8]) -> Result<(), String>;

    /// The next whole frame of what was pushed, if any.
    fn next_frame(&mut self) -> Option<Result<Self::Frame, String>>;

    /// Whether the body so far ends on a frame boundary (an end elsewhere is a cut).
    fn at_boundary(&self) -> bool;
}

/// Secrets no message may show: API keys, the call's OAuth token. Empty ones are skipped.
pub type Secrets<'a> = [&'a str; 3];

/// One provider API's wire format: its request, its errors, its answers and its stream.
pub trait Adapter: Send + Sync + 'static {
    /// What a call keeps from its request for the rest of the call (its token, the
    /// structured-output tool it added).
    type Call: Send;
    /// A non-streaming answer, as the provider sends it.
    type Response: DeserializeOwned;
    /// How the streamed body is cut into frames.
    type Framing: Framing;
    /// What a stream remembers between frames.
    type Stream: Send + 'static;

    /// What a stream must have seen for the end of its body not to be a cut, for the message
    /// (`provider `x` stream ended before [DONE]`).
    const END_MARK: &'static str;

    /// The HTTP request of a call (URL, credentials, body), after the asynchronous work it
    /// needs first (media downloads, an OAuth token, a signature); or why it is refused.
    fn prepare<'c>(
        &'c self,
        http: &'c http::Client,
        name: &'c str,
        call: UpstreamRequest<'c>,
        stream: bool,
    ) -> impl Future<Output = Result<Prepared<'c, Self::Call>, GatewayError>> + Send + 'c;

    /// The secrets of a call, scrubbed from every message.
    fn secrets<'a>(&'a self, call: &'a Self::Call) -> Secrets<'a>;

    /// Reads an error answer: `body` is at most its first 64 KiB (the driver's bound), `None`
    /// when it could not be read.
    fn error_reply(
        &self,
        call: &Self::Call,
        status: u16,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> ErrorReply;

    /// The completion of a parsed answer (or the error the answer is).
    fn completion(
        &self,
        name: &str,
        call: &Self::Call,
        response: Self::Response,
    ) -> Result<Completion, GatewayError>;

    /// A successful body that does not parse as [`Self::Response`].
    fn unreadable(
        &self,
        name: &str,
        _call: &Self::Call,
        _body: &[u8],
        error: serde_json::Error,
    ) -> GatewayError {
        malformed(name, format_args!("a malformed response: {error}"))
    }

    /// The state of a stream that the provider accepted, or why its response is not one.
    fn open_stream(
        &self,
        name: &str,
        call: Self::Call,
        headers: &HeaderMap,
    ) -> Result<Self::Stream, GatewayError>;

    /// One frame: its events go to `out`. An `Err` ends the stream after the events already
    /// in `out`.
    fn on_frame(
        name: &str,
        stream: &mut Self::Stream,
        frame: <Self::Framing as Framing>::Frame,
        out: &mut VecDeque<StreamEvent>,
    ) -> Result<Flow, GatewayError>;

    /// Whether the stream saw its end mark ([`Self::END_MARK`]).
    fn ended_cleanly(stream: &Self::Stream) -> bool;

    /// Events due when the body ends cleanly.
    fn on_end(_stream: &mut Self::Stream, _out: &mut VecDeque<StreamEvent>) {}
}
