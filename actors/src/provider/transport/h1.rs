//! HTTP/1.1 on the wire (RFC 9112), as the transport speaks it to an upstream: a request
//! written out whole, a response head parsed with `httparse`, and the body's framing
//! (`content-length`, chunked, or until the connection closes) decoded from a read buffer.
//! No I/O here: [`super::conn`] reads and writes, this only encodes and decodes.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::TRANSFER_ENCODING;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST};
use hyper::{Method, StatusCode, Uri};

/// The most bytes a response head may take (status line and headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most headers a response may have.
const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (with its extensions) or trailer line of a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// A protocol error: the upstream's bytes are not HTTP/1.1 as RFC 9112 frames it.
#[derive(Debug)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn protocol(message: impl Into<String>) -> ProtocolError {
    ProtocolError(message.into())
}

/// The request line and headers, with `host` (unless set) and `content-length` (when there is
/// a body, or the method is one that carries one), ending with the blank line.
pub fn encode_head(method: &Method, uri: &Uri, headers: &HeaderMap, body_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + headers.len() * 48);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    // origin-form: the path (`/` if none) and the query; never the userinfo.
    let path = uri.path();
    out.extend_from_slice(if path.is_empty() {
        b"/"
    } else {
        path.as_bytes()
    });
    if let Some(query) = uri.query() {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(HOST) {
        if let Some(host) = uri.host() {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(host.as_bytes());
            // The default port is left out, as a browser writes it.
            let default_port = match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            };
            if let Some(port) = uri.port_u16().filter(|&p| p != default_port) {
                out.push(b':');
                out.extend_from_slice(port.to_string().as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    let has_body = body_len > 0 || matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    for (name, value) in headers {
        // The transport frames the body itself.
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if has_body {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body_len.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// HTTP/1.1 without `connection: close`: the connection can carry the next request once
    /// the body is read.
    pub keep_alive: bool,
}

/// Parses a response head from the front of `buf`, taking its bytes: `None` while it is
/// incomplete. Informational (1xx) heads are skipped, up to [`MAX_INFORMATIONAL`] of them in
/// all: `informational` counts them across the calls for one response.
pub fn parse_head(
    buf: &mut BytesMut,
    informational: &mut usize,
) -> Result<Option<Head>, ProtocolError> {
    while *informational <= MAX_INFORMATIONAL {
        // Left uninitialised: the parser writes the slots it fills (zeroing all 128 took
        // more than parsing a short head).
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut slots,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD_BYTES {
                    return Err(protocol(format!(
                        "the response head is longer than {MAX_HEAD_BYTES} bytes"
                    )));
                }
                return Ok(None);
            }
            Err(e) => return Err(protocol(format!("the response head is malformed: {e}"))),
        };
        if len > MAX_HEAD_BYTES {
            return Err(protocol(format!(
                "the response head is longer than {MAX_HEAD_BYTES} bytes"
            )));
        }
        let code = response.code.unwrap_or(0);
        let status = StatusCode::from_u16(code)
            .map_err(|_| protocol(format!("the response status {code} is not valid")))?;
        let http11 = response.version == Some(1);
        let mut headers = HeaderMap::with_capacity(response.headers.len());
        let mut close = false;
        for header in response.headers.iter() {
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|_| protocol(format!("the header name {:?} is not valid", header.name)))?;
            let value = HeaderValue::from_bytes(header.value)
                .map_err(|_| protocol(format!("the value of header `{name}` is not valid")))?;
            if name == CONNECTION && has_token(&value, "close") {
                close = true;
            }
            headers.append(name, value);
        }
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(protocol(
                "the upstream switched protocols, which was not asked for",
            ));
        }
        buf.advance(len);
        if status.is_informational() {
            *informational += 1;
            continue;
        }
        return Ok(Some(Head {
            status,
            headers,
            keep_alive: http11 && !close,
        }));
    }
    Err(protocol(format!(
        "the upstream sent more than {MAX_INFORMATIONAL} informational (1xx) heads"
    )))
}

/// The most informational (1xx) heads skipped before a response.
const MAX_INFORMATIONAL: usize = 8;
/// The most trailer lines after a chunked body.
const MAX_TRAILERS: u32 = 64;

/// Whether a comma-separated header value holds `token` (ASCII case-insensitive).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Debug)]
pub enum Framing {
    /// So many bytes left.
    Length(u64),
    /// Chunked, at this step of its grammar.
    Chunked(Chunk),
    /// Until the upstream closes the connection (which then cannot be reused).
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// So many bytes of chunk data left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Reading trailer lines after the last chunk, until the blank one: so many read.
    Trailers(u32),
}

impl Framing {
    /// The framing of the body that follows `head` in answer to `method`; `None`: no body. A
    /// head with both `transfer-encoding` and `content-length` is read by the former, and its
    /// connection is not reused (RFC 9112 §6.3).
    pub fn of(method: &Method, head: &mut Head) -> Result<Option<Framing>, ProtocolError> {
        let status = head.status;
        if *method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(None);
        }
        if let Some(coding) = head.headers.get_all(TRANSFER_ENCODING).iter().next_back() {
            if head.headers.contains_key(CONTENT_LENGTH) {
                head.keep_alive = false;
            }
            let chunked = coding
                .to_str()
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            return Ok(Some(if chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::UntilClose
            }));
        }
        let mut length: Option<u64> = None;
        for value in head.headers.get_all(CONTENT_LENGTH) {
            for part in value.to_str().unwrap_or("x").split(',') {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(protocol(format!(
                        "the content-length {part:?} is not a number"
                    )));
                }
                let n: u64 = part
                    .parse()
                    .map_err(|_| protocol(format!("the content-length {part} is too large")))?;
                if length.is_some_and(|seen| seen != n) {
                    return Err(protocol("the response has two different content-lengths"));
                }
                length = Some(n);
            }
        }
        Ok(match length {
            Some(0) => None,
            Some(n) => Some(Framing::Length(n)),
            None => Some(Framing::UntilClose),
        })
    }

    /// Takes the body bytes `buf` holds off its front: the data decoded (possibly empty), and
    /// whether the body is complete. `eof`: the connection was closed after `buf`'s bytes.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        eof: bool,
    ) -> Result<(Bytes, bool), ProtocolError> {
        match self {
            Framing::Length(left) => {
                let take = (*left).min(buf.len() as u64) as usize;
                let data = buf.split_to(take).freeze();
                *left -= take as u64;
                if *left > 0 && eof {
                    return Err(protocol(format!(
                        "the connection closed {left} bytes before the end of the body"
                    )));
                }
                Ok((data, *left == 0))
            }
            Framing::UntilClose => {
                let data = buf.split().freeze();
                Ok((data, eof))
            }
            Framing::Chunked(state) => {
                let (data, done) = decode_chunks(state, buf)?;
                if !done && eof {
                    return Err(protocol("the connection closed inside a chunked body"));
                }
                Ok((data, done))
            }
        }
    }
}

