//! The PostgreSQL backend: several flowgate instances share one database (runs, agents,
//! feedback, share links, cached answers, stats). One file per concern, like `sled/`; the
//! schema is in `migrations/`, applied at start under an advisory lock (`migrate.rs`).
//!
//! Every operation runs on a small tokio runtime of the backend's own: the pool's connections
//! are tasks on it, so a store call works from any thread or runtime that awaits it (the actix
//! arbiters, the recorder's thread, a blocking `block_on` at shutdown, tests with a runtime
//! per thread), and no connection dies with the arbiter that happened to open it.

mod agents;
mod cache;
mod deployments;
mod evals;
mod feedback;
mod keys;
mod listen;
mod migrate;
mod retention;
mod runs;
mod search;
mod sessions;
mod shares;
mod stats;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use futures::future::{BoxFuture, FutureExt};

pub use migrate::{migrate, MIGRATIONS};

use super::{Changes, Storage, StorageError};

/// How long an operation may take, pool wait included, before it is
/// [`StorageError::Unavailable`]: a caller (a request) is told the store is unavailable
/// rather than left waiting on a stalled server.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection may take, and a caller may wait for a free one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The local spool's default bound (`storage.spool_max_mb`).
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// Where the database is and how many connections to keep, checked once at start.
#[derive(Clone)]
pub struct PostgresSettings {
    config: tokio_postgres::Config,
    pub pool_size: usize,
    /// The schema the tables live in (created if missing); `None`: the server's `search_path`.
    pub schema: Option<String>,
    /// The most bytes of runs the local spool keeps while the database is away.
    pub spool_max_bytes: u64,
}

impl std::fmt::Debug for PostgresSettings {
    // The URL may hold a password: only where it points is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("pool_size", &self.pool_size)
            .field("schema", &self.schema)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .finish()
    }
}

impl PostgresSettings {
    /// Checks a connection URL (`postgres://user:password@host:port/db?…`), a pool size and a
    /// schema name; the error says what is wrong without repeating the URL (it may hold a
    /// password).
    pub fn new(
        url: &str,
        pool_size: usize,
        schema: Option<String>,
    ) -> Result<PostgresSettings, String> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| format!("not a PostgreSQL connection URL: {e}"))?;
        if config.get_hosts().is_empty() {
            return Err("the URL names no host".into());
        }
        if pool_size == 0 || pool_size > 1000 {
            return Err(format!("pool size {pool_size}: must be 1 to 1000"));
        }
        if let Some(schema) = &schema {
            if !is_identifier(schema) {
                return Err(format!(
                    "schema `{schema}`: must be lowercase letters, digits and `_`, not starting \
                     with a digit, at most 63 bytes"
                ));
            }
            // Every connection of the pool finds the tables there, whatever the role's default.
            config.options(format!("-c search_path={schema}"));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("flowgate");
        }
        Ok(PostgresSettings {
            config,
            pool_size,
            schema,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
        })
    }
}

/// A schema name that needs no quoting anywhere.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 63
}

/// The runtime the connections live on; shut down (without waiting) with the last store.
struct Engine {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // `shutdown_background` rather than a plain drop: the last store may be dropped
        // inside another runtime, where a blocking shutdown is not allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The pool and its runtime, shared by the stores.
pub(crate) struct Db {
    pool: Pool,
    /// Where writers notify the other instances of a change ([`listen::NOTIFY`]).
    channel: String,
    handle: tokio::runtime::Handle,
    _engine: Engine,
}

impl Db {
    /// Runs `work` with a pooled connection on the backend's runtime, within
    /// [`OPERATION_TIMEOUT`].
    pub(crate) fn run<T, F, Fut>(
        self: &Arc<Self>,
        work: F,
    ) -> BoxFuture<'static, Result<T, StorageError>>
    where
        T: Send + 'static,
        F: FnOnce(Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StorageError>> + Send + 'static,
    {
        let db = self.clone();
        let task = self.handle.spawn(async move {
            let job = async {
                let client = db.pool.get().await.map_err(pool_error)?;
                work(client).await
            };
            match tokio::time::timeout(OPERATION_TIMEOUT, job).await {
                Ok(result) => result,
                Err(_) => Err(StorageError::Unavailable(format!(
                    "PostgreSQL did not answer within {}s",
                    OPERATION_TIMEOUT.as_secs()
                ))),
            }
        });
        async move {
            task.await
                .map_err(|e| StorageError::Backend(format!("a storage task failed: {e}")))?
        }
        .boxed()
    }
}

/// The PostgreSQL database and the stores on it.
pub struct PostgresStorage {
    storage: Storage,
    #[cfg(test)]
    db: Arc<Db>,
}

impl PostgresStorage {
    /// Connects, applies the migrations this binary has that the database lacks (under an
    /// advisory lock: instances starting at once apply each once), and opens the pool. Blocks
    /// the calling thread until then (it runs at start).
    pub fn open(settings: &PostgresSettings) -> Result<PostgresStorage, StorageError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flowgate-postgres")
            .enable_all()
            .build()
            .map_err(|e| {
                StorageError::Backend(format!("cannot start the PostgreSQL runtime: {e}"))
            })?;
        let handle = runtime.handle().clone();
        let engine = Engine {
            runtime: Some(runtime),
        };
        let migrating = {
            let settings = settings.clone();
            handle.spawn(async move { migrate(&settings).await })
        };
        // A plain executor: the work runs on the backend's runtime, this thread only waits
        // (it may be inside another runtime, where `Runtime::block_on` is not allowed).
        futures::executor::block_on(migrating)
            .map_err(|e| StorageError::Backend(format!("the migration task failed: {e}")))??;

