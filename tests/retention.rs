//! Retention end to end: with a size bound in `[recorder]`, the real binary deletes the oldest
//! runs by itself, and what the HTTP API shows of them goes too (the run, its place in
//! searches and lists, its share in the stats), while the runs within the bound stay.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

async fn search(gw: &Flowgate, word: &str) -> Vec<String> {
    let response = client()
        .post(format!("{}/api/agents/ret/runs/search", gw.url))
        .bearer_auth("any")
        .json(&json!({
            "field_queries": [{"field": "text", "operator": "contains", "values": [word]}],
            "limit": 100
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let page: Value = response.json().await.unwrap();
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// `flowgate_runs_pruned_total`.
async fn pruned_so_far(gw: &Flowgate) -> u64 {
    let metrics = metrics(gw).await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("flowgate_runs_pruned_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no flowgate_runs_pruned_total in {metrics}"))
}

async fn status_of_run(gw: &Flowgate, id: &str) -> u16 {
    get_json(gw, &format!("/api/runs/{id}")).await.0.as_u16()
}

#[tokio::test]
async fn a_size_bound_deletes_the_oldest_runs_and_what_the_api_shows_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(&dir.path().join("data"), None).replace(
        "flush_interval_ms = 50",
        "flush_interval_ms = 50\nmax_disk_mb = 3",
    );
    let gw = Flowgate::start(dir.path(), &config);
    // ~8 KB of text a run (asked and echoed, and kept as asked, rendered and answered): 40
    // runs weigh well over the 3 MB bound with sled's amplification counted (7), and the
    // bound keeps more than the 10 young ones.
    let filler = "lorem ipsum dolor sit amet ".repeat(300);
    // The oldest run's answer is cached (temperature 0): it outlives its run.
    let cached = json!({"model": "ret/mock-echo", "temperature": 0,
                        "messages": user(&format!("cached question {filler}"))});
    let (status, headers, first) = chat(&gw, cached.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(headers["x-flowgate-cache"], "miss");
    let mut old = vec![run_id(&headers)];
    for i in 1..30 {
        let (status, headers, _) =
            ask(&gw, "ret/mock-echo", &format!("oldword {i} {filler}")).await;
        assert_eq!(status, 200);
        old.push(run_id(&headers));
    }
    // Older than the few seconds a run is kept whatever the bound.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut young = Vec::new();
    for i in 0..10 {
        let (status, headers, _) =
            ask(&gw, "ret/mock-echo", &format!("youngword {i} {filler}")).await;
        assert_eq!(status, 200);
        young.push(run_id(&headers));
    }

    // The oldest run goes within a few passes (one soon after start, then as the store grows).
    let deadline = Instant::now() + Duration::from_secs(60);
    while status_of_run(&gw, &old[0]).await != 404 {
        assert!(Instant::now() < deadline, "the oldest run was never pruned");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A pass may follow soon after (the store's size on disk moves as sled writes the
    // deletions): the counts below are read once the passes have stopped deleting.
    let mut pruned = pruned_so_far(&gw).await;
    loop {
        assert!(
            Instant::now() < deadline,
            "the passes never stopped deleting"
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let now = pruned_so_far(&gw).await;
        if now == pruned {
            break;
        }
        pruned = now;
    }
    assert!(pruned >= 1);

    // Oldest first: the deleted runs are the oldest ones; the young ones all stay. Read from
    // the youngest down, so that even a pass deleting meanwhile cannot make a gap: a run found
    // deleted means every older one was deleted before it.
    let mut gone = Vec::new();
    for id in old.iter().rev() {
        if status_of_run(&gw, id).await == 404 {
            gone.push(id.clone());
        }
    }
    gone.reverse();
    assert_eq!(gone, old[..gone.len()].to_vec(), "not oldest first");
    assert!(
        gone.len() < old.len(),
        "every old run was deleted: {gone:?}"
    );
    for id in &young {
        assert_eq!(status_of_run(&gw, id).await, 200, "young run {id}");
    }

    // A cached answer whose source run is gone is still served, as a run of its own that
    // names the (deleted) source.
    let (status, headers, hit) = chat(&gw, cached).await;
    assert_eq!(status, 200, "{hit}");
    assert_eq!(headers["x-flowgate-cache"], "hit");
    assert_eq!(hit["choices"][0]["message"], first["choices"][0]["message"]);
    let hit_run = get_run(&gw, &run_id(&headers)).await;
    assert_eq!(hit_run["source_run_id"], old[0].as_str());
    assert_eq!(status_of_run(&gw, &old[0]).await, 404);

    // Searches, lists and stats no longer show them.
    let found = search(&gw, "oldword").await;
    assert!(found.iter().all(|id| !gone.contains(id)), "{found:?}");
    let old_words_left = old[1..].iter().filter(|id| !gone.contains(id)).count();
    assert_eq!(found.len(), old_words_left);
    assert_eq!(search(&gw, "youngword").await.len(), young.len());
    let (status, page) = get_json(&gw, "/api/agents/ret/runs?limit=100").await;
    assert_eq!(status, 200);
    let listed = page["items"].as_array().unwrap();
    // The cache hit is a run too.
    assert_eq!(
        listed.len(),
        old.len() + young.len() - gone.len() + 1,
        "{page}"
    );
    let (status, stats) = get_json(&gw, "/api/agents/ret/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        stats["totals"]["runs"].as_u64(),
        Some(listed.len() as u64),
        "{stats}"
    );
}
