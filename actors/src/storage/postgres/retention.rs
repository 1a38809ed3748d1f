//! Retention on PostgreSQL: deleting the oldest runs with everything that points at them or
//! counts them, in one transaction per batch.
//!
//! A batch deletes the oldest runs below its time (`ORDER BY id`: UUIDv7 ids are time order),
//! skipping rows another instance's batch holds (`SKIP LOCKED`: instances that share the
//! database prune side by side without deleting a run twice), and gets their records back.
//! In the same transaction it deletes their feedback, share links and conversation links
//! (unless a newer run filed another conversation under the same hash), and takes their
//! figures out of their hours in `stats_hours`, locking the rows in key order as
//! `stats.rs` does, so that a batch of the recorder and one of retention never wait on each
//! other in a cycle; an hour left with no run is deleted, and an agent's latest run per source
//! once none of its hours is left; then out of their days in the daily roll-up
//! (`stats::subtract_days`). All of it or none of it.
//!
//! A version whose last run the batch deleted goes too, in the same transaction, with its
//! statistics and its row in `run_values`, unless a deployment (current or past) names it
//! ([`drop_unused_versions`]): as on sled, an agent whose prompts are written per request has
//! a version per run.
//!
//! What stays, as on sled: `run_values`' other rows (one per value, not per run), the lifetime
//! statistics of the versions still in use, and cached answers whose source run is gone.
//!
//! The footprint: the number of runs (`run_count`, kept by the writes and by this file's
//! deletes: a `count(*)` after every batch took longer than the batch), times the average size of a recent row, times what the
//! table's indexes add to it. PostgreSQL reuses the room of deleted rows only after a vacuum
//! and rarely gives it back to the system, so the size of the table is no measure of what is
//! kept.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use deadpool_postgres::Object;

use super::{pg_error, to_i64, to_u64};
use crate::agents::{LastRuns, VersionStats};
use crate::recorder::run::RunRecord;
use crate::search::{id_bounds, IndexedField};
use crate::stats::{daily, Aggregate, RunFigures, RunView, StatsKey};
use crate::storage::{Footprint, PruneBatch, Pruned, StorageError};

use super::stats::{key_columns, lock_hours, subtract_days, write_hours, Row};

/// Rows sampled (the newest) for the average size of a run.
const SAMPLE: i64 = 1000;

