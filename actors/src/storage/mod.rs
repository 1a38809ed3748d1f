//! The storage layer: what the gateway keeps, behind one trait per concern, each implemented
//! once per backend in a folder of its own (`sled/` today, the embedded default; PostgreSQL
//! next). Callers hold an `Arc<dyn …Store>` and never see which backend is in use; every
//! failure is a [`StorageError`], which becomes a [`GatewayError`] at the edge.
//!
//! The traits are async where a network backend would wait, take and return domain types
//! only, write in batches and page with cursors, so that a second backend implements them
//! without changing a caller. sled answers point reads and the writes of the actors' own
//! threads in place (a ready future) and scans and flushes on a blocking thread.
//! `conformance.rs` holds the test bodies every backend must pass.
//!
//! The concerns: runs ([`RunStore`]), feedback ([`FeedbackStore`]), the agents' schemas,
//! versions, deployments and conversations ([`SchemaStore`], [`VersionStore`],
//! [`DeploymentStore`], [`ConversationStore`]), the answer cache's stored answers
//! ([`AnswerStore`]), share links ([`ShareStore`]), the runs' stats ([`StatsStore`]) and
//! virtual API keys with their spend ([`KeyStore`]), evaluations ([`EvalStore`]), the web UI's
//! sign-in sessions ([`SessionStore`]).

mod agents;
mod answers;
pub mod changes;
#[cfg(test)]
pub mod conformance;
mod evals;
mod keys;
pub mod postgres;
mod sessions;
pub mod sled;
pub mod spool;

pub use agents::{
    ConversationHash, ConversationLink, ConversationStore, DeploymentPage, DeploymentStore,
    NewDeployment, PairDigest, SchemaAssignment, SchemaStore, VersionCursor, VersionKey,
    VersionPage, VersionStore,
};
pub use answers::{AnswerEntry, AnswerStore, AnswerTotals, PutOutcome};
pub use changes::{Change, Changes};
pub use evals::EvalStore;
pub use keys::{KeyStore, SubjectUsage};
pub use sessions::{SessionRecord, SessionStore};
use std::collections::HashMap;

use std::sync::Arc;

use futures::future::BoxFuture;
use uuid::Uuid;

use crate::agents::FeedbackRecord;
use crate::error::{ErrorKind, GatewayError};
use crate::recorder::run::{RunRecord, RunSource, RunSummary};
use crate::search::{IndexedField, RunQuery};
use crate::share::Share;
use crate::stats::{Aggregate, Day, DayKey, DayTotals, Hour, StatsKey};

/// A storage failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The backend failed (I/O, a lost connection, a full disk).
    #[error("storage backend: {0}")]
    Backend(String),
    /// What was stored cannot be read back (it was written by a newer release, or damaged).
    #[error("stored {what} cannot be read: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// The backend cannot be reached right now; a retry may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl From<StorageError> for GatewayError {
    fn from(e: StorageError) -> GatewayError {
        match e {
            StorageError::Unavailable(_) => GatewayError::new(ErrorKind::Overloaded, e.to_string())
                .with_code("storage_unavailable")
                .with_retry_after(Some(std::time::Duration::from_secs(1))),
            StorageError::Backend(_) | StorageError::Corrupt { .. } => {
                GatewayError::internal(e.to_string()).with_code("storage_error")
            }
        }
    }
}

/// One page of runs, newest first.
#[derive(Debug, serde::Serialize)]
pub struct RunPage {
    pub items: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// The recorded runs. Run ids are UUIDv7: their order is time order.
pub trait RunStore: Send + Sync + 'static {
    /// Writes `runs`, in order. Idempotent on run id: writing a run again replaces it, so a
    /// batch retried after a failure does not duplicate anything.
    fn insert_batch<'a>(
        &'a self,
        runs: &'a [Box<RunRecord>],
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// The run, if it exists and belongs to `tenant`.
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        id: Uuid,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, StorageError>>;

