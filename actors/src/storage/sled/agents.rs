//! The agents' records on sled, in the trees and encodings earlier releases wrote (their data
//! directories read back as they are). Every key starts with `tenant \0 agent \0`:
//!
//! * `agent_schemas`: after the prefix, `c` → the agent's last schema id, `d` digest → schema
//!   id, `s` id → the schema record (ids are 4 bytes, big endian, so records list by id);
//! * `agent_versions`: version id → the version record;
//! * `agent_version_stats`: version id → its statistics;
//! * `agent_versions_by_time`: `created_at \0 version id` → nothing: the versions newest first
//!   (built once for a data directory of an earlier release);
//! * `agent_deployments`: schema id (4 bytes) and an environment byte → the current
//!   deployment; `agent_deployment_history`: sequence (8 bytes, big endian) → a deployment;
//! * `agent_conversations`: conversation hash → the conversation id (16 bytes).
//!
//! No write uses a sled transaction or `Batch`: the first one would switch sled's reads, for
//! the life of the process, from lock-free to a global reader-writer lock that every batch and
//! transaction takes exclusively — request-path reads then wait for them, and with sled 0.34's
//! flushes holding that lock while they wait for its I/O threads, the gateway deadlocked
//! under load (`bench/memory.sh`). Records that change together are written in an order whose
//! every prefix is harmless, and first writers win by compare-and-swap.
//!
//! Records are JSON. Reads on the request path are answered in place (a sled read of a hot
//! key is a memory read); listings and deploys, which may wait for the disk, run on a blocking
//! thread.

use std::collections::HashMap;

use futures::future::{ready, BoxFuture, FutureExt};
use uuid::Uuid;

use super::{agent_prefix, backend, off_thread};
use crate::agents::{DeploymentRecord, LastRuns, SchemaRecord, VersionRecord, VersionStats};
use crate::model_ref::Environment;
use crate::storage::{
    ConversationHash, ConversationLink, ConversationStore, DeploymentPage, DeploymentStore,
    NewDeployment, PairDigest, SchemaAssignment, SchemaStore, StorageError, VersionCursor,
    VersionKey, VersionPage, VersionStore,
};

fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

fn encode(what: &str, value: &impl serde::Serialize) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(value)
        .map_err(|e| StorageError::Backend(format!("cannot serialize a {what}: {e}")))
}

fn decode_u32(what: &'static str, bytes: &[u8]) -> Result<u32, StorageError> {
    let array: [u8; 4] = bytes.try_into().map_err(|_| StorageError::Corrupt {
        what,
        detail: format!("{} bytes where 4 were expected", bytes.len()),
    })?;
    Ok(u32::from_be_bytes(array))
}

// Keys in `agent_schemas`, after the agent prefix.
const COUNTER: u8 = b'c';
const BY_DIGEST: u8 = b'd';
const BY_ID: u8 = b's';

fn schema_key(tenant: &str, agent: &str, kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = agent_prefix(tenant, agent);
    key.push(kind);
    key.extend_from_slice(rest);
    key
}

/// Schemas in `agent_schemas`. Cheap to clone (the tree is a handle).
#[derive(Clone)]
pub struct SledSchemaStore {
    schemas: ::sled::Tree,
    /// Held while a new schema id is given: ids follow each other without gaps, and two
    /// first uses of one pair at once agree on one (a sled database has one process).
    assigning: std::sync::Arc<std::sync::Mutex<()>>,
}

impl SledSchemaStore {
    pub(super) fn open(db: &::sled::Db) -> Result<SledSchemaStore, StorageError> {
        Ok(SledSchemaStore {
            schemas: db.open_tree("agent_schemas").map_err(backend)?,
            assigning: Default::default(),
        })
    }

