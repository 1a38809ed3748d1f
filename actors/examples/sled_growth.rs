//! How the data directory follows the runs stored in sled under retention, without the rest of
//! the gateway: writes N synthetic runs (`common::synthetic`) in batches of 100 with their
//! stats, the way the recorder does, keeps only the newest `keep` (pruned in batches of 2,000,
//! the way retention does), and prints the size on disk, the runs kept and the RSS every
//! 100,000. Usage: `sled_growth <runs> <keep> <dir> [stats|nostats]`.

use std::time::Duration;

use flowgate_actors::stats::{Aggregate, RunView};
use flowgate_actors::storage::sled::SledStorage;
use flowgate_actors::storage::PruneBatch;

mod common;

#[actix_rt::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (n, keep, dir) = match &args[..] {
        [n, keep, dir, ..] => (n, keep, dir),
        _ => panic!("usage: sled_growth <runs> <keep> <dir> [stats|nostats]"),
    };
    let with_stats = args.get(3).is_none_or(|m| m != "nostats");
    let n: u64 = n.parse().expect("runs: a number");
    let keep: u64 = keep.parse().expect("keep: a number");
    let storage = SledStorage::open(dir.as_ref(), Duration::from_millis(200))
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
        if (i + 1) % 2_000 == 0 {
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
