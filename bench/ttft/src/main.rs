//! `flowgate-ttft`: streamed chat completions sent at a fixed rate (open loop), each timed to its
//! first content token and to its end. `bench/run.sh`'s `ttft` scenario runs it against the mock
//! upstream directly and through flowgate, and reports what flowgate adds to the time to first
//! token.
//!
//! Open loop: request `i` is due at `start + i / rate` whether or not the earlier ones have
//! answered (up to `--max-in-flight` open at once), so a slow server cannot lower the rate.
//! Its times are measured from when it went out. How late it went out against its schedule is
//! reported apart (`send_lag_ms`): the tool never waits for the server, so that lateness is the
//! tool's own (tokio's timer wakes on whole milliseconds, so at 1000 req/s every request leaves
//! up to a millisecond late, by an offset that differs from run to run), and counting it as
//! the server's latency would blur a sub-millisecond difference between two servers.
//!
//! The first token is the first `"content":"…"` with at least one character in the body, so
//! a leading role-only chunk (`"content":""`) does not count: what a user sees appear.
//!
//! Prints one JSON object on stdout (the figures in milliseconds) and a line on stderr.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(about = "Streamed chat completions at a fixed rate; time to first token and to the end")]
struct Args {
    /// Base URL of the server (`http://127.0.0.1:PORT`); requests go to `/v1/chat/completions`.
    #[arg(long)]
    url: String,
    /// The `model` of each request.
    #[arg(long)]
    model: String,
    /// Requests per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds sent first at the same rate and not measured (connections open, caches warm).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Requests in flight at most; a request due while this many are open is not sent and is
    /// counted as `skipped` (the server is far behind the rate).
    #[arg(long, default_value_t = 5000)]
    max_in_flight: usize,
    /// A request still unanswered after this many seconds is counted as an error.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

/// One request: how late it went out, and how it ended.
struct Sample {
    /// Request number (the first `warmup` ones are not measured).
    i: u64,
    lag: Duration,
    outcome: Outcome,
}

/// How one request ended.
enum Outcome {
    /// A 200 stream that ended with `data: [DONE]`: time to the first token, and to the end.
    Done { first: Duration, end: Duration },
    /// Any other answer or failure, by kind (`HTTP 502`, `no [DONE]`, `connect`, …).
    Failed(String),
}

/// Requests a run may send at most (warm-up included): each keeps a sample in memory.
const MAX_REQUESTS: f64 = 10_000_000.0;

/// How many requests a run sends: (warm-up, all). A rate, duration or timeout that is not a
/// positive number, a negative warm-up, no room in flight or more than [`MAX_REQUESTS`] is an
/// error that says which.
fn plan(args: &Args) -> Result<(u64, u64), String> {
    let positive = |v: f64| v.is_finite() && v > 0.0;
    for (name, value) in [
        ("--rate", args.rate),
        ("--duration", args.duration),
        ("--timeout", args.timeout),
    ] {
        if !positive(value) {
            return Err(format!("{name} must be a positive number, not {value}"));
        }
    }
    if !(args.warmup.is_finite() && args.warmup >= 0.0) {
        return Err(format!("--warmup must be 0 or more, not {}", args.warmup));
    }
    if args.max_in_flight == 0 {
        return Err("--max-in-flight must be 1 or more".into());
    }
    let warmup = (args.rate * args.warmup).round();
    let total = warmup + (args.rate * args.duration).round();
    if total > MAX_REQUESTS {
        return Err(format!(
            "--rate x (--warmup + --duration) is {total} requests; at most {MAX_REQUESTS} a run"
        ));
    }
    Ok((warmup as u64, total as u64))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&args))?;
    println!("{report}");
    Ok(())
}

