//! Runs on PostgreSQL: table `runs`, each run's JSON record beside the columns a search
//! narrows with (see the migration), and `run_values`, the categorical values that exist.
//!
//! A batch is one statement, so one round trip whatever its size: the columns go as arrays,
//! `UNNEST`ed into rows, upserted on the run id (a retried batch replaces, never duplicates)
//! and their values noted in the same statement, which also adds the runs it inserted (not
//! those it replaced) to `run_count`, for retention's footprint. [`PgRunStore::write_batch`] is that write, for
//! any caller that has runs to store (the recorder today, a local spool later).

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use uuid::Uuid;

use super::{corrupt, pg_error, to_json, Db};
use crate::recorder::run::{RunRecord, RunSummary};
use crate::search::{id_millis, run_texts, IndexedField, RunQuery};
use crate::storage::{
    Footprint, PruneBatch, Pruned, RunPage, RunStore, SearchPage, SearchScope, StorageError,
};

/// Separates a run's texts in `search_text`: a control character no needle is expected to
/// hold (a needle that does is checked on the record instead, see `search.rs`).
pub(super) const TEXT_SEPARATOR: char = '\u{1}';

pub struct PgRunStore {
    db: Arc<Db>,
}

/// The upsert of a batch. Rows with one id appear once (the caller keeps the last).
const INSERT: &str = "
WITH batch AS (
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                         $11::float8[], $12::float8[], $13::text[], $14::text[])
        AS b(id, tenant, agent, created_ms, status, model, provider, version_id, cache, source,
             cost_usd, duration_seconds, search_text, record)
),
written AS (
    INSERT INTO runs (id, tenant, agent, created_ms, status, model, provider, version_id,
                      cache, source, cost_usd, duration_seconds, search_text, record)
    SELECT id, tenant, agent, created_ms, status, model, provider, version_id, cache, source,
           cost_usd, duration_seconds, search_text, record::json
    FROM batch
    ON CONFLICT (id) DO UPDATE SET
        tenant = EXCLUDED.tenant, agent = EXCLUDED.agent, created_ms = EXCLUDED.created_ms,
        status = EXCLUDED.status, model = EXCLUDED.model, provider = EXCLUDED.provider,
        version_id = EXCLUDED.version_id, cache = EXCLUDED.cache, source = EXCLUDED.source,
        cost_usd = EXCLUDED.cost_usd, duration_seconds = EXCLUDED.duration_seconds,
        search_text = EXCLUDED.search_text, record = EXCLUDED.record
    -- A row an earlier batch wrote is updated (its xmax set), a new one is inserted.
    RETURNING (xmax = 0) AS inserted
),
added AS (
    SELECT count(*) AS runs FROM written WHERE inserted
),
counted AS (
    UPDATE run_count SET runs = run_count.runs + added.runs FROM added WHERE added.runs > 0
)
INSERT INTO run_values (tenant, agent, field, value)
SELECT DISTINCT tenant, agent, field, value FROM batch,
    LATERAL (VALUES ('status', status), ('model', model), ('provider', provider),
                    ('version', version_id), ('cache', cache), ('source', source)) AS v(field, value)
WHERE value IS NOT NULL
ON CONFLICT DO NOTHING";

/// The name of a categorical field in `run_values`.
pub(super) fn field_name(field: IndexedField) -> &'static str {
    match field {
        IndexedField::Status => "status",
        IndexedField::Model => "model",
        IndexedField::Provider => "provider",
        IndexedField::Version => "version",
        IndexedField::Cache => "cache",
        IndexedField::Source => "source",
    }
}

fn non_empty(value: Option<&str>) -> Option<String> {
    value.filter(|v| !v.is_empty()).map(str::to_string)
}

