//! What the run stats cost the recorder: the time to add a run to the in-memory aggregates
//! (on the recorder's thread, after the run is stored; the request path pays nothing) and the
//! time of the periodic batch write, per run. Prints figures, passes or fails nothing.
//!
//! Usage: `cargo run --release -p flowgate-actors --example stats_cost [runs]` (200,000 by
//! default), in batches of 64 runs as the recorder takes them, over 50 agents, three sources
//! and a few hours.

use std::time::{Duration, Instant};

use flowgate_actors::recorder::run::{CacheStatus, RunRecord, RunSource, RunStatus};
use flowgate_actors::stats::RunStats;
use flowgate_actors::storage::sled::SledStorage;
use serde_json::json;

fn synthetic(rng: &mut fastrand::Rng) -> RunRecord {
    let mut run: RunRecord = serde_json::from_value(json!({
        "id": uuid::Uuid::now_v7(), "tenant": "default", "agent": format!("agent-{}", rng.u8(..50)),
        "created_at": "2026-01-01T00:00:00.000Z", "status": "success",
        "requested_model": "m", "model": "m", "provider": "p", "provider_model": "pm",
        "version_id": null, "stream": false, "request": null, "input": null, "output": null,
        "attempts": [], "usage": {"prompt_tokens": 120, "completion_tokens": 40},
        "cost_usd": 0.0004, "duration_seconds": 1.0, "cache": "miss", "error": null,
        "metadata": null, "feedback_token": "x", "source_run_id": null
    }))
    .expect("a run");
    run.duration_seconds = 10f64.powf(rng.f64() * 3.0 - 2.0);
    run.status = match rng.u8(..100) {
        0..=2 => RunStatus::Error,
        3 => RunStatus::Cancelled,
        _ => RunStatus::Success,
    };
    run.cache = if rng.u8(..10) == 0 {
        CacheStatus::Hit
    } else {
        CacheStatus::Miss
    };
    run.source = match rng.u8(..20) {
        0 => RunSource::Playground,
        1 => RunSource::Replay,
        _ => RunSource::Api,
    };
    run
}

#[actix_rt::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let storage = SledStorage::open(dir.path(), Duration::from_millis(500)).expect("the store");
    let stats = RunStats::new(storage.storage().stats);
    let mut rng = fastrand::Rng::with_seed(1);
    let runs: Vec<RunRecord> = (0..n).map(|_| synthetic(&mut rng)).collect();

    let mut observing = Duration::ZERO;
    let mut writing = Duration::ZERO;
    let mut writes = 0;
    // The recorder writes the sums every half flush interval; here every 512 runs, as a busy
    // gateway would (about 5,000 runs a second: the default interval is 200 ms).
    for (i, batch) in runs.chunks(64).enumerate() {
        let started = Instant::now();
        stats.observe(batch);
        observing += started.elapsed();
        if i % 8 == 7 {
            let started = Instant::now();
            stats.write_pending().await.expect("written");
            writing += started.elapsed();
            writes += 1;
        }
    }
    let started = Instant::now();
    stats.write_pending().await.expect("written");
    writing += started.elapsed();
    writes += 1;

    let per_run = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!("runs: {n}, in batches of 64; {writes} batch writes");
    println!(
        "aggregate update (recorder thread, in memory): {:.3} µs per run",
        per_run(observing)
    );
    println!(
        "batch write to sled (every 512 runs here):      {:.3} µs per run ({:.2} ms per write)",
        per_run(writing),
        writing.as_secs_f64() * 1e3 / writes as f64
    );
}