        let manager = Manager::from_config(
            settings.config.clone(),
            tokio_postgres::NoTls,
            ManagerConfig {
                // A connection returned broken is dropped; checking each one before use would
                // add a round trip to every operation.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StorageError::Backend(format!("cannot build the connection pool: {e}")))?;
        let channel = listen::channel_of(settings.schema.as_deref());
        let changes = Arc::new(Changes::shared());
        listen::spawn(
            &handle,
            settings.config.clone(),
            channel.clone(),
            changes.clone(),
        );
        let db = Arc::new(Db {
            pool,
            channel,
            handle,
            _engine: engine,
        });
        let storage = Storage {
            runs: Arc::new(runs::PgRunStore::new(db.clone())),
            feedback: Arc::new(feedback::PgFeedbackStore::new(db.clone())),
            schemas: Arc::new(agents::PgSchemaStore::new(db.clone())),
            versions: Arc::new(agents::PgVersionStore::new(db.clone())),
            deployments: Arc::new(deployments::PgDeploymentStore::new(db.clone())),
            conversations: Arc::new(agents::PgConversationStore::new(db.clone())),
            answers: Arc::new(cache::PgAnswerStore::new(db.clone())),
            shares: Arc::new(shares::PgShareStore::new(db.clone())),
            stats: Arc::new(stats::PgStatsStore::new(db.clone())),
            keys: Arc::new(keys::PgKeyStore::new(db.clone())),
            evals: Arc::new(evals::PgEvalStore::new(db.clone())),
            changes,
            sessions: Arc::new(sessions::PgSessionStore::new(db.clone())),
        };
        #[cfg(not(test))]
        drop(db);
        Ok(PostgresStorage {
            storage,
            #[cfg(test)]
            db,
        })
    }

    #[cfg(test)]
    pub(crate) fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// The stores, for callers that do not care about the backend.
    pub fn storage(&self) -> Storage {
        self.storage.clone()
    }
}

/// Applies the migrations the database lacks and returns the versions applied (`flowgate
/// migrate`). On a runtime of its own: call it from a plain thread, not from async code.
pub fn migrate_blocking(settings: &PostgresSettings) -> Result<Vec<i32>, StorageError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StorageError::Backend(format!("cannot start a runtime: {e}")))?
        .block_on(migrate(settings))
}

/// A driver error: a lost or refused connection (or a server shutting down, or out of
/// connections) is [`StorageError::Unavailable`], which callers answer with a 503 and may
/// retry; anything else is a backend failure.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StorageError {
    match e.as_db_error() {
        None => StorageError::Unavailable(format!("PostgreSQL: {e}")),
        Some(db) => {
            let code = db.code().code();
            // 08: connection exception; 53: insufficient resources; 57P0x: shutdown, cannot
            // connect now; 40001/40P01: serialization failure, deadlock (a retry succeeds).
            let transient = code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "40001"
                || code == "40P01";
            let message = format!("PostgreSQL: {}: {}", db.code().code(), db.message());
            if transient {
                StorageError::Unavailable(message)
            } else {
                StorageError::Backend(message)
            }
        }
    }
}

pub(crate) fn pool_error(e: PoolError) -> StorageError {
    match e {
        PoolError::Backend(e) => pg_error(e),
        PoolError::Timeout(_) | PoolError::Closed => {
            StorageError::Unavailable(format!("PostgreSQL connection pool: {e}"))
        }
        other => StorageError::Backend(format!("PostgreSQL connection pool: {other}")),
    }
}

/// A stored JSON document that does not read back as what it should be.
pub(crate) fn corrupt(what: &'static str) -> impl Fn(serde_json::Error) -> StorageError {
    move |e| StorageError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

pub(crate) fn to_json(what: &str, value: &impl serde::Serialize) -> Result<String, StorageError> {
    serde_json::to_string(value)
        .map_err(|e| StorageError::Backend(format!("cannot serialize a {what}: {e}")))
}

/// A `u64` stored in a `BIGINT` (milliseconds, sequences, sizes: far below 2^63).
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
