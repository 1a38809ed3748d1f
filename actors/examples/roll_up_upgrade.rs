//! Times the upgrade of a sled data directory to the daily cost roll-up: removes the roll-up
//! (`stats_days`) from a directory (use a copy: `bench/ui.sh`'s, say), opens the store — which
//! fills it at once from the hourly aggregates under "(before upgrade)" — and waits for the
//! background pass to put every run under its model. Prints how long the open took, how long
//! the pass took, and whether the roll-up then equals the one the recorder had written.
//!
//! Usage: `roll_up_upgrade <data dir>` (the tenant `default`; the directory is changed).

use std::time::{Duration, Instant};

use flowgate_actors::recorder::run::RunSource;
use flowgate_actors::stats::{DayKey, DayTotals, BEFORE_UPGRADE};
use flowgate_actors::storage::sled::SledStorage;
use flowgate_actors::storage::Storage;

const SOURCES: [RunSource; 4] = [
    RunSource::Api,
    RunSource::Playground,
    RunSource::Replay,
    RunSource::Benchmark,
];

/// The tenant's rows, sorted, with the cost in micro-dollars (sums in another order differ in
/// the last bits).
async fn rows(storage: &Storage) -> Vec<(u32, String, String, String, u64, u64, i64)> {
    let found: Vec<(DayKey, DayTotals)> = storage
        .stats
        .days("default", &SOURCES, 0..u32::MAX, usize::MAX)
        .await
        .expect("the roll-up");
    let mut rows: Vec<_> = found
        .into_iter()
        .map(|(k, t)| {
            (
                k.day,
                k.agent,
                k.source.as_str().to_string(),
                k.model,
                t.runs,
                t.errors,
                (t.cost_usd * 1e6).round() as i64,
            )
        })
        .collect();
    rows.sort();
    rows
}

#[actix_rt::main]
async fn main() {
    let dir: std::path::PathBuf = std::env::args()
        .nth(1)
        .expect("usage: roll_up_upgrade <data dir>")
        .into();
    let written = {
        let storage = SledStorage::open(&dir, Duration::from_millis(500))
            .expect("the store")
            .storage();
        rows(&storage).await
    };
    // sled lets go of the directory's lock a moment after the last handle.
    std::thread::sleep(Duration::from_secs(2));
    {
        let db = sled::Config::new().path(&dir).open().expect("sled");
        db.drop_tree("stats_days").expect("drop the roll-up");
        db.flush().expect("flush");
    }
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let storage = SledStorage::open(&dir, Duration::from_millis(500))
        .expect("the store")
        .storage();
    let opened = started.elapsed();
    let first = rows(&storage).await;
    let runs = |rows: &[(u32, String, String, String, u64, u64, i64)]| {
        rows.iter().map(|r| r.4).sum::<u64>()
    };
    println!(
        "opened in {:.2} s: {} rows, {} runs, {} of them under \"{BEFORE_UPGRADE}\"",
        opened.as_secs_f64(),
        first.len(),
        runs(&first),
        runs(
            &first
                .iter()
                .filter(|r| r.3 == BEFORE_UPGRADE)
                .cloned()
                .collect::<Vec<_>>()
        )
    );
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = rows(&storage).await;
        if now.iter().all(|r| r.3 != BEFORE_UPGRADE) {
            println!(
                "every run under its model {:.1} s after the open; the roll-up equals the \
                 recorder's: {}",
                started.elapsed().as_secs_f64(),
                now == written
            );
            break;
        }
    }
}