    fn assign_now(
        &self,
        tenant: &str,
        agent: &str,
        digest: &PairDigest,
        assignment: SchemaAssignment<'_>,
    ) -> Result<u32, StorageError> {
        let digest_key = schema_key(tenant, agent, BY_DIGEST, digest);
        if let Some(bytes) = self.schemas.get(&digest_key).map_err(backend)? {
            return decode_u32("schema id", &bytes);
        }
        // Without a sled transaction (see the module's doc): under the store's lock, the
        // digest is looked at again, then the counter, the record and the digest written in
        // that order — a crash between leaves at worst an id unused, or a record no digest
        // names (never used).
        let _assigning = self
            .assigning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(bytes) = self.schemas.get(&digest_key).map_err(backend)? {
            return decode_u32("schema id", &bytes);
        }
        let (input_schema, output_schema, created_at) = match assignment {
            SchemaAssignment::Existing(id) => {
                self.schemas
                    .insert(digest_key.as_slice(), &id.to_be_bytes())
                    .map_err(backend)?;
                return Ok(id);
            }
            SchemaAssignment::New {
                input_schema,
                output_schema,
                created_at,
            } => (input_schema, output_schema, created_at),
        };
        let counter_key = schema_key(tenant, agent, COUNTER, &[]);
        let id = match self.schemas.get(&counter_key).map_err(backend)? {
            Some(bytes) => decode_u32("schema counter", &bytes)? + 1,
            None => 1,
        };
        let record = SchemaRecord {
            id,
            input_schema: input_schema.clone(),
            output_schema: output_schema.clone(),
            created_at: created_at.to_string(),
        };
        self.schemas
            .insert(counter_key.as_slice(), &id.to_be_bytes())
            .map_err(backend)?;
        self.schemas
            .insert(
                schema_key(tenant, agent, BY_ID, &id.to_be_bytes()),
                encode("schema", &record)?,
            )
            .map_err(backend)?;
        self.schemas
            .insert(digest_key.as_slice(), &id.to_be_bytes())
            .map_err(backend)?;
        Ok(id)
    }

    fn list_now(&self, tenant: &str, agent: &str) -> Result<Vec<SchemaRecord>, StorageError> {
        self.schemas
            .scan_prefix(schema_key(tenant, agent, BY_ID, &[]))
            .map(|entry| decode("schema", &entry.map_err(backend)?.1))
            .collect()
    }
}

impl SchemaStore for SledSchemaStore {
    fn id_of<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        digest: &'a PairDigest,
    ) -> BoxFuture<'a, Result<Option<u32>, StorageError>> {
        let read = || match self
            .schemas
            .get(schema_key(tenant, agent, BY_DIGEST, digest))
            .map_err(backend)?
        {
            Some(bytes) => decode_u32("schema id", &bytes).map(Some),
            None => Ok(None),
        };
        ready(read()).boxed()
    }

    fn assign<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        digest: &'a PairDigest,
        assignment: SchemaAssignment<'a>,
    ) -> BoxFuture<'a, Result<u32, StorageError>> {
        // Rare (a pair's first use) and small: in place.
        super::written(self.assign_now(tenant, agent, digest, assignment))
    }

    fn get<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        id: u32,
    ) -> BoxFuture<'a, Result<Option<SchemaRecord>, StorageError>> {
        let read = || {
            let key = schema_key(tenant, agent, BY_ID, &id.to_be_bytes());
            match self.schemas.get(key).map_err(backend)? {
                Some(bytes) => decode("schema", &bytes).map(Some),
                None => Ok(None),
            }
        };
        ready(read()).boxed()
    }

    fn list<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SchemaRecord>, StorageError>> {
        let store = self.clone();
        let (tenant, agent) = (tenant.to_string(), agent.to_string());
        off_thread(move || store.list_now(&tenant, &agent))
    }
}

fn version_key(tenant: &str, agent: &str, id: &str) -> Vec<u8> {
    let mut key = agent_prefix(tenant, agent);
    key.extend_from_slice(id.as_bytes());
    key
}

