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