/// Decodes every whole chunk `buf` holds (their data joined), leaving a partial line in it.
fn decode_chunks(state: &mut Chunk, buf: &mut BytesMut) -> Result<(Bytes, bool), ProtocolError> {
    // The chunks' data is at most what the buffer holds: one buffer, one copy.
    let mut out = Joined::sized(buf.len());
    loop {
        match *state {
            Chunk::Size => {
                let Some(line) = take_line(buf)? else { break };
                let digits = line[..].split(|&b| b == b';').next().unwrap_or(&[]);
                let digits = trim(digits);
                if digits.is_empty()
                    || digits.len() > 16
                    || !digits.iter().all(u8::is_ascii_hexdigit)
                {
                    return Err(protocol("a chunk size is not a hex number"));
                }
                let text = std::str::from_utf8(digits)
                    .map_err(|_| protocol("a chunk size is not a hex number"))?;
                let size = u64::from_str_radix(text, 16).map_err(|_| {
                    protocol(format!("the chunk size {text:?} is not a hex number"))
                })?;
                *state = if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    break;
                }
                let take = left.min(buf.len() as u64) as usize;
                out.push(buf.split_to(take).freeze());
                *state = if left == take as u64 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - take as u64)
                };
            }
            Chunk::DataEnd => {
                let Some(line) = take_line(buf)? else { break };
                if !line.is_empty() {
                    return Err(protocol("a chunk's data is longer than its size"));
                }
                *state = Chunk::Size;
            }
            Chunk::Trailers(read) => {
                let Some(line) = take_line(buf)? else { break };
                if line.is_empty() {
                    return Ok((out.finish(), true));
                }
                if read >= MAX_TRAILERS {
                    return Err(protocol(format!("more than {MAX_TRAILERS} trailer lines")));
                }
                *state = Chunk::Trailers(read + 1);
            }
        }
    }
    Ok((out.finish(), false))
}