/// `prefix created_at \0 id`: a version's entry in `agent_versions_by_time`.
fn time_key(tenant: &str, agent: &str, created_at: &str, id: &str) -> Vec<u8> {
    let mut key = agent_prefix(tenant, agent);
    key.extend_from_slice(created_at.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

/// Marks `agent_versions_by_time` complete: built for the versions of an earlier release.
const TIME_INDEX_BUILT: &[u8] = b"\xff\xffbuilt-v1";

/// What the time index needs of a stored version.
#[derive(serde::Deserialize)]
struct Created {
    created_at: String,
}

/// Versions in `agent_versions`, their statistics in `agent_version_stats`, their order in
/// `agent_versions_by_time`. Cheap to clone.
#[derive(Clone)]
pub struct SledVersionStore {
    versions: ::sled::Tree,
    stats: ::sled::Tree,
    by_time: ::sled::Tree,
}

impl SledVersionStore {
    pub(super) fn open(db: &::sled::Db) -> Result<SledVersionStore, StorageError> {
        let store = SledVersionStore {
            versions: db.open_tree("agent_versions").map_err(backend)?,
            stats: db.open_tree("agent_version_stats").map_err(backend)?,
            by_time: db.open_tree("agent_versions_by_time").map_err(backend)?,
        };
        store.build_time_index_once()?;
        Ok(store)
    }

    /// Files the versions stored before the time index existed (once per data directory).
    fn build_time_index_once(&self) -> Result<(), StorageError> {
        if self
            .by_time
            .contains_key(TIME_INDEX_BUILT)
            .map_err(backend)?
        {
            return Ok(());
        }
        let mut n = 0u64;
        for entry in self.versions.iter() {
            let (key, bytes) = entry.map_err(backend)?;
            // `tenant \0 agent \0 id`
            let mut parts = key.splitn(3, |b| *b == 0);
            let (Some(tenant), Some(agent), Some(id)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let created: Created = decode("version", &bytes)?;
            let (tenant, agent, id) = (
                String::from_utf8_lossy(tenant),
                String::from_utf8_lossy(agent),
                String::from_utf8_lossy(id),
            );
            self.by_time
                .insert(time_key(&tenant, &agent, &created.created_at, &id), &[])
                .map_err(backend)?;
            n += 1;
        }
        // Last: a build cut short is done again in full (an entry written twice is one).
        self.by_time
            .insert(TIME_INDEX_BUILT, &[])
            .map_err(backend)?;
        if n > 0 {
            tracing::info!(
                versions = n,
                "indexed the versions of an earlier release by time"
            );
        }
        Ok(())
    }

    fn insert_now(
        &self,
        tenant: &str,
        agent: &str,
        record: &VersionRecord,
    ) -> Result<VersionRecord, StorageError> {
        let key = version_key(tenant, agent, &record.id);
        // Most calls find it there: no serialization then.
        if let Some(existing) = self.versions.get(&key).map_err(backend)? {
            return decode("version", &existing);
        }
        let bytes = encode("version", record)?;
        let entry = time_key(tenant, agent, &record.created_at, &record.id);
        // The index entry first (a listing skips an entry whose version is missing), then the
        // version by a compare-and-swap, without a sled transaction (see the module's doc): a
        // concurrent first writer wins and its record is the answer.
        self.by_time
            .insert(entry.as_slice(), &[])
            .map_err(backend)?;
        match self
            .versions
            .compare_and_swap(&key, None::<&[u8]>, Some(bytes.as_slice()))
            .map_err(backend)?
        {
            Ok(()) => Ok(record.clone()),
            Err(lost) => {
                let Some(existing) = lost.current else {
                    return Ok(record.clone());
                };
                let existing: VersionRecord = decode("version", &existing)?;
                if existing.created_at != record.created_at {
                    // The winner filed its own entry; ours would list the version twice.
                    self.by_time.remove(entry).map_err(backend)?;
                }
                Ok(existing)
            }
        }
    }

    fn page_now(
        &self,
        tenant: &str,
        agent: &str,
        after: Option<&VersionCursor>,
        limit: usize,
    ) -> Result<VersionPage, StorageError> {
        let prefix = agent_prefix(tenant, agent);
        let end = match after {
            Some(c) => time_key(tenant, agent, &c.created_at, &c.id),
            None => {
                // Past every key of the prefix.
                let mut end = prefix.clone();
                end.push(0xff);
                end
            }
        };
        let mut items = Vec::with_capacity(limit.min(1000));
        let mut next_cursor = None;
        for entry in self.by_time.range(prefix.clone()..end).rev() {
            let (key, _) = entry.map_err(backend)?;
            let rest = &key[prefix.len()..];
            let Some(split) = rest.iter().position(|b| *b == 0) else {
                continue;
            };
            let id = String::from_utf8_lossy(&rest[split + 1..]);
            if items.len() == limit {
                let (last, _): &(VersionRecord, _) = &items[items.len() - 1];
                next_cursor = Some(VersionCursor {
                    created_at: last.created_at.clone(),
                    id: last.id.clone(),
                });
                break;
            }
            let vkey = version_key(tenant, agent, &id);
            let Some(bytes) = self.versions.get(&vkey).map_err(backend)? else {
                continue;
            };
            let record: VersionRecord = decode("version", &bytes)?;
            let stats = match self.stats.get(&vkey).map_err(backend)? {
                Some(bytes) => Some(decode("version's statistics", &bytes)?),
                None => None,
            };
            items.push((record, stats));
        }
        Ok(VersionPage { items, next_cursor })
    }

    fn list_now(&self, tenant: &str, agent: &str) -> Result<Vec<VersionRecord>, StorageError> {
        self.versions
            .scan_prefix(agent_prefix(tenant, agent))
            .map(|entry| decode("version", &entry.map_err(backend)?.1))
            .collect()
    }

    fn add_stats_now(&self, batch: &[(VersionKey, VersionStats)]) -> Result<(), StorageError> {
        // One process writes this store (the recorder's thread): read, add, write in a batch.
        let mut sums: std::collections::HashMap<Vec<u8>, VersionStats> =
            std::collections::HashMap::new();
        for (key, stats) in batch {
            let id = version_key(&key.tenant, &key.agent, &key.version_id);
            if !sums.contains_key(&id) {
                let stored = match self.stats.get(&id).map_err(backend)? {
                    Some(bytes) => decode("version's statistics", &bytes)?,
                    None => VersionStats::default(),
                };
                sums.insert(id.clone(), stored);
            }
            if let Some(sum) = sums.get_mut(&id) {
                sum.add(stats);
            }
        }
        // One insert per version, not a `sled::Batch` (see the module's doc).
        for (id, stats) in sums {
            self.stats
                .insert(id, encode("version's statistics", &stats)?)
                .map_err(backend)?;
        }
        Ok(())
    }
}

impl SledVersionStore {
    /// Retention's part: deletes each version of `last_runs` (a version and the start of the
    /// newest of its runs that retention just deleted) whose recorded last use is no later,
    /// so that it has no run left, unless a deployment (current or past) names it. Its record,
    /// its statistics and its entry in the time index go; returns the versions deleted.
    /// Without this an agent whose prompts are written per request (no templates) keeps a
    /// version per run it ever served, and the store grows with them whatever retention does.
    /// A version without stored statistics (its first runs not yet written) stays.
    pub(super) fn drop_unused(
        &self,
        deployments: &SledDeploymentStore,
        last_runs: &LastRuns,
    ) -> Result<Vec<VersionKey>, StorageError> {
        let mut deployed: HashMap<(String, String), std::collections::HashSet<String>> =
            HashMap::new();
        let mut dropped = Vec::new();
        for (version, last_run) in &last_runs.0 {
            let key = version_key(&version.tenant, &version.agent, &version.version_id);
            let Some(stats) = self.stats.get(&key).map_err(backend)? else {
                continue;
            };
            let stats: VersionStats = decode("version's statistics", &stats)?;
            let used_after = stats.used_after(last_run);
            if used_after {
                continue;
            }
            let agent = (version.tenant.clone(), version.agent.clone());
            let names = match deployed.entry(agent) {
                std::collections::hash_map::Entry::Occupied(names) => names.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(deployments.versions_named(&version.tenant, &version.agent)?)
                }
            };
            if names.contains(&version.version_id) {
                continue;
            }
            // The record first: a time index entry without its version is skipped by a page.
            let Some(record) = self.versions.remove(&key).map_err(backend)? else {
                self.stats.remove(&key).map_err(backend)?;
                continue;
            };
            if let Ok(record) = decode::<Created>("version", &record) {
                let entry = time_key(
                    &version.tenant,
                    &version.agent,
                    &record.created_at,
                    &version.version_id,
                );
                self.by_time.remove(entry).map_err(backend)?;
            }
            self.stats.remove(&key).map_err(backend)?;
            dropped.push(version.clone());
        }
        Ok(dropped)
    }
}

impl VersionStore for SledVersionStore {
    fn insert<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        record: &'a VersionRecord,
    ) -> BoxFuture<'a, Result<VersionRecord, StorageError>> {
        // Rare (a version's first use): in place.
        super::written(self.insert_now(tenant, agent, record))
    }

    fn get<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<VersionRecord>, StorageError>> {
        let read = || match self
            .versions
            .get(version_key(tenant, agent, id))
            .map_err(backend)?
        {
            Some(bytes) => decode("version", &bytes).map(Some),
            None => Ok(None),
        };
        ready(read()).boxed()
    }

    fn list<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Vec<VersionRecord>, StorageError>> {
        let store = self.clone();
        let (tenant, agent) = (tenant.to_string(), agent.to_string());
        off_thread(move || store.list_now(&tenant, &agent))
    }

    fn page<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        after: Option<&'a VersionCursor>,
        limit: usize,
    ) -> BoxFuture<'a, Result<VersionPage, StorageError>> {
        let store = self.clone();
        let (tenant, agent, after) = (tenant.to_string(), agent.to_string(), after.cloned());
        off_thread(move || store.page_now(&tenant, &agent, after.as_ref(), limit))
    }

    fn stats<'a>(
        &'a self,
        key: &'a VersionKey,
    ) -> BoxFuture<'a, Result<Option<VersionStats>, StorageError>> {
        let read = || match self
            .stats
            .get(version_key(&key.tenant, &key.agent, &key.version_id))
            .map_err(backend)?
        {
            Some(bytes) => decode("version's statistics", &bytes).map(Some),
            None => Ok(None),
        };
        ready(read()).boxed()
    }

    fn add_stats<'a>(
        &'a self,
        batch: &'a [(VersionKey, VersionStats)],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        // Answered at once: the recorder writes on its own thread.
        super::written(self.add_stats_now(batch))
    }
}

