//! The stream: ConverseStream's AWS event-stream framing (length-prefixed messages with CRCs)
//! for the driver, and one message into events (the mapping is [`EventMapper`]'s);
//! `messageStop` is the clean end.

use std::collections::VecDeque;

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::Message;
use bytes::BytesMut;

use super::response::EventMapper;
use crate::completion::StreamEvent;
use crate::error::GatewayError;
use crate::provider::adapter::{Flow, Framing};

/// Largest event-stream frame accepted (the format's own limit is 16 MiB).
const MAX_FRAME: usize = 16 * 1024 * 1024 + 1024;

/// AWS event-stream messages, whole frames only, CRCs checked.
pub struct EventStreamFraming {
    decoder: MessageFrameDecoder,
    buffer: BytesMut,
}

impl Default for EventStreamFraming {
    fn default() -> Self {
        EventStreamFraming {
            decoder: MessageFrameDecoder::new(),
            buffer: BytesMut::new(),
        }
    }
}

impl Framing for EventStreamFraming {
    type Frame = Message;

    fn push(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }

    fn next_frame(&mut self) -> Option<Result<Message, String>> {
        let malformed = |detail: String| {
            Some(Err(format!(
                "sent a malformed event-stream frame: {detail}"
            )))
        };
        // Only whole frames go to the decoder, so the buffer is empty exactly when no frame is
        // half received.
        let prelude = self.buffer.get(..4)?;
        let total = u32::from_be_bytes([prelude[0], prelude[1], prelude[2], prelude[3]]);
        let total = usize::try_from(total).unwrap_or(usize::MAX);
        if total > MAX_FRAME {
            return malformed(format!("a frame of {total} bytes is over the limit"));
        }
        if self.buffer.len() < total {
            return None;
        }
        match self.decoder.decode_frame(&mut self.buffer) {
            Ok(DecodedFrame::Incomplete) => None,
            Ok(DecodedFrame::Complete(message)) => Some(Ok(message)),
            Err(e) => malformed(e.to_string()),
        }
    }

    fn at_boundary(&self) -> bool {
        self.buffer.is_empty()
    }
}

/// One event-stream message; an exception frame or an unreadable event ends the stream.
pub(super) fn on_message(
    name: &str,
    mapper: &mut EventMapper,
    message: Message,
    out: &mut VecDeque<StreamEvent>,
) -> Result<Flow, GatewayError> {
    if let Err(failure) = mapper.on_message(&message, out) {
        let verb = if failure.status.is_some() {
            "sent an error mid-stream"
        } else {
            "sent"
        };
        let mut error = GatewayError::new(
            failure.kind,
            format!("provider `{name}` {verb}: {}", failure.message),
        );
        if let Some(status) = failure.status {
            error = error.with_upstream_status(status);
        }
        return Err(error);
    }
    Ok(Flow::More)
}
