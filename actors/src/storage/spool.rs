//! The local spool of runs, in front of a network run store (PostgreSQL): when the database is
//! unreachable or slow, finished runs are kept on the local disk (sled, bounded) and written
//! to the database when it answers again — oldest first, exactly once (the run store's writes
//! are idempotent on the run id, so a batch replayed after a crash replaces, never doubles).
//!
//! [`SpooledRunStore`] is a [`RunStore`]: the recorder writes to it as to any store. A batch
//! goes straight to the database while the spool is empty and the database answers within
//! [`DIRECT_WRITE_TIMEOUT`]; otherwise it is appended to the spool, and a thread of the
//! spool's own replays the spool in batches, backing off while the database stays away. While
//! the spool holds runs, new batches queue behind them, so runs reach the database in the order
//! they finished. A run the database refuses for what it holds (not for being away) is set
//! aside in a tree of its own, logged and counted, and never blocks the runs behind it.
//!
//! A full spool refuses the batch (the recorder logs and counts it) and makes `/readyz`
//! answer 503, so that a load balancer stops sending requests whose runs could not be kept.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use prometheus::{IntCounter, IntGauge};
use uuid::Uuid;

use super::{RunPage, RunStore, SearchPage, SearchScope, StorageError};
use crate::recorder::run::RunRecord;
use crate::search::{IndexedField, RunQuery};

/// How long a batch may take to reach the database before it is spooled instead: the
/// recorder (and `/readyz`, which waits for it) is never held longer by a slow database.
pub const DIRECT_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one replayed batch may take.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);
/// Runs replayed in one batch.
const REPLAY_BATCH: usize = 500;
/// The longest wait between two tries while the database stays away.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long the replay thread sleeps when the spool is empty (it is woken at once by a write).
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// The spool's gauges and counters (registered with the gateway's metrics).
#[derive(Clone)]
pub struct SpoolMetrics {
    /// Runs in the spool.
    pub runs: IntGauge,
    /// Bytes of the runs in the spool.
    pub bytes: IntGauge,
    /// Runs written to the spool because the database was away or slow.
    pub spooled: IntCounter,
    /// Runs replayed from the spool into the database.
    pub replayed: IntCounter,
    /// Runs refused because the spool was full.
    pub refused: IntCounter,
    /// Runs the database refused for what they hold, set aside in the spool's `rejected` tree.
    pub rejected: IntCounter,
    /// 1 while the last write or probe reached the database, else 0.
    pub reachable: IntGauge,
}

/// What `/readyz` and `/metrics` tell of the spool.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpoolStatus {
    /// Whether the last write (or replay) reached the database.
    pub reachable: bool,
    pub runs: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    /// The spool refuses runs until it has room again.
    pub full: bool,
    pub rejected: u64,
}

