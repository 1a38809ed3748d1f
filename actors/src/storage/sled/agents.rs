//! The agents' records on sled, in the trees and encodings earlier releases wrote (their data
//! directories read back as they are). Every key starts with `tenant \0 agent \0`:
//!
//! * `agent_schemas`: after the prefix, `c` → the agent's last schema id, `d` digest → schema
//!   id, `s` id → the schema record (ids are 4 bytes, big endian, so records list by id);
//! * the versions and their statistics: `versions.rs`;
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

use futures::future::{ready, BoxFuture, FutureExt};
use uuid::Uuid;

use super::{agent_prefix, backend, off_thread};
use crate::agents::{DeploymentRecord, SchemaRecord};
use crate::model_ref::Environment;
use crate::storage::{
    ConversationHash, ConversationLink, ConversationStore, DeploymentPage, DeploymentStore,
    NewDeployment, PairDigest, SchemaAssignment, SchemaStore, StorageError,
};

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

pub(super) fn encode(what: &str, value: &impl serde::Serialize) -> Result<Vec<u8>, StorageError> {
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
    pub(super) fn versions_named(
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