    /// A page of an agent's runs, newest first, strictly older than `cursor`.
    fn list_agent<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        cursor: Option<Uuid>,
        limit: usize,
    ) -> BoxFuture<'a, Result<RunPage, StorageError>>;

    /// One page of the runs of `scope` that match every filter of `query`, newest first.
    fn search<'a>(
        &'a self,
        scope: &'a SearchScope,
        query: &'a RunQuery,
    ) -> BoxFuture<'a, Result<SearchPage, StorageError>>;

    /// The values each categorical field has among the runs of `scope` (at most `max` each).
    fn field_values<'a>(
        &'a self,
        scope: &'a SearchScope,
        max: usize,
    ) -> BoxFuture<'a, Result<HashMap<IndexedField, Vec<String>>, StorageError>>;

    /// Makes every write so far durable.
    fn flush(&self) -> BoxFuture<'_, Result<(), StorageError>>;

    /// Whether the backend answers now (a network round trip; the embedded store always
    /// does), for `/readyz`.
    fn ping(&self) -> BoxFuture<'_, Result<(), StorageError>>;

    /// Bytes the backend holds on disk for this store (for a backend that keeps every
    /// concern in one database, the whole database), for `flowgate_storage_size_bytes`.
    fn size_on_disk(&self) -> BoxFuture<'_, Result<u64, StorageError>>;

    /// Deletes the oldest runs that started before `batch.before_ms`, at most
    /// `batch.max_runs` of them, with everything that points at them or counts them: their
    /// index entries, feedback, share links and conversation links, and their figures in the
    /// stats (an hour whose runs are all gone is deleted). Bounded, so that the caller can
    /// pause between batches; safe to run beside the recorder's writes.
    fn prune(&self, batch: PruneBatch) -> BoxFuture<'_, Result<Pruned, StorageError>>;

    /// How many runs are stored and an estimate of the bytes they take on disk in steady
    /// state. Unlike [`size_on_disk`](RunStore::size_on_disk) it falls as soon as runs are
    /// deleted: neither sled (a log that reuses freed space as it writes) nor PostgreSQL (freed
    /// rows are reused after a vacuum) gives space back at once, and a bound enforced on the
    /// size on disk alone would delete run after run waiting for it to fall.
    fn footprint(&self) -> BoxFuture<'_, Result<Footprint, StorageError>>;
}

/// One bounded batch of retention ([`RunStore::prune`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneBatch {
    /// Only runs that started before this time (milliseconds since the epoch) may go; their
    /// UUIDv7 ids say when.
    pub before_ms: u64,
    /// At most this many runs, oldest first.
    pub max_runs: usize,
}

/// What one batch deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub runs: u64,
}

/// The stored runs and the room they take ([`RunStore::footprint`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    pub runs: u64,
    /// Estimated bytes on disk of the runs and what is kept per run beside them.
    pub bytes: u64,
}

/// Whose runs a search looks at.
#[derive(Debug, Clone)]
pub struct SearchScope {
    pub tenant: String,
    /// One agent's runs, or (`None`) all of the tenant's.
    pub agent: Option<String>,
}

/// One page of a search.
#[derive(Debug, serde::Serialize)]
pub struct SearchPage {
    pub items: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; `None` once nothing older matches.
    pub next_cursor: Option<String>,
    /// How many runs match: exact when `count_is_exact`, else a lower bound.
    pub count: u64,
    pub count_is_exact: bool,
    /// Runs read for this page.
    pub scanned: u64,
    /// The page stopped at the most runs one page may read: fewer items than asked may
    /// follow, and `next_cursor` resumes the scan.
    pub scan_limit_reached: bool,
}

/// End users' feedback on runs.
pub trait FeedbackStore: Send + Sync + 'static {
    /// Stores feedback on its run, replacing any earlier feedback on it: a feedback token is
    /// one vote, however often it is posted.
    fn put<'a>(&'a self, record: &'a FeedbackRecord) -> BoxFuture<'a, Result<(), StorageError>>;

    /// The feedback on the run.
    fn for_run(&self, run_id: Uuid) -> BoxFuture<'_, Result<Vec<FeedbackRecord>, StorageError>>;
}

// ---- shared runs ----

/// Share links: a token that opens one run of one tenant to anyone who holds it.
pub trait ShareStore: Send + Sync + 'static {
    /// The share of the tenant's run: the existing one, or a new one with `new_token` when the
    /// run has none. Atomic: two calls at once get the same token.
    fn share<'a>(
        &'a self,
        tenant: &'a str,
        run_id: Uuid,
        new_token: &'a str,
    ) -> BoxFuture<'a, Result<Share, StorageError>>;

    /// The share a token opens, if it exists and was not revoked.
    fn get<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Share>, StorageError>>;

    /// Revokes the tenant's share of the run; whether there was one.
    fn revoke<'a>(
        &'a self,
        tenant: &'a str,
        run_id: Uuid,
    ) -> BoxFuture<'a, Result<bool, StorageError>>;
}