/// The columns of a batch, one array each.
#[derive(Default)]
struct Columns {
    id: Vec<Uuid>,
    tenant: Vec<String>,
    agent: Vec<String>,
    created_ms: Vec<i64>,
    status: Vec<String>,
    model: Vec<Option<String>>,
    provider: Vec<Option<String>>,
    version_id: Vec<Option<String>>,
    cache: Vec<String>,
    source: Vec<String>,
    cost_usd: Vec<f64>,
    duration_seconds: Vec<f64>,
    search_text: Vec<String>,
    record: Vec<String>,
}

impl Columns {
    /// The columns hold what the shared matcher reads, so that SQL answers a filter on them
    /// the same way (`search.rs`).
    fn push(&mut self, run: &RunRecord) -> Result<(), StorageError> {
        self.id.push(run.id);
        self.tenant.push(run.tenant.clone());
        self.agent.push(run.agent.clone());
        self.created_ms.push(super::to_i64(id_millis(&run.id)));
        self.status.push(run.status.as_str().into());
        self.model.push(non_empty(Some(
            run.model.as_deref().unwrap_or(&run.requested_model),
        )));
        self.provider.push(non_empty(run.provider.as_deref()));
        self.version_id.push(non_empty(run.version_id.as_deref()));
        self.cache.push(run.cache.as_str().into());
        self.source.push(run.source.as_str().into());
        self.cost_usd.push(run.cost_usd);
        self.duration_seconds.push(run.duration_seconds);
        let texts = run_texts(run);
        let mut text = String::with_capacity(texts.iter().map(|t| t.len() + 1).sum());
        for t in &texts {
            text.push_str(&t.to_ascii_lowercase());
            text.push(TEXT_SEPARATOR);
        }
        // PostgreSQL text cannot hold NUL: it becomes a separator, which no needle searched
        // in SQL holds, so it makes no match (`search.rs`).
        self.search_text
            .push(text.replace('\0', &TEXT_SEPARATOR.to_string()));
        // serde_json escapes NUL in strings, so the JSON never holds one.
        self.record.push(to_json("run", run)?);
        Ok(())
    }
}

impl PgRunStore {
    pub(super) fn new(db: Arc<Db>) -> PgRunStore {
        PgRunStore { db }
    }

