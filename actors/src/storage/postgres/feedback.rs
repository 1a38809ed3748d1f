//! Feedback on PostgreSQL: table `feedback`, one row per run (a feedback token is one vote),
//! its outcome beside the record for searches.

use std::sync::Arc;

use futures::future::BoxFuture;
use uuid::Uuid;

use super::{corrupt, pg_error, to_json, Db};
use crate::agents::{FeedbackRecord, Outcome};
use crate::storage::{FeedbackStore, StorageError};

pub struct PgFeedbackStore {
    db: Arc<Db>,
}

impl PgFeedbackStore {
    pub(super) fn new(db: Arc<Db>) -> PgFeedbackStore {
        PgFeedbackStore { db }
    }
}

/// The outcome as searches name it (`feedback is positive`).
fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Positive => "positive",
        Outcome::Negative => "negative",
    }
}

impl FeedbackStore for PgFeedbackStore {
    fn put<'a>(&'a self, record: &'a FeedbackRecord) -> BoxFuture<'a, Result<(), StorageError>> {
        let json = to_json("feedback", record);
        let (run_id, outcome) = (record.run_id, outcome_name(&record.outcome));
        self.db.run(move |client| async move {
            let json = json?;
            let statement = client
                .prepare_cached(
                    "INSERT INTO feedback (run_id, outcome, record) VALUES ($1, $2, $3::text::json)
                     ON CONFLICT (run_id) DO UPDATE
                     SET outcome = EXCLUDED.outcome, record = EXCLUDED.record",
                )
                .await
                .map_err(pg_error)?;
            client
                .execute(&statement, &[&run_id, &outcome, &json])
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }

    fn for_run(&self, run_id: Uuid) -> BoxFuture<'_, Result<Vec<FeedbackRecord>, StorageError>> {
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached("SELECT record::text FROM feedback WHERE run_id = $1")
                .await
                .map_err(pg_error)?;
            let rows = client
                .query(&statement, &[&run_id])
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|row| serde_json::from_str(row.get(0)).map_err(corrupt("feedback")))
                .collect()
        })
    }
}
