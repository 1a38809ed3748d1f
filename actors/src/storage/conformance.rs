//! The test bodies every storage backend must pass, whatever it is built on: each backend's
//! tests call them with a fresh store of their own.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use super::{
    AnswerTotals, ConversationLink, FeedbackStore, NewDeployment, PutOutcome, RunStore,
    SchemaAssignment, ShareStore, Storage, VersionKey,
};
use crate::agents::{VersionProperties, VersionRecord, VersionStats};
use crate::cache::{CacheKey, StoredAnswer};
use crate::completion::Usage;
use crate::model_ref::Environment;
use crate::recorder::run::{CacheStatus, Door, RunRecord, RunSource, RunStatus};

/// One test per conformance body that takes the whole [`Storage`], each on a fresh store:
/// `$fresh` makes one and gives `(guard, Storage)` (the guard removes it when dropped). Every
/// backend calls it once, so a body added here runs on every backend.
macro_rules! storage_tests {
    ($fresh:expr) => {
        $crate::storage::conformance::storage_tests!(@each $fresh;
            schemas_are_numbered_per_agent,
            a_digest_keeps_its_first_schema_id,
            concurrent_schema_assignments_agree_without_gaps,
            versions_keep_their_first_record,
            versions_list_per_agent,
            version_statistics_are_written_in_batches,
            deployments_replace_and_chain,
            deployments_are_scoped_to_their_agent,
            deployment_history_pages_with_cursors,
            concurrent_deploys_leave_one_winner,
            conversation_links_are_found_and_replaced,
            answers_read_back_with_their_times,
            answers_larger_than_allowed_are_not_stored,
            answers_evict_least_recently_used_first,
            key_store,
            eval_store,
            session_store,
            versions_page_newest_first_with_their_statistics,
            runs_are_pruned_oldest_first_with_what_points_at_them,
            stats_roll_up_per_day_and_model,
            retention_takes_deleted_runs_out_of_the_daily_roll_up,
            pruning_never_deletes_a_run_younger_than_its_cut,
            a_size_bound_prunes_the_oldest_runs_down_to_it,
            versions_leave_with_their_last_run_unless_deployed
        );
    };
    (@each $fresh:expr; $($body:ident),* $(,)?) => {
        $(
            #[actix_rt::test]
            async fn $body() {
                let (_guard, stores) = $fresh;
                $crate::storage::conformance::$body(&stores).await;
            }
        )*
    };
}
pub(crate) use storage_tests;

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
        door: Door::ChatCompletions,
        continuation: None,
        telemetry: Default::default(),
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
    // What is written takes room on disk, and the store says how much.
    store.flush().await.unwrap();
    assert!(store.size_on_disk().await.unwrap() > 0);

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

    // The door a run came through is kept; a run written before doors were recorded reads
    // back as a Chat Completions run.
    let mut through_messages = run("t1", "doors");
    through_messages.door = Door::Messages;
    let mut old: serde_json::Value = serde_json::to_value(run("t1", "doors")).unwrap();
    old.as_object_mut().unwrap().remove("door");
    let old: RunRecord = serde_json::from_value(old).unwrap();
    store
        .insert_batch(&[Box::new(through_messages.clone()), Box::new(old.clone())])
        .await
        .unwrap();
    let back = store.get("t1", through_messages.id).await.unwrap().unwrap();
    assert_eq!(back.door, Door::Messages);
    let back = store.get("t1", old.id).await.unwrap().unwrap();
    assert_eq!(back.door, Door::ChatCompletions);

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

    // Runs spread over time (a store may read a wide range in parts at once): pages still
    // hold exactly the matches, newest first.
    let base = crate::search::id_millis(&Uuid::now_v7()) - 100_000;
    let mut spread: Vec<Box<RunRecord>> = Vec::new();
    for i in 0..40u64 {
        let mut r = run("t3", if i % 2 == 0 { "w" } else { "x" });
        let mut bytes = *crate::search::id_bounds(base + i * 2_500).0.as_bytes();
        bytes[15] = i as u8;
        r.id = Uuid::from_bytes(bytes);
        let word = if i % 3 == 0 { "needle here" } else { "hay" };
        r.output = Some(
            serde_json::from_value(serde_json::json!({
                "choices": [{"index": 0, "message": {"content": word}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1}
            }))
            .unwrap(),
        );
        spread.push(Box::new(r));
    }
    store.insert_batch(&spread).await.unwrap();
    for agent in [None, Some("w")] {
        let scope = SearchScope {
            tenant: "t3".into(),
            agent: agent.map(str::to_string),
        };
        let mut expected: Vec<Uuid> = spread
            .iter()
            .enumerate()
            .filter(|(i, r)| i % 3 == 0 && agent.is_none_or(|a| r.agent == a))
            .map(|(_, r)| r.id)
            .collect();
        expected.reverse();
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for limit in [1, 3, 2, 5, 4, 4, 4, 4, 4] {
            let body: SearchBody = serde_json::from_value(serde_json::json!({
                "field_queries": [{"field": "text", "operator": "contains", "values": ["needle"]}],
                "limit": limit, "cursor": cursor
            }))
            .unwrap();
            let query = RunQuery::parse(body, agent.is_none()).unwrap();
            let page = store.search(&scope, &query).await.unwrap();
            seen.extend(page.items.iter().map(|r| r.id));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, expected, "{agent:?}");
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

// The agents' records and the answer cache: one body per check, each given fresh stores.

/// Runs `work` on `threads` threads at once, each with a runtime of its own; their outputs.
fn in_parallel<T: Send + 'static>(
    threads: usize,
    work: impl Fn(usize) -> futures::future::BoxFuture<'static, T> + Send + Sync + 'static,
) -> Vec<T> {
    let work = Arc::new(work);
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let work = work.clone();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(work(i))
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn new_schema(input: &serde_json::Value) -> SchemaAssignment<'_> {
    SchemaAssignment::New {
        input_schema: input,
        output_schema: &serde_json::Value::Null,
        created_at: "2026-01-01T00:00:00.000Z",
    }
}

/// Each agent numbers its schemas 1, 2, 3…; the records read back, by id.
pub async fn schemas_are_numbered_per_agent(storage: &Storage) {
    let store = storage.schemas.as_ref();
    let (x, y) = (json!({"type": "object"}), json!({"type": "string"}));
    assert_eq!(store.id_of("t", "a", &[1; 32]).await.unwrap(), None);
    assert_eq!(
        store
            .assign("t", "a", &[1; 32], new_schema(&x))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .assign("t", "a", &[2; 32], new_schema(&y))
            .await
            .unwrap(),
        2
    );
    // Another agent (one whose name extends the first's), another tenant: their own numbers.
    assert_eq!(
        store
            .assign("t", "ab", &[2; 32], new_schema(&y))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .assign("u", "a", &[2; 32], new_schema(&y))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.id_of("t", "a", &[2; 32]).await.unwrap(), Some(2));
    assert_eq!(store.id_of("t", "b", &[2; 32]).await.unwrap(), None);
    let record = store.get("t", "a", 2).await.unwrap().unwrap();
    assert_eq!((record.id, &record.input_schema), (2, &y));
    assert_eq!(record.output_schema, serde_json::Value::Null);
    assert_eq!(record.created_at, "2026-01-01T00:00:00.000Z");
    assert!(store.get("t", "a", 3).await.unwrap().is_none());
    assert!(store.get("v", "a", 1).await.unwrap().is_none());
    let ids: Vec<u32> = store
        .list("t", "a")
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(store.list("t", "ab").await.unwrap().len(), 1);
}

/// A digest keeps the id it got first; a digest assigned an existing schema adds none.
pub async fn a_digest_keeps_its_first_schema_id(storage: &Storage) {
    let store = storage.schemas.as_ref();
    let x = json!({"type": "object"});
    assert_eq!(
        store
            .assign("t", "a", &[1; 32], new_schema(&x))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .assign("t", "a", &[1; 32], new_schema(&x))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .assign("t", "a", &[1; 32], SchemaAssignment::Existing(7))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .assign("t", "a", &[2; 32], SchemaAssignment::Existing(1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.id_of("t", "a", &[2; 32]).await.unwrap(), Some(1));
    assert_eq!(store.list("t", "a").await.unwrap().len(), 1);
    // The next new schema follows the last one.
    assert_eq!(
        store
            .assign("t", "a", &[3; 32], new_schema(&x))
            .await
            .unwrap(),
        2
    );
}

/// Concurrent first uses of digests agree on one id each, with no gap.
pub async fn concurrent_schema_assignments_agree_without_gaps(storage: &Storage) {
    let store = storage.schemas.clone();
    let ids = in_parallel(12, move |i| {
        let store = store.clone();
        Box::pin(async move {
            let digest = [(i % 4) as u8; 32];
            let input = json!({"n": i % 4});
            let id = store
                .assign("t", "a", &digest, new_schema(&input))
                .await
                .unwrap();
            (digest, id)
        })
    });
    let mut distinct: Vec<u32> = ids.iter().map(|(_, id)| *id).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct, vec![1, 2, 3, 4]);
    for (digest, id) in ids {
        assert_eq!(
            storage.schemas.id_of("t", "a", &digest).await.unwrap(),
            Some(id)
        );
    }
    assert_eq!(storage.schemas.list("t", "a").await.unwrap().len(), 4);
}

fn version(id: &str, schema_id: u32) -> VersionRecord {
    let request = serde_json::from_value(json!({
        "model": "m", "messages": [{"role": "system", "content": format!("say {id}")}],
        "temperature": 0.5
    }))
    .unwrap();
    VersionRecord {
        id: id.to_string(),
        schema_id,
        created_at: "2026-01-01T00:00:00.000Z".into(),
        properties: VersionProperties::of("m", &request),
    }
}

/// A version is stored once: the first record stays, and every caller gets it.
pub async fn versions_keep_their_first_record(storage: &Storage) {
    let store = storage.versions.as_ref();
    let first = version("v1", 1);
    assert!(store.get("t", "a", "v1").await.unwrap().is_none());
    assert_eq!(store.insert("t", "a", &first).await.unwrap(), first);
    let second = VersionRecord {
        schema_id: 2,
        ..first.clone()
    };
    assert_eq!(store.insert("t", "a", &second).await.unwrap(), first);
    assert_eq!(store.get("t", "a", "v1").await.unwrap(), Some(first));
    assert!(store.get("u", "a", "v1").await.unwrap().is_none());
    assert!(store.get("t", "ab", "v1").await.unwrap().is_none());
}

/// An agent's versions list without any other agent's or tenant's.
pub async fn versions_list_per_agent(storage: &Storage) {
    let store = storage.versions.as_ref();
    for id in ["v1", "v2", "v3"] {
        store.insert("t", "a", &version(id, 1)).await.unwrap();
    }
    store.insert("t", "ab", &version("v4", 1)).await.unwrap();
    store.insert("u", "a", &version("v5", 1)).await.unwrap();
    let mut ids: Vec<String> = store
        .list("t", "a")
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["v1", "v2", "v3"]);
    assert!(store.list("t", "b").await.unwrap().is_empty());
}

/// Versions page newest first (ties by id, descending), with their statistics, without any
/// other agent's or tenant's, and the pages together list each version once.
pub async fn versions_page_newest_first_with_their_statistics(storage: &Storage) {
    let store = storage.versions.as_ref();
    let at = |i: u32| format!("2026-01-01T00:00:{:02}.000Z", i);
    // Inserted out of order; v3 and v4 were made in the same millisecond.
    for (id, second) in [
        ("v2", 2),
        ("v5", 5),
        ("v1", 1),
        ("v4", 3),
        ("v3", 3),
        ("v6", 6),
    ] {
        let record = VersionRecord {
            created_at: at(second),
            ..version(id, 1)
        };
        store.insert("t", "a", &record).await.unwrap();
    }
    store.insert("t", "ab", &version("v9", 1)).await.unwrap();
    store.insert("u", "a", &version("v8", 1)).await.unwrap();
    store
        .add_stats(&[(version_key("t", "a", "v5"), stats(7))])
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store.page("t", "a", after.as_ref(), 4).await.unwrap();
        pages += 1;
        for (record, stats) in &page.items {
            let expected = (record.id == "v5").then(|| self::stats(7));
            assert_eq!(stats, &expected, "{}", record.id);
            seen.push(record.id.clone());
        }
        match page.next_cursor {
            Some(cursor) => {
                let text = cursor.encode();
                assert_eq!(super::VersionCursor::decode(&text), Some(cursor.clone()));
                after = Some(cursor);
            }
            None => break,
        }
        assert!(pages < 5, "the pages do not end: {seen:?}");
    }
    assert_eq!(seen, ["v6", "v5", "v4", "v3", "v2", "v1"]);
    assert_eq!(pages, 2);
    let one = store.page("t", "a", None, 6).await.unwrap();
    assert_eq!(one.items.len(), 6);
    assert!(one.next_cursor.is_none());
    assert!(store
        .page("t", "b", None, 6)
        .await
        .unwrap()
        .items
        .is_empty());
    let other = store.page("u", "a", None, 6).await.unwrap();
    assert_eq!(other.items.len(), 1);
    assert_eq!(other.items[0].0.id, "v8");
}