fn env_byte(environment: Environment) -> u8 {
    match environment {
        Environment::Dev => b'd',
        Environment::Staging => b's',
        Environment::Production => b'p',
    }
}

fn pointer_key(tenant: &str, agent: &str, schema_id: u32, environment: Environment) -> Vec<u8> {
    let mut key = agent_prefix(tenant, agent);
    key.extend_from_slice(&schema_id.to_be_bytes());
    key.push(env_byte(environment));
    key
}

/// Current deployments in `agent_deployments`, every deployment in
/// `agent_deployment_history`. Cheap to clone.
#[derive(Clone)]
pub struct SledDeploymentStore {
    db: ::sled::Db,
    pointers: ::sled::Tree,
    history: ::sled::Tree,
}

impl SledDeploymentStore {
    pub(super) fn open(db: &::sled::Db) -> Result<SledDeploymentStore, StorageError> {
        Ok(SledDeploymentStore {
            db: db.clone(),
            pointers: db.open_tree("agent_deployments").map_err(backend)?,
            history: db.open_tree("agent_deployment_history").map_err(backend)?,
        })
    }

    fn deploy_now(
        &self,
        tenant: &str,
        new: &NewDeployment<'_>,
    ) -> Result<DeploymentRecord, StorageError> {
        let key = pointer_key(tenant, new.agent, new.schema_id, new.environment);
        let history_prefix = agent_prefix(tenant, new.agent);
        // Without a sled transaction (see the module's doc): the history entry first, then the
        // pointer by a compare-and-swap from the deployment it replaces; a concurrent deploy
        // that moved the pointer meanwhile makes this one take its entry back and try again.
        let record = loop {
            let current = self.pointers.get(&key).map_err(backend)?;
            let previous: Option<DeploymentRecord> = match &current {
                Some(bytes) => Some(decode("deployment", bytes)?),
                None => None,
            };
            // Unique and increasing across the database (and restarts).
            let sequence = self.db.generate_id().map_err(backend)?;
            let record = DeploymentRecord {
                agent: new.agent.to_string(),
                schema_id: new.schema_id,
                environment: new.environment,
                version_id: new.version_id.to_string(),
                previous_version_id: previous.map(|p| p.version_id),
                deployed_at: new.deployed_at.to_string(),
                deployed_by: new.deployed_by.to_string(),
                sequence,
            };
            let bytes = encode("deployment", &record)?;
            let mut history_key = history_prefix.clone();
            history_key.extend_from_slice(&sequence.to_be_bytes());
            self.history
                .insert(history_key.as_slice(), bytes.as_slice())
                .map_err(backend)?;
            match self
                .pointers
                .compare_and_swap(&key, current, Some(bytes))
                .map_err(backend)?
            {
                Ok(()) => break record,
                Err(_) => {
                    self.history.remove(history_key).map_err(backend)?;
                }
            }
        };
        // A deployment is rare and must survive a crash right after it is acknowledged.
        self.db.flush().map_err(backend)?;
        Ok(record)
    }