/// The spool's state, shared by the store, its replay thread and the status readers.
pub struct Spool {
    db: sled::Db,
    /// Sequence number (big-endian, so oldest first) → the run's JSON.
    queue: sled::Tree,
    /// Runs the database refused, by run id, kept for an operator to look at.
    rejected: sled::Tree,
    runs: AtomicU64,
    bytes: AtomicU64,
    max_bytes: u64,
    reachable: AtomicBool,
    /// The last batch offered was refused for want of room (cleared when room is made).
    refusing: AtomicBool,
    stopping: AtomicBool,
    /// Wakes the replay thread when the first run is spooled.
    wake: (Mutex<bool>, std::sync::Condvar),
    metrics: SpoolMetrics,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`; the runs a previous process left there are
    /// replayed once the store starts.
    pub fn open(
        dir: &std::path::Path,
        max_bytes: u64,
        flush_every: Duration,
        metrics: SpoolMetrics,
    ) -> Result<Arc<Spool>, StorageError> {
        let backend = |e: sled::Error| StorageError::Backend(format!("spool: {e}"));
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(flush_every.as_millis().max(1) as u64))
            .open()
            .map_err(backend)?;
        let queue = db.open_tree("runs").map_err(backend)?;
        let rejected = db.open_tree("rejected").map_err(backend)?;
        let (mut runs, mut bytes) = (0u64, 0u64);
        for entry in queue.iter() {
            let (_, value) = entry.map_err(backend)?;
            runs += 1;
            bytes += value.len() as u64;
        }
        let spool = Spool {
            db,
            runs: AtomicU64::new(runs),
            bytes: AtomicU64::new(bytes),
            rejected: rejected.clone(),
            queue,
            max_bytes,
            reachable: AtomicBool::new(true),
            refusing: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            wake: (Mutex::new(false), std::sync::Condvar::new()),
            metrics,
        };
        spool.publish();
        if runs > 0 {
            tracing::warn!(
                runs,
                bytes,
                "spool: runs left by a previous process are replayed into PostgreSQL"
            );
        }
        Ok(Arc::new(spool))
    }

    pub fn status(&self) -> SpoolStatus {
        let bytes = self.bytes.load(Ordering::Relaxed);
        SpoolStatus {
            reachable: self.reachable.load(Ordering::Relaxed),
            runs: self.runs.load(Ordering::Relaxed),
            bytes,
            max_bytes: self.max_bytes,
            full: self.refusing.load(Ordering::Relaxed) || bytes >= self.max_bytes,
            rejected: self.rejected.len() as u64,
        }
    }

    /// Waits up to `within` for the replay to empty the spool; the runs left.
    pub async fn drained(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        while !self.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.runs.load(Ordering::Acquire)
    }

    fn is_empty(&self) -> bool {
        self.runs.load(Ordering::Acquire) == 0
    }

    fn set_reachable(&self, reachable: bool) {
        let was = self.reachable.swap(reachable, Ordering::Relaxed);
        self.metrics.reachable.set(i64::from(reachable));
        if was && !reachable {
            tracing::error!("spool: PostgreSQL is unreachable or slow: runs are kept in the local spool until it answers");
        } else if !was && reachable {
            tracing::info!("spool: PostgreSQL answers again");
        }
    }

    fn publish(&self) {
        self.metrics
            .runs
            .set(i64::try_from(self.runs.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        self.metrics
            .bytes
            .set(i64::try_from(self.bytes.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    }

    /// Appends the runs; refused, all of them, when the spool is full. An I/O error part way
    /// leaves the runs before it spooled: harmless, a run is written again under its own id.
    #[allow(clippy::vec_box)]
    fn append(&self, runs: &[Box<RunRecord>]) -> Result<(), StorageError> {
        let mut encoded = Vec::with_capacity(runs.len());
        let mut size = 0u64;
        for run in runs {
            let json = serde_json::to_vec(run)
                .map_err(|e| StorageError::Backend(format!("spool: cannot encode a run: {e}")))?;
            size += json.len() as u64;
            encoded.push(json);
        }
        let held = self.bytes.load(Ordering::Relaxed);
        if held + size > self.max_bytes {
            self.refusing.store(true, Ordering::Relaxed);
            self.metrics.refused.inc_by(runs.len() as u64);
            tracing::error!(
                runs = runs.len(),
                spool_bytes = held,
                max_bytes = self.max_bytes,
                "spool: FULL — these runs are not kept; /readyz answers 503 until PostgreSQL takes the spool"
            );
            return Err(StorageError::Unavailable(format!(
                "PostgreSQL is unreachable and the local spool is full ({held} of {} bytes)",
                self.max_bytes
            )));
        }
        // Key by key, not as a `sled::Batch`: sled's first batch would put every sled read of
        // the process behind a global lock (see `storage/sled/agents.rs`). Each run stands alone.
        for json in encoded {
            let seq = self
                .db
                .generate_id()
                .map_err(|e| StorageError::Backend(format!("spool: {e}")))?;
            let len = json.len() as u64;
            self.queue
                .insert(seq.to_be_bytes(), json)
                .map_err(|e| StorageError::Backend(format!("spool: {e}")))?;
            self.bytes.fetch_add(len, Ordering::Relaxed);
            self.runs.fetch_add(1, Ordering::Release);
        }
        self.metrics.spooled.inc_by(runs.len() as u64);
        self.publish();
        let (woken, wake) = &self.wake;
        if let Ok(mut woken) = woken.lock() {
            *woken = true;
            wake.notify_one();
        }
        Ok(())
    }

    /// The oldest runs, up to `max`, with their keys. A run that cannot be read back is set
    /// aside (logged) rather than blocking the spool.
    fn oldest(&self, max: usize) -> Result<Spooled, StorageError> {
        let mut out = Spooled::default();
        for entry in self.queue.iter().take(max) {
            let (key, value) = entry.map_err(|e| StorageError::Backend(format!("spool: {e}")))?;
            match serde_json::from_slice::<RunRecord>(&value) {
                Ok(run) => {
                    out.entries.push((key, value));
                    out.runs.push(Box::new(run));
                }
                Err(e) => {
                    tracing::error!(error = %e, "spool: a spooled run cannot be read back; set aside");
                    self.set_aside(&key, &value, "unreadable")?;
                }
            }
        }
        Ok(out)
    }

    /// Removes replayed runs (their keys and stored bytes) from the queue.
    fn remove(&self, written: &[(sled::IVec, sled::IVec)]) -> Result<(), StorageError> {
        for (key, value) in written {
            // Key by key, not as a `sled::Batch` (see `append`).
            if self
                .queue
                .remove(key)
                .map_err(|e| StorageError::Backend(format!("spool: {e}")))?
                .is_some()
            {
                self.bytes.fetch_sub(value.len() as u64, Ordering::Relaxed);
                self.runs.fetch_sub(1, Ordering::Release);
            }
        }
        self.refusing.store(false, Ordering::Relaxed);
        self.publish();
        Ok(())
    }

    /// Moves one run from the queue to the `rejected` tree.
    fn set_aside(&self, key: &sled::IVec, value: &[u8], why: &str) -> Result<(), StorageError> {
        let backend = |e: sled::Error| StorageError::Backend(format!("spool: {e}"));
        let mut kept = Vec::with_capacity(why.len() + 1 + value.len());
        kept.extend_from_slice(why.as_bytes());
        kept.push(b'\n');
        kept.extend_from_slice(value);
        self.rejected.insert(key, kept).map_err(backend)?;
        self.queue.remove(key).map_err(backend)?;
        // Counted before the run leaves the count (see `replay_once`).
        self.metrics.rejected.inc();
        self.bytes.fetch_sub(value.len() as u64, Ordering::Relaxed);
        self.runs.fetch_sub(1, Ordering::Release);
        self.publish();
        Ok(())
    }

    /// Sleeps `length`, or less if the spool stops, so that a stopping spool lets its
    /// database go at once. A new batch does not cut the pause short: the database is still
    /// away.
    fn pause(&self, length: Duration) {
        self.wait(length, false);
    }

    /// Waits until a run is spooled, `timeout` passes or the spool stops.
    fn wait_for_work(&self, timeout: Duration) {
        self.wait(timeout, true);
    }

    /// Waits on `wake` up to `timeout`, until the spool stops or, `for_work`, a run is
    /// spooled (which it then takes note of).
    fn wait(&self, timeout: Duration, for_work: bool) {
        let (woken, wake) = &self.wake;
        let Ok(guard) = woken.lock() else { return };
        if let Ok((mut guard, _)) = wake.wait_timeout_while(guard, timeout, |woken| {
            (!for_work || !*woken) && !self.stopping.load(Ordering::Relaxed)
        }) {
            if for_work {
                *guard = false;
            }
        }
    }

    /// Stops the replay thread, waking it wherever it waits. Under the lock: set between the
    /// thread's check and its wait, the wake-up would be lost and it would sleep on.
    fn stop(&self) {
        let (woken, wake) = &self.wake;
        let _held = woken.lock();
        self.stopping.store(true, Ordering::Relaxed);
        wake.notify_all();
    }
}

/// Runs read from the spool: each one's key and stored bytes, and the runs themselves, in the
/// same order (the runs apart, so that a batch is written without copying them).
#[derive(Default)]
// Boxed as the run store takes them.
#[allow(clippy::vec_box)]
struct Spooled {
    entries: Vec<(sled::IVec, sled::IVec)>,
    runs: Vec<Box<RunRecord>>,
}

/// A run store that keeps runs in a local [`Spool`] while the one behind it cannot take them.
pub struct SpooledRunStore {
    inner: Arc<dyn RunStore>,
    spool: Arc<Spool>,
}

impl SpooledRunStore {
    /// Wraps `inner` and starts the thread that replays the spool into it.
    pub fn start(inner: Arc<dyn RunStore>, spool: Arc<Spool>) -> Result<Self, StorageError> {
        let replay = Replay {
            inner: inner.clone(),
            spool: spool.clone(),
        };
        std::thread::Builder::new()
            .name("flowgate-spool".into())
            .spawn(move || replay.run())
            .map_err(|e| StorageError::Backend(format!("cannot start the spool's thread: {e}")))?;
        Ok(SpooledRunStore { inner, spool })
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    async fn write(&self, runs: &[Box<RunRecord>]) -> Result<(), StorageError> {
        if self.spool.is_empty() {
            let write = self.inner.insert_batch(runs);
            // Without a timer (a plain executor at shutdown) the write is awaited whole; the
            // store's own operation timeout still bounds it.
            let outcome = match tokio::runtime::Handle::try_current() {
                Ok(_) => tokio::time::timeout(DIRECT_WRITE_TIMEOUT, write)
                    .await
                    .unwrap_or_else(|_| {
                        Err(StorageError::Unavailable(format!(
                            "PostgreSQL did not take the batch within {} ms",
                            DIRECT_WRITE_TIMEOUT.as_millis()
                        )))
                    }),
                Err(_) => write.await,
            };
            match outcome {
                Ok(()) => {
                    self.spool.set_reachable(true);
                    return Ok(());
                }
                Err(StorageError::Unavailable(e)) => {
                    tracing::warn!(runs = runs.len(), error = %e, "spool: batch spooled");
                    self.spool.set_reachable(false);
                }
                // Refused for what it holds: the replay sets the culprit aside, run by run.
                Err(e) => tracing::warn!(runs = runs.len(), error = %e, "spool: batch spooled"),
            }
        }
        self.spool.append(runs)
    }
}

/// The spool's replay loop, on a thread of its own with a small runtime for its timers.
struct Replay {
    inner: Arc<dyn RunStore>,
    spool: Arc<Spool>,
}

impl Replay {
    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "spool: cannot start the replay runtime; spooled runs stay on disk");
                return;
            }
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.spool.stopping.load(Ordering::Relaxed) {
                return;
            }
            if self.spool.is_empty() {
                self.spool.wait_for_work(IDLE_WAIT);
                continue;
            }
            match runtime.block_on(self.replay_once()) {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::debug!(error = %e, "spool: replay waits for PostgreSQL");
                    self.spool.set_reachable(false);
                    self.spool.pause(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Replays the oldest batch. `Err`: the database is away (try again later).
    async fn replay_once(&self) -> Result<(), StorageError> {
        let batch = self.spool.oldest(REPLAY_BATCH)?;
        if batch.runs.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        match self.write(&batch.runs).await {
            Ok(()) => {
                // Counted (and the database marked reachable) before the runs leave the spool:
                // whoever sees it empty sees them counted (`/metrics`, `/readyz`, the tests
                // that wait for the spool to empty).
                self.spool.metrics.replayed.inc_by(batch.runs.len() as u64);
                self.spool.set_reachable(true);
                self.spool.remove(&batch.entries)?;
                if self.spool.is_empty() {
                    tracing::info!("spool: every spooled run is in PostgreSQL");
                } else {
                    tracing::debug!(runs = batch.runs.len(), took = ?started.elapsed(), "spool: batch replayed");
                }
                Ok(())
            }
            Err(StorageError::Unavailable(e)) => Err(StorageError::Unavailable(e)),
            Err(_) => {
                // One run (or more) is refused for what it holds: each alone, so that only the
                // culprits are set aside.
                for (entry, run) in batch.entries.iter().zip(&batch.runs) {
                    match self.write(std::slice::from_ref(run)).await {
                        Ok(()) => {
                            self.spool.metrics.replayed.inc();
                            self.spool.remove(std::slice::from_ref(entry))?;
                        }
                        Err(StorageError::Unavailable(e)) => {
                            return Err(StorageError::Unavailable(e))
                        }
                        Err(e) => {
                            tracing::error!(run_id = %run.id, error = %e, "spool: PostgreSQL refuses this run; set aside in the spool's `rejected` tree");
                            self.spool.set_aside(&entry.0, &entry.1, &e.to_string())?;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    async fn write(&self, runs: &[Box<RunRecord>]) -> Result<(), StorageError> {
        tokio::time::timeout(REPLAY_TIMEOUT, self.inner.insert_batch(runs))
            .await
            .unwrap_or_else(|_| {
                Err(StorageError::Unavailable(
                    "PostgreSQL did not take the replayed batch in time".into(),
                ))
            })
    }
}

impl RunStore for SpooledRunStore {
    fn insert_batch<'a>(
        &'a self,
        runs: &'a [Box<RunRecord>],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(self.write(runs))
    }

    fn get<'a>(
        &'a self,
        tenant: &'a str,
        id: Uuid,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, StorageError>> {
        self.inner.get(tenant, id)
    }

    fn list_agent<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        cursor: Option<Uuid>,
        limit: usize,
    ) -> BoxFuture<'a, Result<RunPage, StorageError>> {
        self.inner.list_agent(tenant, agent, cursor, limit)
    }

    fn search<'a>(
        &'a self,
        scope: &'a SearchScope,
        query: &'a RunQuery,
    ) -> BoxFuture<'a, Result<SearchPage, StorageError>> {
        self.inner.search(scope, query)
    }

    fn field_values<'a>(
        &'a self,
        scope: &'a SearchScope,
        max: usize,
    ) -> BoxFuture<'a, Result<std::collections::HashMap<IndexedField, Vec<String>>, StorageError>>
    {
        self.inner.field_values(scope, max)
    }

    /// Makes the spool durable.
    fn flush(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            self.spool
                .db
                .flush_async()
                .await
                .map_err(|e| StorageError::Backend(format!("spool: {e}")))?;
            self.inner.flush().await
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            let answer = self.inner.ping().await;
            self.spool.set_reachable(answer.is_ok());
            answer
        })
    }

    fn size_on_disk(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        self.inner.size_on_disk()
    }

    /// The database's runs only: a spooled run is younger than any retention deletes, and
    /// one replayed after its time is deleted by the next pass.
    fn prune(
        &self,
        batch: super::PruneBatch,
    ) -> BoxFuture<'_, Result<super::Pruned, StorageError>> {
        self.inner.prune(batch)
    }

    fn footprint(&self) -> BoxFuture<'_, Result<super::Footprint, StorageError>> {
        self.inner.footprint()
    }
}

impl Drop for SpooledRunStore {
    fn drop(&mut self) {
        self.spool.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU8;

    use super::*;

    const OK: u8 = 0;
    const AWAY: u8 = 1;
    const SLOW: u8 = 2;
    /// Writes wait until the mode changes: the spool cannot empty meanwhile.
    const HELD: u8 = 3;

    /// A network store stand-in that can be made unreachable or slow, and refuses the runs of
    /// agent `bad` for what they hold; it keeps the ids it took, in the order it took them.
    #[derive(Default)]
    struct Database {
        mode: AtomicU8,
        written: Mutex<Vec<Uuid>>,
    }

    impl Database {
        fn ids(&self) -> Vec<Uuid> {
            self.written.lock().unwrap().clone()
        }
    }

    impl RunStore for Database {
        fn insert_batch<'a>(
            &'a self,
            runs: &'a [Box<RunRecord>],
        ) -> BoxFuture<'a, Result<(), StorageError>> {
            Box::pin(async move {
                match self.mode.load(Ordering::SeqCst) {
                    AWAY => return Err(StorageError::Unavailable("refused".into())),
                    SLOW => tokio::time::sleep(Duration::from_secs(3)).await,
                    HELD => {
                        while self.mode.load(Ordering::SeqCst) == HELD {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    _ => {}
                }
                if runs.iter().any(|run| run.agent == "bad") {
                    return Err(StorageError::Backend("invalid byte sequence".into()));
                }
                let mut written = self.written.lock().unwrap();
                for run in runs {
                    // Idempotent on the id, as the real stores are.
                    if !written.contains(&run.id) {
                        written.push(run.id);
                    }
                }
                Ok(())
            })
        }
        fn get<'a>(
            &'a self,
            _: &'a str,
            _: Uuid,
        ) -> BoxFuture<'a, Result<Option<RunRecord>, StorageError>> {
            Box::pin(async { Ok(None) })
        }
        fn list_agent<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: Option<Uuid>,
            _: usize,
        ) -> BoxFuture<'a, Result<RunPage, StorageError>> {
            unimplemented!()
        }
        fn search<'a>(
            &'a self,
            _: &'a SearchScope,
            _: &'a RunQuery,
        ) -> BoxFuture<'a, Result<SearchPage, StorageError>> {
            unimplemented!()
        }
        fn field_values<'a>(
            &'a self,
            _: &'a SearchScope,
            _: usize,
        ) -> BoxFuture<'a, Result<std::collections::HashMap<IndexedField, Vec<String>>, StorageError>>
        {
            unimplemented!()
        }
        fn flush(&self) -> BoxFuture<'_, Result<(), StorageError>> {
            Box::pin(async { Ok(()) })
        }
        fn ping(&self) -> BoxFuture<'_, Result<(), StorageError>> {
            Box::pin(async move {
                match self.mode.load(Ordering::SeqCst) {
                    AWAY => Err(StorageError::Unavailable("refused".into())),
                    _ => Ok(()),
                }
            })
        }
        fn size_on_disk(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
            Box::pin(async { Ok(0) })
        }
        fn prune(
            &self,
            _: crate::storage::PruneBatch,
        ) -> BoxFuture<'_, Result<crate::storage::Pruned, StorageError>> {
            unimplemented!()
        }
        fn footprint(&self) -> BoxFuture<'_, Result<crate::storage::Footprint, StorageError>> {
            unimplemented!()
        }
    }

    fn metrics() -> SpoolMetrics {
        crate::recorder::metrics::Metrics::new().unwrap().spool
    }

    fn run(agent: &str) -> Box<RunRecord> {
        Box::new(
            serde_json::from_str(
                &serde_json::json!({
                    "id": Uuid::now_v7(), "tenant": "t", "agent": agent,
                    "created_at": "2026-01-01T00:00:00.000Z", "status": "success",
                    "requested_model": "m", "model": "m", "provider": "p", "provider_model": "pm",
                    "version_id": null, "stream": false,
                    "request": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                    "input": null, "output": null, "attempts": [],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1},
                    "cost_usd": 0.5, "duration_seconds": 1.0, "cache": "bypass", "error": null,
                    "metadata": null, "feedback_token": "x", "source_run_id": null
                })
                .to_string(),
            )
            .unwrap(),
        )
    }

    fn open(dir: &std::path::Path, db: &Arc<Database>, max_bytes: u64) -> SpooledRunStore {
        let spool = Spool::open(dir, max_bytes, Duration::from_millis(10), metrics()).unwrap();
        SpooledRunStore::start(db.clone(), spool).unwrap()
    }

    async fn until_empty(store: &SpooledRunStore) {
        assert_eq!(store.spool().drained(Duration::from_secs(10)).await, 0);
    }

    #[tokio::test]
    async fn runs_wait_in_the_spool_while_the_database_is_away_and_reach_it_in_order_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::default());
        let store = open(dir.path(), &db, 1 << 20);
        let first = [run("a"), run("a")];
        store.insert_batch(&first).await.unwrap();
        assert_eq!(
            store.spool().status().runs,
            0,
            "a reachable database takes runs at once"
        );

        db.mode.store(AWAY, Ordering::SeqCst);
        let mut spooled = Vec::new();
        for _ in 0..5 {
            let batch = [run("a"), run("a"), run("a")];
            store.insert_batch(&batch).await.unwrap();
            spooled.extend(batch.iter().map(|r| r.id));
        }
        let status = store.spool().status();
        assert_eq!(status.runs, 15);
        assert!(!status.reachable && !status.full && status.bytes > 0);
        assert!(store.ping().await.is_err());
        assert_eq!(
            db.ids().len(),
            2,
            "nothing reached the database while it was away"
        );

        // While the spool holds runs, a new batch queues behind them (writes are held, so
        // that the replay cannot empty the spool first).
        db.mode.store(HELD, Ordering::SeqCst);
        let last = [run("a")];
        store.insert_batch(&last).await.unwrap();
        assert_eq!(store.spool().status().runs, 16, "queued behind the spool");
        db.mode.store(OK, Ordering::SeqCst);
        until_empty(&store).await;
        let mut expected: Vec<Uuid> = first.iter().map(|r| r.id).collect();
        expected.extend(spooled);
        expected.push(last[0].id);
        assert_eq!(db.ids(), expected, "every run once, oldest first");
        let status = store.spool().status();
        assert!(status.reachable && status.runs == 0 && status.bytes == 0);
        assert_eq!(store.spool().metrics.replayed.get(), 16);
        assert_eq!(store.spool().metrics.spooled.get(), 16);
    }

    #[tokio::test]
    async fn a_slow_database_does_not_hold_the_recorder() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::default());
        let store = open(dir.path(), &db, 1 << 20);
        db.mode.store(SLOW, Ordering::SeqCst);
        let started = Instant::now();
        store.insert_batch(&[run("a")]).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "spooled after the timeout"
        );
        assert_eq!(store.spool().status().runs, 1);
        db.mode.store(OK, Ordering::SeqCst);
        until_empty(&store).await;
        assert_eq!(db.ids().len(), 1);
    }

    #[tokio::test]
    async fn a_full_spool_refuses_loudly_and_keeps_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::default());
        let one = serde_json::to_vec(&run("a")).unwrap().len() as u64;
        let store = open(dir.path(), &db, one * 3 + one / 2);
        db.mode.store(AWAY, Ordering::SeqCst);
        let kept = [run("a"), run("a"), run("a")];
        store.insert_batch(&kept).await.unwrap();
        let refused = store.insert_batch(&[run("a")]).await.unwrap_err();
        assert!(
            matches!(&refused, StorageError::Unavailable(m) if m.contains("spool is full")),
            "{refused}"
        );
        assert_eq!(store.spool().metrics.refused.get(), 1);
        let status = store.spool().status();
        assert_eq!(status.runs, 3);
        assert!(status.full, "/readyz must take the instance out");
        db.mode.store(OK, Ordering::SeqCst);
        until_empty(&store).await;
        assert!(!store.spool().status().full);
        assert_eq!(db.ids(), kept.iter().map(|r| r.id).collect::<Vec<_>>());
        store.insert_batch(&[run("a")]).await.unwrap();
        assert_eq!(db.ids().len(), 4, "room again once the spool is replayed");
    }

    #[tokio::test]
    async fn a_run_the_database_refuses_is_set_aside_and_the_others_pass() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::default());
        let store = open(dir.path(), &db, 1 << 20);
        let batch = [run("a"), run("bad"), run("a")];
        store.insert_batch(&batch).await.unwrap();
        until_empty(&store).await;
        assert_eq!(db.ids(), vec![batch[0].id, batch[2].id]);
        assert_eq!(store.spool().status().rejected, 1);
        assert_eq!(store.spool().metrics.rejected.get(), 1);
    }

    #[tokio::test]
    async fn runs_spooled_before_a_crash_are_replayed_by_the_next_process() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::default());
        db.mode.store(AWAY, Ordering::SeqCst);
        let batch = [run("a"), run("a")];
        let first = {
            let store = open(dir.path(), &db, 1 << 20);
            store.insert_batch(&batch).await.unwrap();
            store.flush().await.unwrap();
            // The process ends with the database still away.
            Arc::downgrade(store.spool())
        };
        // The previous spool is dropped once its replay thread sees the store stopped; sled's
        // own I/O threads may hold its lock a little longer (`wait_for_lock`; a new process
        // would not wait).
        let deadline = Instant::now() + Duration::from_secs(10);
        while first.strong_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(first.strong_count(), 0, "the first spool is let go");
        db.mode.store(OK, Ordering::SeqCst);
        // Counted before the replay starts: with the database back, the replay thread may
        // take both runs before a read of the store's status.
        let spool = crate::storage::sled::wait_for_lock(|| {
            Spool::open(dir.path(), 1 << 20, Duration::from_millis(10), metrics())
        });
        assert_eq!(spool.status().runs, 2, "found on disk");
        let store = SpooledRunStore::start(db.clone(), spool).unwrap();
        until_empty(&store).await;
        assert_eq!(db.ids(), batch.iter().map(|r| r.id).collect::<Vec<_>>());
    }
}