/// Pieces of data joined. One piece is kept as it is, without a copy. More are copied once
/// into a buffer of their total size: as they come when the total is known or bounded
/// beforehand ([`Joined::sized`]), else once they are all there. (A buffer grown as pieces
/// come doubles: it would end up to twice the data's size, and hold three times it for a
/// moment while it moves.)
#[derive(Default)]
pub struct Joined {
    /// The first piece, kept without a copy while it is the only one.
    first: Bytes,
    rest: Rest,
}

/// Where a [`Joined`]'s pieces after the first go.
enum Rest {
    /// The total is unknown: large pieces as they came, small ones gathered in `tail` first
    /// (a handle for each byte an upstream trickles would cost 32 bytes a byte).
    Pieces { more: Vec<Bytes>, tail: BytesMut },
    /// The total is known or bounded: from the second piece on, one buffer made for it, at
    /// most [`AHEAD`] ahead of the data (a length said and never sent costs nothing).
    Sized {
        total: usize,
        whole: Option<BytesMut>,
    },
}

impl Default for Rest {
    fn default() -> Self {
        Rest::Pieces {
            more: Vec::new(),
            tail: BytesMut::new(),
        }
    }
}

/// How far ahead of the data a [`Joined::sized`] buffer is made.
const AHEAD: usize = 1 << 20;
/// Pieces smaller than this are gathered in a [`Joined`]'s tail...
const SMALL_PIECE: usize = 4096;
/// ...which becomes a piece of its own at this size.
const TAIL: usize = 64 * 1024;

impl Joined {
    /// For data whose size is known beforehand (a `content-length`), or bounded (what one
    /// read buffer holds), by at most a bound the caller checked.
    pub fn sized(total: usize) -> Self {
        Joined {
            first: Bytes::new(),
            rest: Rest::Sized { total, whole: None },
        }
    }

    pub fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        match &mut self.rest {
            Rest::Sized {
                total,
                whole: Some(whole),
            } => {
                if whole.capacity() - whole.len() < data.len() {
                    whole.reserve(total.saturating_sub(whole.len()).max(data.len()));
                }
                whole.extend_from_slice(&data);
            }
            _ if self.first.is_empty() => self.first = data,
            Rest::Sized { total, whole } => {
                let len = self.first.len() + data.len();
                let mut buffer = BytesMut::with_capacity((*total).min(AHEAD).max(len));
                buffer.extend_from_slice(&self.first);
                buffer.extend_from_slice(&data);
                self.first = Bytes::new();
                *whole = Some(buffer);
            }
            Rest::Pieces { more, tail } => {
                if data.len() < SMALL_PIECE {
                    tail.extend_from_slice(&data);
                    if tail.len() >= TAIL {
                        more.push(tail.split().freeze());
                    }
                } else {
                    if !tail.is_empty() {
                        more.push(tail.split().freeze());
                    }
                    more.push(data);
                }
            }
        }
    }

    pub fn finish(self) -> Bytes {
        match self.rest {
            Rest::Sized {
                whole: Some(whole), ..
            } => whole.freeze(),
            Rest::Pieces { more, tail } if !more.is_empty() || !tail.is_empty() => {
                let len =
                    self.first.len() + more.iter().map(Bytes::len).sum::<usize>() + tail.len();
                let mut whole = BytesMut::with_capacity(len);
                whole.extend_from_slice(&self.first);
                for piece in &more {
                    whole.extend_from_slice(piece);
                }
                whole.extend_from_slice(&tail);
                whole.freeze()
            }
            _ => self.first,
        }
    }
}