/// One batch.
pub(super) async fn prune(mut client: Object, batch: PruneBatch) -> Result<Pruned, StorageError> {
    let before = id_bounds(batch.before_ms).0;
    let limit = to_i64(batch.max_runs as u64);
    let tx = client.transaction().await.map_err(pg_error)?;
    let rows = tx
        .query(
            "DELETE FROM runs WHERE id IN (
                 SELECT id FROM runs WHERE id < $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
             )
             RETURNING id, record::text",
            &[&before, &limit],
        )
        .await
        .map_err(pg_error)?;
    if rows.is_empty() {
        return Ok(Pruned::default());
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut sums: BTreeMap<Row, Aggregate> = BTreeMap::new();
    let mut last_runs = LastRuns::default();
    // By model too, for the daily roll-up.
    let mut by_model: HashMap<StatsKey, Aggregate> = HashMap::new();
    let (mut link_tenants, mut link_agents, mut link_hashes, mut link_ids) =
        (vec![], vec![], vec![], vec![]);
    for row in &rows {
        let id: uuid::Uuid = row.get(0);
        ids.push(id);
        let text: &str = row.get(1);
        // The whole record for the conversation link; a run of an earlier release that no
        // longer reads whole still has its figures.
        let run = serde_json::from_str::<RunRecord>(text).ok();
        let figures = match &run {
            Some(_) => None,
            None => serde_json::from_str::<RunFigures>(text).ok(),
        };
        let view = match (&run, &figures) {
            (Some(run), _) => RunView::from(run),
            (None, Some(figures)) => RunView::from(figures),
            (None, None) => {
                tracing::warn!(run = %id, "a stored run cannot be read: deleted alone");
                continue;
            }
        };
        let key = view.key();
        by_model.entry(key.clone()).or_default().add(&view);
        sums.entry((
            key.tenant,
            key.agent,
            key.source.as_str(),
            i64::from(key.hour),
        ))
        .or_default()
        .add(&view);
        if let Some(run) = run.as_ref() {
            last_runs.note(run);
        }
        if let Some(link) = run
            .as_ref()
            .and_then(crate::agents::conversation::filed_link_of)
        {
            link_tenants.push(link.tenant);
            link_agents.push(link.agent);
            link_hashes.push(link.hash.to_vec());
            link_ids.push(link.conversation_id);
        }
    }
    tx.execute("DELETE FROM feedback WHERE run_id = ANY($1)", &[&ids])
        .await
        .map_err(pg_error)?;
    tx.execute("DELETE FROM shares WHERE run_id = ANY($1)", &[&ids])
        .await
        .map_err(pg_error)?;
    tx.execute(
        "DELETE FROM conversations c
         USING UNNEST($1::text[], $2::text[], $3::bytea[], $4::uuid[]) AS l(t, a, h, cid)
         WHERE c.tenant = l.t AND c.agent = l.a AND c.hash = l.h AND c.conversation_id = l.cid",
        &[&link_tenants, &link_agents, &link_hashes, &link_ids],
    )
    .await
    .map_err(pg_error)?;
    subtract_stats(&tx, &sums).await?;
    drop_unused_versions(&tx, &last_runs).await?;
    tx.execute(
        "UPDATE run_count SET runs = GREATEST(runs - $1, 0)",
        &[&to_i64(rows.len() as u64)],
    )
    .await
    .map_err(pg_error)?;
    subtract_days(&tx, &daily::deleted_by_day(by_model.iter())).await?;
    tx.commit().await.map_err(pg_error)?;
    Ok(Pruned {
        runs: rows.len() as u64,
    })
}

