//! The test bodies every storage backend must pass, whatever it is built on: each backend's
//! tests call them with a fresh store of their own.

use std::collections::HashSet;

use uuid::Uuid;

use super::{FeedbackStore, RunStore, ShareStore};
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

/// Share links: one token per run, the same one when shared again; a token opens its own
/// tenant's run only; revoking closes it, and sharing again makes a new token.
pub async fn share_store(store: &dyn ShareStore) {
    let (run, other_run) = (Uuid::now_v7(), Uuid::now_v7());
    let first = store.share("t1", run, "token-1").await.unwrap();
    assert_eq!(
        (first.token.as_str(), first.tenant.as_str(), first.run_id),
        ("token-1", "t1", run)
    );
    // Shared again: the same token, whatever new one is offered.
    let again = store.share("t1", run, "token-2").await.unwrap();
    assert_eq!(again, first);
    assert!(store.get("token-2").await.unwrap().is_none());
    assert_eq!(store.get("token-1").await.unwrap(), Some(first.clone()));

    // The same run id under another tenant is another share.
    let theirs = store.share("t2", run, "token-3").await.unwrap();
    assert_eq!(theirs.tenant, "t2");
    assert_eq!(theirs.token, "token-3");
    store.share("t1", other_run, "token-4").await.unwrap();

    // Another tenant cannot revoke it; its owner can, once.
    assert!(!store.revoke("t3", run).await.unwrap());
    assert!(store.get("token-1").await.unwrap().is_some());
    assert!(store.revoke("t1", run).await.unwrap());
    assert!(!store.revoke("t1", run).await.unwrap());
    assert!(store.get("token-1").await.unwrap().is_none());
    assert!(store.get("token-3").await.unwrap().is_some());
    assert!(store.get("token-4").await.unwrap().is_some());
    assert!(store.get("never-issued").await.unwrap().is_none());

    // Shared after a revoke: a new token; the old one stays closed.
    let renewed = store.share("t1", run, "token-5").await.unwrap();
    assert_eq!(renewed.token, "token-5");
    assert!(store.get("token-1").await.unwrap().is_none());
}