fn stats(runs: u64) -> VersionStats {
    VersionStats {
        run_count: runs,
        error_count: 1,
        cost_usd: 0.5,
        total_duration_seconds: 2.5,
        first_used_at: Some("2026-01-01T00:00:00.000Z".into()),
        last_used_at: Some("2026-01-02T00:00:00.000Z".into()),
    }
}

fn version_key(tenant: &str, agent: &str, id: &str) -> VersionKey {
    VersionKey {
        tenant: tenant.into(),
        agent: agent.into(),
        version_id: id.into(),
    }
}

/// Statistics are added in batches to what the versions had (several instances each add
/// their own runs); a key twice in a batch counts twice.
pub async fn version_statistics_are_written_in_batches(storage: &Storage) {
    let store = storage.versions.as_ref();
    let (a, b) = (version_key("t", "a", "v1"), version_key("t", "a", "v2"));
    assert_eq!(store.stats(&a).await.unwrap(), None);
    store
        .add_stats(&[(a.clone(), stats(3)), (b.clone(), stats(4))])
        .await
        .unwrap();
    assert_eq!(store.stats(&a).await.unwrap(), Some(stats(3)));
    assert_eq!(store.stats(&b).await.unwrap(), Some(stats(4)));
    let mut earlier = stats(9);
    earlier.first_used_at = Some("2025-12-31T23:59:59.999Z".into());
    earlier.last_used_at = Some("2026-01-01T12:00:00.000Z".into());
    store
        .add_stats(&[(a.clone(), earlier), (a.clone(), stats(1))])
        .await
        .unwrap();
    let summed = store.stats(&a).await.unwrap().unwrap();
    assert_eq!((summed.run_count, summed.error_count), (13, 3));
    assert!((summed.cost_usd - 1.5).abs() < 1e-9, "{summed:?}");
    assert!(
        (summed.total_duration_seconds - 7.5).abs() < 1e-9,
        "{summed:?}"
    );
    assert_eq!(
        summed.first_used_at.as_deref(),
        Some("2025-12-31T23:59:59.999Z")
    );
    assert_eq!(
        summed.last_used_at.as_deref(),
        Some("2026-01-02T00:00:00.000Z")
    );
    assert_eq!(store.stats(&b).await.unwrap(), Some(stats(4)));
    assert_eq!(
        store.stats(&version_key("u", "a", "v1")).await.unwrap(),
        None
    );
    store.add_stats(&[]).await.unwrap();
}

