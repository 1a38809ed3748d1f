//! The runs' stats on PostgreSQL: `stats_hours` holds the [`Aggregate`] (JSON) of each
//! tenant, agent, source and hour, `stats_agents` each agent's latest run per source.
//!
//! Several instances add to the same rows, so a batch is one transaction that locks its rows
//! (in key order, so two batches never wait on each other in a cycle), merges in memory and
//! writes back: all of it or, on an error, none of it, so the caller may retry it whole.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::{corrupt, pg_error, to_i64, to_json, to_u64, Db};
use crate::recorder::run::RunSource;
use crate::stats::{Aggregate, StatsKey};
use crate::storage::{AgentLastRun, StatsQuery, StatsStore, StorageError};

pub struct PgStatsStore {
    db: Arc<Db>,
}

impl PgStatsStore {
    pub(super) fn new(db: Arc<Db>) -> PgStatsStore {
        PgStatsStore { db }
    }
}

fn source_of(name: &str) -> Option<RunSource> {
    [
        RunSource::Api,
        RunSource::Playground,
        RunSource::Replay,
        RunSource::Benchmark,
    ]
    .into_iter()
    .find(|s| s.as_str() == name)
}

/// A key as its columns: tenant, agent, source, hour.
pub(super) type Row = (String, String, &'static str, i64);

/// The columns of `keys`, as arrays for `UNNEST`.
pub(super) fn key_columns<'k>(
    keys: impl Iterator<Item = &'k Row>,
) -> (Vec<String>, Vec<String>, Vec<String>, Vec<i64>) {
    let (mut tenants, mut agents, mut sources, mut hours) = (vec![], vec![], vec![], vec![]);
    for (tenant, agent, source, hour) in keys {
        tenants.push(tenant.clone());
        agents.push(agent.clone());
        sources.push(source.to_string());
        hours.push(*hour);
    }
    (tenants, agents, sources, hours)
}

/// Locks the stored hours of `keys` (in key order, so two transactions never wait on each
/// other in a cycle) and reads their sums, in the caller's transaction. Hours not stored are
/// left out.
pub(super) async fn lock_hours(
    tx: &deadpool_postgres::Transaction<'_>,
    keys: impl Iterator<Item = &Row>,
) -> Result<Vec<(Row, Aggregate)>, StorageError> {
    let (tenants, agents, sources, hours) = key_columns(keys);
    let rows = tx
        .query(
            "SELECT s.tenant, s.agent, s.source, s.hour, s.sums::text
             FROM stats_hours s
             JOIN UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) AS k(t, a, src, h)
               ON s.tenant = k.t AND s.agent = k.a AND s.source = k.src AND s.hour = k.h
             ORDER BY s.tenant, s.agent, s.source, s.hour
             FOR UPDATE OF s",
            &[&tenants, &agents, &sources, &hours],
        )
        .await
        .map_err(pg_error)?;
    let mut locked = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(source) = source_of(row.get(2)) else {
            continue;
        };
        let sums: Aggregate = serde_json::from_str(row.get(4)).map_err(corrupt("run stats"))?;
        locked.push(((row.get(0), row.get(1), source.as_str(), row.get(3)), sums));
    }
    Ok(locked)
}

/// Writes the new sums of hours locked by [`lock_hours`], in the caller's transaction.
pub(super) async fn write_hours(
    tx: &deadpool_postgres::Transaction<'_>,
    hours: &[(Row, Aggregate)],
) -> Result<(), StorageError> {
    let (tenants, agents, sources, hour_numbers) = key_columns(hours.iter().map(|(key, _)| key));
    let sums = hours
        .iter()
        .map(|(_, sums)| to_json("run stats", sums))
        .collect::<Result<Vec<_>, _>>()?;
    tx.execute(
        "UPDATE stats_hours s SET sums = k.sums::json
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])
             AS k(t, a, src, h, sums)
         WHERE s.tenant = k.t AND s.agent = k.a AND s.source = k.src AND s.hour = k.h",
        &[&tenants, &agents, &sources, &hour_numbers, &sums],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

