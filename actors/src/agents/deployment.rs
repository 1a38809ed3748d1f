//! Deployments: the version an agent's `#<schema_id>/<environment>` callers get. Deploying
//! records who and when in a history; rolling back is deploying an older version. The pointer
//! and its history entry are written in one transaction, so concurrent deploys leave one winner
//! and a history whose last entry is that winner.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sled::Transactional;

use super::{agent_prefix, now_rfc3339, store_error, AgentStore};
use crate::error::GatewayError;
use crate::model_ref::Environment;

/// One deployment, current or past.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeploymentRecord {
    pub agent: String,
    pub schema_id: u32,
    pub environment: Environment,
    pub version_id: String,
    /// The version deployed there before, if any.
    pub previous_version_id: Option<String>,
    pub deployed_at: String,
    /// The admin key's label, or a prefix of its digest: never the key.
    pub deployed_by: String,
    /// Order of the deployment among all deployments of the store.
    pub sequence: u64,
}

/// An agent's deployments: the current ones and the history, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct Deployments {
    pub deployments: Vec<DeploymentRecord>,
    pub history: Vec<DeploymentRecord>,
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

type TxError = sled::transaction::ConflictableTransactionError<String>;

fn abort(e: impl std::fmt::Display) -> TxError {
    TxError::Abort(e.to_string())
}