fn deployment<'a>(
    agent: &'a str,
    schema_id: u32,
    environment: Environment,
    version_id: &'a str,
) -> NewDeployment<'a> {
    NewDeployment {
        agent,
        schema_id,
        environment,
        version_id,
        deployed_at: "2026-01-01T00:00:00.000Z",
        deployed_by: "alice",
    }
}

/// A deploy makes the current deployment, names the version it replaced and joins the
/// history, newest first; current deployments list by schema, then environment.
pub async fn deployments_replace_and_chain(storage: &Storage) {
    let store = storage.deployments.as_ref();
    let prod = Environment::Production;
    assert!(store.get("t", "a", 1, prod).await.unwrap().is_none());
    let first = store
        .deploy("t", deployment("a", 1, prod, "v1"))
        .await
        .unwrap();
    assert_eq!(first.previous_version_id, None);
    assert_eq!(
        (first.agent.as_str(), first.schema_id, first.environment),
        ("a", 1, prod)
    );
    assert_eq!(first.deployed_by, "alice");
    let second = store
        .deploy("t", deployment("a", 1, prod, "v2"))
        .await
        .unwrap();
    assert_eq!(second.previous_version_id.as_deref(), Some("v1"));
    assert!(second.sequence > first.sequence);
    store
        .deploy("t", deployment("a", 2, Environment::Dev, "v3"))
        .await
        .unwrap();
    store
        .deploy("t", deployment("a", 1, Environment::Staging, "v1"))
        .await
        .unwrap();
    store
        .deploy("t", deployment("a", 1, Environment::Dev, "v2"))
        .await
        .unwrap();
    assert_eq!(store.get("t", "a", 1, prod).await.unwrap(), Some(second));
    let current: Vec<(u32, &str, String)> = store
        .current("t", "a")
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.schema_id, d.environment.as_str(), d.version_id))
        .collect();
    assert_eq!(
        current,
        vec![
            (1, "dev", "v2".to_string()),
            (1, "production", "v2".to_string()),
            (1, "staging", "v1".to_string()),
            (2, "dev", "v3".to_string()),
        ]
    );
    let history = store.history("t", "a", None, 100).await.unwrap();
    let versions: Vec<&str> = history
        .items
        .iter()
        .map(|d| d.version_id.as_str())
        .collect();
    assert_eq!(versions, vec!["v2", "v1", "v3", "v2", "v1"]);
    assert_eq!(history.next_cursor, None);
}

/// Deployments of other tenants and agents are invisible.
pub async fn deployments_are_scoped_to_their_agent(storage: &Storage) {
    let store = storage.deployments.as_ref();
    let prod = Environment::Production;
    store
        .deploy("t", deployment("a", 1, prod, "v1"))
        .await
        .unwrap();
    store
        .deploy("t", deployment("ab", 1, prod, "v2"))
        .await
        .unwrap();
    assert!(store.get("u", "a", 1, prod).await.unwrap().is_none());
    assert!(store
        .get("t", "a", 1, Environment::Staging)
        .await
        .unwrap()
        .is_none());
    assert!(store.current("u", "a").await.unwrap().is_empty());
    assert_eq!(store.current("t", "a").await.unwrap().len(), 1);
    let history = store.history("t", "a", None, 100).await.unwrap();
    assert_eq!(history.items.len(), 1);
    assert_eq!(history.items[0].version_id, "v1");
    assert!(store
        .history("u", "a", None, 100)
        .await
        .unwrap()
        .items
        .is_empty());
}

/// The history pages newest first, each page strictly older than its cursor.
pub async fn deployment_history_pages_with_cursors(storage: &Storage) {
    let store = storage.deployments.as_ref();
    let mut sequences = Vec::new();
    for i in 0..7 {
        let version_id = format!("v{i}");
        let record = store
            .deploy("t", deployment("a", 1, Environment::Dev, &version_id))
            .await
            .unwrap();
        sequences.push(record.sequence);
    }
    store
        .deploy("t", deployment("b", 1, Environment::Dev, "other"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        let page = store.history("t", "a", before, 3).await.unwrap();
        assert!(page.items.len() <= 3);
        pages += 1;
        seen.extend(page.items.iter().map(|d| d.sequence));
        match page.next_cursor {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    sequences.reverse();
    assert_eq!(seen, sequences);
    assert_eq!(pages, 3);
}

/// Concurrent deploys leave one winner: the history's newest entry, each entry naming the
/// one before it.
pub async fn concurrent_deploys_leave_one_winner(storage: &Storage) {
    let store = storage.deployments.clone();
    in_parallel(8, move |i| {
        let store = store.clone();
        Box::pin(async move {
            let version_id = format!("v{}", i % 3);
            store
                .deploy(
                    "t",
                    deployment("a", 1, Environment::Production, &version_id),
                )
                .await
                .unwrap();
        })
    });
    let store = storage.deployments.as_ref();
    let history = store.history("t", "a", None, 100).await.unwrap().items;
    assert_eq!(history.len(), 8);
    let current = store
        .get("t", "a", 1, Environment::Production)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(history[0], current);
    for pair in history.windows(2) {
        assert_eq!(
            pair[0].previous_version_id.as_deref(),
            Some(pair[1].version_id.as_str())
        );
        assert!(pair[0].sequence > pair[1].sequence);
    }
    assert_eq!(history[7].previous_version_id, None);
}

fn link(tenant: &str, agent: &str, hash: u8, conversation_id: Uuid) -> ConversationLink {
    ConversationLink {
        tenant: tenant.into(),
        agent: agent.into(),
        hash: [hash; 32],
        conversation_id,
    }
}

/// Links are found by tenant, agent and hash; a later link under a hash replaces it.
pub async fn conversation_links_are_found_and_replaced(storage: &Storage) {
    let store = storage.conversations.as_ref();
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    assert_eq!(store.find("t", "a", &[1; 32]).await.unwrap(), None);
    store
        .link_batch(&[
            link("t", "a", 1, ids[0]),
            link("t", "a", 2, ids[1]),
            link("t", "ab", 1, ids[2]),
            link("u", "a", 1, ids[3]),
        ])
        .await
        .unwrap();
    assert_eq!(store.find("t", "a", &[1; 32]).await.unwrap(), Some(ids[0]));
    assert_eq!(store.find("t", "a", &[2; 32]).await.unwrap(), Some(ids[1]));
    assert_eq!(store.find("t", "ab", &[1; 32]).await.unwrap(), Some(ids[2]));
    assert_eq!(store.find("u", "a", &[1; 32]).await.unwrap(), Some(ids[3]));
    assert_eq!(store.find("t", "a", &[3; 32]).await.unwrap(), None);
    store
        .link_batch(&[link("t", "a", 1, ids[4])])
        .await
        .unwrap();
    assert_eq!(store.find("t", "a", &[1; 32]).await.unwrap(), Some(ids[4]));
    store.link_batch(&[]).await.unwrap();
}

fn answer(text: &str, stored_at_ms: u64) -> StoredAnswer {
    use crate::completion::{AssistantMessage, Choice, Completion, FinishReason};
    StoredAnswer {
        completion: Completion {
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    content: Some(text.into()),
                    ..AssistantMessage::default()
                },
                finish_reason: FinishReason::Stop,
            }],
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                ..Usage::default()
            },
        },
        model: "m".into(),
        provider: "p".into(),
        provider_model: "pm".into(),
        source_run_id: Uuid::now_v7(),
        stored_at_ms,
    }
}