    /// The versions that a deployment of the agent, current or past, names.
    fn versions_named(
        &self,
        tenant: &str,
        agent: &str,
    ) -> Result<std::collections::HashSet<String>, StorageError> {
        let prefix = agent_prefix(tenant, agent);
        let mut names = std::collections::HashSet::new();
        for tree in [&self.pointers, &self.history] {
            for entry in tree.scan_prefix(&prefix) {
                let record: DeploymentRecord = decode("deployment", &entry.map_err(backend)?.1)?;
                names.insert(record.version_id);
            }
        }
        Ok(names)
    }

    fn current_now(
        &self,
        tenant: &str,
        agent: &str,
    ) -> Result<Vec<DeploymentRecord>, StorageError> {
        let mut current: Vec<DeploymentRecord> = self
            .pointers
            .scan_prefix(agent_prefix(tenant, agent))
            .map(|entry| decode("deployment", &entry.map_err(backend)?.1))
            .collect::<Result<_, _>>()?;
        // Key order is schema, then the environment's byte (d, p, s): the names' order too;
        // sorted anyway, so the order does not rest on the byte choice.
        current.sort_by(|a, b| {
            (a.schema_id, a.environment.as_str()).cmp(&(b.schema_id, b.environment.as_str()))
        });
        Ok(current)
    }