/// Deletes the versions of `last_runs` that have no run left and that no deployment names,
/// with their statistics and their `run_values` row, in the caller's transaction.
async fn drop_unused_versions(
    tx: &deadpool_postgres::Transaction<'_>,
    last_runs: &LastRuns,
) -> Result<(), StorageError> {
    if last_runs.0.is_empty() {
        return Ok(());
    }
    let (mut t, mut a, mut v) = (vec![], vec![], vec![]);
    for key in last_runs.0.keys() {
        t.push(key.tenant.as_str());
        a.push(key.agent.as_str());
        v.push(key.version_id.as_str());
    }
    // Their statistics, locked: a recorder adding runs to one waits, then finds it gone and
    // starts it again (its run recreates the version).
    let rows = tx
        .query(
            "SELECT s.tenant, s.agent, s.version_id, s.stats::text FROM version_stats s
             JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(t, a, v)
               ON s.tenant = k.t AND s.agent = k.a AND s.version_id = k.v
             ORDER BY s.tenant COLLATE \"C\", s.agent COLLATE \"C\", s.version_id COLLATE \"C\"
             FOR UPDATE OF s",
            &[&t, &a, &v],
        )
        .await
        .map_err(pg_error)?;
    let (mut t, mut a, mut v) = (vec![], vec![], vec![]);
    for row in &rows {
        let key = crate::storage::VersionKey {
            tenant: row.get(0),
            agent: row.get(1),
            version_id: row.get(2),
        };
        let text: &str = row.get(3);
        let Ok(stats) = serde_json::from_str::<VersionStats>(text) else {
            continue;
        };
        match last_runs.0.get(&key) {
            Some(last_run) if !stats.used_after(last_run) => {
                t.push(key.tenant);
                a.push(key.agent);
                v.push(key.version_id);
            }
            _ => {}
        }
    }
    if t.is_empty() {
        return Ok(());
    }
    tx.execute(
        "WITH unused AS (
             SELECT k.t, k.a, k.v FROM UNNEST($1::text[], $2::text[], $3::text[]) AS k(t, a, v)
             WHERE NOT EXISTS (SELECT 1 FROM deployments d
                               WHERE d.tenant = k.t AND d.agent = k.a
                                 AND d.record->>'version_id' = k.v)
               AND NOT EXISTS (SELECT 1 FROM deployment_history h
                               WHERE h.tenant = k.t AND h.agent = k.a
                                 AND h.record->>'version_id' = k.v)
         ), versions_gone AS (
             DELETE FROM versions ver USING unused u
             WHERE ver.tenant = u.t AND ver.agent = u.a AND ver.id = u.v
         ), values_gone AS (
             DELETE FROM run_values rv USING unused u
             WHERE rv.tenant = u.t AND rv.agent = u.a AND rv.field = $4 AND rv.value = u.v
         )
         DELETE FROM version_stats s USING unused u
         WHERE s.tenant = u.t AND s.agent = u.a AND s.version_id = u.v",
        &[&t, &a, &v, &super::runs::field_name(IndexedField::Version)],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// Takes the deleted runs' sums out of their hours, in the caller's transaction.
async fn subtract_stats(
    tx: &deadpool_postgres::Transaction<'_>,
    sums: &BTreeMap<Row, Aggregate>,
) -> Result<(), StorageError> {
    if sums.is_empty() {
        return Ok(());
    }
    // Hours kept (with their new sums) and hours emptied.
    let (mut kept, mut emptied) = (Vec::new(), BTreeSet::new());
    for (key, mut stored) in lock_hours(tx, sums.keys()).await? {
        let Some(deleted) = sums.get(&key) else {
            continue;
        };
        stored.subtract(deleted);
        if stored.runs == 0 {
            emptied.insert(key);
        } else {
            kept.push((key, stored));
        }
    }
    write_hours(tx, &kept).await?;
    let (t, a, s, h) = key_columns(emptied.iter());
    tx.execute(
        "DELETE FROM stats_hours s
         USING UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) AS k(t, a, src, h)
         WHERE s.tenant = k.t AND s.agent = k.a AND s.source = k.src AND s.hour = k.h",
        &[&t, &a, &s, &h],
    )
    .await
    .map_err(pg_error)?;
    // An agent's latest run per source goes with its last hour.
    let (tenants, agents, sources, _) = key_columns(sums.keys());
    tx.execute(
        "DELETE FROM stats_agents sa
         USING UNNEST($1::text[], $2::text[], $3::text[]) AS k(t, a, src)
         WHERE sa.tenant = k.t AND sa.agent = k.a AND sa.source = k.src
           AND NOT EXISTS (SELECT 1 FROM stats_hours h
                           WHERE h.tenant = sa.tenant AND h.agent = sa.agent
                             AND h.source = sa.source)",
        &[&tenants, &agents, &sources],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// The runs and an estimate of what they take on disk.
pub(super) async fn footprint(client: Object) -> Result<Footprint, StorageError> {
    let row = client
        .query_one(
            "SELECT COALESCE((SELECT runs FROM run_count), (SELECT count(*) FROM runs))::bigint,
                    COALESCE((SELECT avg(pg_column_size(r.*))
                              FROM (SELECT * FROM runs ORDER BY id DESC LIMIT $1) r), 0)::float8,
                    pg_total_relation_size('runs')::float8
                      / GREATEST(pg_table_size('runs'), 1)::float8",
            &[&SAMPLE],
        )
        .await
        .map_err(pg_error)?;
    let runs = to_u64(row.get(0));
    let (row_bytes, with_indexes): (f64, f64) = (row.get(1), row.get(2));
    Ok(Footprint {
        runs,
        bytes: (runs as f64 * row_bytes * with_indexes.max(1.0)) as u64,
    })
}
