//! What opening a sled database costs in resident memory, in a process of its own (this file
//! is its own test binary, with one test): sled's process-wide metrics (~40 histograms of 64k
//! counters, ~21 MB) must stay untouched pages, as the `miri_optimizations` feature allocates
//! them (the workspace's `Cargo.toml`). A resident-memory figure, not a timing.

/// This process's resident anonymous memory, in bytes (Linux).
fn resident_anonymous() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("an RssAnon line");
    kb * 1024
}

#[test]
fn opening_sled_leaves_its_metrics_unresident() {
    let dir = tempfile::tempdir().unwrap();
    let before = resident_anonymous();
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(1024 * 1024)
        .open()
        .unwrap();
    db.open_tree("t").unwrap().insert(b"k", b"v").unwrap();
    let grown = resident_anonymous().saturating_sub(before);
    assert!(
        grown < 12 * 1024 * 1024,
        "opening sled made {} MB resident (its metrics are ~21 MB when written)",
        grown / (1024 * 1024)
    );
}
