//! The sled backend: everything in one embedded database in the data directory, nothing to
//! install. The default, for one process.

mod agents;
mod cache;
mod evals;
mod feedback;
mod keys;
mod packs;
mod retention;
mod run_files;
mod runs;
mod search;
mod sessions;
mod shares;
mod stats;
mod stats_backfill;
mod text_blocks;
mod versions;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};

pub use agents::{SledConversationStore, SledDeploymentStore, SledSchemaStore};
pub use cache::SledAnswerStore;
pub use feedback::SledFeedbackStore;
pub use runs::SledRunStore;
pub use shares::SledShareStore;
pub use stats::SledStatsStore;
pub use versions::SledVersionStore;

use super::{Changes, Storage, StorageError};

/// sled's page cache unless `[storage] sled_cache_mb` says otherwise. sled's own default
/// (1 GiB) let a gateway that had recorded a few hundred thousand runs hold most of a GiB of
/// them in memory, and sled's node copies and garbage collection take about as much again as
/// the cache (heaptrack, `bench/memory.sh`); the pages a request reads (agents, versions,
/// cached answers, the newest runs) are few and hot, and listings and searches read the rest
/// from the OS's page cache.
pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// The sled database of a data directory and the stores on it, each on its own trees.
pub struct SledStorage {
    runs: Arc<SledRunStore>,
    feedback: Arc<SledFeedbackStore>,
    schemas: Arc<SledSchemaStore>,
    versions: Arc<SledVersionStore>,
    deployments: Arc<SledDeploymentStore>,
    conversations: Arc<SledConversationStore>,
    answers: Arc<SledAnswerStore>,
    shares: Arc<SledShareStore>,
    stats: Arc<SledStatsStore>,
    keys: Arc<keys::SledKeyStore>,
    evals: Arc<evals::SledEvalStore>,
    changes: Arc<Changes>,
    sessions: Arc<sessions::SledSessionStore>,
}