async fn run(args: &Args) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let (warmup, total) = plan(args)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs_f64(args.timeout))
        .build()?;
    let url = format!("{}/v1/chat/completions", args.url.trim_end_matches('/'));
    let body = Bytes::from(
        json!({
            "model": args.model,
            "messages": [{"role": "user", "content": "Hello, benchmark"}],
            "stream": true,
            // What flowgate asks of its upstream, so that both answer the same stream.
            "stream_options": {"include_usage": true},
        })
        .to_string(),
    );

    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let mut in_flight = 0usize;
    let mut skipped = 0u64;
    let mut skipped_all = 0u64;
    let mut results: Vec<Sample> = Vec::with_capacity(total as usize);
    let start = Instant::now() + Duration::from_millis(10);
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / args.rate);
        // Collect what has finished while waiting for the next request's turn.
        let sleep = tokio::time::sleep_until(due.into());
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                () = &mut sleep => break,
                Some(done) = rx.recv() => {
                    in_flight -= 1;
                    results.push(done);
                }
            }
        }
        // What finished while the timer fired, before counting what is open.
        while let Ok(done) = rx.try_recv() {
            in_flight -= 1;
            results.push(done);
        }
        if in_flight >= args.max_in_flight {
            skipped_all += 1;
            if i >= warmup {
                skipped += 1;
            }
            continue;
        }
        in_flight += 1;
        let request = client
            .post(&url)
            .header("authorization", "Bearer bench")
            .header("content-type", "application/json")
            .body(body.clone());
        let tx = tx.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            let outcome = one(request, sent).await;
            let lag = sent.saturating_duration_since(due);
            let _ = tx.send(Sample { i, lag, outcome });
        });
    }
    // Only the tasks hold senders now: if one of them dies, `recv` ends instead of waiting.
    drop(tx);
    while in_flight > 0 {
        match rx.recv().await {
            Some(done) => {
                in_flight -= 1;
                results.push(done);
            }
            None => break,
        }
    }
    let elapsed = start.elapsed();

    let mut first = Vec::new();
    let mut end = Vec::new();
    let mut lags = Vec::new();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for Sample { i, lag, outcome } in results {
        if i < warmup {
            continue;
        }
        lags.push(lag);
        match outcome {
            Outcome::Done { first: f, end: e } => {
                first.push(f);
                end.push(e);
            }
            Outcome::Failed(kind) => *failures.entry(kind).or_default() += 1,
        }
    }
    let sent = total - warmup - skipped;
    let report = json!({
        "url": args.url,
        "model": args.model,
        "rate": args.rate,
        "seconds": args.duration,
        "sent": sent,
        "sent_with_warmup": total - skipped_all,
        "ok": first.len(),
        "skipped": skipped,
        "failures": failures,
        "first_token_ms": percentiles(&mut first),
        "end_ms": percentiles(&mut end),
        "send_lag_ms": percentiles(&mut lags),
        "wall_seconds": elapsed.as_secs_f64(),
    });
    eprintln!(
        "{}: {sent} sent, {} ok, {skipped} skipped, {} failed; first token p50 {} p99 {} ms; end p50 {} p99 {} ms",
        args.url,
        report["ok"],
        failures.values().sum::<u64>(),
        report["first_token_ms"]["p50"],
        report["first_token_ms"]["p99"],
        report["end_ms"]["p50"],
        report["end_ms"]["p99"],
    );
    Ok(report)
}

/// Sends one request and reads its stream to the end; times from `sent`.
async fn one(request: reqwest::RequestBuilder, sent: Instant) -> Outcome {
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(error_kind(&e)),
    };
    if response.status() != reqwest::StatusCode::OK {
        return Outcome::Failed(format!("HTTP {}", response.status().as_u16()));
    }
    let mut body = response.bytes_stream();
    let mut scanner = FirstToken::default();
    let mut first = None;
    let mut tail: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(error_kind(&e)),
        };
        if first.is_none() && scanner.feed(&chunk) {
            first = Some(sent.elapsed());
        }
        // Only the end matters for `[DONE]`: keep the last few bytes.
        tail.extend_from_slice(&chunk);
        if tail.len() > 64 {
            tail.drain(..tail.len() - 64);
        }
    }
    let end = sent.elapsed();
    if !ends_with_done(&tail) {
        return Outcome::Failed("no [DONE]".into());
    }
    match first {
        Some(first) => Outcome::Done { first, end },
        None => Outcome::Failed("no content".into()),
    }
}

fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else if e.is_body() || e.is_decode() {
        "body".into()
    } else {
        "request".into()
    }
}

fn ends_with_done(tail: &[u8]) -> bool {
    let text = String::from_utf8_lossy(tail);
    text.trim_end().ends_with("data: [DONE]")
}

/// Finds the first non-empty `"content":"` string in a body that arrives in pieces; a marker
/// split across two pieces is found too.
#[derive(Default)]
struct FirstToken {
    /// The end of the body so far, long enough to hold a marker cut by a piece boundary.
    carry: Vec<u8>,
}

