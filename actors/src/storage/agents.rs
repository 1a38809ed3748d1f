//! What the gateway keeps about agents besides their runs: schemas, versions and their usage
//! statistics, deployments and their history, conversation links. One trait per concern; the
//! logic over them (hashing, admitting inputs, the in-memory copies of immutable records,
//! the statistics summed in memory) is the agents module's, whatever the backend.
//!
//! Every record belongs to a tenant's agent: a backend scopes every read by both.

use futures::future::BoxFuture;
use serde_json::Value;
use uuid::Uuid;

use super::StorageError;
use crate::agents::{DeploymentRecord, SchemaRecord, VersionRecord, VersionStats};
use crate::model_ref::Environment;

/// The SHA-256 of an (input schema, output schema) pair in canonical form.
pub type PairDigest = [u8; 32];

/// The SHA-256 chain of a conversation's messages and answer (see
/// [`crate::agents::conversation`]).
pub type ConversationHash = [u8; 32];

/// What a pair digest seen for the first time becomes.
#[derive(Debug, Clone, Copy)]
pub enum SchemaAssignment<'a> {
    /// The id of an existing schema that admits the pair.
    Existing(u32),
    /// A new schema, numbered after the agent's last one.
    New {
        input_schema: &'a Value,
        output_schema: &'a Value,
        created_at: &'a str,
    },
}

/// Each agent's schemas, numbered 1, 2, 3… in order of first use, and the pair digests that
/// lead to them (several digests may lead to one schema).
pub trait SchemaStore: Send + Sync + 'static {
    /// The schema id assigned to `digest`, if any.
    fn id_of<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        digest: &'a PairDigest,
    ) -> BoxFuture<'a, Result<Option<u32>, StorageError>>;

    /// Assigns `digest` its schema id, atomically: the id it already has if a concurrent
    /// caller was first, else what `assignment` says. New ids follow the agent's last one with
    /// no gap, however many callers assign at once.
    fn assign<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        digest: &'a PairDigest,
        assignment: SchemaAssignment<'a>,
    ) -> BoxFuture<'a, Result<u32, StorageError>>;

    /// Schema `id` of the agent.
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        id: u32,
    ) -> BoxFuture<'a, Result<Option<SchemaRecord>, StorageError>>;

    /// Every schema of the agent, by id.
    fn list<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SchemaRecord>, StorageError>>;
}

/// A version of an agent: the key of its statistics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VersionKey {
    pub tenant: String,
    pub agent: String,
    pub version_id: String,
}

/// Where a page of versions starts: after the version of this creation time and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionCursor {
    pub created_at: String,
    pub id: String,
}

impl VersionCursor {
    /// The cursor as clients pass it: `<created_at>|<id>` (neither holds a `|`).
    pub fn encode(&self) -> String {
        format!("{}|{}", self.created_at, self.id)
    }

    pub fn decode(text: &str) -> Option<VersionCursor> {
        let (created_at, id) = text.split_once('|')?;
        (!created_at.is_empty() && !id.is_empty() && !id.contains('|')).then(|| VersionCursor {
            created_at: created_at.to_string(),
            id: id.to_string(),
        })
    }
}

/// A page of an agent's versions, newest first, each with its stored statistics (`None`
/// before their first write).
#[derive(Debug, Clone)]
pub struct VersionPage {
    pub items: Vec<(VersionRecord, Option<VersionStats>)>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<VersionCursor>,
}

/// Each agent's versions (immutable once stored) and their usage statistics.
pub trait VersionStore: Send + Sync + 'static {
    /// Whether other instances read this store (PostgreSQL). A new version is then written
    /// before the request that made it is answered, so that any instance can deploy it at
    /// once; on a store of one process it is written by the recorder.
    fn shared(&self) -> bool {
        false
    }

    /// Stores `record` unless the agent has a version of its id; the stored version either
    /// way (the first writer wins, and every caller gets its record).
    fn insert<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        record: &'a VersionRecord,
    ) -> BoxFuture<'a, Result<VersionRecord, StorageError>>;

    /// Version `id` of the agent.
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<VersionRecord>, StorageError>>;

    /// Every version of the agent, in no particular order.
    fn list<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Vec<VersionRecord>, StorageError>>;

    /// A page of the agent's versions, newest first (by `created_at`, then id, both
    /// descending), after `after`, with their stored statistics: read through an index, so a
    /// page costs the same whatever the agent's number of versions.
    fn page<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        after: Option<&'a VersionCursor>,
        limit: usize,
    ) -> BoxFuture<'a, Result<VersionPage, StorageError>>;

    /// The stored statistics of a version; `None` before its first write.
    fn stats<'a>(
        &'a self,
        key: &'a VersionKey,
    ) -> BoxFuture<'a, Result<Option<VersionStats>, StorageError>>;

    /// Adds each entry's runs to the stored statistics of its version (a version without
    /// statistics starts from zero), all or none: instances that share the store each add
    /// their own runs.
    fn add_stats<'a>(
        &'a self,
        batch: &'a [(VersionKey, VersionStats)],
    ) -> BoxFuture<'a, Result<(), StorageError>>;
}

/// A deployment to make: the store adds `previous_version_id` and `sequence`.
#[derive(Debug, Clone)]
pub struct NewDeployment<'a> {
    pub agent: &'a str,
    pub schema_id: u32,
    pub environment: Environment,
    pub version_id: &'a str,
    pub deployed_at: &'a str,
    pub deployed_by: &'a str,
}

/// One page of an agent's deployment history, newest first.
#[derive(Debug, Clone)]
pub struct DeploymentPage {
    pub items: Vec<DeploymentRecord>,
    /// Pass as `before` for the next page; `None` on the last page.
    pub next_cursor: Option<u64>,
}

/// Which version each agent's `#<schema_id>/<environment>` callers get, and every deployment
/// ever made.
pub trait DeploymentStore: Send + Sync + 'static {
    /// The current deployment of the agent's schema in `environment`.
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        schema_id: u32,
        environment: Environment,
    ) -> BoxFuture<'a, Result<Option<DeploymentRecord>, StorageError>>;

    /// Makes `deployment` the current one of its schema and environment and appends it to
    /// the history, atomically: concurrent deploys leave one winner, the history's newest
    /// entry. The record names the version deployed there before, and a `sequence` greater
    /// than any earlier deployment's. Durable once answered.
    fn deploy<'a>(
        &'a self,
        tenant: &'a str,
        deployment: NewDeployment<'a>,
    ) -> BoxFuture<'a, Result<DeploymentRecord, StorageError>>;

    /// The agent's current deployments, by schema id, then environment name.
    fn current<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeploymentRecord>, StorageError>>;

    /// A page of the agent's deployment history, newest first, with sequences below `before`.
    fn history<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        before: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<DeploymentPage, StorageError>>;
}

/// An answered run's conversation, under the hash its next turn will look up.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationLink {
    pub tenant: String,
    pub agent: String,
    pub hash: ConversationHash,
    pub conversation_id: Uuid,
}

/// Which conversation a message list continues.
pub trait ConversationStore: Send + Sync + 'static {
    /// The conversation filed under `hash`, if any.
    fn find<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        hash: &'a ConversationHash,
    ) -> BoxFuture<'a, Result<Option<Uuid>, StorageError>>;

    /// Files each link, replacing what its hash led to before.
    fn link_batch<'a>(
        &'a self,
        links: &'a [ConversationLink],
    ) -> BoxFuture<'a, Result<(), StorageError>>;
}