impl SledStorage {
    /// Opens (or creates) the database in `dir` with the default page cache
    /// ([`DEFAULT_CACHE_BYTES`]); see [`SledStorage::open_with_cache`].
    pub fn open(dir: &Path, flush_every: Duration) -> Result<SledStorage, StorageError> {
        Self::open_with_cache(dir, flush_every, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the database in `dir`. sled writes its log to disk every
    /// `flush_every`, so what is stored survives `kill -9` once that much time has passed.
    /// sled keeps up to about `cache_bytes` of its pages in memory (the rest is read from the
    /// files, usually from the OS's page cache). Opens a data directory written by earlier
    /// releases as it is.
    pub fn open_with_cache(
        dir: &Path,
        flush_every: Duration,
        cache_bytes: u64,
    ) -> Result<SledStorage, StorageError> {
        Self::open_with_segments(dir, flush_every, cache_bytes, run_files::SEGMENT_BYTES)
    }

    /// As [`SledStorage::open_with_cache`], with run files of `segment_bytes` (tests use
    /// small ones).
    fn open_with_segments(
        dir: &Path,
        flush_every: Duration,
        cache_bytes: u64,
        segment_bytes: u64,
    ) -> Result<SledStorage, StorageError> {
        let db = ::sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Writes are the store's main work (a run per request); it trades disk space for
            // less compaction work on them.
            .mode(::sled::Mode::HighThroughput)
            .flush_every_ms(Some(flush_every.as_millis().max(1) as u64))
            .open()
            .map_err(backend)?;
        let runs =
            run_files::RunRecords::open(&db, run_files::RunFiles::open(&db, dir, segment_bytes)?)?;
        // Before the runs: retention takes deleted runs out of the stats.
        let stats = Arc::new(SledStatsStore::open(&db, &runs)?);
        // Before the runs too: retention deletes the versions whose runs are all gone.
        let versions = Arc::new(SledVersionStore::open(&db)?);
        let deployments = Arc::new(SledDeploymentStore::open(&db)?);
        Ok(SledStorage {
            runs: Arc::new(SledRunStore::open(
                &db,
                runs,
                stats.as_ref().clone(),
                versions.as_ref().clone(),
                deployments.as_ref().clone(),
            )?),
            feedback: Arc::new(SledFeedbackStore::open(&db)?),
            schemas: Arc::new(SledSchemaStore::open(&db)?),
            versions,
            deployments,
            conversations: Arc::new(SledConversationStore::open(&db)?),
            answers: Arc::new(SledAnswerStore::open(&db)?),
            shares: Arc::new(SledShareStore::open(&db)?),
            stats,
            keys: Arc::new(keys::SledKeyStore::open(&db)?),
            evals: Arc::new(evals::SledEvalStore::open(&db)?),
            changes: Arc::new(Changes::local()),
            sessions: Arc::new(sessions::SledSessionStore::open(&db)?),
        })
    }

    /// The stores, for callers that do not care about the backend.
    pub fn storage(&self) -> Storage {
        Storage {
            runs: self.runs.clone(),
            feedback: self.feedback.clone(),
            schemas: self.schemas.clone(),
            versions: self.versions.clone(),
            deployments: self.deployments.clone(),
            conversations: self.conversations.clone(),
            answers: self.answers.clone(),
            shares: self.shares.clone(),
            stats: self.stats.clone(),
            keys: self.keys.clone(),
            evals: self.evals.clone(),
            changes: self.changes.clone(),
            sessions: self.sessions.clone(),
        }
    }
}

/// `tenant \0 agent \0`: the prefix of every key of an agent, in every tree keyed by agent.
fn agent_prefix(tenant: &str, agent: &str) -> Vec<u8> {
    // Room for what usually follows: a run or version id, a hash.
    let mut key = Vec::with_capacity(tenant.len() + agent.len() + 2 + 32);
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key.extend_from_slice(agent.as_bytes());
    key.push(0);
    key
}

/// Runs `work` on a blocking thread: a scan or a flush may wait for the disk.
fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> BoxFuture<'static, Result<T, StorageError>> {
    async move {
        tokio::task::spawn_blocking(|| after_writes(work()))
            .await
            .map_err(|e| StorageError::Backend(format!("a storage task failed: {e}")))?
    }
    .boxed()
}

/// Returns `result` once what sled deferred on this thread is handed over to be freed.
///
/// sled (0.34) frees what its writes replaced (old node versions, and each 512 KiB log buffer
/// once written) through crossbeam-epoch's deferred functions, which wait in the writing
/// thread's bag until 64 have gathered: up to 32 MB of buffers per thread. heaptrack under
/// `bench/memory.sh` found ~87 of those buffers alive at the peak (45 MB), freed in bursts
/// that left the allocator's pages fragmented. Every blocking-thread call ([`off_thread`]) ends
/// here, and so do the writes made per run or per request on the caller's thread (runs, stats,
/// versions and their statistics, conversation links, assignments, cached answers); the rare
/// ones (keys, sessions, evals, shares) leave theirs to the bag filling up.
fn after_writes<T>(result: T) -> T {
    crossbeam_epoch::pin().flush();
    result
}

/// `result`, answered at once, after [`after_writes`]: for the store calls that write in place
/// on the caller's thread (the recorder's, or a request's for a rare write).
fn written<'a, T: Send + 'a>(result: T) -> BoxFuture<'a, T> {
    futures::future::ready(after_writes(result)).boxed()
}

pub(crate) fn backend(e: ::sled::Error) -> StorageError {
    StorageError::Backend(e.to_string())
}

/// Opens the store in `dir`, waiting for a store dropped just before to let go of its lock
/// (sled's flusher thread holds it a moment after the last handle goes).
#[cfg(test)]
pub(crate) fn open_waiting(dir: &Path) -> SledStorage {
    wait_for_lock(|| SledStorage::open(dir, Duration::from_millis(50)))
}

/// The sled database in `dir`, opened again after a test dropped it (see [`open_waiting`]).
#[cfg(test)]
pub(crate) fn reopen_db(dir: &Path) -> ::sled::Db {
    wait_for_lock(|| ::sled::Config::new().path(dir).open().map_err(backend))
}