impl FirstToken {
    const MARKERS: [&'static [u8]; 2] = [b"\"content\":\"", b"\"content\": \""];

    /// `true` once the body so far holds a content string with at least one character.
    fn feed(&mut self, piece: &[u8]) -> bool {
        self.carry.extend_from_slice(piece);
        let found = Self::MARKERS.iter().any(|marker| {
            self.carry.windows(marker.len()).enumerate().any(|(at, w)| {
                w == *marker
                    && self
                        .carry
                        .get(at + marker.len())
                        .is_some_and(|b| *b != b'"')
            })
        });
        let keep = Self::MARKERS[1].len();
        if self.carry.len() > keep {
            self.carry.drain(..self.carry.len() - keep);
        }
        found
    }
}

/// p50, p90, p99 and max in milliseconds (nearest rank); nulls when there are none.
fn percentiles(values: &mut [Duration]) -> serde_json::Value {
    values.sort_unstable();
    let at = |q: f64| -> serde_json::Value {
        if values.is_empty() {
            return serde_json::Value::Null;
        }
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        json!((values[rank - 1].as_secs_f64() * 1e6).round() / 1e3)
    };
    json!({ "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": at(1.0) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let base = [
            "flowgate-ttft",
            "--url",
            "http://127.0.0.1:1",
            "--model",
            "m",
        ];
        Args::try_parse_from(base.iter().chain(extra)).unwrap()
    }

    /// The tool against the mock upstream's real OpenAI stream, paced: every request is read
    /// to its first token and its `[DONE]`, and the warm-up is left out.
    #[test]
    fn a_paced_stream_is_timed_to_its_first_token_and_its_end() {
        let mock = flowgate_mock_upstream::MockUpstream::start();
        let a = args(&["--rate", "200", "--duration", "0.5", "--warmup", "0.1"]);
        let a = Args {
            url: mock.url(),
            model: "gpt-4o-mini;chunk_delay_ms=2".into(),
            ..a
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let report = runtime.block_on(run(&a)).unwrap();
        assert_eq!(report["sent"], json!(100));
        assert_eq!(report["sent_with_warmup"], json!(120));
        assert_eq!(report["ok"], json!(100), "{report}");
        assert_eq!(report["failures"], json!({}));
        let ms = |which: &str, q: &str| report[which][q].as_f64().unwrap();
        // Each request's first token comes before its end, so each percentile does too.
        for q in ["p50", "p99", "max"] {
            assert!(ms("first_token_ms", q) > 0.0);
            assert!(ms("first_token_ms", q) <= ms("end_ms", q), "{q}: {report}");
        }
        // The mock's stream: role, two content chunks, finish, usage, [DONE], 2 ms apart.
        let end = ms("end_ms", "p50");
        assert!(end >= 8.0, "the end comes after the paced chunks: {report}");
    }

    #[test]
    fn the_defaults_plan_twelve_thousand_requests() {
        assert_eq!(plan(&args(&[])), Ok((2_000, 12_000)));
    }

    #[test]
    fn abusive_arguments_are_refused_with_their_name() {
        for (extra, named) in [
            (&["--timeout=-1"][..], "--timeout"),
            (&["--rate", "0"][..], "--rate"),
            (&["--rate", "NaN"][..], "--rate"),
            (&["--duration", "inf"][..], "--duration"),
            (&["--warmup=-2"][..], "--warmup"),
            (&["--max-in-flight", "0"][..], "--max-in-flight"),
            (&["--rate", "1e9", "--duration", "3600"][..], "requests"),
        ] {
            let err = plan(&args(extra)).unwrap_err();
            assert!(err.contains(named), "{extra:?}: {err}");
        }
    }

    #[test]
    fn the_first_token_is_the_first_non_empty_content() {
        let mut s = FirstToken::default();
        assert!(!s.feed(br#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#));
        assert!(s.feed(br#"data: {"choices":[{"delta":{"content":"Hel"}}]}"#));
    }

    #[test]
    fn a_marker_cut_between_pieces_is_found() {
        let mut s = FirstToken::default();
        assert!(!s.feed(br#"data: {"choices":[{"delta":{"cont"#));
        assert!(!s.feed(br#"ent":""#));
        assert!(s.feed(b"H"));
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = percentiles(&mut v);
        assert_eq!(p["p50"], json!(50.0));
        assert_eq!(p["p99"], json!(99.0));
        assert_eq!(p["max"], json!(100.0));
        assert_eq!(percentiles(&mut [])["p50"], serde_json::Value::Null);
    }

    #[test]
    fn done_is_read_at_the_end_only() {
        assert!(ends_with_done(b"...}\n\ndata: [DONE]\n\n"));
        assert!(!ends_with_done(b"data: [DONE]\n\ndata: {}\n\n"));
    }
}
