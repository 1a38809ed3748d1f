//! How flowgate's memory follows the runs stored in sled, without the rest of the gateway:
//! writes N synthetic runs (`common::synthetic`) in batches of 100, the way the recorder does,
//! and prints the process's RSS every 100,000. Usage: `sled_rss [runs] [sled_cache_mb] <dir>`.

use std::time::Duration;

use flowgate_actors::storage::sled::SledStorage;

mod common;

#[actix_rt::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [n, cache_mb, dir] = &args[..] else {
        panic!("usage: sled_rss <runs> <sled_cache_mb> <dir>");
    };
    let n: u64 = n.parse().expect("runs: a number");
    let cache_mb: u64 = cache_mb.parse().expect("sled_cache_mb: a number");
    let storage =
        SledStorage::open_with_cache(dir.as_ref(), Duration::from_millis(200), cache_mb << 20)
            .expect("the store")
            .storage();
    println!("runs rss_MB");
    let mut rng = fastrand::Rng::with_seed(7);
    let mut batch = Vec::with_capacity(100);
    for i in 0..n {
        batch.push(Box::new(common::synthetic(i, &mut rng)));
        if batch.len() == 100 {
            storage.runs.insert_batch(&batch).await.expect("a batch");
            batch.clear();
        }
        if (i + 1) % 100_000 == 0 {
            println!("{} {}", i + 1, common::rss_mb());
        }
    }
}