fn cache_key(n: u8) -> CacheKey {
    CacheKey::from_bytes([n; 32])
}

fn stored_size(outcome: PutOutcome) -> u64 {
    match outcome {
        PutOutcome::Stored { size, .. } => size,
        PutOutcome::TooLarge { .. } => panic!("not stored: {outcome:?}"),
    }
}

/// An answer reads back whole, with its store time and last use; storing again replaces it.
pub async fn answers_read_back_with_their_times(storage: &Storage) {
    let store = storage.answers.as_ref();
    let key = cache_key(1);
    assert!(store.get(&key).await.unwrap().is_none());
    let first = answer("first", 1_000);
    let outcome = store.put(&key, &first, 1_500, u64::MAX).await.unwrap();
    let PutOutcome::Stored { size, replaced } = outcome else {
        panic!("not stored: {outcome:?}")
    };
    assert_eq!(replaced, None);
    assert!(size > 0);
    let entry = store.get(&key).await.unwrap().unwrap();
    assert_eq!(entry.answer, first);
    assert_eq!(entry.last_use_ms, 1_500);
    assert_eq!(
        store.totals().await.unwrap(),
        AnswerTotals {
            bytes: size,
            entries: 1
        }
    );
    let second = answer("the second, longer answer", 2_000);
    let outcome = store.put(&key, &second, 2_000, u64::MAX).await.unwrap();
    let PutOutcome::Stored {
        size: second_size,
        replaced,
    } = outcome
    else {
        panic!("not stored: {outcome:?}")
    };
    assert_eq!(replaced, Some(size));
    assert!(second_size > size);
    assert_eq!(store.get(&key).await.unwrap().unwrap().answer, second);
    assert_eq!(
        store.totals().await.unwrap(),
        AnswerTotals {
            bytes: second_size,
            entries: 1
        }
    );
    assert!(store.get(&cache_key(2)).await.unwrap().is_none());
}

/// An answer larger than allowed is not stored, and replaces nothing.
pub async fn answers_larger_than_allowed_are_not_stored(storage: &Storage) {
    let store = storage.answers.as_ref();
    let key = cache_key(1);
    let kept = answer("a", 0);
    let small = stored_size(store.put(&key, &kept, 0, u64::MAX).await.unwrap());
    let big = answer(&"z".repeat(4096), 0);
    match store.put(&key, &big, 0, small + 100).await.unwrap() {
        PutOutcome::TooLarge { size } => assert!(size > small + 100),
        other => panic!("stored: {other:?}"),
    }
    assert_eq!(store.get(&key).await.unwrap().unwrap().answer, kept);
    assert_eq!(store.totals().await.unwrap().entries, 1);
}

/// The eviction order is least recently used first; a touch moves an entry to the young end,
/// never back; a removal takes the entry out of it.
pub async fn answers_evict_least_recently_used_first(storage: &Storage) {
    let store = storage.answers.as_ref();
    let (a, b, c) = (cache_key(1), cache_key(2), cache_key(3));
    assert_eq!(store.oldest().await.unwrap(), None);
    let size_a = stored_size(store.put(&a, &answer("a", 10), 10, u64::MAX).await.unwrap());
    let size_b = stored_size(store.put(&b, &answer("b", 20), 20, u64::MAX).await.unwrap());
    let size_c = stored_size(store.put(&c, &answer("c", 30), 30, u64::MAX).await.unwrap());
    assert_eq!(store.oldest().await.unwrap(), Some((10, a)));
    store.touch(&a, 40).await.unwrap();
    assert_eq!(store.oldest().await.unwrap(), Some((20, b)));
    assert_eq!(store.get(&a).await.unwrap().unwrap().last_use_ms, 40);
    // Never back in time.
    store.touch(&b, 5).await.unwrap();
    assert_eq!(store.oldest().await.unwrap(), Some((20, b)));
    // A touch of nothing stores nothing.
    store.touch(&cache_key(9), 50).await.unwrap();
    assert!(store.get(&cache_key(9)).await.unwrap().is_none());
    assert_eq!(store.remove(&b).await.unwrap(), Some(size_b));
    assert_eq!(store.remove(&b).await.unwrap(), None);
    assert!(store.get(&b).await.unwrap().is_none());
    assert_eq!(store.oldest().await.unwrap(), Some((30, c)));
    assert_eq!(
        store.totals().await.unwrap(),
        AnswerTotals {
            bytes: size_a + size_c,
            entries: 2
        }
    );
    store.remove(&c).await.unwrap();
    store.remove(&a).await.unwrap();
    assert_eq!(store.oldest().await.unwrap(), None);
    assert_eq!(store.totals().await.unwrap(), AnswerTotals::default());
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
        model: String::new(),
    };
    let query = |tenant: &str, agents: &[&str], sources: &[RunSource], hours| StatsQuery {
        tenant: tenant.into(),
        agents: agents.iter().map(|a| a.to_string()).collect(),
        sources: sources.to_vec(),
        hours,
        latency: true,
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

/// Sessions: found by their id digest until they expire (and not after), a sign-out deletes
/// one, a key's revocation deletes all of its sessions and only those, expired ones are
/// purged; what the store keeps opens only with the session's id.
pub async fn session_store(storage: &Storage) {
    let store = storage.sessions.as_ref();
    let now = 1_000_000;
    let made = |key: &str, tenant: &str, admin: Option<&str>, ttl: u64| {
        crate::sessions::new_session(key, tenant.into(), admin.map(String::from), now, ttl).unwrap()
    };
    let alice = made("key-a", "acme", None, 1_000);
    let alice_too = made("key-a", "acme", None, 1_000);
    let admin = made("key-admin", "beta", Some("ops"), 1_000);
    let short = made("key-b", "acme", None, 10);
    for s in [&alice, &alice_too, &admin, &short] {
        store.put(&s.record).await.unwrap();
    }
    assert!(store.get("no-such-digest", now).await.unwrap().is_none());
    let back = store
        .get(&alice.record.id_digest, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, alice.record);
    let open = crate::sessions::open(&alice.id, &back).unwrap();
    assert_eq!((open.key.as_str(), open.tenant.as_str()), ("key-a", "acme"));
    assert!(crate::sessions::open(&admin.id, &back).is_none());
    let back = store
        .get(&admin.record.id_digest, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.admin.as_deref(), Some("ops"));

    // Expiry: gone at its end, whether or not it was purged.
    assert!(store
        .get(&short.record.id_digest, now + 9)
        .await
        .unwrap()
        .is_some());
    assert!(store
        .get(&short.record.id_digest, now + 10)
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.delete_expired(now + 10).await.unwrap(), 1);
    assert!(store
        .get(&short.record.id_digest, now)
        .await
        .unwrap()
        .is_none());

    // Sign-out: that session only.
    assert!(store.delete(&alice_too.record.id_digest).await.unwrap());
    assert!(!store.delete(&alice_too.record.id_digest).await.unwrap());
    assert!(store
        .get(&alice_too.record.id_digest, now)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get(&alice.record.id_digest, now)
        .await
        .unwrap()
        .is_some());

    // A revoked key: all of its sessions, no other.
    let alice_again = made("key-a", "acme", None, 1_000);
    store.put(&alice_again.record).await.unwrap();
    let key_a = crate::keys::digest_hex("key-a");
    assert_eq!(store.delete_for_key(&key_a).await.unwrap(), 2);
    for s in [&alice, &alice_again] {
        assert!(store.get(&s.record.id_digest, now).await.unwrap().is_none());
    }
    assert!(store
        .get(&admin.record.id_digest, now)
        .await
        .unwrap()
        .is_some());
    assert_eq!(store.delete_for_key(&key_a).await.unwrap(), 0);
}

/// Keys: a put replaces, every key comes back (revoked ones too), usage replaces per subject.
pub async fn key_store(storage: &Storage) {
    use crate::keys::{Budget, KeyRecord, Limits, Period, Spend};
    use crate::storage::SubjectUsage;
    let store = storage.keys.as_ref();
    let key = |id: &str, rpm: Option<u32>| KeyRecord {
        id: id.into(),
        name: format!("name of {id}"),
        tenant: "t1".into(),
        digest: format!("digest-{id}"),
        prefix: "fg-abcde".into(),
        created_ms: 1,
        expires_ms: None,
        revoked_ms: None,
        models: vec!["gpt-*".into()],
        agents: vec![],
        limits: Limits {
            rpm,
            tpm: None,
            max_parallel: Some(2),
            budgets: vec![Budget {
                period: Period::Day,
                usd: 1.5,
                soft_usd: None,
            }],
        },
    };
    assert!(store.all().await.unwrap().is_empty());
    store.put(&key("k1", Some(5))).await.unwrap();
    store.put(&key("k2", None)).await.unwrap();
    let mut revoked = key("k1", Some(7));
    revoked.revoked_ms = Some(9);
    store.put(&revoked).await.unwrap();
    let mut all = store.all().await.unwrap();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(all, vec![revoked, key("k2", None)]);

    let usage = |usd: f64| SubjectUsage {
        spends: vec![Spend {
            period: Period::Day,
            start_ms: 86_400_000,
            usd,
            warned: false,
        }],
        last_used_ms: Some(42),
    };
    store
        .put_usage(&[
            ("key:k1".into(), usage(0.5)),
            ("tenant:t1".into(), usage(1.0)),
        ])
        .await
        .unwrap();
    store
        .put_usage(&[("key:k1".into(), usage(0.75))])
        .await
        .unwrap();
    let mut back = store.usage().await.unwrap();
    back.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        back,
        vec![
            ("key:k1".into(), usage(0.75)),
            ("tenant:t1".into(), usage(1.0))
        ]
    );
}

