//! How sled's size on disk answers deletes, for the retention design (`recorder/retention.rs`):
//! writes ~1 KB values under time-ordered keys the way the recorder writes runs (same sled
//! mode and flush interval), then
//!
//! 1. steady state: keeps a window of `live` values, deleting the oldest as new ones come;
//! 2. a burst of deletes: drops half of the window at once, with no writes after it;
//! 3. writes again after the burst.
//!
//! and prints, as it goes, `Db::size_on_disk()` and the directory's allocated size (what `du`
//! says). Prints figures, passes or fails nothing.
//!
//! Usage: `sled_space [live] [total writes] [data dir]` (defaults 100000, 500000, a fresh
//! temporary directory).

use std::path::Path;
use std::time::{Duration, Instant};

// For `du` alone: the synthetic runs are not used here.
#[allow(dead_code)]
mod common;

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn report(label: &str, db: &sled::Db, dir: &Path, live: u64, started: Instant) {
    let size = db.size_on_disk().unwrap_or(0);
    println!(
        "{label:>28}: live {live:>7} ({:>8}), size_on_disk {:>9}, du {:>9}, t {:>6.1} s",
        mb(live * 1000),
        mb(size),
        mb(common::du(dir)),
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let live: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let total: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(500_000);
    let temp = tempfile::tempdir().expect("a temporary directory");
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temp.path().to_path_buf());
    let db = sled::Config::new()
        .path(&dir)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(Some(200))
        .open()
        .expect("sled opens");
    let tree = db.open_tree("runs").expect("a tree");
    let mut rng = fastrand::Rng::with_seed(7);
    let value = |rng: &mut fastrand::Rng| -> Vec<u8> {
        // JSON-like text: compresses as badly as a run does (sled does not compress here).
        (0..1000).map(|_| rng.alphanumeric() as u8).collect()
    };
    let started = Instant::now();
    let (mut next, mut oldest) = (0u128, 0u128);
    println!("window {live} values of 1000 bytes, {total} writes in all, in {dir:?}");
    while next < total as u128 {
        tree.insert(next.to_be_bytes(), value(&mut rng))
            .expect("insert");
        next += 1;
        if next - oldest > u128::from(live) {
            tree.remove(oldest.to_be_bytes()).expect("remove");
            oldest += 1;
        }
        if next % (total as u128 / 10).max(1) == 0 {
            report(
                &format!("steady, {next} written"),
                &db,
                &dir,
                (next - oldest) as u64,
                started,
            );
        }
    }
    db.flush().expect("flush");
    report(
        "steady, flushed",
        &db,
        &dir,
        (next - oldest) as u64,
        started,
    );
    // A burst: half of the window goes at once.
    let half = oldest + (next - oldest) / 2;
    while oldest < half {
        tree.remove(oldest.to_be_bytes()).expect("remove");
        oldest += 1;
    }
    db.flush().expect("flush");
    report(
        "half deleted, flushed",
        &db,
        &dir,
        (next - oldest) as u64,
        started,
    );
    for second in [1, 5, 10] {
        std::thread::sleep(Duration::from_secs(second));
        report(
            &format!("idle after burst +{second}s"),
            &db,
            &dir,
            (next - oldest) as u64,
            started,
        );
    }
    // Writes again, keeping the smaller window: does the freed space get reused?
    let window = next - oldest;
    for i in 0..u128::from(live) {
        tree.insert(next.to_be_bytes(), value(&mut rng))
            .expect("insert");
        next += 1;
        tree.remove(oldest.to_be_bytes()).expect("remove");
        oldest += 1;
        if (i + 1) % (u128::from(live) / 4).max(1) == 0 {
            report(
                &format!("rewrite {} of window", i + 1),
                &db,
                &dir,
                window as u64,
                started,
            );
        }
    }
    db.flush().expect("flush");
    report("end, flushed", &db, &dir, window as u64, started);
    drop(tree);
    drop(db);
    let db = sled::Config::new()
        .path(&dir)
        .mode(sled::Mode::HighThroughput)
        .open()
        .expect("sled opens again");
    report("reopened", &db, &dir, window as u64, started);
}