    fn history_now(
        &self,
        tenant: &str,
        agent: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<DeploymentPage, StorageError> {
        let prefix = agent_prefix(tenant, agent);
        let mut end = prefix.clone();
        match before {
            Some(before) => end.extend_from_slice(&before.to_be_bytes()),
            None => end.extend_from_slice(&[0xff; 9]),
        }
        let mut items = Vec::with_capacity(limit.min(256));
        let mut more = false;
        for entry in self.history.range(prefix..end).rev() {
            let (_, bytes) = entry.map_err(backend)?;
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(decode::<DeploymentRecord>("deployment", &bytes)?);
        }
        let next_cursor = if more {
            items.last().map(|d| d.sequence)
        } else {
            None
        };
        Ok(DeploymentPage { items, next_cursor })
    }
}

impl DeploymentStore for SledDeploymentStore {
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        schema_id: u32,
        environment: Environment,
    ) -> BoxFuture<'a, Result<Option<DeploymentRecord>, StorageError>> {
        let read = || match self
            .pointers
            .get(pointer_key(tenant, agent, schema_id, environment))
            .map_err(backend)?
        {
            Some(bytes) => decode("deployment", &bytes).map(Some),
            None => Ok(None),
        };
        ready(read()).boxed()
    }

    fn deploy<'a>(
        &'a self,
        tenant: &'a str,
        deployment: NewDeployment<'a>,
    ) -> BoxFuture<'a, Result<DeploymentRecord, StorageError>> {
        let store = self.clone();
        let tenant = tenant.to_string();
        let (agent, version_id) = (
            deployment.agent.to_string(),
            deployment.version_id.to_string(),
        );
        let (deployed_at, deployed_by) = (
            deployment.deployed_at.to_string(),
            deployment.deployed_by.to_string(),
        );
        let (schema_id, environment) = (deployment.schema_id, deployment.environment);
        // It waits for the disk (the flush).
        off_thread(move || {
            let new = NewDeployment {
                agent: &agent,
                schema_id,
                environment,
                version_id: &version_id,
                deployed_at: &deployed_at,
                deployed_by: &deployed_by,
            };
            store.deploy_now(&tenant, &new)
        })
    }

    fn current<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeploymentRecord>, StorageError>> {
        let store = self.clone();
        let (tenant, agent) = (tenant.to_string(), agent.to_string());
        off_thread(move || store.current_now(&tenant, &agent))
    }

    fn history<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        before: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<DeploymentPage, StorageError>> {
        let store = self.clone();
        let (tenant, agent) = (tenant.to_string(), agent.to_string());
        off_thread(move || store.history_now(&tenant, &agent, before, limit))
    }
}

