//! Retention at scale, on the embedded store: writes N synthetic runs (default 1,000,000) the
//! way the recorder does (batches of runs, then their stats), while retention passes run
//! beside the writes as the `Retention` actor runs them, with a size bound (default 200 MB).
//! Prints, as it goes, the runs kept, their footprint, sled's size on disk, the data
//! directory's allocated size (`du`) and the slowest batch write, so that one sees whether the
//! data directory stays within its bound and whether the writes ever wait for the pruning.
//! Prints figures, passes or fails nothing. Run through `bash bench/retention.sh`.
//!
//! Usage: `retention_bench [runs] [max MB]`; a max of 0 runs no retention (the baseline of the
//! slowest batch write).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowgate_actors::recorder::retention::{prune_pass, RetentionPolicy};
use flowgate_actors::recorder::run::RunRecord;
use flowgate_actors::stats::{Aggregate, RunView};
use flowgate_actors::storage::sled::SledStorage;

mod common;

use common::synthetic;

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let max_mb: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(bench(n, max_mb));
}

async fn bench(n: u64, max_mb: u64) {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let dir = temp.path().to_path_buf();
    let storage = SledStorage::open(&dir, Duration::from_millis(200))
        .expect("a store")
        .storage();
    let flush = Duration::from_millis(200);
    let policy = RetentionPolicy {
        max_age: None,
        max_bytes: (max_mb > 0).then_some(max_mb * 1024 * 1024),
        protect: RetentionPolicy::protect_for(flush),
    };
    println!(
        "{n} runs, max_disk_mb = {max_mb}, runs younger than {:?} protected, in {}",
        policy.protect,
        dir.display()
    );

    // Passes beside the writes, every second: the actor's growth check, and at this write rate
    // the store grows by more than a twentieth of the bound between two checks.
    let done = Arc::new(AtomicBool::new(false));
    let pruned = Arc::new(AtomicU64::new(0));
    let pass_ms = Arc::new(AtomicU64::new(0));
    let pruner = {
        let (runs, done, pruned, pass_ms) = (
            storage.runs.clone(),
            done.clone(),
            pruned.clone(),
            pass_ms.clone(),
        );
        let policy = policy.clone();
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) && !policy.keeps_everything() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let started = Instant::now();
                match prune_pass(runs.as_ref(), &policy, now_ms()).await {
                    Ok(report) => {
                        pruned.fetch_add(report.by_size, Ordering::Relaxed);
                        pass_ms.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                    Err(e) => println!("  pass failed: {e}"),
                }
            }
        })
    };

    let mut rng = fastrand::Rng::with_seed(11);
    let mut batch: Vec<Box<RunRecord>> = Vec::with_capacity(200);
    let started = Instant::now();
    let (mut slowest, mut max_du, mut max_size) = (Duration::ZERO, 0u64, 0u64);
    println!(
        "{:>9} {:>9} {:>13} {:>12} {:>9} {:>9} {:>12} {:>11} {:>7}",
        "written",
        "kept",
        "footprint MB",
        "size MB",
        "du MB",
        "pruned",
        "slowest ms",
        "pass max ms",
        "t s"
    );
    for i in 0..n {
        batch.push(Box::new(synthetic(i, &mut rng)));
        if batch.len() == 200 || i + 1 == n {
            // As the recorder writes: the runs, then their stats summed per hour.
            let t = Instant::now();
            storage.runs.insert_batch(&batch).await.expect("a batch");
            let mut sums: HashMap<_, Aggregate> = HashMap::new();
            for run in &batch {
                let view = RunView::from(run.as_ref());
                sums.entry(view.key()).or_default().add(&view);
            }
            let sums: Vec<_> = sums.into_iter().collect();
            storage.stats.add_batch(&sums).await.expect("stats");
            slowest = slowest.max(t.elapsed());
            batch.clear();
            // Yield as the recorder's actor does between batches.
            tokio::task::yield_now().await;
        }
        if (i + 1) % (n / 20).max(1) == 0 {
            let footprint = storage.runs.footprint().await.expect("footprint");
            let size = storage.runs.size_on_disk().await.expect("size");
            let dir_size = common::du(&dir);
            max_du = max_du.max(dir_size);
            max_size = max_size.max(size);
            println!(
                "{:>9} {:>9} {:>13.1} {:>12.1} {:>9.1} {:>9} {:>12.1} {:>11} {:>7.1}",
                i + 1,
                footprint.runs,
                mb(footprint.bytes),
                mb(size),
                mb(dir_size),
                pruned.load(Ordering::Relaxed),
                slowest.as_secs_f64() * 1000.0,
                pass_ms.swap(0, Ordering::Relaxed),
                started.elapsed().as_secs_f64()
            );
            slowest = Duration::ZERO;
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = pruner.await;
    storage.runs.flush().await.expect("flush");
    let footprint = storage.runs.footprint().await.expect("footprint");
    println!(
        "end: {} runs kept of {n}, {} pruned; largest size on disk {:.1} MB, largest du {:.1} MB, \
         bound {max_mb} MB: {}",
        footprint.runs,
        pruned.load(Ordering::Relaxed),
        mb(max_size),
        mb(max_du),
        match max_mb {
            0 => "none",
            _ if mb(max_du) <= max_mb as f64 => "within",
            _ => "OVER",
        }
    );
}