impl AgentStore {
    /// Deploys a stored version of the agent to `environment` for `schema_id` (the version's
    /// own schema when `None`).
    pub fn deploy(
        &self,
        tenant: &str,
        agent: &str,
        version_id: &str,
        schema_id: Option<u32>,
        environment: Environment,
        deployed_by: &str,
    ) -> Result<DeploymentRecord, GatewayError> {
        let version = self.version(tenant, agent, version_id)?.ok_or_else(|| {
            GatewayError::not_found(format!(
                "agent `{agent}` has no version `{version_id}`: GET /api/agents/{agent}/versions \
                 lists its versions"
            ))
            .with_param("version_id")
        })?;
        let schema_id = schema_id.unwrap_or(version.schema_id);
        if self.schema(tenant, agent, schema_id)?.is_none() {
            return Err(GatewayError::not_found(format!(
                "agent `{agent}` has no schema #{schema_id}: GET /api/agents/{agent}/schemas lists \
                 its schemas"
            ))
            .with_param("schema_id"));
        }
        let key = pointer_key(tenant, agent, schema_id, environment);
        let history_prefix = agent_prefix(tenant, agent);
        let deployed_at = now_rfc3339();
        let result = (&self.inner.deployments, &self.inner.deployment_history).transaction(
            |(pointers, history)| -> sled::transaction::ConflictableTransactionResult<DeploymentRecord, String> {
                let previous: Option<DeploymentRecord> = match pointers.get(&key)? {
                    Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(abort)?),
                    None => None,
                };
                let sequence = pointers.generate_id()?;
                let record = DeploymentRecord {
                    agent: agent.to_string(),
                    schema_id,
                    environment,
                    version_id: version_id.to_string(),
                    previous_version_id: previous.map(|p| p.version_id),
                    deployed_at: deployed_at.clone(),
                    deployed_by: deployed_by.to_string(),
                    sequence,
                };
                let bytes = serde_json::to_vec(&record).map_err(abort)?;
                let mut history_key = history_prefix.clone();
                history_key.extend_from_slice(&sequence.to_be_bytes());
                pointers.insert(key.as_slice(), bytes.as_slice())?;
                history.insert(history_key, bytes)?;
                Ok(record)
            },
        );
        let record = result.map_err(|e| match e {
            sled::transaction::TransactionError::Abort(message) => store_error(message),
            sled::transaction::TransactionError::Storage(e) => store_error(e),
        })?;
        // A deployment is rare and must survive a crash right after it is acknowledged.
        self.flush()?;
        Ok(record)
    }

    /// The deployment `agent/#<schema_id>/<environment>` callers get: read from the store on
    /// every call, so a deploy by any handle on the store applies at once.
    pub fn deployment(
        &self,
        tenant: &str,
        agent: &str,
        schema_id: u32,
        environment: Environment,
    ) -> Result<Option<DeploymentRecord>, GatewayError> {
        match self
            .inner
            .deployments
            .get(pointer_key(tenant, agent, schema_id, environment))
            .map_err(store_error)?
        {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(store_error)?)),
            None => Ok(None),
        }
    }

    /// The agent's current deployments (by schema, then environment) and their history.
    pub fn deployments(&self, tenant: &str, agent: &str) -> Result<Deployments, GatewayError> {
        let prefix = agent_prefix(tenant, agent);
        let decode = |entry: sled::Result<(sled::IVec, sled::IVec)>| {
            let (_, bytes) = entry.map_err(store_error)?;
            serde_json::from_slice::<DeploymentRecord>(&bytes).map_err(store_error)
        };
        let deployments = self
            .inner
            .deployments
            .scan_prefix(&prefix)
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        let history = self
            .inner
            .deployment_history
            .scan_prefix(&prefix)
            .rev()
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Deployments {
            deployments,
            history,
        })
    }

    /// The 400 for a call to a deployment that does not exist, saying what does.
    pub fn no_deployment_error(
        &self,
        tenant: &str,
        agent: &str,
        schema_id: u32,
        environment: Environment,
    ) -> GatewayError {
        let existing: Vec<String> = self
            .deployments(tenant, agent)
            .map(|d| {
                d.deployments
                    .iter()
                    .map(|d| format!("{agent}/#{}/{}", d.schema_id, d.environment.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let hint = if existing.is_empty() {
            format!(
                "agent `{agent}` has no deployment at all: deploy a version with POST \
                 /api/agents/{agent}/versions/{{version_id}}/deploy"
            )
        } else {
            format!("deployed: {}", existing.join(", "))
        };
        GatewayError::invalid(format!(
            "agent `{agent}` has no version deployed to {} for schema #{schema_id} ({hint})",
            environment.as_str()
        ))
        .with_param("model")
        .with_code("deployment_not_found")
        .with_extra(json!({"deployments": existing}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::VersionProperties;
    use crate::wire::ChatRequest;
    use serde_json::Value;

    fn setup() -> (tempfile::TempDir, AgentStore, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let store = AgentStore::open(&db).unwrap();
        let schema = store.schema_id("t", "a", None, &Value::Null).unwrap();
        let ids = (0..3)
            .map(|i| {
                let request: ChatRequest = serde_json::from_value(json!({
                    "model": "m", "messages": [{"role": "system", "content": format!("v{i}")}]
                }))
                .unwrap();
                store
                    .ensure_version("t", "a", &VersionProperties::of("m", &request), schema)
                    .unwrap()
            })
            .collect();
        (dir, store, ids)
    }

    #[test]
    fn deploy_rollback_history_and_reopen() {
        let (dir, store, ids) = setup();
        let prod = Environment::Production;
        assert!(store.deployment("t", "a", 1, prod).unwrap().is_none());
        let first = store
            .deploy("t", "a", &ids[0], None, prod, "alice")
            .unwrap();
        assert_eq!(first.previous_version_id, None);
        let second = store.deploy("t", "a", &ids[1], None, prod, "bob").unwrap();
        assert_eq!(second.previous_version_id.as_deref(), Some(ids[0].as_str()));
        store
            .deploy("t", "a", &ids[2], Some(1), Environment::Staging, "bob")
            .unwrap();
        // Rollback: deploy the older version again.
        store
            .deploy("t", "a", &ids[0], None, prod, "alice")
            .unwrap();
        let current = store.deployment("t", "a", 1, prod).unwrap().unwrap();
        assert_eq!(current.version_id, ids[0]);
        assert_eq!(current.deployed_by, "alice");
        let all = store.deployments("t", "a").unwrap();
        assert_eq!(all.deployments.len(), 2);
        let versions: Vec<&str> = all.history.iter().map(|d| d.version_id.as_str()).collect();
        assert_eq!(versions, vec![&ids[0], &ids[2], &ids[1], &ids[0]]);
        drop(store);
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let store = AgentStore::open(&db).unwrap();
        assert_eq!(
            store
                .deployment("t", "a", 1, prod)
                .unwrap()
                .unwrap()
                .version_id,
            ids[0]
        );
        assert_eq!(store.deployments("t", "a").unwrap().history.len(), 4);
    }

    #[test]
    fn unknown_versions_and_schemas_are_404() {
        let (_dir, store, ids) = setup();
        let e = store
            .deploy("t", "a", "nope", None, Environment::Dev, "x")
            .unwrap_err();
        assert_eq!(e.status_code().as_u16(), 404);
        let e = store
            .deploy("t", "a", &ids[0], Some(9), Environment::Dev, "x")
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("schema_id"));
        // Another tenant sees nothing.
        assert!(store
            .deploy("u", "a", &ids[0], None, Environment::Dev, "x")
            .is_err());
    }

    #[test]
    fn concurrent_deploys_leave_one_consistent_winner() {
        let (_dir, store, ids) = setup();
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let store = store.clone();
                let id = ids[i % 3].clone();
                std::thread::spawn(move || {
                    store
                        .deploy(
                            "t",
                            "a",
                            &id,
                            None,
                            Environment::Production,
                            &format!("k{i}"),
                        )
                        .unwrap()
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let all = store.deployments("t", "a").unwrap();
        assert_eq!(all.history.len(), 12);
        let current = store
            .deployment("t", "a", 1, Environment::Production)
            .unwrap()
            .unwrap();
        // The pointer is the newest history entry, and each entry names its predecessor.
        assert_eq!(all.history[0], current);
        for pair in all.history.windows(2) {
            assert_eq!(
                pair[0].previous_version_id.as_deref(),
                Some(pair[1].version_id.as_str())
            );
            assert!(pair[0].sequence > pair[1].sequence);
        }
    }
}