/// Evaluations: items stay distinct and in order within the bound, a person's review is never
/// replaced by the AI's, benchmarks and their results read back, all scoped to the tenant.
pub async fn eval_store(storage: &Storage) {
    use crate::evals::{
        BenchResult, BenchStatus, Benchmark, Candidate, Dataset, DatasetItem, Review, Reviewer,
        ReviewerConfig, Verdict,
    };
    let store = storage.evals.as_ref();
    let dataset = |tenant: &str, name: &str| Dataset {
        tenant: tenant.into(),
        agent: "a".into(),
        name: name.into(),
        description: None,
        created_ms: 1,
    };
    let item = |n: u32| {
        DatasetItem {
            input_hash: String::new(),
            input: Some(json!({ "n": n })),
            messages: None,
            expected: Some(n.to_string()),
            note: None,
            source_run: None,
        }
        .hashed()
    };
    let d1 = dataset("t1", "golden");
    store.put_dataset(&d1).await.unwrap();
    store.put_dataset(&dataset("t2", "golden")).await.unwrap();
    assert_eq!(store.datasets("t1", "a").await.unwrap(), vec![d1.clone()]);
    assert!(store.dataset("t1", "a", "other").await.unwrap().is_none());
    let items: Vec<DatasetItem> = [3, 1, 3, 2].into_iter().map(item).collect();
    assert_eq!(store.add_items(&d1, &items, 10).await.unwrap(), 3);
    // Again: nothing new; past the bound: nothing more.
    assert_eq!(store.add_items(&d1, &items, 10).await.unwrap(), 0);
    assert_eq!(
        store.add_items(&d1, &[item(7), item(8)], 4).await.unwrap(),
        1
    );
    let back: Vec<String> = store
        .items(&d1)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.expected.unwrap())
        .collect();
    assert_eq!(back, ["3", "1", "2", "7"]);
    assert!(store
        .items(&dataset("t2", "golden"))
        .await
        .unwrap()
        .is_empty());

    let review = |verdict: Verdict, reviewer: Reviewer| Review {
        tenant: "t1".into(),
        agent: "a".into(),
        input_hash: "in".into(),
        output_hash: "out".into(),
        verdict,
        comment: None,
        reviewer,
        input: None,
        output: Some("42".into()),
        created_ms: 5,
    };
    let ai = Reviewer::Ai {
        model: "judge".into(),
        run_id: Uuid::now_v7(),
    };
    let user = Reviewer::User { who: "ann".into() };
    store
        .put_review(&review(Verdict::Positive, ai.clone()))
        .await
        .unwrap();
    let kept = store
        .put_review(&review(Verdict::Negative, user.clone()))
        .await
        .unwrap();
    assert_eq!(kept.verdict, Verdict::Negative);
    let kept = store
        .put_review(&review(Verdict::Positive, ai))
        .await
        .unwrap();
    assert_eq!(kept.reviewer, user);
    let read = store.review("t1", "a", "in", "out").await.unwrap().unwrap();
    assert_eq!(read.verdict, Verdict::Negative);
    assert!(store
        .review("t2", "a", "in", "out")
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.reviews("t1", "a", 10).await.unwrap().len(), 1);

    let config = ReviewerConfig {
        instructions: "be strict".into(),
        model: "judge".into(),
    };
    store.put_reviewer("t1", "a", &config).await.unwrap();
    assert_eq!(store.reviewer("t1", "a").await.unwrap(), Some(config));
    assert!(store.reviewer("t2", "a").await.unwrap().is_none());

    let mut bench = Benchmark {
        id: Uuid::now_v7(),
        tenant: "t1".into(),
        agent: "a".into(),
        dataset: "golden".into(),
        candidates: vec![Candidate {
            version_id: None,
            model: Some("m".into()),
        }],
        total: 4,
        concurrency: 2,
        use_cache: false,
        status: BenchStatus::Running,
        created_ms: 1,
        finished_ms: None,
        error: None,
    };
    store.put_benchmark(&bench).await.unwrap();
    assert_eq!(store.running().await.unwrap(), vec![bench.clone()]);
    for item in [1u32, 0] {
        let result = BenchResult {
            candidate: 0,
            item,
            input_hash: "h".into(),
            run_id: None,
            output: Some("o".into()),
            cost_usd: 0.5,
            duration_seconds: 1.0,
            error: None,
            verdict: Some(Verdict::Positive),
            reason: None,
        };
        store.put_result(bench.id, &result).await.unwrap();
        // Idempotent on the pair.
        store.put_result(bench.id, &result).await.unwrap();
    }
    let results = store.results(bench.id).await.unwrap();
    assert_eq!(results.iter().map(|r| r.item).collect::<Vec<_>>(), [0, 1]);
    bench.status = BenchStatus::Done;
    store.put_benchmark(&bench).await.unwrap();
    assert!(store.running().await.unwrap().is_empty());
    assert_eq!(
        store.benchmarks("t1", "a").await.unwrap(),
        vec![bench.clone()]
    );
    assert!(store.benchmark("t2", bench.id).await.unwrap().is_none());
}

