//! Agents: what flowgate knows about each agent beyond its runs: its schemas (one integer id per
//! distinct input/output schema pair), its versions (a hash of what shapes the answer, with
//! usage statistics), its deployments (a version per schema and environment, with history),
//! conversations (runs that continue an earlier run) and end-user feedback on runs.
//!
//! Everything is kept by the storage layer's traits ([`crate::storage::SchemaStore`] and its
//! siblings), keyed by tenant and agent, so a restart or another handle on the same store sees
//! the same state. Immutable records (schemas, versions) are kept in memory once read. The
//! deployment pointers are kept too, each with the [`Changes`] epoch it was read at: a deploy
//! through any instance moves the epoch (on PostgreSQL through a notification that arrives
//! within milliseconds of its commit), and a copy older than [`DEPLOYMENT_REFRESH`] is read
//! again whatever the epoch says (a safety net). While the feed cannot vouch for its epoch
//! (its listener reconnecting) the pointer is read from the store on every lookup.
//!
//! Writes on the request path are rare (a new schema pair; a new version on a store other
//! instances read); new versions on a store of one process, statistics and conversation
//! links are written by the recorder, off the request path, through [`AgentStore::observe`].
//! Conversation links are stored at once, in one batch per batch of runs; version statistics
//! are summed in memory (readers see them at once) and stored in one batch by
//! [`AgentStore::write_stats`], which the recorder calls within the flush interval, on
//! `Flush` and when it stops.

pub mod conversation;
pub mod deployment;
pub mod feedback;
pub mod resolve;
pub mod schema;
pub mod version;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use crate::recorder::run::RunRecord;
use crate::storage::{
    Changes, ConversationStore, DeploymentStore, SchemaStore, Storage, StorageError, VersionKey,
    VersionStore,
};
use crate::structured::Validators;

use conversation::link_of;
pub use deployment::{DeploymentRecord, Deployments, DEPLOYMENT_REFRESH};
pub use feedback::{FeedbackRecord, Outcome};
pub use resolve::Resolution;
pub use schema::SchemaRecord;
pub use version::{LastRuns, VersionProperties, VersionRecord, VersionStats, VersionSummary};

/// Immutable records kept in memory above this count are dropped wholesale (bounded memory).
const MAX_CACHED: usize = 4096;

/// Handle to the agents' store. Cheap to clone (one reference count).
#[derive(Clone)]
pub struct AgentStore {
    inner: Arc<Inner>,
}

/// The stores and in-memory state behind an [`AgentStore`].
struct Inner {
    schemas: Arc<dyn SchemaStore>,
    versions: Arc<dyn VersionStore>,
    deployments: Arc<dyn DeploymentStore>,
    conversations: Arc<dyn ConversationStore>,
    /// Moves when a deployment is made, here or on another instance.
    changes: Arc<Changes>,
    cache: Cache,
    /// The runs observed since statistics were last added to the store, per version: readers
    /// add them to the stored statistics, so a run counts as soon as the recorder observed it.
    pending_stats: Mutex<HashMap<VersionKey, PendingStats>>,
    /// A write of `pending_stats` holds it exclusively while it moves them to the store, and
    /// a read shared while it reads both (as `stats::RunStats`'s gate): a read finds every run
    /// in one place, never in both or in neither, and reads do not wait for each other.
    stats_gate: tokio::sync::RwLock<()>,
    /// New versions answered and not yet written (their id is their hash, so a request needs
    /// no write to name one), written by [`AgentStore::observe`] (the recorder) or by a reader
    /// of the agent's versions; kept while the store is unreachable.
    unstored_versions: Mutex<HashMap<Vec<u8>, version::UnstoredVersion>>,
    /// Answered runs' conversation links until the recorder has stored them.
    pending_links: conversation::PendingLinks,
}

/// A version's statistics waiting to be written.
#[derive(Default)]
struct PendingStats {
    /// Runs observed and not yet sent to the store.
    stats: VersionStats,
    /// Runs being added to the store by a write under way (put back if it fails).
    writing: Option<VersionStats>,
}

impl PendingStats {
    /// Adds what this instance holds to `stored` statistics.
    fn add_to(&self, stored: &mut VersionStats) {
        stored.add(&self.stats);
        if let Some(writing) = &self.writing {
            stored.add(writing);
        }
    }
}

/// Records kept in memory: those that never change once written, kept without invalidation,
/// and the deployment pointers, kept while the store's [`Changes`] say they hold. Keyed by
/// [`agent_prefix`] and what names the record within the agent.
#[derive(Default)]
struct Cache {
    schema_ids: DashMap<Vec<u8>, u32>,
    schemas: DashMap<Vec<u8>, Arc<SchemaRecord>>,
    versions: DashMap<Vec<u8>, Arc<VersionRecord>>,
    validators: Validators,
    /// Deployment pointers (not immutable: see [`deployment`] for when a copy is used).
    deployments: DashMap<Vec<u8>, deployment::DeploymentCopy>,
}

