//! How the data directory and the RSS follow the runs stored in sled, without the rest of the
//! gateway: writes N synthetic runs (`common::synthetic`) in batches of 100 with their stats,
//! the way the recorder does, keeps only the newest `keep` (pruned in batches of 2,000, the
//! way retention does; `all`: nothing pruned), and prints the runs kept, the size on disk and
//! the RSS every 100,000.
//!
//! Usage: `sled_growth <runs> <keep|all> <dir> [sled_cache_mb] [nostats]` (the cache: the
//! store's default unless given).

use std::time::Duration;

use flowgate_actors::stats::{Aggregate, RunView};
use flowgate_actors::storage::sled::{SledStorage, DEFAULT_CACHE_BYTES};
use flowgate_actors::storage::PruneBatch;

mod common;

#[actix_rt::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: sled_growth <runs> <keep|all> <dir> [sled_cache_mb] [nostats]";
    let (n, keep, dir) = match &args[..] {
        [n, keep, dir, ..] => (n, keep, dir),
        _ => panic!("{usage}"),
    };
    let n: u64 = n.parse().expect("runs: a number");
    let keep: Option<u64> = (keep != "all").then(|| keep.parse().expect("keep: a number or all"));
    let cache = match args.get(3).filter(|a| *a != "nostats") {
        Some(mb) => mb.parse::<u64>().expect("sled_cache_mb: a number") << 20,
        None => DEFAULT_CACHE_BYTES,
    };
    let with_stats = !args.iter().skip(3).any(|a| a == "nostats");
    let storage = SledStorage::open_with_cache(dir.as_ref(), Duration::from_millis(200), cache)
        .expect("the store")
        .storage();
    println!("runs kept disk_MB rss_MB");
    let mut rng = fastrand::Rng::with_seed(7);
    let mut batch = Vec::with_capacity(100);
    for i in 0..n {
        batch.push(Box::new(common::synthetic(i, &mut rng)));
        if batch.len() == 100 {
            storage.runs.insert_batch(&batch).await.expect("a batch");
            if with_stats {
                let mut sums: std::collections::HashMap<_, Aggregate> = Default::default();
                for run in &batch {
                    let view = RunView::from(run.as_ref());
                    sums.entry(view.key()).or_default().add(&view);
                }
                let sums: Vec<_> = sums.into_iter().collect();
                storage.stats.add_batch(&sums).await.expect("stats");
            }
            batch.clear();
        }
        if let Some(keep) = keep.filter(|_| (i + 1) % 2_000 == 0) {
            let stored = storage.runs.footprint().await.expect("footprint").runs;
            if stored > keep {
                let batch = PruneBatch {
                    before_ms: u64::MAX / 2,
                    max_runs: (stored - keep) as usize,
                };
                storage.runs.prune(batch).await.expect("prune");
            }
        }
        if (i + 1) % 100_000 == 0 {
            let kept = storage.runs.footprint().await.expect("footprint").runs;
            let disk = storage.runs.size_on_disk().await.expect("size") >> 20;
            println!("{} {kept} {disk} {}", i + 1, common::rss_mb());
        }
    }
}
