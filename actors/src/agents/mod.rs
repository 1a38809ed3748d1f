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
//! [`AgentStore::observe`].

pub mod conversation;
pub mod deployment;
pub mod feedback;
pub mod resolve;
pub mod schema;
pub mod version;

use std::sync::Arc;

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

/// Handle to the agents' store. Cheap to clone.
#[derive(Clone)]
pub struct AgentStore {
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
    /// Feedback by run.
    feedback: sled::Tree,
    cache: Arc<Cache>,
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
    let mut key = Vec::with_capacity(tenant.len() + agent.len() + 2);
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key.extend_from_slice(agent.as_bytes());
    key.push(0);
    key
}

/// Feeds serialized JSON straight into a hash, without building the text.
struct HashWriter<'a>(&'a mut sha2::Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(self.0, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Adds the JSON of `value` to the hash.
fn hash_json(hasher: &mut sha2::Sha256, value: &impl serde::Serialize) {
    // Writing to a hash cannot fail, and these values always serialize.
    let _ = serde_json::to_writer(HashWriter(hasher), value);
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
            db: db.clone(),
            schemas: db.open_tree("agent_schemas")?,
            versions: db.open_tree("agent_versions")?,
            version_stats: db.open_tree("agent_version_stats")?,
            deployments: db.open_tree("agent_deployments")?,
            deployment_history: db.open_tree("agent_deployment_history")?,
            conversations: db.open_tree("agent_conversations")?,
            feedback: db.open_tree("run_feedback")?,
            cache: Arc::default(),
        })
    }

    /// Takes a recorded run into account: its version's statistics and, for an answered run,
    /// the link that lets the next turn of its conversation find it. Called by the recorder
    /// after it stored the run, on the recorder's thread.
    pub fn observe(&self, run: &RunRecord) -> Result<(), String> {
        if let Some(version_id) = &run.version_id {
            self.add_run_to_stats(&run.tenant, &run.agent, version_id, run)?;
        }
        self.link_answer(run)
    }

    /// Writes everything to disk now (after an admin write that must survive a crash).
    pub fn flush(&self) -> Result<(), GatewayError> {
        self.db.flush().map(|_| ()).map_err(store_error)
    }
}