// ---- retention ----

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A run of `tenant`'s `agent` that started at `ms`, asked and answered with `text`, with a
/// conversation link.
pub fn run_at(tenant: &str, agent: &str, ms: u64, text: &str) -> RunRecord {
    let mut run = run(tenant, agent);
    run.id = Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        ms / 1000,
        (ms % 1000) as u32 * 1_000_000,
    ));
    let request = json!({"messages": [{"role": "user", "content": format!("ask {text}")}]});
    run.request = Some(serde_json::value::RawValue::from_string(request.to_string()).unwrap());
    run.output = Some(answer(text, 0).completion);
    run.usage = Usage {
        prompt_tokens: 3,
        completion_tokens: 4,
        ..Usage::default()
    };
    run
}

/// The stats increments the recorder writes for `runs`: one per key.
pub(crate) fn increments(
    runs: &[Box<RunRecord>],
) -> Vec<(crate::stats::StatsKey, crate::stats::Aggregate)> {
    let mut sums: std::collections::HashMap<_, crate::stats::Aggregate> = Default::default();
    for run in runs {
        let view = crate::stats::RunView::from(run.as_ref());
        sums.entry(view.key()).or_default().add(&view);
    }
    sums.into_iter().collect()
}

fn search_query(filters: serde_json::Value) -> crate::search::RunQuery {
    let body: crate::search::SearchBody =
        serde_json::from_value(json!({"field_queries": filters, "limit": 100})).unwrap();
    crate::search::RunQuery::parse(body, true).unwrap()
}

async fn search_ids(
    runs: &dyn RunStore,
    agent: Option<&str>,
    filters: serde_json::Value,
) -> Vec<Uuid> {
    let scope = super::SearchScope {
        tenant: "t".into(),
        agent: agent.map(str::to_string),
    };
    let page = runs.search(&scope, &search_query(filters)).await.unwrap();
    page.items.iter().map(|r| r.id).collect()
}

/// Retention deletes the oldest runs, in bounded batches, with everything that points at them
/// or counts them; the runs left, their stats and their links are untouched.
pub async fn runs_are_pruned_oldest_first_with_what_points_at_them(storage: &Storage) {
    use super::{PruneBatch, StatsQuery};
    use crate::agents::{FeedbackRecord, Outcome};
    use crate::stats::{hour_of, DAY_MS, HOUR_MS};

    let now = now_ms();
    // Three days old, over two hours: four runs of `a`, two of `b` (which has no other).
    let old: Vec<Box<RunRecord>> = (0..6u64)
        .map(|i| {
            let agent = if i < 4 { "a" } else { "b" };
            // Texts of their own: each run has a conversation link of its own.
            let text = if i == 0 {
                "zebra old".into()
            } else {
                format!("plain old {i}")
            };
            let mut run = run_at("t", agent, now - 3 * DAY_MS + i * 20 * 60_000, &text);
            // A replay whose link an earlier release filed: deleted with it all the same.
            if i == 1 {
                run.source = crate::recorder::run::RunSource::Replay;
            }
            Box::new(run)
        })
        .collect();
    let young: Vec<Box<RunRecord>> = (0..3u64)
        .map(|i| {
            let text = if i == 0 {
                "zebra young".into()
            } else {
                format!("plain young {i}")
            };
            Box::new(run_at("t", "a", now - HOUR_MS + i * 1000, &text))
        })
        .collect();
    let all: Vec<Box<RunRecord>> = old.iter().chain(&young).cloned().collect();
    storage.runs.insert_batch(&all).await.unwrap();
    // Written again (a retried batch): counted once.
    storage.runs.insert_batch(&all).await.unwrap();
    storage.stats.add_batch(&increments(&all)).await.unwrap();
    let links: Vec<ConversationLink> = all
        .iter()
        .filter_map(|r| crate::agents::conversation::filed_link_of(r))
        .collect();
    assert_eq!(links.len(), all.len());
    storage.conversations.link_batch(&links).await.unwrap();
    let feedback = FeedbackRecord::new(old[0].id, Outcome::Positive, None, None).unwrap();
    storage.feedback.put(&feedback).await.unwrap();
    let young_feedback = FeedbackRecord::new(young[0].id, Outcome::Negative, None, None).unwrap();
    storage.feedback.put(&young_feedback).await.unwrap();
    storage
        .shares
        .share("t", old[0].id, "tok-old")
        .await
        .unwrap();
    storage
        .shares
        .share("t", young[0].id, "tok-young")
        .await
        .unwrap();
    assert_eq!(storage.runs.footprint().await.unwrap().runs, 9);

    // Bounded batches, oldest first.
    let cut = now - DAY_MS;
    let batch = |max_runs| PruneBatch {
        before_ms: cut,
        max_runs,
    };
    assert_eq!(storage.runs.prune(batch(4)).await.unwrap().runs, 4);
    assert!(storage.runs.get("t", old[3].id).await.unwrap().is_none());
    assert!(storage.runs.get("t", old[4].id).await.unwrap().is_some());
    assert_eq!(storage.runs.prune(batch(100)).await.unwrap().runs, 2);
    assert_eq!(storage.runs.prune(batch(100)).await.unwrap().runs, 0);

    // Gone from reads, lists and searches; the young runs are all there.
    for run in &old {
        assert!(storage.runs.get("t", run.id).await.unwrap().is_none());
    }
    for run in &young {
        assert!(storage.runs.get("t", run.id).await.unwrap().is_some());
    }
    let newest_first: Vec<Uuid> = young.iter().rev().map(|r| r.id).collect();
    let listed = storage.runs.list_agent("t", "a", None, 100).await.unwrap();
    assert_eq!(
        listed.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        newest_first
    );
    assert!(storage
        .runs
        .list_agent("t", "b", None, 100)
        .await
        .unwrap()
        .items
        .is_empty());
    assert_eq!(
        search_ids(storage.runs.as_ref(), None, json!([])).await,
        newest_first
    );
    let zebra = json!([{"field": "text", "operator": "contains", "values": ["zebra"]}]);
    assert_eq!(
        search_ids(storage.runs.as_ref(), None, zebra.clone()).await,
        vec![young[0].id]
    );
    assert_eq!(
        search_ids(storage.runs.as_ref(), Some("a"), zebra).await,
        vec![young[0].id]
    );

    // The stats count exactly the runs left: the old hours are gone, and so is `b`.
    let query = StatsQuery {
        tenant: "t".into(),
        agents: vec!["a".into(), "b".into()],
        sources: vec![RunSource::Api],
        hours: hour_of(now - 4 * DAY_MS)..hour_of(now) + 1,
        latency: true,
    };
    let found = storage.stats.read(&query).await.unwrap();
    assert!(found.iter().all(|(key, _)| key.hour >= hour_of(cut)));
    let mut total = crate::stats::Aggregate::default();
    for (_, sums) in &found {
        total.merge(sums);
    }
    assert_eq!(total.runs, 3);
    assert!((total.cost_usd - 0.75).abs() < 1e-9);
    assert_eq!((total.prompt_tokens, total.completion_tokens), (9, 12));
    assert_eq!(total.latency.count(), 3);
    let agents = storage.stats.agents("t", 10).await.unwrap();
    assert_eq!(
        agents.iter().map(|a| a.agent.as_str()).collect::<Vec<_>>(),
        vec!["a"]
    );

    // What pointed at the deleted runs is gone; what points at the others is not.
    assert!(storage
        .feedback
        .for_run(old[0].id)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        storage.feedback.for_run(young[0].id).await.unwrap(),
        vec![young_feedback]
    );
    assert!(storage.shares.get("tok-old").await.unwrap().is_none());
    assert!(storage.shares.get("tok-young").await.unwrap().is_some());
    for (link, run) in links.iter().zip(&all) {
        let found = storage
            .conversations
            .find(&link.tenant, &link.agent, &link.hash)
            .await
            .unwrap();
        let kept = young.iter().any(|y| y.id == run.id);
        assert_eq!(found, kept.then_some(link.conversation_id), "{}", run.id);
    }
    assert_eq!(storage.runs.footprint().await.unwrap().runs, 3);
}

