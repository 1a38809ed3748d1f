//! Loads a data directory for the web UI benchmark (`bash bench/ui.sh`): N synthetic runs
//! (default 1,000,000; `common::synthetic`, as `search_bench` loads them) spread evenly over
//! the last 30 days, written the way the recorder writes them: the runs, their stats
//! aggregates per agent and hour, their versions and the versions' statistics. The busy agent
//! (`support-bot`, 70% of the runs) sends its prompts written per request, so each of its runs
//! is a version of its own; the others use a few templated versions.
//!
//! Usage: `ui_bench_load [runs] <data dir>`: a directory already loaded is left as it is.
//! Writes `<data dir>/ui-bench.txt`: sample run ids and cursors the benchmark requests.

use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowgate_actors::agents::{AgentStore, VersionProperties};
use flowgate_actors::recorder::run::RunRecord;
use flowgate_actors::stats::RunStats;
use flowgate_actors::storage::sled::SledStorage;
use flowgate_actors::wire::ChatRequest;

mod common;

use common::synthetic;

const DAYS: u64 = 30;
const BATCH: usize = 1000;

#[actix_rt::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (n, dir): (u64, std::path::PathBuf) = match (args.next(), args.next()) {
        (Some(n), Some(dir)) => (n.parse().expect("runs: a number"), dir.into()),
        (Some(dir), None) => (1_000_000, dir.into()),
        _ => panic!("usage: ui_bench_load [runs] <data dir>"),
    };
    let samples = dir.join("ui-bench.txt");
    std::fs::create_dir_all(&dir).expect("the data dir");
    let storage = SledStorage::open(&dir, Duration::from_millis(500))
        .expect("the store")
        .storage();
    let agents = AgentStore::open(&storage);
    if samples.exists() {
        println!("reusing the store in {}", dir.display());
    } else {
        load(&storage, &agents, n, &dir, &samples).await;
    }
    time_versions(&agents).await;
}

/// The versions of the busy agent: the whole listing with each version's statistics (what
/// the versions page read before it was paged) against one page of 50.
async fn time_versions(agents: &AgentStore) {
    let started = Instant::now();
    let all = agents
        .versions("default", "support-bot")
        .await
        .expect("the versions");
    let whole = started.elapsed();
    let mut paged = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let (page, _) = agents
            .versions_page("default", "support-bot", None, 50)
            .await
            .expect("a page");
        paged.push(started.elapsed());
        assert_eq!(page.len(), 50.min(all.len()));
    }
    paged.sort();
    println!(
        "versions of support-bot ({} versions), in process: whole listing {:.1} ms; a page of 50: p50 {:.2} ms, max {:.2} ms",
        all.len(),
        whole.as_secs_f64() * 1e3,
        paged[paged.len() / 2].as_secs_f64() * 1e3,
        paged[paged.len() - 1].as_secs_f64() * 1e3
    );
}

async fn load(
    storage: &flowgate_actors::storage::Storage,
    agents: &AgentStore,
    n: u64,
    dir: &std::path::Path,
    samples: &std::path::Path,
) {
    let stats = RunStats::new(storage.stats.clone());
    let runs = storage.runs.clone();

    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as u64;
    let start_ms = now_ms - DAYS * 86_400_000;
    let step_ms = (DAYS * 86_400_000) as f64 / n as f64;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut sample_ids = Vec::new();
    let mut batch: Vec<Box<RunRecord>> = Vec::with_capacity(BATCH);
    let started = Instant::now();
    println!("loading {n} runs over {DAYS} days into {}", dir.display());
    for i in 0..n {
        let mut run = synthetic(i, &mut rng);
        let at_ms = start_ms + (i as f64 * step_ms) as u64;
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            at_ms / 1000,
            ((at_ms % 1000) * 1_000_000) as u32,
        );
        run.id = uuid::Uuid::new_v7(ts);
        run.created_at =
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(at_ms)).to_string();
        // The version: the prompt as sent (support-bot), or one of a few templates.
        let request: ChatRequest = match run.agent.as_str() {
            "support-bot" => serde_json::from_str(run.request.as_ref().expect("a request").get())
                .expect("a chat request"),
            _ => serde_json::from_value(serde_json::json!({
                "model": run.requested_model,
                "messages": [{"role": "system", "content": format!(
                    "You answer {} questions. Template {}.", run.agent, rng.u8(..5))},
                    {"role": "user", "content": "{{ question }}"}]
            }))
            .expect("a chat request"),
        };
        let properties = VersionProperties::of(&run.requested_model, &request);
        let version = agents
            .ensure_version(&run.tenant, &run.agent, &properties, 1)
            .await
            .expect("a version");
        run.version_id = Some(version);
        if i.is_multiple_of((n / 200).max(1)) && run.agent == "support-bot" {
            sample_ids.push(run.id);
        }
        batch.push(Box::new(run));
        if batch.len() == BATCH || i + 1 == n {
            runs.insert_batch(&batch).await.expect("a batch of runs");
            stats.observe(batch.iter().map(|r| r.as_ref()));
            let failures = agents.observe(&batch).await;
            assert!(failures.is_empty(), "{failures:?}");
            batch.clear();
        }
        if (i + 1).is_multiple_of(100_000) {
            stats.write_pending().await.expect("the stats");
            agents.write_stats().await.expect("the versions' stats");
            println!(
                "  {} runs, {:.0} runs/s",
                i + 1,
                (i + 1) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    stats.write_pending().await.expect("the stats");
    agents.write_stats().await.expect("the versions' stats");
    runs.flush().await.expect("a flush");
    println!("loaded in {:.1} s", started.elapsed().as_secs_f64());

    // The run ids a benchmark opens, and where deep pages start.
    let mut out = std::fs::File::create(samples).expect("the samples file");
    for id in &sample_ids {
        writeln!(out, "run {id}").expect("a line");
    }
    let mid = sample_ids[sample_ids.len() / 2];
    writeln!(out, "runs_cursor {mid}").expect("a line");
    let mut after = None;
    // The versions page 100 pages deep (5,000 versions in).
    for _ in 0..100 {
        let (_, next) = agents
            .versions_page("default", "support-bot", after.as_ref(), 50)
            .await
            .expect("a versions page");
        match next {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    if let Some(c) = after {
        writeln!(out, "versions_cursor {}", c.encode()).expect("a line");
    }
    println!("samples in {}", samples.display());
}
