//! The runs' stats on PostgreSQL: `stats_hours` holds the [`Aggregate`] (JSON) of each
//! tenant, agent, source and hour, `stats_agents` each agent's latest run per source.
//!
//! Several instances add to the same rows, so a batch is one transaction that locks its rows
//! (in key order, so two batches never wait on each other in a cycle), merges in memory and
//! writes back: all of it or, on an error, none of it, so the caller may retry it whole.
//! `stats_days`, the daily roll-up (`crate::stats::daily`), is added to in the same
//! transaction, after the hours (every transaction locks hours, then days, each in key order).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::future::BoxFuture;

use super::{corrupt, pg_error, to_i64, to_json, to_u64, Db};
use crate::recorder::run::RunSource;
use crate::stats::daily::{self, Day, DayKey, DayTotals};
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

/// A day's row of the roll-up as its key columns: tenant, day, agent, source, model.
type DayRow = (String, i32, String, &'static str, String);

fn day_row(key: DayKey) -> DayRow {
    (
        key.tenant,
        i32::try_from(key.day).unwrap_or(i32::MAX),
        key.agent,
        key.source.as_str(),
        key.model,
    )
}

/// Rows of the roll-up with their totals, as arrays for `UNNEST`.
#[derive(Default)]
struct DayColumns {
    tenants: Vec<String>,
    days: Vec<i32>,
    agents: Vec<String>,
    sources: Vec<String>,
    models: Vec<String>,
    runs: Vec<i64>,
    errors: Vec<i64>,
    costs: Vec<f64>,
}

impl DayColumns {
    fn push(&mut self, (tenant, day, agent, source, model): &DayRow, totals: &DayTotals) {
        self.tenants.push(tenant.clone());
        self.days.push(*day);
        self.agents.push(agent.clone());
        self.sources.push(source.to_string());
        self.models.push(model.clone());
        self.runs.push(to_i64(totals.runs));
        self.errors.push(to_i64(totals.errors));
        self.costs.push(totals.cost_usd);
    }
}

/// Takes retention's deleted runs (grouped by [`daily::deleted_by_day`]) out of the daily
/// roll-up, in the caller's transaction, after their hours: the rows of each day, agent and
/// source are locked (in key order) and read, [`DayTotals::take_deleted`] says what is left,
/// and rows left with no run are deleted.
pub(super) async fn subtract_days(
    tx: &deadpool_postgres::Transaction<'_>,
    deleted: &HashMap<DayKey, BTreeMap<String, DayTotals>>,
) -> Result<(), StorageError> {
    if deleted.is_empty() {
        return Ok(());
    }
    let (mut tenants, mut days, mut agents, mut sources) = (vec![], vec![], vec![], vec![]);
    for group in deleted.keys() {
        let (tenant, day, agent, source, _) = day_row(group.clone());
        tenants.push(tenant);
        days.push(day);
        agents.push(agent);
        sources.push(source.to_string());
    }
    let rows = tx
        .query(
            "SELECT s.tenant, s.day, s.agent, s.source, s.model, s.runs, s.errors, s.cost_usd
             FROM stats_days s
             JOIN UNNEST($1::text[], $2::integer[], $3::text[], $4::text[]) AS k(t, d, a, src)
               ON s.tenant = k.t AND s.day = k.d AND s.agent = k.a AND s.source = k.src
             ORDER BY s.tenant, s.day, s.agent, s.source, s.model
             FOR UPDATE OF s",
            &[&tenants, &days, &agents, &sources],
        )
        .await
        .map_err(pg_error)?;
    let mut stored: HashMap<DayKey, BTreeMap<String, DayTotals>> = HashMap::new();
    for row in &rows {
        let (Some(source), Ok(day)) = (source_of(row.get(3)), Day::try_from(row.get::<_, i32>(1)))
        else {
            continue;
        };
        let group = DayKey {
            tenant: row.get(0),
            day,
            agent: row.get(2),
            source,
            model: String::new(),
        };
        let totals = DayTotals {
            runs: to_u64(row.get(5)),
            errors: to_u64(row.get(6)),
            cost_usd: row.get(7),
        };
        stored.entry(group).or_default().insert(row.get(4), totals);
    }
    let (mut kept, mut emptied) = (DayColumns::default(), DayColumns::default());
    for (group, mut models) in stored {
        let before = models.clone();
        for (model, totals) in deleted.get(&group).into_iter().flatten() {
            DayTotals::take_deleted(&mut models, model, totals);
        }
        for (model, totals) in before {
            let row = day_row(DayKey {
                model: model.clone(),
                ..group.clone()
            });
            match models.get(&model) {
                None => emptied.push(&row, &totals),
                Some(left) if *left != totals => kept.push(&row, left),
                Some(_) => {}
            }
        }
    }
    tx.execute(
        "UPDATE stats_days s SET runs = k.r, errors = k.e, cost_usd = k.c
         FROM UNNEST($1::text[], $2::integer[], $3::text[], $4::text[], $5::text[],
                     $6::bigint[], $7::bigint[], $8::float8[]) AS k(t, d, a, src, m, r, e, c)
         WHERE s.tenant = k.t AND s.day = k.d AND s.agent = k.a AND s.source = k.src
           AND s.model = k.m",
        &[
            &kept.tenants,
            &kept.days,
            &kept.agents,
            &kept.sources,
            &kept.models,
            &kept.runs,
            &kept.errors,
            &kept.costs,
        ],
    )
    .await
    .map_err(pg_error)?;
    tx.execute(
        "DELETE FROM stats_days s
         USING UNNEST($1::text[], $2::integer[], $3::text[], $4::text[], $5::text[])
             AS k(t, d, a, src, m)
         WHERE s.tenant = k.t AND s.day = k.d AND s.agent = k.a AND s.source = k.src
           AND s.model = k.m",
        &[
            &emptied.tenants,
            &emptied.days,
            &emptied.agents,
            &emptied.sources,
            &emptied.models,
        ],
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
        let mut days = DayColumns::default();
        let by_day: BTreeMap<DayRow, DayTotals> =
            daily::days_of(increments.iter().map(|(k, s)| (k, s)))
                .into_iter()
                .map(|(key, totals)| (day_row(key), totals))
                .collect();
        for (row, totals) in &by_day {
            days.push(row, totals);
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
            // Added in place, in key order (the `ORDER BY`): two batches lock the days they
            // share in the same order.
            tx.execute(
                "INSERT INTO stats_days (tenant, day, agent, source, model, runs, errors, cost_usd)
                 SELECT * FROM UNNEST($1::text[], $2::integer[], $3::text[], $4::text[],
                                      $5::text[], $6::bigint[], $7::bigint[], $8::float8[])
                     AS k(t, d, a, src, m, r, e, c)
                 ORDER BY t, d, a, src, m
                 ON CONFLICT (tenant, day, agent, source, model) DO UPDATE
                 SET runs = stats_days.runs + EXCLUDED.runs,
                     errors = stats_days.errors + EXCLUDED.errors,
                     cost_usd = stats_days.cost_usd + EXCLUDED.cost_usd",
                &[
                    &days.tenants,
                    &days.days,
                    &days.agents,
                    &days.sources,
                    &days.models,
                    &days.runs,
                    &days.errors,
                    &days.costs,
                ],
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
                    model: String::new(),
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

    fn days<'a>(
        &'a self,
        tenant: &'a str,
        sources: &'a [RunSource],
        days: std::ops::Range<Day>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(DayKey, DayTotals)>, StorageError>> {
        let tenant = tenant.to_string();
        let sources: Vec<&'static str> = sources.iter().map(|s| s.as_str()).collect();
        let limit = to_i64(limit as u64);
        self.db.run(move |client| async move {
            if days.is_empty() {
                return Ok(Vec::new());
            }
            let statement = client
                .prepare_cached(
                    "SELECT day, agent, source, model, runs, errors, cost_usd FROM stats_days
                     WHERE tenant = $1 AND day >= $2 AND day < $3 AND source = ANY($4)
                     LIMIT $5",
                )
                .await
                .map_err(pg_error)?;
            let bound = |day: Day| i32::try_from(day).unwrap_or(i32::MAX);
            let rows = client
                .query(
                    &statement,
                    &[
                        &tenant,
                        &bound(days.start),
                        &bound(days.end),
                        &sources,
                        &limit,
                    ],
                )
                .await
                .map_err(pg_error)?;
            Ok(rows
                .iter()
                .filter_map(|row| {
                    let key = DayKey {
                        tenant: tenant.clone(),
                        day: Day::try_from(row.get::<_, i32>(0)).ok()?,
                        agent: row.get(1),
                        source: source_of(row.get(2))?,
                        model: row.get(3),
                    };
                    let totals = DayTotals {
                        runs: to_u64(row.get(4)),
                        errors: to_u64(row.get(5)),
                        cost_usd: row.get(6),
                    };
                    Some((key, totals))
                })
                .collect())
        })
    }
}