/// Takes one CRLF-ended line off `buf` (without the CRLF); `None` while it is incomplete.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, ProtocolError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) => {
            if end > MAX_CHUNK_LINE {
                return Err(protocol("a chunk line is too long"));
            }
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_CHUNK_LINE => Err(protocol("a chunk line is too long")),
        None => Ok(None),
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_joined_once_and_one_piece_is_not_copied() {
        let one = Bytes::from_static(b"only");
        let mut joined = Joined::default();
        joined.push(Bytes::new());
        joined.push(one.clone());
        let out = joined.finish();
        assert_eq!(out.as_ptr(), one.as_ptr(), "one piece is the piece itself");

        for mut joined in [Joined::default(), Joined::sized(11)] {
            for piece in ["ab", "", "cde", "fghijk"] {
                joined.push(Bytes::from(piece));
            }
            let out = joined.finish();
            assert_eq!(out, "abcdefghijk");
            assert_eq!(out.try_into_mut().unwrap().capacity(), 11);
        }
        assert_eq!(Joined::sized(4).finish(), "");

        // Small and large pieces in turn keep their order.
        let pieces: Vec<Vec<u8>> = (0..40u8)
            .map(|i| vec![i; if i % 3 == 0 { 5000 } else { 7 }])
            .collect();
        let mut joined = Joined::default();
        for piece in &pieces {
            joined.push(Bytes::from(piece.clone()));
        }
        assert_eq!(joined.finish(), pieces.concat());
    }

    /// A byte at a time is gathered, not kept as a handle a byte.
    #[test]
    fn a_trickled_body_holds_few_pieces() {
        let mut joined = Joined::default();
        for i in 0..200_000u32 {
            joined.push(Bytes::from(vec![(i % 251) as u8]));
        }
        let Rest::Pieces { more, .. } = &joined.rest else {
            panic!("a size not said keeps pieces")
        };
        assert!(more.len() <= 200_000 / TAIL + 1, "{}", more.len());
        let out = joined.finish();
        assert_eq!(out.len(), 200_000);
        assert!(out.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    }

    /// A length said beforehand is not taken at its word past [`AHEAD`]: the buffer grows to
    /// it with the data, once.
    #[test]
    fn a_sized_buffer_is_made_at_most_ahead_of_the_data() {
        let mut joined = Joined::sized(32 << 20);
        joined.push(Bytes::from_static(b"a"));
        joined.push(Bytes::from_static(b"b"));
        let Rest::Sized {
            whole: Some(whole), ..
        } = &joined.rest
        else {
            panic!("a second piece starts the buffer")
        };
        assert_eq!(whole.capacity(), AHEAD);

        let size = 4 << 20;
        let mut joined = Joined::sized(size);
        for _ in 0..size / 4096 {
            joined.push(Bytes::from(vec![7u8; 4096]));
        }
        let out = joined.finish();
        assert_eq!(out.len(), size);
        assert_eq!(out.try_into_mut().unwrap().capacity(), size);
    }

    /// One response's head, as `send` parses it.
    fn parse(buf: &mut BytesMut) -> Result<Option<Head>, ProtocolError> {
        parse_head(buf, &mut 0)
    }

    fn head_of(text: &str) -> Head {
        let mut buf = BytesMut::from(text);
        parse(&mut buf).unwrap().expect("a whole head")
    }

    /// Decodes `wire` fed in pieces of `step` bytes: the data, and whether it completed.
    fn decode_in_steps(mut framing: Framing, wire: &[u8], step: usize) -> (Vec<u8>, bool) {
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            let (bytes, done) = framing.decode(&mut buf, false).unwrap();
            data.extend_from_slice(&bytes);
            if done {
                return (data, true);
            }
        }
        (data, false)
    }

    #[test]
    fn the_request_head_names_the_host_and_the_length() {
        let uri: Uri = "https://api.example.com/v1/chat?x=1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer k"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("999"));
        let head = String::from_utf8(encode_head(&Method::POST, &uri, &headers, 12)).unwrap();
        assert_eq!(
            head,
            "POST /v1/chat?x=1 HTTP/1.1\r\nhost: api.example.com\r\nauthorization: Bearer k\r\n\
             content-length: 12\r\n\r\n"
        );
        let uri: Uri = "http://127.0.0.1:8080".parse().unwrap();
        let head =
            String::from_utf8(encode_head(&Method::GET, &uri, &HeaderMap::new(), 0)).unwrap();
        assert_eq!(head, "GET / HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n\r\n");
        // The default port is left out, the userinfo never leaves, and a query alone gets `/`.
        let uri: Uri = "https://user:secret@api.example.com:443?x=1"
            .parse()
            .unwrap();
        let head =
            String::from_utf8(encode_head(&Method::GET, &uri, &HeaderMap::new(), 0)).unwrap();
        assert_eq!(head, "GET /?x=1 HTTP/1.1\r\nhost: api.example.com\r\n\r\n");
    }

    /// The bound on 1xx heads holds across reads: one a read, forever, is refused too.
    #[test]
    fn informational_heads_are_counted_across_reads() {
        let mut informational = 0;
        let mut refused = false;
        for _ in 0..=MAX_INFORMATIONAL {
            let mut buf = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\n");
            match parse_head(&mut buf, &mut informational) {
                Ok(None) => {}
                Ok(Some(_)) => panic!("a 1xx head is not the response"),
                Err(_) => refused = true,
            }
        }
        assert!(refused, "{informational} informational heads were skipped");
    }

    #[test]
    fn a_head_is_parsed_once_whole_and_informational_heads_are_skipped() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-le");
        assert!(parse(&mut buf).unwrap().is_none());
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many\r\nretry-after: 2\r\n\
             Connection: keep-alive, Close\r\n\r\nbody",
        );
        let head = parse(&mut buf).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(head.headers["retry-after"], "2");
        assert!(!head.keep_alive, "connection: close is honoured");
        assert_eq!(&buf[..], b"body");
        assert!(!head_of("HTTP/1.0 200 OK\r\n\r\n").keep_alive);
        assert!(head_of("HTTP/1.1 200 OK\r\n\r\n").keep_alive);
    }

    #[test]
    fn a_head_past_its_bound_or_malformed_is_an_error() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\n");
        buf.extend_from_slice(format!("x-big: {}\r\n", "a".repeat(MAX_HEAD_BYTES)).as_bytes());
        assert!(parse(&mut buf).is_err());
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nx-a: 1\r\n");
        buf.extend_from_slice(&vec![b'y'; MAX_HEAD_BYTES + 1]);
        assert!(parse(&mut buf).is_err(), "an endless head is refused");
        let mut buf = BytesMut::from("SMTP ready\r\n\r\n");
        assert!(parse(&mut buf).is_err());
        let mut buf = BytesMut::from("HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert!(
            parse(&mut buf).is_err(),
            "a protocol switch was never asked for"
        );
        let mut buf = BytesMut::from(
            "HTTP/1.1 103 Early Hints\r\n\r\n"
                .repeat(MAX_INFORMATIONAL + 1)
                .as_str(),
        );
        assert!(parse(&mut buf).is_err(), "endless 1xx heads are refused");
    }

    #[test]
    fn the_body_framing_follows_rfc_9112() {
        let post = Method::POST;
        let framing = |text: &str| Framing::of(&post, &mut head_of(text));
        assert!(matches!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n").unwrap(),
            Some(Framing::Length(5))
        ));
        assert!(framing("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .unwrap()
            .is_none());
        assert!(framing("HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .is_none());
        assert!(matches!(
            framing(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n"
            )
            .unwrap(),
            Some(Framing::Chunked(Chunk::Size))
        ));
        assert!(matches!(
            framing("HTTP/1.1 200 OK\r\n\r\n").unwrap(),
            Some(Framing::UntilClose)
        ));
        assert!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n").is_err()
        );
        assert!(framing("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").is_err());
        // Both framings: the chunked one reads the body, and the connection goes after it.
        let mut head =
            head_of("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n");
        assert!(matches!(
            Framing::of(&post, &mut head).unwrap(),
            Some(Framing::Chunked(_))
        ));
        assert!(!head.keep_alive);
        let mut head = head_of("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n");
        assert!(
            Framing::of(&Method::HEAD, &mut head).unwrap().is_none(),
            "HEAD has no body"
        );
        assert!(
            framing("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n")
                .unwrap()
                .is_none()
        );
        assert!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n").is_err()
        );
    }

    #[test]
    fn a_chunked_body_decodes_whatever_the_reads_split() {
        let wire = b"5;ext=1\r\nHello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in 1..wire.len() {
            let (data, done) = decode_in_steps(Framing::Chunked(Chunk::Size), wire, step);
            assert!(done, "step {step}");
            assert_eq!(data, b"Hello, world", "step {step}");
        }
        // What follows the body stays in the buffer (the next response on the connection).
        let mut buf = BytesMut::from(&wire[..]);
        let mut framing = Framing::Chunked(Chunk::Size);
        let (data, done) = framing.decode(&mut buf, false).unwrap();
        assert_eq!((&data[..], done), (&b"Hello, world"[..], true));
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn a_bad_or_cut_chunked_body_is_an_error() {
        let endless_trailers = format!("0\r\n{}", "x-t: 1\r\n".repeat(MAX_TRAILERS as usize + 1));
        for wire in [
            &b"zz\r\nabc\r\n"[..],
            b"3\r\nabcdef\r\n",
            b"11111111111111111\r\n",
            b"+5\r\nabcde\r\n",
            endless_trailers.as_bytes(),
        ] {
            let mut buf = BytesMut::from(wire);
            assert!(
                Framing::Chunked(Chunk::Size)
                    .decode(&mut buf, false)
                    .is_err(),
                "{wire:?}"
            );
        }
        let mut buf = BytesMut::from(&vec![b'1'; MAX_CHUNK_LINE + 1][..]);
        assert!(Framing::Chunked(Chunk::Size)
            .decode(&mut buf, false)
            .is_err());
        let mut buf = BytesMut::from("5\r\nHel");
        assert!(Framing::Chunked(Chunk::Size)
            .decode(&mut buf, true)
            .is_err());
    }

    #[test]
    fn a_length_body_takes_its_length_and_a_cut_one_is_an_error() {
        let (data, done) = decode_in_steps(Framing::Length(5), b"Hello, next", 3);
        assert_eq!((data.as_slice(), done), (&b"Hello"[..], true));
        let mut buf = BytesMut::from("Hel");
        assert!(Framing::Length(5).decode(&mut buf, true).is_err());
        let mut buf = BytesMut::from("all of it");
        let (data, done) = Framing::UntilClose.decode(&mut buf, true).unwrap();
        assert_eq!((&data[..], done), (&b"all of it"[..], true));
    }
}