    /// Writes a batch in one statement (idempotent on run id). The one write path of runs.
    pub fn write_batch(
        &self,
        runs: &[Box<RunRecord>],
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        // The last of a batch's runs with one id wins, as a second write would (one upsert
        // cannot touch a row twice).
        let mut last: HashMap<Uuid, usize> = HashMap::with_capacity(runs.len());
        for (i, run) in runs.iter().enumerate() {
            last.insert(run.id, i);
        }
        let mut columns = Columns::default();
        for (i, run) in runs.iter().enumerate() {
            if last.get(&run.id) == Some(&i) {
                if let Err(e) = columns.push(run) {
                    return Box::pin(futures::future::ready(Err(e)));
                }
            }
        }
        let empty = columns.id.is_empty();
        self.db.run(move |client| async move {
            if empty {
                return Ok(());
            }
            let c = &columns;
            let statement = client.prepare_cached(INSERT).await.map_err(pg_error)?;
            client
                .execute(
                    &statement,
                    &[
                        &c.id,
                        &c.tenant,
                        &c.agent,
                        &c.created_ms,
                        &c.status,
                        &c.model,
                        &c.provider,
                        &c.version_id,
                        &c.cache,
                        &c.source,
                        &c.cost_usd,
                        &c.duration_seconds,
                        &c.search_text,
                        &c.record,
                    ],
                )
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }
}

/// A run's record as stored.
pub(super) fn decode_run(text: &str) -> Result<RunRecord, StorageError> {
    serde_json::from_str(text).map_err(corrupt("run"))
}

impl RunStore for PgRunStore {
    fn insert_batch<'a>(
        &'a self,
        runs: &'a [Box<RunRecord>],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        self.write_batch(runs)
    }

    fn get<'a>(
        &'a self,
        tenant: &'a str,
        id: Uuid,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, StorageError>> {
        let tenant = tenant.to_string();
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached("SELECT record::text FROM runs WHERE id = $1 AND tenant = $2")
                .await
                .map_err(pg_error)?;
            let row = client
                .query_opt(&statement, &[&id, &tenant])
                .await
                .map_err(pg_error)?;
            row.map(|row| decode_run(row.get(0))).transpose()
        })
    }

    fn list_agent<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        cursor: Option<Uuid>,
        limit: usize,
    ) -> BoxFuture<'a, Result<RunPage, StorageError>> {
        let (tenant, agent) = (tenant.to_string(), agent.to_string());
        // One more than asked: whether there is a next page.
        let fetch = super::to_i64(limit as u64 + 1);
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached(
                    "SELECT record::text FROM runs
                     WHERE tenant = $1 AND agent = $2 AND ($3::uuid IS NULL OR id < $3)
                     ORDER BY id DESC LIMIT $4",
                )
                .await
                .map_err(pg_error)?;
            let rows = client
                .query(&statement, &[&tenant, &agent, &cursor, &fetch])
                .await
                .map_err(pg_error)?;
            let more = rows.len() > limit;
            let mut items = Vec::with_capacity(limit.min(rows.len()));
            for row in rows.iter().take(limit) {
                items.push(RunSummary::from(&decode_run(row.get(0))?));
            }
            let next_cursor = if more {
                items.last().map(|r| r.id.to_string())
            } else {
                None
            };
            Ok(RunPage { items, next_cursor })
        })
    }

    fn search<'a>(
        &'a self,
        scope: &'a SearchScope,
        query: &'a RunQuery,
    ) -> BoxFuture<'a, Result<SearchPage, StorageError>> {
        let (scope, query) = (scope.clone(), query.clone());
        self.db
            .run(move |client| async move { super::search::search(&client, &scope, &query).await })
    }

    fn field_values<'a>(
        &'a self,
        scope: &'a SearchScope,
        max: usize,
    ) -> BoxFuture<'a, Result<HashMap<IndexedField, Vec<String>>, StorageError>> {
        let scope = scope.clone();
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached(
                    "SELECT DISTINCT field, value COLLATE \"C\" AS value FROM run_values
                     WHERE tenant = $1 AND ($2::text IS NULL OR agent = $2)
                     ORDER BY field, value",
                )
                .await
                .map_err(pg_error)?;
            let rows = client
                .query(&statement, &[&scope.tenant, &scope.agent])
                .await
                .map_err(pg_error)?;
            let mut out: HashMap<IndexedField, Vec<String>> =
                IndexedField::ALL.iter().map(|f| (*f, Vec::new())).collect();
            for row in &rows {
                let (field, value): (&str, String) = (row.get(0), row.get(1));
                let Some(field) = IndexedField::ALL
                    .into_iter()
                    .find(|f| field_name(*f) == field)
                else {
                    continue;
                };
                let values = out.entry(field).or_default();
                if values.len() < max {
                    values.push(value);
                }
            }
            Ok(out)
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        // A write is durable once its statement is answered (synchronous commit).
        Box::pin(futures::future::ready(Ok(())))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        self.db.run(move |client| async move {
            client.simple_query("SELECT 1").await.map_err(pg_error)?;
            Ok(())
        })
    }

    fn size_on_disk(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        self.db.run(move |client| async move {
            // flowgate's tables (and their indexes and TOAST) in its schema.
            let row = client
                .query_one(
                    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = current_schema() AND c.relkind = 'r'",
                    &[],
                )
                .await
                .map_err(pg_error)?;
            Ok(super::to_u64(row.get(0)))
        })
    }

    fn prune(&self, batch: PruneBatch) -> BoxFuture<'_, Result<Pruned, StorageError>> {
        self.db
            .run(move |client| super::retention::prune(client, batch))
    }

    fn footprint(&self) -> BoxFuture<'_, Result<Footprint, StorageError>> {
        self.db.run(super::retention::footprint)
    }
}
