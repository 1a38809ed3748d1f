//! The one HTTP driver of every adapter: send under the first-byte timeout, an error status
//! into a classified, scrubbed [`GatewayError`], the whole body under the total timeout, and
//! the stream loop (reads within the idle gap and the deadline, frames, events, the clean-end
//! rule). What differs between providers comes from their [`Adapter`].

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::{timeout, Instant};

use super::adapter::{Adapter, Flow, Framing, Prepared};
use super::http::{self, BodyRead};
use super::{EventStream, Timeouts, UpstreamRequest};
use crate::completion::{Completion, StreamEvent};
use crate::error::{ErrorKind, GatewayError};

/// Upstream error bodies longer than this are cut before parsing (the rest is not read).
pub const MAX_ERROR_BODY: usize = 64 * 1024;
/// The largest whole (non-streamed) answer read from an upstream: a broken or hostile one
/// that sends without end is cut off here, an `upstream_malformed` error, instead of growing
/// the gateway's memory. A streamed answer is bounded per event instead
/// ([`super::sse::MAX_EVENT_BYTES`]).
pub const MAX_ANSWER_BODY: usize = 32 * 1024 * 1024;
/// How long an error body may take to arrive.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// A provider's client: its adapter, its HTTP client and its timeouts.
pub struct Driver<A> {
    name: String,
    timeouts: Timeouts,
    http: http::Client,
    adapter: A,
}

impl<A: fmt::Debug> fmt::Debug for Driver<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("name", &self.name)
            .field("timeouts", &self.timeouts)
            .field("adapter", &self.adapter)
            .finish_non_exhaustive()
    }
}

impl<A: Adapter> Driver<A> {
    /// The client of provider `name`, with its own HTTP client.
    pub fn build(name: String, timeouts: Timeouts, adapter: A) -> Result<Driver<A>, String> {
        Ok(Driver {
            http: http::client(&name, &timeouts)?,
            name,
            timeouts,
            adapter,
        })
    }

    pub fn adapter(&self) -> &A {
        &self.adapter
    }

    /// One non-streaming call.
    pub async fn complete(&self, call: UpstreamRequest<'_>) -> Result<Completion, GatewayError> {
        let started = Instant::now();
        let (call, response) = self.send(call, false).await?;
        let total = self.timeouts.total();
        let remaining = total.saturating_sub(started.elapsed());
        let bytes = timeout(remaining, response.bytes(MAX_ANSWER_BODY))
            .await
            .map_err(|_| http::timeout_error(&self.name, "its whole body", total))?
            .map_err(|e| http::transport_error(&self.name, e, &self.adapter.secrets(&call)))?;
        match serde_json::from_slice::<A::Response>(&bytes) {
            Ok(parsed) => self.adapter.completion(&self.name, &call, parsed),
            Err(e) => Err(self.adapter.unreadable(&self.name, &call, &bytes, e)),
        }
    }

    /// Opens a stream. `Ok` means the provider accepted the request; events follow.
    pub async fn stream(&self, call: UpstreamRequest<'_>) -> Result<EventStream, GatewayError> {
        let started = Instant::now();
        let (call, response) = self.send(call, true).await?;
        let stream = self
            .adapter
            .open_stream(&self.name, call, response.headers())?;
        Ok(events::<A>(
            self.name.clone(),
            response.bytes_stream(),
            stream,
            self.timeouts.idle(),
            started + self.timeouts.total(),
        ))
    }

    /// The provider's name in config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The provider's HTTP client, for calls outside the chat path (embeddings).
    pub fn http(&self) -> &http::Client {
        &self.http
    }