// ---- Stats ----

/// The runs' aggregates per tenant, agent, source and hour ([`crate::stats`]), and their daily
/// roll-up per model ([`crate::stats::daily`]), kept as runs are recorded so that stats never
/// read the runs. Only the recorder adds to them; retention takes deleted runs out of both.
pub trait StatsStore: Send + Sync + 'static {
    /// Adds each increment to the stored aggregate of its hour (a key not stored yet starts
    /// from zero; increments that differ only by model go to the same hour), adds its runs,
    /// errors and cost to the daily roll-up of its day and model ([`crate::stats::daily`]),
    /// and remembers each (tenant, agent, source)'s latest run: all of the batch, or on an
    /// error none of it, so that the caller may retry it whole.
    fn add_batch<'a>(
        &'a self,
        increments: &'a [(StatsKey, Aggregate)],
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// The stored aggregates of the query's agents and sources in its hours, in no particular
    /// order.
    fn read<'a>(
        &'a self,
        query: &'a StatsQuery,
    ) -> BoxFuture<'a, Result<Vec<(StatsKey, Aggregate)>, StorageError>>;

    /// The agents of `tenant` with stored runs, each with its latest run per source; at most
    /// `max` agents, by name.
    fn agents<'a>(
        &'a self,
        tenant: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<AgentLastRun>, StorageError>>;

    /// The daily roll-up of the tenant's runs of `sources` in `days` (end excluded): at most
    /// `limit` rows, in no particular order.
    fn days<'a>(
        &'a self,
        tenant: &'a str,
        sources: &'a [RunSource],
        days: std::ops::Range<Day>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(DayKey, DayTotals)>, StorageError>>;
}

/// Which aggregates a stats read wants.
#[derive(Debug, Clone)]
pub struct StatsQuery {
    pub tenant: String,
    pub agents: Vec<String>,
    pub sources: Vec<RunSource>,
    /// The hours, end excluded.
    pub hours: std::ops::Range<Hour>,
    /// Whether the latency histograms are wanted: without, a store may leave them empty
    /// (they are most of what an aggregate holds, and the cost page shows none).
    pub latency: bool,
}

/// When an agent last ran, for one source.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentLastRun {
    pub agent: String,
    pub source: RunSource,
    /// Milliseconds since the epoch.
    pub last_run_ms: u64,
}

/// Which backend keeps what the gateway stores (`[storage]` in the config).
#[derive(Debug, Clone, Default)]
pub enum Backend {
    /// sled in the data directory: one process, nothing to install.
    #[default]
    Sled,
    /// A PostgreSQL database that several instances share.
    Postgres(Box<postgres::PostgresSettings>),
}

/// The stores of one backend.
#[derive(Clone)]
pub struct Storage {
    pub runs: Arc<dyn RunStore>,
    pub feedback: Arc<dyn FeedbackStore>,
    pub schemas: Arc<dyn SchemaStore>,
    pub versions: Arc<dyn VersionStore>,
    pub deployments: Arc<dyn DeploymentStore>,
    pub conversations: Arc<dyn ConversationStore>,
    pub answers: Arc<dyn AnswerStore>,
    pub shares: Arc<dyn ShareStore>,
    pub stats: Arc<dyn StatsStore>,
    pub keys: Arc<dyn KeyStore>,
    pub evals: Arc<dyn EvalStore>,
    /// What changed (here or, on a shared database, on another instance), for the copies
    /// kept in memory.
    pub changes: Arc<Changes>,
    pub sessions: Arc<dyn SessionStore>,
}

/// Fresh stores of the default backend in a temporary directory, for tests of the code above
/// the storage layer (they do not depend on the backend).
#[cfg(test)]
pub fn temporary() -> (tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let storage = in_dir(dir.path());
    (dir, storage)
}

/// The stores of the default backend in `dir`, opened again once the previous handles on it
/// are dropped (tests of what survives a restart).
#[cfg(test)]
pub fn in_dir(dir: &std::path::Path) -> Storage {
    // The previous handle's file lock may take a moment to go.
    let mut tries = 0;
    loop {
        match self::sled::SledStorage::open(dir, std::time::Duration::from_millis(50)) {
            Ok(storage) => return storage.storage(),
            Err(_) if tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("cannot open the test store: {e}"),
        }
    }
}
