//! Runs search at scale, on the embedded store: loads N synthetic runs (default 1,000,000) the
//! way the recorder writes them, then times the searches a UI makes. Prints figures, passes or
//! fails nothing. Run through `bash bench/search.sh` (release build).
//!
//! Usage: `search_bench [runs] [data dir]` (a fresh temporary directory by default; a directory
//! that already holds the runs is reused, so repeated runs skip the load).

use std::time::{Duration, Instant};

use flowgate_actors::recorder::run::RunRecord;
use flowgate_actors::search::{RunQuery, SearchBody};
use flowgate_actors::storage::sled::SledStorage;
use flowgate_actors::storage::SearchScope;
use serde_json::json;

mod common;

use common::{synthetic, MODELS};

fn query(field_queries: serde_json::Value, all_agents: bool) -> RunQuery {
    let body: SearchBody =
        serde_json::from_value(json!({ "field_queries": field_queries, "limit": 20 }))
            .expect("a search body");
    RunQuery::parse(body, all_agents).expect("a valid query")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// What the store's writes cost per run: the previous release's two trees (the run and its
/// agent list) against today's store with its search indexes, on `n` fresh runs each.
async fn write_cost(n: u64) {
    let runs: Vec<Box<RunRecord>> = {
        let mut rng = fastrand::Rng::with_seed(3);
        (0..n).map(|i| Box::new(synthetic(i, &mut rng))).collect()
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let db = sled::Config::new()
        .path(dir.path())
        .mode(sled::Mode::HighThroughput)
        .open()
        .expect("sled");
    let (by_id, by_agent) = (
        db.open_tree("runs").expect("a tree"),
        db.open_tree("runs_by_agent").expect("a tree"),
    );
    let started = Instant::now();
    let mut buf = Vec::with_capacity(4096);
    for run in &runs {
        buf.clear();
        serde_json::to_writer(&mut buf, run.as_ref()).expect("json");
        by_id
            .insert(run.id.as_bytes(), buf.as_slice())
            .expect("insert");
        let mut key = format!("{}\0{}\0", run.tenant, run.agent).into_bytes();
        key.extend_from_slice(run.id.as_bytes());
        by_agent.insert(key, &[] as &[u8]).expect("insert");
    }
    let before = started.elapsed();
    drop((by_id, by_agent, db));
    let dir = tempfile::tempdir().expect("a temp dir");
    let storage = SledStorage::open(dir.path(), Duration::from_millis(500)).expect("the store");
    let store = storage.storage().runs;
    let started = Instant::now();
    for batch in runs.chunks(256) {
        store.insert_batch(batch).await.expect("a batch");
    }
    let now = started.elapsed();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "store writes per run ({n} runs): previous release {:.1} µs, with search indexes {:.1} µs ({:.2}x)",
        per(before),
        per(now),
        now.as_secs_f64() / before.as_secs_f64()
    );
}

#[actix_rt::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("--write-cost") {
        write_cost(100_000).await;
        return;
    }
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map(|a| a.parse().expect("runs: a number"))
        .unwrap_or(1_000_000);
    let tmp;
    let dir = match args.next() {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            tmp = tempfile::tempdir().expect("a temp dir");
            tmp.path().to_path_buf()
        }
    };
    let storage = SledStorage::open(&dir, Duration::from_millis(500)).expect("the store");
    let runs = storage.storage().runs;
    let scope = SearchScope {
        tenant: "default".into(),
        agent: Some("support-bot".into()),
    };
    let have = runs
        .search(&scope, &query(json!([]), false))
        .await
        .expect("a search");
    // A loaded store counts past the count's bound.
    if have.count_is_exact {
        println!("loading {n} runs into {}", dir.display());
        let mut rng = fastrand::Rng::with_seed(7);
        // Only the store's work is timed, not making up the runs.
        let mut took = Duration::ZERO;
        let mut batch = Vec::with_capacity(1000);
        for i in 0..n {
            batch.push(Box::new(synthetic(i, &mut rng)));
            if batch.len() == 1000 || i + 1 == n {
                let started = Instant::now();
                runs.insert_batch(&batch).await.expect("a batch");
                took += started.elapsed();
                batch.clear();
            }
            if (i + 1).is_multiple_of(200_000) {
                println!(
                    "  {} runs, {:.0} runs/s of store work",
                    i + 1,
                    (i + 1) as f64 / took.as_secs_f64()
                );
            }
        }
        let started = Instant::now();
        runs.flush().await.expect("a flush");
        took += started.elapsed();
        println!(
            "loaded {n} runs in {:.1} s: {:.1} µs of store work per run (the recorder's cost, indexes included)",
            took.as_secs_f64(),
            took.as_secs_f64() * 1e6 / n as f64
        );
    } else {
        println!("reusing the runs in {}", dir.display());
    }

    let mut rng = fastrand::Rng::with_seed(11);
    let mut filtered = Vec::new();
    for _ in 0..200 {
        let model = MODELS[rng.usize(..MODELS.len())];
        let status = ["success", "error", "cancelled"][rng.usize(..3)];
        let q = query(
            json!([{"field": "model", "operator": "is", "values": [model]},
                   {"field": "status", "operator": "is", "values": [status]}]),
            false,
        );
        let started = Instant::now();
        let page = runs.search(&scope, &q).await.expect("a search");
        filtered.push(started.elapsed());
        assert!(page.items.len() <= 20);
    }
    filtered.sort();
    println!(
        "filtered page (agent + model + status, newest 20), 200 queries: p50 {}  p99 {}  max {}   target p99 < 50 ms",
        ms(percentile(&filtered, 0.5)),
        ms(percentile(&filtered, 0.99)),
        ms(*filtered.last().expect("timings"))
    );

    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..50 {
        let body: SearchBody = serde_json::from_value(json!({
            "field_queries": [{"field": "model", "operator": "is", "values": ["gpt-4o"]},
                              {"field": "cost_usd", "operator": "greater than", "values": [0.002]}],
            "limit": 20, "cursor": cursor
        }))
        .expect("a body");
        let q = RunQuery::parse(body, false).expect("a query");
        let started = Instant::now();
        let page = runs.search(&scope, &q).await.expect("a search");
        paged.push(started.elapsed());
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    paged.sort();
    println!(
        "model + cost range (an index and a check), 50 pages in turn: p50 {}  p99 {}",
        ms(percentile(&paged, 0.5)),
        ms(percentile(&paged, 0.99))
    );

    for (what, word, all) in [
        ("free text, rare word, one agent", "xylophone", false),
        ("free text, common word, one agent", "refund", false),
        ("free text, rare word, all agents", "xylophone", true),
    ] {
        let scope = SearchScope {
            tenant: "default".into(),
            agent: (!all).then(|| "support-bot".to_string()),
        };
        let q = query(
            json!([{"field": "text", "operator": "contains", "values": [word]}]),
            all,
        );
        let started = Instant::now();
        let page = runs.search(&scope, &q).await.expect("a search");
        println!(
            "{what}: {} ({} found, {} runs read{})   target < 1 s",
            ms(started.elapsed()),
            page.items.len(),
            page.scanned,
            if page.scan_limit_reached {
                ", stopped at the scan limit: the cursor resumes"
            } else {
                ""
            }
        );
    }

    let all = SearchScope {
        tenant: "default".into(),
        agent: None,
    };
    let started = Instant::now();
    let page = runs
        .search(
            &all,
            &query(
                json!([{"field": "status", "operator": "is", "values": ["error"]}]),
                true,
            ),
        )
        .await
        .expect("a search");
    println!(
        "all agents, status is error: {} (count {}{})",
        ms(started.elapsed()),
        page.count,
        if page.count_is_exact { "" } else { "+" }
    );
}