/// Retention deletes a version with its last run (its record, its statistics, its value in
/// the search's list of versions), and keeps a version that still has a run, one that a
/// deployment names (even a past one) and one that never ran.
pub async fn versions_leave_with_their_last_run_unless_deployed(storage: &Storage) {
    use crate::stats::{DAY_MS, HOUR_MS};

    let now = now_ms();
    let at = |ms: u64| {
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string()
    };
    let versioned = |ms: u64, v: &str| {
        let mut run = run_at("t", "a", ms, v);
        run.version_id = Some(v.to_string());
        run.created_at = at(ms);
        Box::new(run)
    };
    let old = now - 3 * DAY_MS;
    let runs = vec![
        versioned(old, "v-gone"),
        versioned(old + 1000, "v-gone"),
        versioned(old + 2000, "v-kept"),
        versioned(old + 3000, "v-deployed"),
        versioned(old + 4000, "v-was-deployed"),
        versioned(now - HOUR_MS, "v-kept"),
    ];
    for id in [
        "v-gone",
        "v-kept",
        "v-deployed",
        "v-was-deployed",
        "v-never-ran",
    ] {
        storage
            .versions
            .insert("t", "a", &version(id, 1))
            .await
            .unwrap();
    }
    storage.runs.insert_batch(&runs).await.unwrap();
    // Each run counted in its version's statistics, as the recorder does.
    let counted: Vec<(VersionKey, VersionStats)> = runs
        .iter()
        .map(|run| {
            let version = run.version_id.as_deref().unwrap();
            let mut one = stats(1);
            one.first_used_at = Some(run.created_at.clone());
            one.last_used_at = Some(run.created_at.clone());
            (version_key("t", "a", version), one)
        })
        .collect();
    storage.versions.add_stats(&counted).await.unwrap();
    let prod = Environment::Production;
    storage
        .deployments
        .deploy("t", deployment("a", 1, prod, "v-was-deployed"))
        .await
        .unwrap();
    storage
        .deployments
        .deploy("t", deployment("a", 1, prod, "v-deployed"))
        .await
        .unwrap();

    let pruned = storage
        .runs
        .prune(super::PruneBatch {
            before_ms: now - DAY_MS,
            max_runs: 100,
        })
        .await
        .unwrap();
    assert_eq!(pruned.runs, 5);

    let versions = storage.versions.as_ref();
    assert!(versions.get("t", "a", "v-gone").await.unwrap().is_none());
    assert_eq!(
        versions
            .stats(&version_key("t", "a", "v-gone"))
            .await
            .unwrap(),
        None
    );
    let page = versions.page("t", "a", None, 100).await.unwrap();
    let mut listed: Vec<&str> = page.items.iter().map(|(v, _)| v.id.as_str()).collect();
    listed.sort_unstable();
    assert_eq!(
        listed,
        ["v-deployed", "v-kept", "v-never-ran", "v-was-deployed"]
    );
    let kept = versions
        .stats(&version_key("t", "a", "v-kept"))
        .await
        .unwrap();
    assert_eq!(kept.map(|s| s.run_count), Some(2));
    let deployed = versions
        .stats(&version_key("t", "a", "v-deployed"))
        .await
        .unwrap();
    assert_eq!(deployed.map(|s| s.run_count), Some(1));
    let scope = super::SearchScope {
        tenant: "t".into(),
        agent: Some("a".into()),
    };
    let values = storage.runs.field_values(&scope, 100).await.unwrap();
    let version_values = values
        .get(&crate::search::IndexedField::Version)
        .cloned()
        .unwrap_or_default();
    assert!(
        !version_values.iter().any(|v| v == "v-gone"),
        "{version_values:?}"
    );
    assert!(
        version_values.iter().any(|v| v == "v-kept"),
        "{version_values:?}"
    );

    // Used again, the version comes back.
    storage
        .versions
        .insert("t", "a", &version("v-gone", 1))
        .await
        .unwrap();
    assert!(versions.get("t", "a", "v-gone").await.unwrap().is_some());
}

/// The roll-up's rows of `tenant` over `days`, sorted, as `(day, agent, source, model, runs,
/// errors, cost in micro-dollars)`.
async fn day_rows(
    storage: &Storage,
    tenant: &str,
    sources: &[RunSource],
    days: std::ops::Range<u32>,
) -> Vec<(u32, String, &'static str, String, u64, u64, i64)> {
    let mut rows: Vec<_> = storage
        .stats
        .days(tenant, sources, days, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            assert_eq!(k.tenant, tenant);
            (
                k.day,
                k.agent,
                k.source.as_str(),
                k.model,
                t.runs,
                t.errors,
                (t.cost_usd * 1e6).round() as i64,
            )
        })
        .collect();
    rows.sort();
    rows
}

/// The daily roll-up: a batch's increments add up per day, agent, source and model (the
/// hours sum over models), a read returns one tenant's days of the asked sources, end
/// excluded, at most as many rows as asked.
pub async fn stats_roll_up_per_day_and_model(storage: &Storage) {
    use super::StatsQuery;
    use crate::stats::{Aggregate, StatsKey};

    let key = |tenant: &str, agent: &str, source: RunSource, hour: u32, model: &str| StatsKey {
        tenant: tenant.into(),
        agent: agent.into(),
        source,
        hour,
        model: model.into(),
    };
    let sums = |runs: u64, errors: u64, cost_usd: f64| Aggregate {
        runs,
        errors,
        cost_usd,
        last_run_ms: 1,
        ..Aggregate::default()
    };
    let (api, play) = (RunSource::Api, RunSource::Playground);
    // Day 10 is hours 240..264.
    let first = vec![
        (key("t", "a", api, 240, "gpt"), sums(2, 1, 0.5)),
        (key("t", "a", api, 240, "claude"), sums(1, 0, 0.25)),
        (key("t", "a", api, 263, "gpt"), sums(3, 0, 0.75)),
        (key("t", "a", api, 264, "gpt"), sums(4, 2, 1.0)),
        (key("t", "a", play, 241, "gpt"), sums(5, 0, 1.25)),
        (key("t", "b", api, 250, "gpt"), sums(1, 0, 0.125)),
        (key("u", "a", api, 240, "gpt"), sums(7, 0, 7.0)),
    ];
    storage.stats.add_batch(&first).await.unwrap();
    storage
        .stats
        .add_batch(&[(key("t", "a", api, 245, "claude"), sums(1, 1, 0.5))])
        .await
        .unwrap();

    let row = |day: u32, agent: &str, source: &'static str, model: &str, runs, errors, cost| {
        (
            day,
            agent.to_string(),
            source,
            model.to_string(),
            runs,
            errors,
            cost,
        )
    };
    assert_eq!(
        day_rows(storage, "t", &[api], 0..100).await,
        vec![
            row(10, "a", "api", "claude", 2, 1, 750_000),
            row(10, "a", "api", "gpt", 5, 1, 1_250_000),
            row(10, "b", "api", "gpt", 1, 0, 125_000),
            row(11, "a", "api", "gpt", 4, 2, 1_000_000),
        ]
    );
    // Sources as asked, the end excluded, another tenant's never.
    assert_eq!(
        day_rows(storage, "t", &[play], 0..100).await,
        vec![row(10, "a", "playground", "gpt", 5, 0, 1_250_000)]
    );
    assert_eq!(day_rows(storage, "t", &[api, play], 11..12).await.len(), 1);
    assert!(day_rows(storage, "t", &[api], 10..10).await.is_empty());
    assert!(day_rows(storage, "t", &[api], 12..100).await.is_empty());
    assert_eq!(
        day_rows(storage, "u", &[api, play], 0..100).await,
        vec![row(10, "a", "api", "gpt", 7, 0, 7_000_000)]
    );
    assert!(day_rows(storage, "v", &[api], 0..100).await.is_empty());
    assert_eq!(
        storage
            .stats
            .days("t", &[api, play], 0..100, 2)
            .await
            .unwrap()
            .len(),
        2
    );

    // The hours sum over models: one aggregate per hour, read back without a model.
    let found = storage
        .stats
        .read(&StatsQuery {
            tenant: "t".into(),
            agents: vec!["a".into()],
            sources: vec![api],
            hours: 240..241,
            latency: false,
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, key("t", "a", api, 240, ""));
    assert_eq!(found[0].1.runs, 3);
}

