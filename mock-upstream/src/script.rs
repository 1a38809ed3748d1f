//! Executing the [`Directives`] of a request, independent of the provider's wire format:
//! delays, hangs, scripted failures (with per-model-string `fail_first` counters), and the
//! paced / cut-off response body stream.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use crate::directives::Directives;
use crate::state::State;

/// How long `hang` sleeps.
const HANG: Duration = Duration::from_secs(3600);
/// Pause before aborting a cut stream, so the chunks already produced reach the socket
/// before the connection is torn down.
const CUT_FLUSH: Duration = Duration::from_millis(30);

/// What to do with a request once its directives ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answer normally.
    Proceed,
    /// Answer with this error status (the provider formats the body).
    Fail(u16),
    /// Answer 200 with a body that is not valid JSON.
    Malformed,
}

/// Runs the pre-response part of the script: counts the attempt for `fail_first`, waits
/// `delay_ms`, hangs if asked, and decides the [`Outcome`]. `model` is the full model
/// string (the `fail_first` counter key).
pub(crate) async fn run(d: &Directives, model: &str, state: &State) -> Outcome {
    let failing_status = d.error_status().filter(|_| match d.fail_first {
        Some(n) => state.next_attempt(model) < n,
        None => true,
    });
    if let Some(delay) = d.delay() {
        tokio::time::sleep(delay).await;
    }
    if d.hang {
        tokio::time::sleep(HANG).await;
    }
    if let Some(status) = failing_status {
        Outcome::Fail(status)
    } else if d.malformed {
        Outcome::Malformed
    } else {
        Outcome::Proceed
    }
}

/// The role of one piece of a response body, for `cut_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Preamble (e.g. the role chunk); never cut before.
    Head,
    /// A content-bearing chunk; `cut_after=N` lets N of them through.
    Content,
    /// Closing pieces (finish chunk, usage, `[DONE]`); a cut always happens before them.
    Tail,
}

/// Index of the first piece not sent when cutting after `n` content pieces.
fn cut_index(pieces: &[(Piece, Bytes)], n: usize) -> usize {
    let mut content_seen = 0;
    for (i, (kind, _)) in pieces.iter().enumerate() {
        match kind {
            Piece::Tail => return i,
            Piece::Content if content_seen == n => return i,
            Piece::Content => content_seen += 1,
            Piece::Head => {}
        }
    }
    pieces.len()
}

struct Pacer {
    pieces: std::vec::IntoIter<(Piece, Bytes)>,
    sent: usize,
    cut_at: Option<usize>,
    ttfb: Option<Duration>,
    chunk_delay: Option<Duration>,
    done: bool,
}

/// The response body as a stream of `pieces`, honouring `ttfb_ms` (before the first
/// piece), `chunk_delay_ms` (between pieces) and `cut_after` (the stream ends with an I/O
/// error, which makes the server abort the connection mid-body).
pub(crate) fn paced_body(
    pieces: Vec<(Piece, Bytes)>,
    d: &Directives,
) -> impl Stream<Item = Result<Bytes, io::Error>> + 'static {
    let pacer = Pacer {
        cut_at: d.cut_after.map(|n| cut_index(&pieces, n)),
        pieces: pieces.into_iter(),
        sent: 0,
        ttfb: d.ttfb(),
        chunk_delay: d.chunk_delay(),
        done: false,
    };
    futures::stream::unfold(pacer, |mut p| async move {
        if p.done {
            return None;
        }
        if p.cut_at == Some(p.sent) {
            p.done = true;
            tokio::time::sleep(CUT_FLUSH).await;
            let error = io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "mock upstream: connection cut by the cut_after directive",
            );
            return Some((Err(error), p));
        }
        let (_, bytes) = p.pieces.next()?;
        let delay = if p.sent == 0 { p.ttfb } else { p.chunk_delay };
        if let Some(delay) = delay.filter(|d| !d.is_zero()) {
            tokio::time::sleep(delay).await;
        }
        p.sent += 1;
        Some((Ok(bytes), p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(kinds: &[Piece]) -> Vec<(Piece, Bytes)> {
        kinds.iter().map(|k| (*k, Bytes::new())).collect()
    }

    #[test]
    fn cut_positions() {
        use Piece::*;
        let p = pieces(&[Head, Content, Content, Content, Tail, Tail]);
        assert_eq!(cut_index(&p, 0), 1);
        assert_eq!(cut_index(&p, 2), 3);
        assert_eq!(cut_index(&p, 3), 4);
        assert_eq!(cut_index(&p, 10), 4);
        assert_eq!(cut_index(&pieces(&[Head, Head]), 1), 2);
    }
}
