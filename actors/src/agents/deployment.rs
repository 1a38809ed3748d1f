//! Deployments: the version an agent's `#<schema_id>/<environment>` callers get. Deploying
//! records who and when in a history; rolling back is deploying an older version. The store
//! writes the pointer and its history entry atomically, so concurrent deploys leave one winner
//! and a history whose last entry is that winner.
//!
//! Every instance keeps a copy of the pointers its callers use, so a call to a deployment
//! costs no store round trip; a deploy anywhere makes every copy stale (see the agents
//! module and [`crate::storage::Changes`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{agent_prefix, bounded_insert, now_rfc3339, AgentStore};
use crate::error::GatewayError;
use crate::model_ref::Environment;
use crate::storage::{Change, NewDeployment, StorageError};

/// A copy of a deployment pointer is read again after this long even when no change was
/// heard: the safety net under the change notifications.
pub const DEPLOYMENT_REFRESH: Duration = Duration::from_secs(5);

/// A deployment pointer as read (`None`: nothing deployed there), with when and at which
/// epoch of the store's changes.
#[derive(Clone)]
pub(super) struct DeploymentCopy {
    record: Option<Arc<DeploymentRecord>>,
    epoch: u64,
    read_at: Instant,
}

fn copy_key(tenant: &str, agent: &str, schema_id: u32, environment: Environment) -> Vec<u8> {
    let mut key = agent_prefix(tenant, agent);
    key.extend_from_slice(&schema_id.to_be_bytes());
    key.extend_from_slice(environment.as_str().as_bytes());
    key
}

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

/// History entries read per page when the whole history is listed.
const HISTORY_PAGE: usize = 500;

impl AgentStore {
    /// Deploys a stored version of the agent to `environment` for `schema_id` (the version's
    /// own schema when `None`). Durable once answered.
    pub async fn deploy(
        &self,
        tenant: &str,
        agent: &str,
        version_id: &str,
        schema_id: Option<u32>,
        environment: Environment,
        deployed_by: &str,
    ) -> Result<DeploymentRecord, GatewayError> {
        // A deployment names a stored version, never one only this instance knows.
        self.store_unstored_versions(Some(&super::version::memo_key(tenant, agent, version_id)))
            .await?;
        let version = self
            .version(tenant, agent, version_id)
            .await?
            .ok_or_else(|| {
                GatewayError::not_found(format!(
                    "agent `{agent}` has no version `{version_id}`: GET \
                     /api/agents/{agent}/versions lists its versions"
                ))
                .with_param("version_id")
            })?;
        let schema_id = schema_id.unwrap_or(version.schema_id);
        if self.schema(tenant, agent, schema_id).await?.is_none() {
            return Err(GatewayError::not_found(format!(
                "agent `{agent}` has no schema #{schema_id}: GET /api/agents/{agent}/schemas lists \
                 its schemas"
            ))
            .with_param("schema_id"));
        }
        let deployed_at = now_rfc3339();
        let new = NewDeployment {
            agent,
            schema_id,
            environment,
            version_id,
            deployed_at: &deployed_at,
            deployed_by,
        };
        let deployed = self.inner.deployments.deploy(tenant, new).await?;
        // This instance's copies go at once, whether or not the store notifies.
        self.inner.changes.changed(Change::Deployments);
        Ok(deployed)
    }

    /// The deployment `agent/#<schema_id>/<environment>` callers get: this instance's copy
    /// while no deploy was made since it was read (here or on another instance) and it is
    /// younger than [`DEPLOYMENT_REFRESH`]; else read from the store, or, while the store
    /// cannot be reached, the last copy read.
    pub async fn deployment(
        &self,
        tenant: &str,
        agent: &str,
        schema_id: u32,
        environment: Environment,
    ) -> Result<Option<Arc<DeploymentRecord>>, GatewayError> {
        let key = copy_key(tenant, agent, schema_id, environment);
        // Taken before the read: a deploy that lands during the read moves it, and the copy
        // made here is stale at once.
        let epoch = self.inner.changes.deployments_epoch();
        if let Some(epoch) = epoch {
            if let Some(copy) = self.inner.cache.deployments.get(&key) {
                if copy.epoch == epoch && copy.read_at.elapsed() < DEPLOYMENT_REFRESH {
                    return Ok(copy.record.clone());
                }
            }
        }
        let read_at = Instant::now();
        let record = match self
            .inner
            .deployments
            .get(tenant, agent, schema_id, environment)
            .await
        {
            Ok(record) => record.map(Arc::new),
            // The store cannot be reached (no deploy can be made meanwhile either): the last
            // copy read keeps serving, however old, rather than a 503 per call.
            Err(StorageError::Unavailable(e)) => match self.inner.cache.deployments.get(&key) {
                Some(copy) => {
                    tracing::debug!(error = %e, agent, "store unavailable: the last deployment read serves");
                    return Ok(copy.record.clone());
                }
                None => return Err(StorageError::Unavailable(e).into()),
            },
            Err(e) => return Err(e.into()),
        };
        if let Some(epoch) = epoch {
            let copy = DeploymentCopy {
                record: record.clone(),
                epoch,
                read_at,
            };
            bounded_insert(&self.inner.cache.deployments, key, copy);
        }
        Ok(record)
    }

