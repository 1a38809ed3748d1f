//! The sled backend: everything in one embedded database in the data directory, nothing to
//! install. The default, for one process.

mod feedback;
mod runs;
mod search;
mod shares;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use feedback::SledFeedbackStore;
pub use runs::SledRunStore;
pub use shares::SledShareStore;

use super::{Storage, StorageError};

/// The sled database of a data directory and the stores on it.
pub struct SledStorage {
    db: ::sled::Db,
    runs: Arc<SledRunStore>,
    feedback: Arc<SledFeedbackStore>,
    shares: Arc<SledShareStore>,
}

impl SledStorage {
    /// Opens (or creates) the database in `dir`. sled writes its log to disk every
    /// `flush_every`, so what is stored survives `kill -9` once that much time has passed.
    /// Opens a data directory written by earlier releases as it is.
    pub fn open(dir: &Path, flush_every: Duration) -> Result<SledStorage, StorageError> {
        let db = ::sled::Config::new()
            .path(dir)
            // Writes are the store's main work (a run per request); it trades disk space for
            // less compaction work on them.
            .mode(::sled::Mode::HighThroughput)
            .flush_every_ms(Some(flush_every.as_millis().max(1) as u64))
            .open()
            .map_err(backend)?;
        let runs = Arc::new(SledRunStore::open(&db)?);
        let feedback = Arc::new(SledFeedbackStore::open(&db)?);
        let shares = Arc::new(SledShareStore::open(&db)?);
        Ok(SledStorage {
            db,
            runs,
            feedback,
            shares,
        })
    }

    /// The stores, for callers that do not care about the backend.
    pub fn storage(&self) -> Storage {
        Storage {
            runs: self.runs.clone(),
            feedback: self.feedback.clone(),
            shares: self.shares.clone(),
        }
    }

    /// The database, for the stores that are not behind a trait yet (the agents' store and
    /// the answer cache keep their trees in it).
    pub fn db(&self) -> &::sled::Db {
        &self.db
    }
}

pub(crate) fn backend(e: ::sled::Error) -> StorageError {
    StorageError::Backend(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance;

    fn open() -> (tempfile::TempDir, SledStorage) {
        let dir = tempfile::tempdir().unwrap();
        let storage = SledStorage::open(dir.path(), Duration::from_millis(50)).unwrap();
        (dir, storage)
    }

    #[actix_rt::test]
    async fn sled_passes_the_run_store_conformance_suite() {
        let (_dir, storage) = open();
        conformance::run_store(storage.storage().runs.as_ref()).await;
    }

    #[actix_rt::test]
    async fn sled_passes_the_run_search_conformance_suite() {
        let (_dir, storage) = open();
        let stores = storage.storage();
        conformance::run_search(stores.runs.as_ref(), stores.feedback.as_ref()).await;
    }

    #[actix_rt::test]
    async fn sled_passes_the_feedback_store_conformance_suite() {
        let (_dir, storage) = open();
        conformance::feedback_store(storage.storage().feedback.as_ref()).await;
    }

    #[actix_rt::test]
    async fn sled_passes_the_share_store_conformance_suite() {
        let (_dir, storage) = open();
        conformance::share_store(storage.storage().shares.as_ref()).await;
    }

    #[actix_rt::test]
    async fn runs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let run = conformance::run("default", "a");
        {
            let storage = SledStorage::open(dir.path(), Duration::from_millis(50)).unwrap();
            let runs = storage.storage().runs;
            runs.insert_batch(&[Box::new(run.clone())]).await.unwrap();
            runs.flush().await.unwrap();
        }
        let storage = SledStorage::open(dir.path(), Duration::from_millis(50)).unwrap();
        let back = storage.storage().runs.get("default", run.id).await.unwrap();
        assert_eq!(back.map(|r| r.id), Some(run.id));
    }
}