fn bounded_insert<V>(map: &DashMap<Vec<u8>, V>, key: Vec<u8>, value: V) {
    if map.len() >= MAX_CACHED {
        map.clear();
    }
    map.insert(key, value);
}

/// `tenant \0 agent \0`: the prefix of the in-memory keys of an agent's records.
fn agent_prefix(tenant: &str, agent: &str) -> Vec<u8> {
    // Room for what keys add to the prefix: a version id, a hash, a schema key.
    let mut key = Vec::with_capacity(tenant.len() + agent.len() + 2 + 40);
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key.extend_from_slice(agent.as_bytes());
    key.push(0);
    key
}

/// Feeds serialized JSON into a hash through a small buffer: serde_json writes many short
/// pieces, and the hash takes them best in blocks. Never builds the whole text.
struct HashWriter<'a> {
    hasher: &'a mut sha2::Sha256,
    buf: [u8; 256],
    len: usize,
}

impl HashWriter<'_> {
    fn finish(self) {
        sha2::Digest::update(self.hasher, &self.buf[..self.len]);
    }
}

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.len + data.len() <= self.buf.len() {
            self.buf[self.len..self.len + data.len()].copy_from_slice(data);
            self.len += data.len();
        } else {
            sha2::Digest::update(self.hasher, &self.buf[..self.len]);
            self.len = 0;
            if data.len() >= self.buf.len() {
                sha2::Digest::update(self.hasher, data);
            } else {
                self.buf[..data.len()].copy_from_slice(data);
                self.len = data.len();
            }
        }
        Ok(data.len())
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.write(data).map(|_| ())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Adds the JSON of `value` to the hash.
fn hash_json(hasher: &mut sha2::Sha256, value: &impl serde::Serialize) {
    let mut writer = HashWriter {
        hasher,
        buf: [0; 256],
        len: 0,
    };
    // Writing to a hash cannot fail, and these values always serialize.
    let _ = serde_json::to_writer(&mut writer, value);
    writer.finish();
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// Now, as the RFC 3339 UTC text runs use.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl AgentStore {
    /// The agents' store over `storage`'s stores.
    pub fn open(storage: &Storage) -> AgentStore {
        AgentStore {
            inner: Arc::new(Inner {
                schemas: storage.schemas.clone(),
                versions: storage.versions.clone(),
                deployments: storage.deployments.clone(),
                conversations: storage.conversations.clone(),
                changes: storage.changes.clone(),
                cache: Cache::default(),
                pending_stats: Mutex::default(),
                stats_gate: tokio::sync::RwLock::new(()),
                unstored_versions: Mutex::default(),
                pending_links: Default::default(),
            }),
        }
    }

    /// Takes recorded runs into account: their versions' statistics and, for answered runs,
    /// the links that let the next turn of their conversations find them. Called by the
    /// recorder after it stored the runs; what failed, one message per failure.
    ///
    /// The statistics are kept in memory (readers see them at once) until
    /// [`AgentStore::write_stats`] stores them; the recorder calls it periodically, on `Flush`
    /// and when it stops. The conversation links are stored at once.
    // Runs travel boxed from the request path: the recorder hands over its batch as it is.
    #[allow(clippy::vec_box)]
    pub async fn observe(&self, runs: &[Box<RunRecord>]) -> Vec<String> {
        let mut failures = Vec::new();
        if let Err(e) = self.store_unstored_versions(None).await {
            failures.push(format!("cannot store new versions: {e}"));
        }
        for run in runs {
            if let Some(version_id) = &run.version_id {
                self.add_run_to_stats(version_id, run);
            }
        }
        let links: Vec<_> = runs.iter().filter_map(|run| link_of(run)).collect();
        if !links.is_empty() {
            if let Err(e) = self.inner.conversations.link_batch(&links).await {
                failures.push(format!("cannot store conversation links: {e}"));
            }
        }
        // Stored, or lost with the store away: either way no longer waiting in memory.
        self.inner.pending_links.remove(&links);
        failures
    }

    /// Whether statistics or new versions wait in memory for [`AgentStore::write_stats`].
    pub fn has_pending_stats(&self) -> bool {
        !self.pending_stats_lock().is_empty() || self.has_unstored_versions()
    }

    /// Writes the new versions and the statistics observed since the last call to the store,
    /// the statistics in one batch. They are on disk once the store is next flushed.
    pub async fn write_stats(&self) -> Result<(), StorageError> {
        let versions = self.store_unstored_versions(None).await;
        versions.and(self.write_pending_stats().await)
    }
}