/// Retention takes the runs it deletes out of the daily roll-up, per model, as it takes them
/// out of the hours: the two count the same runs, and a day left with none has no row.
pub async fn retention_takes_deleted_runs_out_of_the_daily_roll_up(storage: &Storage) {
    use super::PruneBatch;
    use crate::stats::{hour_of, DAY_MS, HOUR_MS};

    let now = now_ms();
    let today = now - now % DAY_MS;
    let (day1, day2) = ((today / DAY_MS - 3) as u32, (today / DAY_MS - 2) as u32);
    // Day 1: three runs of `gpt` and two of `claude` (one of them an error), interleaved;
    // day 2: two of `gpt`.
    let models = ["gpt", "claude", "gpt", "claude", "gpt"];
    let mut runs: Vec<Box<RunRecord>> = models
        .iter()
        .enumerate()
        .map(|(i, model)| {
            let mut run = run_at("t", "a", today - 3 * DAY_MS + i as u64 * HOUR_MS, "x");
            run.model = Some(model.to_string());
            run.cost_usd = 0.5;
            if i == 3 {
                run.status = RunStatus::Error;
            }
            Box::new(run)
        })
        .collect();
    for i in 0..2u64 {
        let mut run = run_at("t", "a", today - 2 * DAY_MS + i * HOUR_MS, "y");
        run.model = Some("gpt".into());
        runs.push(Box::new(run));
    }
    storage.runs.insert_batch(&runs).await.unwrap();
    storage.stats.add_batch(&increments(&runs)).await.unwrap();
    let row = |day: u32, model: &str, runs, errors, cost| {
        (
            day,
            "a".to_string(),
            "api",
            model.to_string(),
            runs,
            errors,
            cost,
        )
    };
    let api = [RunSource::Api];
    let span = day1 - 1..day2 + 2;
    assert_eq!(
        day_rows(storage, "t", &api, span.clone()).await,
        vec![
            row(day1, "claude", 2, 1, 1_000_000),
            row(day1, "gpt", 3, 0, 1_500_000),
            row(day2, "gpt", 2, 0, 500_000),
        ]
    );

    // The first three runs of day 1 (gpt, claude, gpt).
    let before = |ms| PruneBatch {
        before_ms: ms,
        max_runs: 100,
    };
    let pruned = storage
        .runs
        .prune(before(today - 3 * DAY_MS + 2 * HOUR_MS + 1))
        .await
        .unwrap();
    assert_eq!(pruned.runs, 3);
    assert_eq!(
        day_rows(storage, "t", &api, span.clone()).await,
        vec![
            row(day1, "claude", 1, 1, 500_000),
            row(day1, "gpt", 1, 0, 500_000),
            row(day2, "gpt", 2, 0, 500_000),
        ]
    );
    // The rest of day 1: its rows go; the hours agree.
    let pruned = storage
        .runs
        .prune(before(today - 2 * DAY_MS))
        .await
        .unwrap();
    assert_eq!(pruned.runs, 2);
    assert_eq!(
        day_rows(storage, "t", &api, span.clone()).await,
        vec![row(day2, "gpt", 2, 0, 500_000)]
    );
    let hours = storage
        .stats
        .read(&super::StatsQuery {
            tenant: "t".into(),
            agents: vec!["a".into()],
            sources: api.to_vec(),
            hours: hour_of(today - 4 * DAY_MS)..hour_of(now) + 1,
            latency: false,
        })
        .await
        .unwrap();
    assert_eq!(hours.iter().map(|(_, s)| s.runs).sum::<u64>(), 2);
}

/// A run that started at or after the cut stays, however large the batch.
pub async fn pruning_never_deletes_a_run_younger_than_its_cut(storage: &Storage) {
    let base = now_ms() - 3_600_000;
    let runs: Vec<Box<RunRecord>> = (0..10u64)
        .map(|i| Box::new(run_at("t", "a", base + i * 1000, "text")))
        .collect();
    storage.runs.insert_batch(&runs).await.unwrap();
    storage.stats.add_batch(&increments(&runs)).await.unwrap();
    let pruned = storage
        .runs
        .prune(super::PruneBatch {
            before_ms: base + 5000,
            max_runs: usize::MAX,
        })
        .await
        .unwrap();
    assert_eq!(pruned.runs, 5);
    for (i, run) in runs.iter().enumerate() {
        let kept = storage.runs.get("t", run.id).await.unwrap().is_some();
        assert_eq!(kept, i >= 5, "run {i}");
    }
}

/// A size bound deletes as many of the oldest runs as bring their footprint under it, and a
/// second pass deletes nothing more, whatever the size on disk did.
pub async fn a_size_bound_prunes_the_oldest_runs_down_to_it(storage: &Storage) {
    use crate::recorder::retention::{prune_pass, RetentionPolicy};

    let now = now_ms();
    let filler = "lorem ipsum dolor sit amet ".repeat(80);
    let runs: Vec<Box<RunRecord>> = (0..100u64)
        .map(|i| {
            Box::new(run_at(
                "t",
                "a",
                now - 7_200_000 + i * 1000,
                &format!("{filler}{i}"),
            ))
        })
        .collect();
    storage.runs.insert_batch(&runs).await.unwrap();
    storage.stats.add_batch(&increments(&runs)).await.unwrap();
    storage.runs.flush().await.unwrap();
    let before = storage.runs.footprint().await.unwrap();
    assert_eq!(before.runs, 100);
    assert!(before.bytes > 100 * 2000, "{before:?}");
    let max_bytes = before.bytes / 2;
    let policy = RetentionPolicy {
        max_age: None,
        max_bytes: Some(max_bytes),
        protect: std::time::Duration::from_secs(60),
    };
    let report = prune_pass(storage.runs.as_ref(), &policy, now)
        .await
        .unwrap();
    let after = storage.runs.footprint().await.unwrap();
    assert_eq!(report.by_size, before.runs - after.runs);
    assert!(after.bytes <= max_bytes, "{after:?} over {max_bytes}");
    // Down to the low-water mark, not to nothing: about 40 of 100 runs stay.
    assert!((30..=50).contains(&after.runs), "{after:?}");
    assert!(storage.runs.get("t", runs[0].id).await.unwrap().is_none());
    assert!(storage.runs.get("t", runs[99].id).await.unwrap().is_some());
    let again = prune_pass(storage.runs.as_ref(), &policy, now)
        .await
        .unwrap();
    assert_eq!(again.by_size, 0);
    assert_eq!(storage.runs.footprint().await.unwrap(), after);
}