    /// The agent's current deployments (by schema, then environment) and their whole history,
    /// newest first.
    pub async fn deployments(
        &self,
        tenant: &str,
        agent: &str,
    ) -> Result<Deployments, GatewayError> {
        let store = &self.inner.deployments;
        let deployments = store.current(tenant, agent).await?;
        let mut history = Vec::new();
        let mut before = None;
        loop {
            let page = store.history(tenant, agent, before, HISTORY_PAGE).await?;
            history.extend(page.items);
            match page.next_cursor {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        Ok(Deployments {
            deployments,
            history,
        })
    }

    /// The 400 for a call to a deployment that does not exist, saying what does.
    pub async fn no_deployment_error(
        &self,
        tenant: &str,
        agent: &str,
        schema_id: u32,
        environment: Environment,
    ) -> GatewayError {
        let existing: Vec<String> = self
            .inner
            .deployments
            .current(tenant, agent)
            .await
            .map(|current| {
                current
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

    async fn setup() -> (tempfile::TempDir, AgentStore, Vec<String>) {
        let (dir, storage) = crate::storage::temporary();
        let store = AgentStore::open(&storage);
        let schema = store.schema_id("t", "a", None, &Value::Null).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..3 {
            let request: ChatRequest = serde_json::from_value(json!({
                "model": "m", "messages": [{"role": "system", "content": format!("v{i}")}]
            }))
            .unwrap();
            let properties = VersionProperties::of("m", &request);
            ids.push(
                store
                    .ensure_version("t", "a", &properties, schema)
                    .await
                    .unwrap(),
            );
        }
        (dir, store, ids)
    }

    #[actix_rt::test]
    async fn deploy_rollback_history_and_reopen() {
        let (dir, store, ids) = setup().await;
        let prod = Environment::Production;
        assert!(store.deployment("t", "a", 1, prod).await.unwrap().is_none());
        let first = store
            .deploy("t", "a", &ids[0], None, prod, "alice")
            .await
            .unwrap();
        assert_eq!(first.previous_version_id, None);
        let second = store
            .deploy("t", "a", &ids[1], None, prod, "bob")
            .await
            .unwrap();
        assert_eq!(second.previous_version_id.as_deref(), Some(ids[0].as_str()));
        store
            .deploy("t", "a", &ids[2], Some(1), Environment::Staging, "bob")
            .await
            .unwrap();
        // Rollback: deploy the older version again.
        store
            .deploy("t", "a", &ids[0], None, prod, "alice")
            .await
            .unwrap();
        let current = store.deployment("t", "a", 1, prod).await.unwrap().unwrap();
        assert_eq!(current.version_id, ids[0]);
        assert_eq!(current.deployed_by, "alice");
        let all = store.deployments("t", "a").await.unwrap();
        assert_eq!(all.deployments.len(), 2);
        let versions: Vec<&str> = all.history.iter().map(|d| d.version_id.as_str()).collect();
        assert_eq!(versions, vec![&ids[0], &ids[2], &ids[1], &ids[0]]);
        drop(store);
        let store = AgentStore::open(&crate::storage::in_dir(dir.path()));
        assert_eq!(
            store
                .deployment("t", "a", 1, prod)
                .await
                .unwrap()
                .unwrap()
                .version_id,
            ids[0]
        );
        assert_eq!(store.deployments("t", "a").await.unwrap().history.len(), 4);
    }

    /// A deployment store that can be made unreachable.
    struct Flaky {
        inner: Arc<dyn crate::storage::DeploymentStore>,
        down: std::sync::atomic::AtomicBool,
    }

    impl crate::storage::DeploymentStore for Flaky {
        fn get<'a>(
            &'a self,
            tenant: &'a str,
            agent: &'a str,
            schema_id: u32,
            environment: Environment,
        ) -> futures::future::BoxFuture<'a, Result<Option<DeploymentRecord>, StorageError>>
        {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Box::pin(async { Err(StorageError::Unavailable("down".into())) });
            }
            self.inner.get(tenant, agent, schema_id, environment)
        }
        fn deploy<'a>(
            &'a self,
            tenant: &'a str,
            deployment: NewDeployment<'a>,
        ) -> futures::future::BoxFuture<'a, Result<DeploymentRecord, StorageError>> {
            self.inner.deploy(tenant, deployment)
        }
        fn current<'a>(
            &'a self,
            tenant: &'a str,
            agent: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<Vec<DeploymentRecord>, StorageError>> {
            self.inner.current(tenant, agent)
        }
        fn history<'a>(
            &'a self,
            tenant: &'a str,
            agent: &'a str,
            before: Option<u64>,
            limit: usize,
        ) -> futures::future::BoxFuture<'a, Result<crate::storage::DeploymentPage, StorageError>>
        {
            self.inner.history(tenant, agent, before, limit)
        }
    }

