//! Feedback on sled: in `run_feedback`, one entry per run keyed by the run id. Earlier releases
//! kept one entry per user (and per anonymous post) under the run id as a prefix: they are
//! still read, and replaced by the next post on their run.

use futures::future::BoxFuture;
use uuid::Uuid;

use super::{backend, off_thread};
use crate::agents::FeedbackRecord;
use crate::storage::{FeedbackStore, StorageError};

/// Cheap to clone (the tree is a handle).
#[derive(Clone)]
pub struct SledFeedbackStore {
    feedback: ::sled::Tree,
}

impl SledFeedbackStore {
    pub(super) fn open(db: &::sled::Db) -> Result<SledFeedbackStore, StorageError> {
        Ok(SledFeedbackStore {
            feedback: db.open_tree("run_feedback").map_err(backend)?,
        })
    }

    fn put_now(&self, record: &FeedbackRecord) -> Result<(), StorageError> {
        let key = record.run_id.as_bytes();
        let bytes = serde_json::to_vec(record)
            .map_err(|e| StorageError::Backend(format!("cannot serialize feedback: {e}")))?;
        for old in self.feedback.scan_prefix(key).keys() {
            let old = old.map_err(backend)?;
            if old.as_ref() != key {
                self.feedback.remove(old).map_err(backend)?;
            }
        }
        self.feedback.insert(key, bytes).map_err(backend)?;
        Ok(())
    }

    fn for_run_now(&self, run_id: Uuid) -> Result<Vec<FeedbackRecord>, StorageError> {
        self.feedback
            .scan_prefix(run_id.as_bytes())
            .map(|entry| {
                let (_, bytes) = entry.map_err(backend)?;
                serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt {
                    what: "feedback",
                    detail: e.to_string(),
                })
            })
            .collect()
    }
}

impl FeedbackStore for SledFeedbackStore {
    fn put<'a>(&'a self, record: &'a FeedbackRecord) -> BoxFuture<'a, Result<(), StorageError>> {
        let store = self.clone();
        let record = record.clone();
        off_thread(move || store.put_now(&record))
    }

    fn for_run(&self, run_id: Uuid) -> BoxFuture<'_, Result<Vec<FeedbackRecord>, StorageError>> {
        let store = self.clone();
        off_thread(move || store.for_run_now(run_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::Outcome;

    #[actix_rt::test]
    async fn feedback_in_the_format_of_earlier_releases_is_read_then_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled::reopen_db(dir.path());
        let store = SledFeedbackStore::open(&db).unwrap();
        let run = Uuid::now_v7();
        let mut old_key = run.as_bytes().to_vec();
        old_key.push(0);
        old_key.extend_from_slice(b"u0");
        let old = FeedbackRecord::new(run, Outcome::Positive, None, Some("u0".into())).unwrap();
        store
            .feedback
            .insert(old_key, serde_json::to_vec(&old).unwrap())
            .unwrap();
        assert_eq!(store.for_run(run).await.unwrap(), vec![old]);
        let new = FeedbackRecord::new(run, Outcome::Negative, None, None).unwrap();
        store.put(&new).await.unwrap();
        assert_eq!(store.for_run(run).await.unwrap(), vec![new]);
        assert_eq!(store.feedback.len(), 1);
    }
}