impl StatsStore for PgStatsStore {
    fn add_batch<'a>(
        &'a self,
        increments: &'a [(StatsKey, Aggregate)],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        // Merged per key first (one row is written once), in key order.
        let mut merged: BTreeMap<Row, Aggregate> = BTreeMap::new();
        for (key, increment) in increments {
            let row = (
                key.tenant.clone(),
                key.agent.clone(),
                key.source.as_str(),
                i64::from(key.hour),
            );
            merged.entry(row).or_default().merge(increment);
        }
        self.db.run(move |mut client| async move {
            if merged.is_empty() {
                return Ok(());
            }
            let zero = to_json("run stats", &Aggregate::default())?;
            let (tenants, agents, sources, hours) = key_columns(merged.keys());
            let tx = client.transaction().await.map_err(pg_error)?;
            // Every row exists (a new one from zero), then all are locked and read.
            tx.execute(
                "INSERT INTO stats_hours (tenant, agent, source, hour, sums)
                 SELECT t, a, s, h, $5::text::json
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) AS k(t, a, s, h)
                 ON CONFLICT DO NOTHING",
                &[&tenants, &agents, &sources, &hours, &zero],
            )
            .await
            .map_err(pg_error)?;
            let mut locked = lock_hours(&tx, merged.keys()).await?;
            let mut latest: BTreeMap<(String, String, String), i64> = BTreeMap::new();
            for (key, stored) in &mut locked {
                let Some(increment) = merged.get(key) else {
                    continue;
                };
                stored.merge(increment);
                let last = latest
                    .entry((key.0.clone(), key.1.clone(), key.2.to_string()))
                    .or_default();
                *last = (*last).max(to_i64(increment.last_run_ms));
            }
            write_hours(&tx, &locked).await?;
            let (mut t, mut a, mut s, mut ms) = (vec![], vec![], vec![], vec![]);
            for ((tenant, agent, source), last) in latest {
                t.push(tenant);
                a.push(agent);
                s.push(source);
                ms.push(last);
            }
            // The latest run only moves forward.
            tx.execute(
                "INSERT INTO stats_agents (tenant, agent, source, last_run_ms)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[])
                 ON CONFLICT (tenant, agent, source) DO UPDATE
                 SET last_run_ms = GREATEST(stats_agents.last_run_ms, EXCLUDED.last_run_ms)",
                &[&t, &a, &s, &ms],
            )
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(())
        })
    }

    fn read<'a>(
        &'a self,
        query: &'a StatsQuery,
    ) -> BoxFuture<'a, Result<Vec<(StatsKey, Aggregate)>, StorageError>> {
        let query = query.clone();
        self.db.run(move |client| async move {
            if query.hours.is_empty() {
                return Ok(Vec::new());
            }
            let sources: Vec<&str> = query.sources.iter().map(|s| s.as_str()).collect();
            let statement = client
                .prepare_cached(
                    "SELECT agent, source, hour, sums::text FROM stats_hours
                     WHERE tenant = $1 AND agent = ANY($2) AND source = ANY($3)
                       AND hour >= $4 AND hour < $5",
                )
                .await
                .map_err(pg_error)?;
            let (start, end) = (i64::from(query.hours.start), i64::from(query.hours.end));
            let rows = client
                .query(
                    &statement,
                    &[&query.tenant, &query.agents, &sources, &start, &end],
                )
                .await
                .map_err(pg_error)?;
            let mut found = Vec::with_capacity(rows.len());
            for row in &rows {
                let Some(source) = source_of(row.get(1)) else {
                    continue;
                };
                let hour: i64 = row.get(2);
                let key = StatsKey {
                    tenant: query.tenant.clone(),
                    agent: row.get(0),
                    source,
                    hour: u32::try_from(hour).map_err(|_| StorageError::Corrupt {
                        what: "run stats",
                        detail: format!("hour {hour}"),
                    })?,
                };
                let sums = serde_json::from_str(row.get(3)).map_err(corrupt("run stats"))?;
                found.push((key, sums));
            }
            Ok(found)
        })
    }

    fn agents<'a>(
        &'a self,
        tenant: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<AgentLastRun>, StorageError>> {
        let tenant = tenant.to_string();
        let max = to_i64(max as u64);
        self.db.run(move |client| async move {
            // Names in byte order, as sled lists them; sources likewise (api, playground,
            // replay).
            let statement = client
                .prepare_cached(
                    "SELECT agent, source, last_run_ms FROM stats_agents
                     WHERE tenant = $1 AND agent IN (
                         SELECT DISTINCT agent COLLATE \"C\" FROM stats_agents
                         WHERE tenant = $1 ORDER BY 1 LIMIT $2)
                     ORDER BY agent COLLATE \"C\", source COLLATE \"C\"",
                )
                .await
                .map_err(pg_error)?;
            let rows = client
                .query(&statement, &[&tenant, &max])
                .await
                .map_err(pg_error)?;
            Ok(rows
                .iter()
                .filter_map(|row| {
                    Some(AgentLastRun {
                        agent: row.get(0),
                        source: source_of(row.get(1))?,
                        last_run_ms: to_u64(row.get(2)),
                    })
                })
                .collect())
        })
    }
}
