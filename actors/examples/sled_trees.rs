//! What a sled data directory holds, tree by tree: entries, key bytes and value bytes (what is
//! live; the files also hold what sled has not reclaimed yet). Usage: `sled_trees <dir>`, on a
//! data directory no gateway has open.

fn main() {
    let dir = std::env::args().nth(1).expect("usage: sled_trees <dir>");
    let db = sled::Config::new()
        .path(&dir)
        .cache_capacity(16 << 20)
        .open()
        .expect("the database");
    let (mut all_keys, mut all_values) = (0u64, 0u64);
    println!(
        "{:<28} {:>10} {:>12} {:>14}",
        "tree", "entries", "key_bytes", "value_bytes"
    );
    for name in db.tree_names() {
        let tree = db.open_tree(&name).expect("a tree");
        let (mut n, mut k, mut v) = (0u64, 0u64, 0u64);
        for entry in tree.iter() {
            let (key, value) = entry.expect("an entry");
            n += 1;
            k += key.len() as u64;
            v += value.len() as u64;
        }
        all_keys += k;
        all_values += v;
        println!(
            "{:<28} {n:>10} {k:>12} {v:>14}",
            String::from_utf8_lossy(&name)
        );
    }
    let disk = db.size_on_disk().unwrap_or(0);
    println!(
        "live {} MB of {} MB on disk",
        (all_keys + all_values) >> 20,
        disk >> 20
    );
}