/// `open`'s value, trying again for up to 20 s while it fails on sled's file lock.
#[cfg(test)]
pub(crate) fn wait_for_lock<T>(mut open: impl FnMut() -> Result<T, StorageError>) -> T {
    let mut tries = 0;
    loop {
        match open() {
            Ok(opened) => return opened,
            Err(e) if tries < 400 && e.to_string().contains("lock") => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance;

    fn open() -> (tempfile::TempDir, SledStorage) {
        let dir = tempfile::tempdir().unwrap();
        let storage = open_waiting(dir.path());
        (dir, storage)
    }

    /// Retention deletes a run file once every run in it is deleted, and the runs kept read
    /// on.
    #[actix_rt::test]
    async fn retention_deletes_the_run_files_whose_runs_are_all_gone() {
        let dir = tempfile::tempdir().unwrap();
        let file_bytes = || run_files::segment_bytes(dir.path());
        let files = || run_files::segment_files(dir.path());
        // Small files: each batch below fills one.
        let sled = SledStorage::open_with_segments(
            dir.path(),
            Duration::from_millis(50),
            DEFAULT_CACHE_BYTES,
            2048,
        )
        .unwrap();
        let storage = sled.storage();
        let t0 = conformance::now_ms() - 3_600_000;
        let mut ids = Vec::new();
        for batch in 0..10u64 {
            let runs: Vec<Box<crate::recorder::run::RunRecord>> = (0..5u64)
                .map(|i| {
                    let run = conformance::run_at("t", "a", t0 + batch * 1000 + i, "some text");
                    Box::new(run)
                })
                .collect();
            ids.extend(runs.iter().map(|r| r.id));
            storage.runs.insert_batch(&runs).await.unwrap();
        }
        assert_eq!(files(), 10);
        let before = file_bytes();
        let pruned = storage
            .runs
            .prune(crate::storage::PruneBatch {
                before_ms: t0 + 4000,
                max_runs: 1000,
            })
            .await
            .unwrap();
        assert_eq!(pruned.runs, 20);
        assert_eq!(files(), 6, "the files of the first four batches are gone");
        assert!(file_bytes() < before);
        for (n, id) in ids.iter().enumerate() {
            let found = storage.runs.get("t", *id).await.unwrap();
            assert_eq!(found.is_some(), n >= 20, "run {n}");
        }
        // Every run deleted: only the file being written stays.
        storage
            .runs
            .prune(crate::storage::PruneBatch {
                before_ms: t0 + 20_000,
                max_runs: 1000,
            })
            .await
            .unwrap();
        assert_eq!(files(), 1);
        assert_eq!(storage.runs.footprint().await.unwrap().runs, 0);
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

    conformance::storage_tests!({
        let (dir, storage) = open();
        (dir, storage.storage())
    });

    #[actix_rt::test]
    async fn sled_passes_the_share_store_conformance_suite() {
        let (_dir, storage) = open();
        conformance::share_store(storage.storage().shares.as_ref()).await;
    }

    #[actix_rt::test]
    async fn sled_passes_the_stats_store_conformance_suite() {
        let (_dir, storage) = open();
        conformance::stats_store(storage.storage().stats.as_ref()).await;
    }

    /// sled (0.34) reads without a lock until the process's first `Batch` or transaction, on
    /// any of its databases; from then on every read takes a global reader-writer lock that
    /// batches and transactions take exclusively, and flushes hold while they wait for sled's
    /// I/O threads: under load the gateway deadlocked (a version stored on the request path
    /// waiting for the lock, the flushes holding it waiting for I/O threads that waited for
    /// it). No store may use either; this reads their sources for the calls.
    #[test]
    fn no_store_uses_a_sled_batch_or_transaction() {
        let sources = [
            ("agents.rs", include_str!("agents.rs")),
            ("cache.rs", include_str!("cache.rs")),
            ("evals.rs", include_str!("evals.rs")),
            ("feedback.rs", include_str!("feedback.rs")),
            ("keys.rs", include_str!("keys.rs")),
            ("mod.rs", include_str!("mod.rs")),
            ("packs.rs", include_str!("packs.rs")),
            ("run_files.rs", include_str!("run_files.rs")),
            ("runs.rs", include_str!("runs.rs")),
            ("search.rs", include_str!("search.rs")),
            ("sessions.rs", include_str!("sessions.rs")),
            ("shares.rs", include_str!("shares.rs")),
            ("stats.rs", include_str!("stats.rs")),
            ("stats_backfill.rs", include_str!("stats_backfill.rs")),
            ("text_blocks.rs", include_str!("text_blocks.rs")),
            ("versions.rs", include_str!("versions.rs")),
            ("retention.rs", include_str!("retention.rs")),
            ("../spool.rs", include_str!("../spool.rs")),
        ];
        let calls = [
            ".apply_batch(",
            ".transaction(",
            "Transactional",
            "Batch::default(",
        ];
        for (file, source) in sources {
            for (n, line) in source.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                // This test's own list (string literals) is the one place the names appear.
                if code.trim_start().starts_with('"') {
                    continue;
                }
                for call in calls {
                    if code.contains(call) {
                        panic!(
                            "storage/sled/{file}:{}: `{call}` (see this test's doc)",
                            n + 1
                        );
                    }
                }
            }
        }
        // Every file of the backend is read above.
        let listed = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/storage/sled"))
            .unwrap()
            .count();
        assert_eq!(
            listed,
            sources.len() - 1,
            "a file of storage/sled is not checked"
        );
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
            let db = crate::storage::sled::reopen_db(dir.path());
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
            latency: true,
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
            let storage = open_waiting(dir.path());
            assert_eq!(counted(&storage).await, 6);
            let agents = storage.storage().stats.agents("t", 10).await.unwrap();
            assert_eq!(agents.len(), 2);
            storage.storage().runs.flush().await.unwrap();
        }
        // Once: opening again counts nothing twice.
        let storage = open_waiting(dir.path());
        assert_eq!(counted(&storage).await, 6);
    }

    #[actix_rt::test]
    async fn version_values_come_from_the_versions_and_an_earlier_releases_go() {
        use crate::search::IndexedField;
        let dir = tempfile::tempdir().unwrap();
        {
            // An earlier release filed each run's version in `runs_values`.
            let db = crate::storage::sled::reopen_db(dir.path());
            let values = db.open_tree("runs_values").unwrap();
            values.insert(b"t\0a\0vold-version", &[]).unwrap();
            values.insert(b"t\0a\0mmodel-1", &[]).unwrap();
            db.flush().unwrap();
        }
        let storage = open_waiting(dir.path());
        let stores = storage.storage();
        let mut run = conformance::run("t", "a");
        run.version_id = Some("v-of-a-run".into());
        stores.runs.insert_batch(&[Box::new(run)]).await.unwrap();
        for (id, at) in [
            ("v-first", "2026-01-01T00:00:00.000Z"),
            ("v-second", "2026-01-02T00:00:00.000Z"),
        ] {
            let record = crate::agents::VersionRecord {
                id: id.into(),
                schema_id: 1,
                created_at: at.into(),
                properties: crate::agents::VersionProperties::of(
                    "m",
                    &serde_json::from_value(serde_json::json!({"model": "m", "messages": []}))
                        .unwrap(),
                ),
            };
            stores.versions.insert("t", "a", &record).await.unwrap();
        }
        let scope = crate::storage::SearchScope {
            tenant: "t".into(),
            agent: Some("a".into()),
        };
        let values = stores.runs.field_values(&scope, 10).await.unwrap();
        // The agent's stored versions (sorted); not the runs' (a run names a version stored
        // before it), not the earlier release's entry.
        assert_eq!(values[&IndexedField::Version], vec!["v-first", "v-second"]);
        assert!(values[&IndexedField::Model].contains(&"model-1".to_string()));
        // Past the bound, the newest.
        let newest = stores.runs.field_values(&scope, 1).await.unwrap();
        assert_eq!(newest[&IndexedField::Version], vec!["v-second"]);
        stores.runs.flush().await.unwrap();
        drop(stores);
        drop(storage);
        let db = wait_for_lock(|| {
            ::sled::Config::new()
                .path(dir.path())
                .open()
                .map_err(backend)
        });
        let values = db.open_tree("runs_values").unwrap();
        assert!(!values.contains_key(b"t\0a\0vold-version").unwrap());
        assert!(values.contains_key(b"t\0a\0mmodel-1").unwrap());
        // Nothing of the run's version was filed.
        assert!(!values.contains_key(b"t\0a\0vv-of-a-run").unwrap());
    }

    #[actix_rt::test]
    async fn runs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let run = conformance::run("default", "a");
        {
            let storage = open_waiting(dir.path());
            let runs = storage.storage().runs;
            runs.insert_batch(&[Box::new(run.clone())]).await.unwrap();
            runs.flush().await.unwrap();
        }
        let storage = open_waiting(dir.path());
        let back = storage.storage().runs.get("default", run.id).await.unwrap();
        assert_eq!(back.map(|r| r.id), Some(run.id));
    }
}
