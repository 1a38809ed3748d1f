//! The test bodies every storage backend must pass, whatever it is built on: each backend's
//! tests call them with a fresh store of their own.

use std::collections::HashSet;

use uuid::Uuid;

use super::{FeedbackStore, RunStore};
use crate::completion::Usage;
use crate::recorder::run::{CacheStatus, RunRecord, RunSource, RunStatus};

/// A minimal run of `tenant`'s `agent`, with a new id.
pub fn run(tenant: &str, agent: &str) -> RunRecord {
    RunRecord {
        id: Uuid::now_v7(),
        tenant: tenant.into(),
        agent: agent.into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        status: RunStatus::Success,
        requested_model: "m".into(),
        model: Some("m".into()),
        provider: Some("p".into()),
        provider_model: None,
        version_id: None,
        stream: false,
        request: None,
        input: None,
        output: None,
        attempts: vec![],
        usage: Usage::default(),
        cost_usd: 0.25,
        duration_seconds: 0.5,
        cache: CacheStatus::Bypass,
        error: None,
        metadata: None,
        feedback_token: "secret".into(),
        source_run_id: None,
        structured: None,
        schema_id: None,
        conversation_id: None,
        rendered_messages: None,
        source: RunSource::Api,
        replay_of: None,
    }
}

/// Runs: batches, reads scoped to their tenant, newest-first pages with cursors, idempotent
/// writes.
pub async fn run_store(store: &dyn RunStore) {
    // Ids in time order (UUIDv7 within one millisecond are ordered too).
    let mut batch: Vec<Box<RunRecord>> = (0..7).map(|_| Box::new(run("t1", "a"))).collect();
    batch.push(Box::new(run("t1", "ab")));
    batch.push(Box::new(run("t2", "a")));
    store.insert_batch(&batch).await.unwrap();
    let ids: Vec<Uuid> = batch[..7].iter().map(|r| r.id).collect();

    // Read back whole, by its tenant only.
    let back = store.get("t1", ids[3]).await.unwrap().unwrap();
    assert_eq!(back.id, ids[3]);
    assert_eq!(back.agent, "a");
    assert_eq!(back.cost_usd, 0.25);
    assert_eq!(back.feedback_token, "secret");
    assert!(store.get("t2", ids[3]).await.unwrap().is_none());
    assert!(store.get("t1", Uuid::now_v7()).await.unwrap().is_none());

    // Newest first, in pages, strictly older than the cursor; no other agent or tenant.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_agent("t1", "a", cursor, 3).await.unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|r| r.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next.parse().unwrap()),
            None => break,
        }
    }
    let newest_first: Vec<Uuid> = ids.iter().rev().copied().collect();
    assert_eq!(seen, newest_first);
    let other = store.list_agent("t2", "a", None, 10).await.unwrap();
    assert_eq!(other.items.len(), 1);
    assert_eq!(other.items[0].id, batch[8].id);
    assert!(store
        .list_agent("t1", "nobody", None, 10)
        .await
        .unwrap()
        .items
        .is_empty());

    // Writing a run again replaces it: a retried batch duplicates nothing.
    let mut again = batch[2].clone();
    again.cost_usd = 1.5;
    store.insert_batch(&[again]).await.unwrap();
    assert_eq!(
        store.get("t1", ids[2]).await.unwrap().unwrap().cost_usd,
        1.5
    );
    let all = store.list_agent("t1", "a", None, 100).await.unwrap();
    let distinct: HashSet<Uuid> = all.items.iter().map(|r| r.id).collect();
    assert_eq!(all.items.len(), 7);
    assert_eq!(distinct.len(), 7);

    // An empty batch is nothing; a flush succeeds.
    store.insert_batch(&[]).await.unwrap();
    store.flush().await.unwrap();
}

