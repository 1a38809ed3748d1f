//! The sled backend: everything in one embedded database in the data directory, nothing to
//! install. The default, for one process.

mod feedback;
mod runs;
mod search;
mod stats;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use feedback::SledFeedbackStore;
pub use runs::SledRunStore;
pub use stats::SledStatsStore;

use super::{Storage, StorageError};

/// The sled database of a data directory and the stores on it.
pub struct SledStorage {
    db: ::sled::Db,
    runs: Arc<SledRunStore>,
    feedback: Arc<SledFeedbackStore>,
    stats: Arc<SledStatsStore>,
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
        let stats = Arc::new(SledStatsStore::open(&db)?);
        Ok(SledStorage {
            db,
            runs,
            feedback,
            stats,
        })
    }

    /// The stores, for callers that do not care about the backend.
    pub fn storage(&self) -> Storage {
        Storage {
            runs: self.runs.clone(),
            feedback: self.feedback.clone(),
            stats: self.stats.clone(),
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
    async fn sled_passes_the_stats_store_conformance_suite() {
        let (_dir, storage) = open();
        conformance::stats_store(storage.storage().stats.as_ref()).await;
    }

    #[actix_rt::test]
    async fn stats_are_built_once_for_the_runs_of_an_earlier_release() {
        use crate::stats::HOUR_MS;
        let dir = tempfile::tempdir().unwrap();
        let mut runs = Vec::new();
        for i in 0..6 {
            let mut run = conformance::run("t", if i < 4 { "a" } else { "b" });
            run.duration_seconds = 0.1 * f64::from(i + 1);
            runs.push(Box::new(run));
        }
        {
            // An earlier release's data directory: runs, no stats trees.
            let db = ::sled::Config::new().path(dir.path()).open().unwrap();
            let tree = db.open_tree("runs").unwrap();
            for run in &runs {
                tree.insert(run.id.as_bytes(), serde_json::to_vec(run.as_ref()).unwrap())
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let hour = (crate::search::id_millis(&runs[0].id) / HOUR_MS) as u32;
        let query = crate::storage::StatsQuery {
            tenant: "t".into(),
            agents: vec!["a".into(), "b".into()],
            sources: vec![crate::recorder::run::RunSource::Api],
            hours: hour - 1..hour + 2,
        };
        let counted = |storage: &SledStorage| {
            let stats = storage.storage().stats;
            let query = query.clone();
            async move {
                let found = stats.read(&query).await.unwrap();
                found.iter().map(|(_, sums)| sums.runs).sum::<u64>()
            }
        };
        {
            let storage = SledStorage::open(dir.path(), Duration::from_millis(50)).unwrap();
            assert_eq!(counted(&storage).await, 6);
            let agents = storage.storage().stats.agents("t", 10).await.unwrap();
            assert_eq!(agents.len(), 2);
            storage.storage().runs.flush().await.unwrap();
        }
        // Once: opening again counts nothing twice.
        let storage = SledStorage::open(dir.path(), Duration::from_millis(50)).unwrap();
        assert_eq!(counted(&storage).await, 6);
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