    /// One JSON call outside the chat path (embeddings): sent under the same timeouts, its
    /// errors read by the adapter as a chat call's are, its answer parsed as `T`.
    pub async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        request: http::RequestBuilder<'_>,
        call: &A::Call,
    ) -> Result<T, GatewayError> {
        let started = Instant::now();
        let limit = self.timeouts.first_byte().min(self.timeouts.total());
        let response = timeout(limit, request.send())
            .await
            .map_err(|_| http::timeout_error(&self.name, "with headers", limit))?
            .map_err(|e| http::transport_error(&self.name, e, &self.adapter.secrets(call)))?;
        if !response.status().is_success() {
            return Err(self.status_error(call, response).await);
        }
        let total = self.timeouts.total();
        let remaining = total.saturating_sub(started.elapsed());
        let bytes = timeout(remaining, response.bytes(MAX_ANSWER_BODY))
            .await
            .map_err(|_| http::timeout_error(&self.name, "its whole body", total))?
            .map_err(|e| http::transport_error(&self.name, e, &self.adapter.secrets(call)))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            super::adapter::malformed(
                &self.name,
                format_args!("an answer that does not parse: {e}"),
            )
        })
    }

    /// Prepares and sends a call; the response if its status is a success.
    async fn send(
        &self,
        call: UpstreamRequest<'_>,
        stream: bool,
    ) -> Result<(A::Call, http::Response), GatewayError> {
        let Prepared { request, call } = self
            .adapter
            .prepare(&self.http, &self.name, call, stream)
            .await?;
        let limit = self.timeouts.first_byte().min(self.timeouts.total());
        let response = timeout(limit, request.send())
            .await
            .map_err(|_| http::timeout_error(&self.name, "with headers", limit))?
            .map_err(|e| http::transport_error(&self.name, e, &self.adapter.secrets(&call)))?;
        if response.status().is_success() {
            return Ok((call, response));
        }
        Err(self.status_error(&call, response).await)
    }

    /// The error an unsuccessful status means, with its body read (within bounds) for the
    /// provider's own classification.
    async fn status_error(&self, call: &A::Call, response: http::Response) -> GatewayError {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = match timeout(ERROR_BODY_TIMEOUT, response.prefix(MAX_ERROR_BODY)).await {
            Ok(Ok(bytes)) => Some(bytes),
            _ => None,
        };
        let cut = body.as_deref();
        let reply = self.adapter.error_reply(call, status, &headers, cut);
        let label = reply.label.map(|l| format!(" {l}")).unwrap_or_default();
        let message = if reply.credentials_rejected {
            // Auth messages may quote the key: never pass them on.
            format!(
                "provider `{}` rejected its credentials ({status}{label})",
                self.name
            )
        } else {
            let secrets = self.adapter.secrets(call);
            format!(
                "provider `{}` answered {status}{}: {}",
                self.name,
                http::scrub(&label, &secrets),
                http::scrub(&reply.text, &secrets)
            )
        };
        GatewayError::new(reply.kind, message)
            .with_retry_after(http::retry_after(&headers).or(reply.retry_after))
            .with_upstream_status(status)
    }
}

/// The events of a streamed body: frames read within the idle gap and before the deadline,
/// mapped by the adapter, ended by its clean-end rule.
pub fn events<A: Adapter>(
    name: String,
    body: http::Body,
    stream: A::Stream,
    idle: Duration,
    deadline: Instant,
) -> EventStream {
    let reading = Reading::<A> {
        name,
        body,
        framing: A::Framing::default(),
        stream,
        pending: VecDeque::new(),
        error: None,
        finished: false,
        idle,
        deadline,
    };
    futures::stream::unfold(reading, next_event).boxed()
}

struct Reading<A: Adapter> {
    name: String,
    body: http::Body,
    framing: A::Framing,
    stream: A::Stream,
    pending: VecDeque<StreamEvent>,
    /// Ends the stream once `pending` is delivered.
    error: Option<GatewayError>,
    /// Nothing more to read.
    finished: bool,
    idle: Duration,
    deadline: Instant,
}

impl<A: Adapter> Reading<A> {
    /// Ends the stream with an error, after the events already decoded.
    fn fail(&mut self, error: GatewayError) {
        self.finished = true;
        self.error = Some(error);
    }

