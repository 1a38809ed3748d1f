//! Agents: what flowgate knows about each agent beyond its runs: its schemas (one integer id per
//! distinct input/output schema pair), its versions (a hash of what shapes the answer, with
//! usage statistics), its deployments (a version per schema and environment, with history),
//! conversations (runs that continue an earlier run) and end-user feedback on runs.
//!
//! Everything lives in sled trees of the same database as the runs, keyed by tenant and agent,
//! so a restart or another handle on the same store sees the same state. Immutable records
//! (schemas, versions) are cached in memory once read; the deployment pointer is read from sled
//! on every lookup, so a deploy takes effect at once for every reader of the store.
//!
//! Writes on the request path are rare (a new schema pair, a new version); statistics and
//! conversation links are written by the recorder, off the request path, through
//! [`AgentStore::observe`]. Conversation links are stored at once; version statistics are
//! summed in memory (readers see them at once) and stored in one batch by
//! [`AgentStore::write_stats`], which the recorder calls within the flush interval, on `Flush`
//! and when it stops.

pub mod conversation;
pub mod deployment;
pub mod feedback;
pub mod resolve;
pub mod schema;
pub mod version;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use crate::error::GatewayError;
use crate::recorder::run::RunRecord;
use crate::structured::Validators;

pub use deployment::DeploymentRecord;
pub use feedback::{FeedbackRecord, Outcome};
pub use resolve::Resolution;
pub use schema::SchemaRecord;
pub use version::{VersionProperties, VersionRecord, VersionStats, VersionSummary};

/// Immutable records kept in memory above this count are dropped wholesale (bounded memory).
const MAX_CACHED: usize = 4096;

/// Handle to the agents' store. Cheap to clone (one reference count).
#[derive(Clone)]
pub struct AgentStore {
    inner: Arc<Trees>,
}

/// The trees and in-memory state behind an [`AgentStore`].
struct Trees {
    db: sled::Db,
    /// Schema ids by pair digest, schema records by id, and each agent's id counter.
    schemas: sled::Tree,
    /// Version records by id.
    versions: sled::Tree,
    /// Usage statistics by version id, written by the recorder.
    version_stats: sled::Tree,
    /// The current deployment of each (schema, environment).
    deployments: sled::Tree,
    /// Every deployment ever made, in order.
    deployment_history: sled::Tree,
    /// Conversation id by the hash of a message list followed by its answer.
    conversations: sled::Tree,
    cache: Cache,
    /// Statistics updated since they were last written to `version_stats`: whole values (the
    /// stored statistics plus the runs observed since), by version key. Readers look here
    /// first, so a run counts as soon as the recorder observed it.
    pending_stats: Mutex<HashMap<Vec<u8>, VersionStats>>,
}

/// Records that never change once written, so they can be kept without invalidation.
#[derive(Default)]
struct Cache {
    schema_ids: DashMap<Vec<u8>, u32>,
    schemas: DashMap<Vec<u8>, Arc<SchemaRecord>>,
    versions: DashMap<Vec<u8>, Arc<VersionRecord>>,
    validators: Validators,
}

fn bounded_insert<V>(map: &DashMap<Vec<u8>, V>, key: Vec<u8>, value: V) {
    if map.len() >= MAX_CACHED {
        map.clear();
    }
    map.insert(key, value);
}

/// `tenant \0 agent \0`: the prefix of every key of an agent.
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

fn store_error(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::internal(format!("agent store: {e}"))
}

/// Now, as the RFC 3339 UTC text runs use.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl AgentStore {
    /// Opens (or creates) the agents' trees in the runs' database.
    pub fn open(db: &sled::Db) -> sled::Result<AgentStore> {
        Ok(AgentStore {
            inner: Arc::new(Trees {
                db: db.clone(),
                schemas: db.open_tree("agent_schemas")?,
                versions: db.open_tree("agent_versions")?,
                version_stats: db.open_tree("agent_version_stats")?,
                deployments: db.open_tree("agent_deployments")?,
                deployment_history: db.open_tree("agent_deployment_history")?,
                conversations: db.open_tree("agent_conversations")?,
                cache: Cache::default(),
                pending_stats: Mutex::default(),
            }),
        })
    }

    /// Takes a recorded run into account: its version's statistics and, for an answered run,
    /// the link that lets the next turn of its conversation find it. Called by the recorder
    /// after it stored the run, on the recorder's thread.
    ///
    /// The statistics are kept in memory (readers see them at once) until
    /// [`AgentStore::write_stats`] stores them; the recorder calls it periodically, on `Flush`
    /// and when it stops. The conversation link is stored at once.
    pub fn observe(&self, run: &RunRecord) -> Result<(), String> {
        let stats = match &run.version_id {
            Some(version_id) => self.add_run_to_stats(&run.tenant, &run.agent, version_id, run),
            None => Ok(()),
        };
        let link = self.link_answer(run);
        stats.and(link)
    }

    /// Whether statistics wait in memory for [`AgentStore::write_stats`].
    pub fn has_pending_stats(&self) -> bool {
        !self.pending_stats_lock().is_empty()
    }

    /// Writes the statistics observed since the last call to the store (in one batch). They
    /// are on disk once the database is next flushed.
    pub fn write_stats(&self) -> Result<(), String> {
        self.write_pending_stats()
    }

    /// Writes everything to disk now (after an admin write that must survive a crash).
    pub fn flush(&self) -> Result<(), GatewayError> {
        self.inner.db.flush().map(|_| ()).map_err(store_error)
    }
}