    /// Copies are used until a deploy moves the epoch or they are older than the refresh;
    /// with the store unreachable, the last copy serves (no copy: a 503).
    #[actix_rt::test]
    async fn copies_serve_until_a_deploy_and_while_the_store_is_unreachable() {
        let (_dir, mut storage) = crate::storage::temporary();
        let flaky = Arc::new(Flaky {
            inner: storage.deployments.clone(),
            down: Default::default(),
        });
        storage.deployments = flaky.clone() as Arc<dyn crate::storage::DeploymentStore>;
        let store = AgentStore::open(&storage);
        let schema = store.schema_id("t", "a", None, &Value::Null).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..2 {
            let request: ChatRequest = serde_json::from_value(json!({
                "model": "m", "messages": [{"role": "system", "content": format!("v{i}")}]
            }))
            .unwrap();
            let properties = VersionProperties::of("m", &request);
            ids.push(
                store
                    .ensure_version("t", "a", &properties, schema)
                    .await
                    .unwrap(),
            );
        }
        let prod = Environment::Production;
        store
            .deploy("t", "a", &ids[0], None, prod, "x")
            .await
            .unwrap();
        let served = |store: AgentStore| async move {
            store
                .deployment("t", "a", 1, prod)
                .await
                .map(|d| d.map(|d| d.version_id.clone()))
        };
        assert_eq!(served(store.clone()).await.unwrap().as_ref(), Some(&ids[0]));
        let down = |on: bool| flaky.down.store(on, std::sync::atomic::Ordering::SeqCst);
        down(true);
        // Within the refresh the copy serves without asking the store; past it (the store
        // asked, unreachable) the copy still serves.
        assert_eq!(served(store.clone()).await.unwrap().as_ref(), Some(&ids[0]));
        storage.changes.changed(Change::Deployments);
        assert_eq!(served(store.clone()).await.unwrap().as_ref(), Some(&ids[0]));
        let e = store
            .deployment("t", "a", 1, Environment::Dev)
            .await
            .unwrap_err();
        assert_eq!(e.status_code().as_u16(), 503, "no copy of dev: unavailable");
        down(false);
        // A deploy moves the epoch: the next call reads the new pointer.
        store
            .deploy("t", "a", &ids[1], None, prod, "x")
            .await
            .unwrap();
        assert_eq!(served(store.clone()).await.unwrap().as_ref(), Some(&ids[1]));
    }

    #[actix_rt::test]
    async fn unknown_versions_and_schemas_are_404() {
        let (_dir, store, ids) = setup().await;
        let e = store
            .deploy("t", "a", "nope", None, Environment::Dev, "x")
            .await
            .unwrap_err();
        assert_eq!(e.status_code().as_u16(), 404);
        let e = store
            .deploy("t", "a", &ids[0], Some(9), Environment::Dev, "x")
            .await
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("schema_id"));
        // Another tenant sees nothing.
        assert!(store
            .deploy("u", "a", &ids[0], None, Environment::Dev, "x")
            .await
            .is_err());
    }

    #[actix_rt::test]
    async fn concurrent_deploys_leave_one_consistent_winner() {
        let (_dir, store, ids) = setup().await;
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let store = store.clone();
                let id = ids[i % 3].clone();
                // Threads of their own, each with its runtime: deploys in parallel.
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    let who = format!("k{i}");
                    runtime
                        .block_on(store.deploy("t", "a", &id, None, Environment::Production, &who))
                        .unwrap()
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let all = store.deployments("t", "a").await.unwrap();
        assert_eq!(all.history.len(), 12);
        let current = store
            .deployment("t", "a", 1, Environment::Production)
            .await
            .unwrap()
            .unwrap();
        // The pointer is the newest history entry, and each entry names its predecessor.
        assert_eq!(all.history[0], *current);
        for pair in all.history.windows(2) {
            assert_eq!(
                pair[0].previous_version_id.as_deref(),
                Some(pair[1].version_id.as_str())
            );
            assert!(pair[0].sequence > pair[1].sequence);
        }
    }
}