    /// Maps the whole frames of one read.
    fn frames(&mut self, bytes: &[u8]) {
        if let Err(detail) = self.framing.push(bytes) {
            let message = format!("provider `{}` {detail}", self.name);
            return self.fail(GatewayError::new(ErrorKind::UpstreamMalformed, message));
        }
        while let Some(frame) = self.framing.next_frame() {
            let frame = match frame {
                Ok(frame) => frame,
                Err(detail) => {
                    let message = format!("provider `{}` {detail}", self.name);
                    return self.fail(GatewayError::new(ErrorKind::UpstreamMalformed, message));
                }
            };
            match A::on_frame(&self.name, &mut self.stream, frame, &mut self.pending) {
                Ok(Flow::More) => {}
                Ok(Flow::Done) => {
                    self.finished = true;
                    return;
                }
                Err(error) => return self.fail(error),
            }
        }
    }
}

async fn next_event<A: Adapter>(
    mut s: Reading<A>,
) -> Option<(Result<StreamEvent, GatewayError>, Reading<A>)> {
    loop {
        if let Some(event) = s.pending.pop_front() {
            return Some((Ok(event), s));
        }
        if let Some(error) = s.error.take() {
            s.finished = true;
            return Some((Err(error), s));
        }
        if s.finished {
            return None;
        }
        match http::read_body(&s.name, &mut s.body, s.idle, s.deadline).await {
            BodyRead::Failed(error) => s.fail(error),
            BodyRead::End => {
                s.finished = true;
                if A::ended_cleanly(&s.stream) && s.framing.at_boundary() {
                    A::on_end(&mut s.stream, &mut s.pending);
                } else {
                    let message =
                        format!("provider `{}` stream ended before {}", s.name, A::END_MARK);
                    s.fail(GatewayError::new(ErrorKind::UpstreamConnection, message));
                }
            }
            BodyRead::Bytes(bytes) => s.frames(&bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use flowgate_mock_upstream::raw::{chunk, endless_server};
    use serde_json::json;

    use super::*;
    use crate::provider::openai::OpenAiClient;
    use crate::provider::OpenAiSettings;
    use crate::wire::ChatRequest;

    /// The error of one non-streamed call to an OpenAI-compatible upstream that answers with
    /// `head`, then `data` as chunks without end (60 s at most: past it, the body was not
    /// cut).
    async fn endless_call(head: &'static str, data: &[u8]) -> GatewayError {
        let url = endless_server(head.as_bytes(), chunk(data)).await;
        let settings = OpenAiSettings {
            base_url: url,
            api_key: Some("k".into()),
            headers: Default::default(),
            flavor: Default::default(),
        };
        let client = OpenAiClient::new("up", settings, Timeouts::default()).unwrap();
        let request: ChatRequest = serde_json::from_value(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .unwrap();
        let call = client.complete(UpstreamRequest {
            request: &request,
            model: "gpt-4o-mini",
            reasoning_effort: None,
        });
        tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("an endless answer is cut, not waited out")
            .unwrap_err()
    }

    #[actix_rt::test]
    async fn an_answer_without_end_is_cut_off_as_malformed() {
        let error = endless_call(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
            &[b'x'; 64 * 1024],
        )
        .await;
        assert_eq!(
            error.kind,
            ErrorKind::UpstreamMalformed,
            "{}",
            error.message
        );
        assert!(
            error
                .message
                .contains(&format!("larger than {MAX_ANSWER_BODY} bytes")),
            "{}",
            error.message
        );
    }

    #[actix_rt::test]
    async fn an_error_answer_without_end_is_read_for_its_start_only() {
        let error = endless_call(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n",
            "upstream trouble ".repeat(1000).as_bytes(),
        )
        .await;
        assert_eq!(error.upstream_status, Some(503));
        // Its first bytes are the message (read whole, the body would time out and say nothing).
        assert!(
            error.message.contains("upstream trouble"),
            "{}",
            error.message
        );
    }
}
