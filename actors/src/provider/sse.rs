//! Server-sent events decoding, shared by the adapters whose providers stream SSE.

/// One decoded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
}

/// Longest line (and event) accepted: a provider that sends more without a line break is
/// broken, and would otherwise grow the buffer without bound.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// The stream sent a line or an event longer than [`MAX_EVENT_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTooLarge;

impl std::fmt::Display for EventTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sent an event larger than {MAX_EVENT_BYTES} bytes")
    }
}

/// Incremental SSE decoder: feed it bytes as they arrive, take whole events out.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
    event: Option<String>,
    /// The event's `data:` lines so far, joined by `\n`.
    data: String,
    /// Whether the event has a `data:` line (an empty one counts).
    has_data: bool,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes and returns the events they complete. Linear in the bytes given: each line
    /// is looked at once, and what is left of the chunk moves once. A streamed answer's every
    /// chunk passes here, so lines are found with `memchr` and checked as UTF-8 with the
    /// standard library's fast check (invalid bytes, rare, are replaced).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, EventTooLarge> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = memchr::memchr(b'\n', &self.buffer[start..]) {
            let end = start + offset;
            let mut line = &self.buffer[start..end];
            start = end + 1;
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = match std::str::from_utf8(line) {
                Ok(line) => std::borrow::Cow::Borrowed(line),
                Err(_) => String::from_utf8_lossy(line),
            };
            if line.is_empty() {
                if self.has_data || self.event.is_some() {
                    self.has_data = false;
                    events.push(SseEvent {
                        event: self.event.take(),
                        data: std::mem::take(&mut self.data),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line.as_ref(), ""),
            };
            match field {
                "data" => {
                    // The lines' bytes and a line break after each.
                    if self.data.len() + value.len() + 1 > MAX_EVENT_BYTES {
                        return Err(EventTooLarge);
                    }
                    if self.has_data {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                    self.has_data = true;
                }
                "event" => self.event = Some(value.to_string()),
                _ => {}
            }
        }
        self.buffer.drain(..start);
        if self.buffer.len() > MAX_EVENT_BYTES {
            return Err(EventTooLarge);
        }
        Ok(events)
    }
}

/// Server-sent events as the driver reads them: one [`SseEvent`] per frame. A body that ends
/// inside an event is not a cut by itself: each adapter's end mark says whether it was.
#[derive(Debug, Default)]
pub struct SseFraming {
    decoder: SseDecoder,
    ready: std::vec::IntoIter<SseEvent>,
}

impl super::adapter::Framing for SseFraming {
    type Frame = SseEvent;

    fn push(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.ready = self
            .decoder
            .push(bytes)
            .map_err(|e| e.to_string())?
            .into_iter();
        Ok(())
    }

    fn next_frame(&mut self) -> Option<Result<SseEvent, String>> {
        self.ready.next().map(Ok)
    }

    fn at_boundary(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_split_events_and_crlf() {
        let mut d = SseDecoder::new();
        assert!(d.push(b"data: {\"a\"").unwrap().is_empty());
        let events = d
            .push(b":1}\r\n\r\nevent: ping\ndata: x\ndata: y\n\n: comment\n\n")
            .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data, "{\"a\":1}");
        assert_eq!(events[1].event.as_deref(), Some("ping"));
        assert_eq!(events[1].data, "x\ny");
    }

    #[test]
    fn an_empty_data_line_is_an_event_and_invalid_bytes_are_replaced() {
        let mut d = SseDecoder::new();
        let events = d.push(b"data:\n\ndata: a\ndata:\ndata: b\xff\n\n").unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data, "");
        assert_eq!(events[1].data, "a\n\nb\u{fffd}");
        assert_eq!(events[1].event, None);
    }

    #[test]
    fn a_line_or_an_event_past_the_bound_is_an_error_not_a_bigger_buffer() {
        let mut d = SseDecoder::new();
        let chunk = vec![b'x'; 1024 * 1024];
        let mut failed = false;
        for _ in 0..(MAX_EVENT_BYTES / chunk.len() + 2) {
            if d.push(&chunk).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "an endless line was buffered");
        let mut d = SseDecoder::new();
        let line = format!("data: {}\n", "y".repeat(1024 * 1024));
        let mut failed = false;
        for _ in 0..(MAX_EVENT_BYTES / line.len() + 2) {
            if d.push(line.as_bytes()).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "an endless event was buffered");
    }

    fn decode_in(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        chunks
            .iter()
            .flat_map(|c| d.push(c).unwrap())
            .collect::<Vec<_>>()
    }

    proptest! {
        // Any bytes, cut anywhere: no panic, and the same events as in one piece.
        #[test]
        fn any_bytes_split_anywhere_decode_the_same(
            bytes in proptest::collection::vec(
                prop_oneof![
                    Just(b'\n'), Just(b'\r'), Just(b':'), Just(b' '),
                    Just(b'd'), Just(b'a'), Just(b't'), Just(b'e'), Just(b'v'), Just(b'n'),
                    any::<u8>()
                ],
                0..512,
            ),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let whole = decode_in(&[&bytes]);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for p in points {
                pieces.push(&bytes[last..p]);
                last = p;
            }
            pieces.push(&bytes[last..]);
            prop_assert_eq!(decode_in(&pieces), whole);
        }

        // Well-formed events come back as sent.
        #[test]
        fn events_round_trip(
            events in proptest::collection::vec(("[a-z]{0,8}", "[^\r\n]{0,64}"), 0..16),
        ) {
            let mut text = String::new();
            for (name, data) in &events {
                if !name.is_empty() {
                    text.push_str(&format!("event: {name}\n"));
                }
                text.push_str(&format!("data: {data}\n\n"));
            }
            let decoded = decode_in(&[text.as_bytes()]);
            prop_assert_eq!(decoded.len(), events.len());
            for (got, (name, data)) in decoded.iter().zip(&events) {
                prop_assert_eq!(&got.data, data);
                prop_assert_eq!(got.event.as_deref(), (!name.is_empty()).then_some(name.as_str()));
            }
        }
    }
}
