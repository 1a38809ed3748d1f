//! Deployments on PostgreSQL: `deployments` holds the current one of each tenant, agent,
//! schema and environment, `deployment_history` every one made. A deploy is a transaction
//! under an advisory lock per schema and environment (the row may not exist yet, so a row
//! lock would not do): the version it replaces and its sequence are read and written by one
//! deploy at a time, whichever instance makes it.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::agents::{decode, to_i32};
use super::{listen, pg_error, to_i64, to_json, to_u64, Db};
use crate::agents::DeploymentRecord;
use crate::model_ref::Environment;
use crate::storage::{Change, DeploymentPage, DeploymentStore, NewDeployment, StorageError};

pub struct PgDeploymentStore {
    db: Arc<Db>,
}

impl PgDeploymentStore {
    pub(super) fn new(db: Arc<Db>) -> PgDeploymentStore {
        PgDeploymentStore { db }
    }
}

impl DeploymentStore for PgDeploymentStore {
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        schema_id: u32,
        environment: Environment,
    ) -> BoxFuture<'a, Result<Option<DeploymentRecord>, StorageError>> {
        let (tenant, agent) = (tenant.to_string(), agent.to_string());
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached(
                    "SELECT record::text FROM deployments
                     WHERE tenant = $1 AND agent = $2 AND schema_id = $3 AND environment = $4",
                )
                .await
                .map_err(pg_error)?;
            let row = client
                .query_opt(
                    &statement,
                    &[&tenant, &agent, &to_i32(schema_id), &environment.as_str()],
                )
                .await
                .map_err(pg_error)?;
            row.map(|r| decode("deployment", r.get(0))).transpose()
        })
    }

    fn deploy<'a>(
        &'a self,
        tenant: &'a str,
        deployment: NewDeployment<'a>,
    ) -> BoxFuture<'a, Result<DeploymentRecord, StorageError>> {
        let tenant = tenant.to_string();
        let agent = deployment.agent.to_string();
        let (schema_id, environment) = (deployment.schema_id, deployment.environment);
        let version_id = deployment.version_id.to_string();
        let (deployed_at, deployed_by) = (
            deployment.deployed_at.to_string(),
            deployment.deployed_by.to_string(),
        );
        let db = self.db.clone();
        self.db.run(move |mut client| async move {
            let env = environment.as_str();
            let tx = client.transaction().await.map_err(pg_error)?;
            // One deploy of a schema and environment at a time, across instances: the row
            // may not exist yet, so a row lock would not do. Released at commit.
            // (Text cannot hold NUL: the key's parts are a JSON array.)
            let lock = to_json("lock key", &("deploy", &tenant, &agent, schema_id, env))?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&lock],
            )
            .await
            .map_err(pg_error)?;
            let previous = tx
                .query_opt(
                    "SELECT record::text FROM deployments
                     WHERE tenant = $1 AND agent = $2 AND schema_id = $3 AND environment = $4",
                    &[&tenant, &agent, &to_i32(schema_id), &env],
                )
                .await
                .map_err(pg_error)?
                .map(|r| decode::<DeploymentRecord>("deployment", r.get(0)))
                .transpose()?;
            // Taken under the lock: a later deploy of this schema and environment gets a
            // greater one.
            let sequence: i64 = tx
                .query_one("SELECT nextval('deployment_sequence')", &[])
                .await
                .map_err(pg_error)?
                .get(0);
            let record = DeploymentRecord {
                agent: agent.clone(),
                schema_id,
                environment,
                version_id,
                previous_version_id: previous.map(|p| p.version_id),
                deployed_at,
                deployed_by,
                sequence: to_u64(sequence),
            };
            let json = to_json("deployment", &record)?;
            tx.execute(
                "INSERT INTO deployments (tenant, agent, schema_id, environment, record)
                 VALUES ($1, $2, $3, $4, $5::text::json)
                 ON CONFLICT (tenant, agent, schema_id, environment)
                 DO UPDATE SET record = EXCLUDED.record",
                &[&tenant, &agent, &to_i32(schema_id), &env, &json],
            )
            .await
            .map_err(pg_error)?;
            tx.execute(
                "INSERT INTO deployment_history (tenant, agent, sequence, record)
                 VALUES ($1, $2, $3, $4::text::json)",
                &[&tenant, &agent, &sequence, &json],
            )
            .await
            .map_err(pg_error)?;
            // Every instance drops its copy of the deployments once this commits.
            tx.execute(
                listen::NOTIFY,
                &[&db.channel, &Change::Deployments.as_str()],
            )
            .await
            .map_err(pg_error)?;
            // Durable once answered: the commit waits for the WAL flush.
            tx.commit().await.map_err(pg_error)?;
            Ok(record)
        })
    }

    fn current<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeploymentRecord>, StorageError>> {
        let (tenant, agent) = (tenant.to_string(), agent.to_string());
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached(
                    "SELECT record::text FROM deployments WHERE tenant = $1 AND agent = $2
                     ORDER BY schema_id, environment COLLATE \"C\"",
                )
                .await
                .map_err(pg_error)?;
            let rows = client
                .query(&statement, &[&tenant, &agent])
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|r| decode("deployment", r.get(0)))
                .collect()
        })
    }

    fn history<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        before: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<DeploymentPage, StorageError>> {
        let (tenant, agent) = (tenant.to_string(), agent.to_string());
        let before = before.map(to_i64);
        let fetch = to_i64(limit as u64 + 1);
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached(
                    "SELECT record::text FROM deployment_history
                     WHERE tenant = $1 AND agent = $2 AND ($3::bigint IS NULL OR sequence < $3)
                     ORDER BY sequence DESC LIMIT $4",
                )
                .await
                .map_err(pg_error)?;
            let rows = client
                .query(&statement, &[&tenant, &agent, &before, &fetch])
                .await
                .map_err(pg_error)?;
            let more = rows.len() > limit;
            let items = rows
                .iter()
                .take(limit)
                .map(|r| decode::<DeploymentRecord>("deployment", r.get(0)))
                .collect::<Result<Vec<_>, _>>()?;
            let next_cursor = if more {
                items.last().map(|d| d.sequence)
            } else {
                None
            };
            Ok(DeploymentPage { items, next_cursor })
        })
    }
}