/// Feedback: a token is one vote, so a run keeps one feedback, the last posted.
pub async fn feedback_store(store: &dyn FeedbackStore) {
    use crate::agents::{FeedbackRecord, Outcome};
    let run = Uuid::now_v7();
    let other = Uuid::now_v7();
    assert!(store.for_run(run).await.unwrap().is_empty());
    for i in 0..20 {
        let record = FeedbackRecord::new(
            run,
            Outcome::Positive,
            Some(format!("take {i}")),
            Some(format!("user-{i}")),
        )
        .unwrap();
        store.put(&record).await.unwrap();
    }
    let last = FeedbackRecord::new(run, Outcome::Negative, Some("no".into()), None).unwrap();
    store.put(&last).await.unwrap();
    let kept = FeedbackRecord::new(other, Outcome::Positive, None, None).unwrap();
    store.put(&kept).await.unwrap();
    assert_eq!(store.for_run(run).await.unwrap(), vec![last]);
    assert_eq!(store.for_run(other).await.unwrap(), vec![kept]);
}

/// Search: every page of every query holds exactly the runs the matcher accepts, newest first,
/// across pages; indexed counts are exact; no other tenant's run ever shows.
pub async fn run_search(store: &dyn RunStore, feedback: &dyn FeedbackStore) {
    use crate::agents::{FeedbackRecord, Outcome};
    use crate::recorder::run::RunSource;
    use crate::search::{RunFacts, RunQuery, SearchBody};
    use crate::storage::SearchScope;

    let models = ["m1", "m2", "m3"];
    let mut runs: Vec<Box<RunRecord>> = Vec::new();
    for i in 0..90usize {
        let tenant = if i % 9 == 8 { "t2" } else { "t1" };
        let agent = if i % 3 == 0 { "b" } else { "a" };
        let mut run = run(tenant, agent);
        run.model = Some(models[i % 3].to_string());
        run.provider = Some(if i % 4 == 0 { "p1" } else { "p2" }.to_string());
        run.status = match i % 5 {
            0 => RunStatus::Error,
            1 => RunStatus::Cancelled,
            _ => RunStatus::Success,
        };
        run.cache = if i % 7 == 0 {
            CacheStatus::Hit
        } else {
            CacheStatus::Miss
        };
        run.source = if i % 11 == 0 {
            RunSource::Playground
        } else {
            RunSource::Api
        };
        run.version_id = (i % 2 == 0).then(|| format!("v{}", i % 6));
        run.cost_usd = i as f64 / 100.0;
        run.metadata = Some(
            serde_json::json!({"customer": format!("c{}", i % 4)})
                .as_object()
                .unwrap()
                .clone(),
        );
        let word = if i % 10 == 3 {
            "Zebra crossing"
        } else {
            "plain words"
        };
        run.output = Some(
            serde_json::from_value(serde_json::json!({
                "choices": [{"index": 0, "message": {"content": format!("{word} {i}")},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1}
            }))
            .unwrap(),
        );
        runs.push(Box::new(run));
    }
    store.insert_batch(&runs).await.unwrap();
    let mut feedback_of = std::collections::HashMap::new();
    for run in runs.iter().filter(|r| r.cost_usd * 100.0 % 8.0 == 1.0) {
        let record = FeedbackRecord::new(run.id, Outcome::Positive, None, None).unwrap();
        feedback.put(&record).await.unwrap();
        feedback_of.insert(run.id, "positive");
    }
    let middle_ms = crate::search::id_millis(&runs[45].id);

    let queries = vec![
        (Some("a"), serde_json::json!([])),
        (
            Some("a"),
            serde_json::json!([{"field": "status", "operator": "is", "values": ["error"]}]),
        ),
        (
            Some("a"),
            serde_json::json!([
            {"field": "model", "operator": "is", "values": ["m2", "m3"]},
            {"field": "status", "operator": "is", "values": ["success"]}]),
        ),
        (
            Some("b"),
            serde_json::json!([
            {"field": "provider", "operator": "is", "values": ["p1"]},
            {"field": "cache", "operator": "is", "values": ["miss"]},
            {"field": "source", "operator": "is", "values": ["api"]}]),
        ),
        (
            Some("a"),
            serde_json::json!([{"field": "version", "operator": "is", "values": ["v2", "v4"]}]),
        ),
        (
            Some("a"),
            serde_json::json!([{"field": "cost_usd", "operator": "between", "values": [0.1, 0.5]}]),
        ),
        (
            Some("a"),
            serde_json::json!([{"field": "text", "operator": "contains", "values": ["zebra"]}]),
        ),
        (
            Some("a"),
            serde_json::json!([{"field": "metadata.customer", "operator": "is", "values": ["c1"]},
            {"field": "status", "operator": "is not", "values": ["cancelled"]}]),
        ),
        (
            Some("a"),
            serde_json::json!([{"field": "feedback", "operator": "is", "values": ["positive"]}]),
        ),
        (
            Some("a"),
            serde_json::json!([{"field": "created_at", "operator": "after", "values": [middle_ms as f64 / 1000.0]},
            {"field": "model", "operator": "is", "values": ["m1"]}]),
        ),
        (None, serde_json::json!([])),
        (
            None,
            serde_json::json!([{"field": "status", "operator": "is", "values": ["error"]}]),
        ),
        (
            None,
            serde_json::json!([{"field": "agent", "operator": "is", "values": ["b"]},
            {"field": "text", "operator": "does not contain", "values": ["zebra"]}]),
        ),
        (
            Some("a"),
            serde_json::json!([{"field": "model", "operator": "is", "values": ["nobody"]}]),
        ),
    ];
    for (agent, field_queries) in queries {
        let scope = SearchScope {
            tenant: "t1".into(),
            agent: agent.map(str::to_string),
        };
        let expected: Vec<Uuid> = {
            let body: SearchBody =
                serde_json::from_value(serde_json::json!({ "field_queries": field_queries }))
                    .unwrap();
            let query = RunQuery::parse(body, agent.is_none()).unwrap();
            let mut ids: Vec<Uuid> = runs
                .iter()
                .filter(|r| r.tenant == "t1" && agent.is_none_or(|a| r.agent == a))
                .filter(|r| {
                    let facts = RunFacts {
                        run: r,
                        feedback: feedback_of.get(&r.id).copied(),
                    };
                    query.filters.iter().all(|f| f.matches(&facts))
                })
                .map(|r| r.id)
                .collect();
            ids.reverse();
            ids
        };
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut first_count = None;
        for _ in 0..100 {
            let body: SearchBody = serde_json::from_value(serde_json::json!({
                "field_queries": field_queries, "limit": 4, "cursor": cursor
            }))
            .unwrap();
            let query = RunQuery::parse(body, agent.is_none()).unwrap();
            let page = store.search(&scope, &query).await.unwrap();
            assert!(page.items.len() <= 4);
            first_count.get_or_insert((page.count, page.count_is_exact));
            seen.extend(page.items.iter().map(|r| r.id));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, expected, "{agent:?} {field_queries}");
        let (count, exact) = first_count.unwrap();
        if exact {
            assert_eq!(count, expected.len() as u64, "{agent:?} {field_queries}");
        } else {
            assert!(count <= expected.len() as u64, "{agent:?} {field_queries}");
        }
    }

    // The values that exist, for a search UI.
    let scope = SearchScope {
        tenant: "t1".into(),
        agent: Some("a".into()),
    };
    let values = store.field_values(&scope, 50).await.unwrap();
    assert_eq!(
        values[&crate::search::IndexedField::Model],
        vec!["m2", "m3"]
    );
    assert_eq!(
        values[&crate::search::IndexedField::Status],
        vec!["cancelled", "error", "success"]
    );
}

/// Stats: increments add up per key across batches, reads return exactly the asked agents,
/// sources and hours (end excluded) of one tenant, and each agent's latest run only moves
/// forward.
pub async fn stats_store(store: &dyn super::StatsStore) {
    use super::{AgentLastRun, StatsQuery};
    use crate::stats::{Aggregate, RunView, StatsKey};

    let sums = |runs: u64, cost: f64, seconds: &[f64], last_run_ms: u64| {
        let mut sums = Aggregate {
            runs,
            errors: runs / 2,
            cancelled: 1,
            cost_usd: cost,
            prompt_tokens: 10 * runs,
            completion_tokens: 3 * runs,
            cache_hits: 1,
            last_run_ms,
            ..Aggregate::default()
        };
        for &s in seconds {
            sums.latency.record(s);
        }
        sums
    };
    let key = |tenant: &str, agent: &str, source: RunSource, hour: u32| StatsKey {
        tenant: tenant.into(),
        agent: agent.into(),
        source,
        hour,
    };
    let query = |tenant: &str, agents: &[&str], sources: &[RunSource], hours| StatsQuery {
        tenant: tenant.into(),
        agents: agents.iter().map(|a| a.to_string()).collect(),
        sources: sources.to_vec(),
        hours,
    };
    let sorted = |mut found: Vec<(StatsKey, Aggregate)>| {
        found.sort_by_key(|(k, _)| (k.agent.clone(), k.source.as_str(), k.hour));
        found
    };
    let api = RunSource::Api;
    let play = RunSource::Playground;

    // Nothing stored: nothing found.
    assert!(store
        .read(&query("t1", &["a"], &[api], 0..u32::MAX))
        .await
        .unwrap()
        .is_empty());
    assert!(store.agents("t1", 10).await.unwrap().is_empty());

    let first = vec![
        (key("t1", "a", api, 100), sums(2, 0.5, &[0.2, 0.4], 100_000)),
        (key("t1", "a", api, 101), sums(1, 0.25, &[1.0], 101_000)),
        (key("t1", "a", play, 100), sums(4, 1.0, &[], 100_500)),
        (key("t1", "b", api, 102), sums(1, 0.1, &[3.0], 102_000)),
        (key("t2", "a", api, 100), sums(9, 9.0, &[9.0], 100_900)),
    ];
    store.add_batch(&first).await.unwrap();
    // The same key again adds up; an older latest run does not move the agent's back.
    let second = vec![
        (
            key("t1", "a", api, 100),
            sums(3, 0.75, &[0.3, 0.3, 5.0], 90_000),
        ),
        (key("t1", "a", api, 103), sums(1, 0.0, &[0.1], 103_000)),
    ];
    store.add_batch(&second).await.unwrap();
    store.add_batch(&[]).await.unwrap();

    let mut expected_100 = first[0].1.clone();
    expected_100.merge(&second[0].1);
    let found = sorted(
        store
            .read(&query("t1", &["a"], &[api], 100..103))
            .await
            .unwrap(),
    );
    assert_eq!(
        found,
        vec![
            (key("t1", "a", api, 100), expected_100.clone()),
            first[1].clone(),
        ]
    );
    assert_eq!(found[0].1.runs, 5);
    assert_eq!(found[0].1.latency.count(), 5);
    assert_eq!(found[0].1.last_run_ms, 100_000);

    // Sources and agents as asked; another tenant's never.
    let found = sorted(
        store
            .read(&query("t1", &["a", "b", "nobody"], &[api, play], 0..1000))
            .await
            .unwrap(),
    );
    let keys: Vec<(String, RunSource, u32)> = found
        .iter()
        .map(|(k, _)| (k.agent.clone(), k.source, k.hour))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("a".into(), api, 100),
            ("a".into(), api, 101),
            ("a".into(), api, 103),
            ("a".into(), play, 100),
            ("b".into(), api, 102),
        ]
    );
    assert!(found.iter().all(|(k, _)| k.tenant == "t1"));
    let theirs = store
        .read(&query("t2", &["a"], &[api], 0..1000))
        .await
        .unwrap();
    assert_eq!(theirs, vec![first[4].clone()]);
    assert!(store
        .read(&query("t1", &["a"], &[RunSource::Replay], 0..1000))
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .read(&query("t1", &["a"], &[api], 100..100))
        .await
        .unwrap()
        .is_empty());

    // The tenant's agents, by name, with the latest run per source; bounded.
    let last = |agent: &str, source, last_run_ms| AgentLastRun {
        agent: agent.into(),
        source,
        last_run_ms,
    };
    assert_eq!(
        store.agents("t1", 10).await.unwrap(),
        vec![
            last("a", api, 103_000),
            last("a", play, 100_500),
            last("b", api, 102_000),
        ]
    );
    assert_eq!(
        store.agents("t1", 1).await.unwrap(),
        vec![last("a", api, 103_000), last("a", play, 100_500)]
    );
    assert_eq!(
        store.agents("t2", 10).await.unwrap(),
        vec![last("a", api, 100_900)]
    );
    assert!(store.agents("t", 10).await.unwrap().is_empty());

    // A run's view keys it by its id's hour.
    let run = run("t1", "a");
    let view = RunView::from(&run);
    assert_eq!(
        u64::from(view.key().hour),
        crate::search::id_millis(&run.id) / 3_600_000
    );
}