fn conversation_key(tenant: &str, agent: &str, hash: &ConversationHash) -> Vec<u8> {
    let mut key = agent_prefix(tenant, agent);
    key.extend_from_slice(hash);
    key
}

/// Conversation links in `agent_conversations`. Cheap to clone.
#[derive(Clone)]
pub struct SledConversationStore {
    conversations: ::sled::Tree,
}

impl SledConversationStore {
    pub(super) fn open(db: &::sled::Db) -> Result<SledConversationStore, StorageError> {
        Ok(SledConversationStore {
            conversations: db.open_tree("agent_conversations").map_err(backend)?,
        })
    }

    /// One insert per link rather than a `sled::Batch`, for the reason the runs give (a batch
    /// takes the write lock that request-path readers wait for); a link written twice is the
    /// same link.
    fn link_now(&self, links: &[ConversationLink]) -> Result<(), StorageError> {
        for link in links {
            self.conversations
                .insert(
                    conversation_key(&link.tenant, &link.agent, &link.hash),
                    link.conversation_id.as_bytes(),
                )
                .map_err(backend)?;
        }
        Ok(())
    }
}

impl ConversationStore for SledConversationStore {
    fn find<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        hash: &'a ConversationHash,
    ) -> BoxFuture<'a, Result<Option<Uuid>, StorageError>> {
        let read = || {
            let found = self
                .conversations
                .get(conversation_key(tenant, agent, hash))
                .map_err(backend)?;
            // A damaged link is no link: the request starts a conversation of its own.
            Ok(found.and_then(|bytes| Uuid::from_slice(&bytes).ok()))
        };
        ready(read()).boxed()
    }

    fn link_batch<'a>(
        &'a self,
        links: &'a [ConversationLink],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        // Answered at once: the recorder writes on its own thread.
        super::written(self.link_now(links))
    }
}
