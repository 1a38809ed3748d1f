//! The agents' records on PostgreSQL (see the migration for the tables): records as JSON,
//! keyed by tenant and agent; deployments are in `deployments.rs`. A schema's number must be
//! the same on every instance: it is handed out in a transaction that locks the agent's
//! counter row.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use uuid::Uuid;

use super::{corrupt, pg_error, to_json, Db};
use crate::agents::{SchemaRecord, VersionRecord, VersionStats};
use crate::storage::{
    ConversationHash, ConversationLink, ConversationStore, PairDigest, SchemaAssignment,
    SchemaStore, StorageError, VersionCursor, VersionKey, VersionPage, VersionStore,
};

/// A schema id as stored (`integer`): ids count an agent's schemas, far below 2^31.
pub(super) fn to_i32(id: u32) -> i32 {
    i32::try_from(id).unwrap_or(i32::MAX)
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    text: &str,
) -> Result<T, StorageError> {
    serde_json::from_str(text).map_err(corrupt(what))
}

pub struct PgSchemaStore {
    db: Arc<Db>,
}

impl PgSchemaStore {
    pub(super) fn new(db: Arc<Db>) -> PgSchemaStore {
        PgSchemaStore { db }
    }
}

/// What [`SchemaAssignment`] says, owned (it crosses to the backend's runtime).
enum Assignment {
    Existing(u32),
    New {
        input_schema: serde_json::Value,
        output_schema: serde_json::Value,
        created_at: String,
    },
}

impl SchemaStore for PgSchemaStore {
    fn id_of<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        digest: &'a PairDigest,
    ) -> BoxFuture<'a, Result<Option<u32>, StorageError>> {
        let (tenant, agent, digest) = (tenant.to_string(), agent.to_string(), digest.to_vec());
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached(
                    "SELECT schema_id FROM schema_digests
                     WHERE tenant = $1 AND agent = $2 AND digest = $3",
                )
                .await
                .map_err(pg_error)?;
            let row = client
                .query_opt(&statement, &[&tenant, &agent, &digest])
                .await
                .map_err(pg_error)?;
            Ok(row.map(|r| r.get::<_, i32>(0) as u32))
        })
    }

    fn assign<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        digest: &'a PairDigest,
        assignment: SchemaAssignment<'a>,
    ) -> BoxFuture<'a, Result<u32, StorageError>> {
        let (tenant, agent, digest) = (tenant.to_string(), agent.to_string(), digest.to_vec());
        let assignment = match assignment {
            SchemaAssignment::Existing(id) => Assignment::Existing(id),
            SchemaAssignment::New {
                input_schema,
                output_schema,
                created_at,
            } => Assignment::New {
                input_schema: input_schema.clone(),
                output_schema: output_schema.clone(),
                created_at: created_at.to_string(),
            },
        };
        self.db.run(move |mut client| async move {
            let tx = client.transaction().await.map_err(pg_error)?;
            let find = "SELECT schema_id FROM schema_digests
                        WHERE tenant = $1 AND agent = $2 AND digest = $3";
            if let Some(row) = tx
                .query_opt(find, &[&tenant, &agent, &digest])
                .await
                .map_err(pg_error)?
            {
                return Ok(row.get::<_, i32>(0) as u32);
            }
            let link = "INSERT INTO schema_digests (tenant, agent, digest, schema_id)
                        VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
            let (input_schema, output_schema, created_at) = match assignment {
                Assignment::Existing(id) => {
                    tx.execute(link, &[&tenant, &agent, &digest, &to_i32(id)])
                        .await
                        .map_err(pg_error)?;
                    // A concurrent caller may have linked it first: its id stands.
                    let row = tx
                        .query_one(find, &[&tenant, &agent, &digest])
                        .await
                        .map_err(pg_error)?;
                    tx.commit().await.map_err(pg_error)?;
                    return Ok(row.get::<_, i32>(0) as u32);
                }
                Assignment::New {
                    input_schema,
                    output_schema,
                    created_at,
                } => (input_schema, output_schema, created_at),
            };
            // The agent's counter row, locked: new ids are handed out one caller at a time.
            tx.execute(
                "INSERT INTO schema_counters (tenant, agent, last_id) VALUES ($1, $2, 0)
                 ON CONFLICT DO NOTHING",
                &[&tenant, &agent],
            )
            .await
            .map_err(pg_error)?;
            let last: i32 = tx
                .query_one(
                    "SELECT last_id FROM schema_counters WHERE tenant = $1 AND agent = $2
                     FOR UPDATE",
                    &[&tenant, &agent],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            // Whoever held the lock before may have assigned this very digest.
            if let Some(row) = tx
                .query_opt(find, &[&tenant, &agent, &digest])
                .await
                .map_err(pg_error)?
            {
                return Ok(row.get::<_, i32>(0) as u32);
            }
            let id = last + 1;
            let record = SchemaRecord {
                id: id as u32,
                input_schema,
                output_schema,
                created_at,
            };
            let json = to_json("schema", &record)?;
            tx.execute(
                "UPDATE schema_counters SET last_id = $3 WHERE tenant = $1 AND agent = $2",
                &[&tenant, &agent, &id],
            )
            .await
            .map_err(pg_error)?;
            tx.execute(
                "INSERT INTO schemas (tenant, agent, id, record) VALUES ($1, $2, $3, $4::text::json)",
                &[&tenant, &agent, &id, &json],
            )
            .await
            .map_err(pg_error)?;
            tx.execute(link, &[&tenant, &agent, &digest, &id])
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(id as u32)
        })
    }

    fn get<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        id: u32,
    ) -> BoxFuture<'a, Result<Option<SchemaRecord>, StorageError>> {
        let (tenant, agent) = (tenant.to_string(), agent.to_string());
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached(
                    "SELECT record::text FROM schemas WHERE tenant = $1 AND agent = $2 AND id = $3",
                )
                .await
                .map_err(pg_error)?;
            let row = client
                .query_opt(&statement, &[&tenant, &agent, &to_i32(id)])
                .await
                .map_err(pg_error)?;
            row.map(|r| decode("schema", r.get(0))).transpose()
        })
    }

    fn list<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SchemaRecord>, StorageError>> {
        let (tenant, agent) = (tenant.to_string(), agent.to_string());
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached(
                    "SELECT record::text FROM schemas WHERE tenant = $1 AND agent = $2 ORDER BY id",
                )
                .await
                .map_err(pg_error)?;
            let rows = client
                .query(&statement, &[&tenant, &agent])
                .await
                .map_err(pg_error)?;
            rows.iter().map(|r| decode("schema", r.get(0))).collect()
        })
    }
}

pub struct PgVersionStore {
    db: Arc<Db>,
}

impl PgVersionStore {
    pub(super) fn new(db: Arc<Db>) -> PgVersionStore {
        PgVersionStore { db }
    }
}

impl VersionStore for PgVersionStore {
    fn shared(&self) -> bool {
        true
    }

    fn insert<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        record: &'a VersionRecord,
    ) -> BoxFuture<'a, Result<VersionRecord, StorageError>> {
        let (tenant, agent) = (tenant.to_string(), agent.to_string());
        let (record, json) = (record.clone(), to_json("version", record));
        self.db.run(move |client| async move {
            let json = json?;
            let insert = client
                .prepare_cached(
                    "INSERT INTO versions (tenant, agent, id, record) VALUES ($1, $2, $3, $4::text::json)
                     ON CONFLICT DO NOTHING",
                )
                .await
                .map_err(pg_error)?;
            let inserted = client
                .execute(&insert, &[&tenant, &agent, &record.id, &json])
                .await
                .map_err(pg_error)?;
            if inserted == 1 {
                return Ok(record);
            }
            // The first writer's record, committed before the insert above found it.
            let select = client
                .prepare_cached(
                    "SELECT record::text FROM versions WHERE tenant = $1 AND agent = $2 AND id = $3",
                )
                .await
                .map_err(pg_error)?;
            let row = client
                .query_one(&select, &[&tenant, &agent, &record.id])
                .await
                .map_err(pg_error)?;
            decode("version", row.get(0))
        })
    }

    fn get<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<VersionRecord>, StorageError>> {
        let (tenant, agent, id) = (tenant.to_string(), agent.to_string(), id.to_string());
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached(
                    "SELECT record::text FROM versions WHERE tenant = $1 AND agent = $2 AND id = $3",
                )
                .await
                .map_err(pg_error)?;
            let row = client
                .query_opt(&statement, &[&tenant, &agent, &id])
                .await
                .map_err(pg_error)?;
            row.map(|r| decode("version", r.get(0))).transpose()
        })
    }

    fn list<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Vec<VersionRecord>, StorageError>> {
        let (tenant, agent) = (tenant.to_string(), agent.to_string());
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached(
                    "SELECT record::text FROM versions WHERE tenant = $1 AND agent = $2",
                )
                .await
                .map_err(pg_error)?;
            let rows = client
                .query(&statement, &[&tenant, &agent])
                .await
                .map_err(pg_error)?;
            rows.iter().map(|r| decode("version", r.get(0))).collect()
        })
    }

    fn page<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        after: Option<&'a VersionCursor>,
        limit: usize,
    ) -> BoxFuture<'a, Result<VersionPage, StorageError>> {
        let (tenant, agent) = (tenant.to_string(), agent.to_string());
        let (after_at, after_id): (Option<String>, Option<String>) = match after {
            Some(c) => (Some(c.created_at.clone()), Some(c.id.clone())),
            None => (None, None),
        };
        // One more than asked: whether a next page exists.
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        self.db.run(move |client| async move {
            // The order is `versions_by_time`'s (migration 3): the page is read off the index,
            // from its start or from the cursor on (two statements: an `OR` would keep the
            // cursor out of the index condition).
            const COLUMNS: &str = "SELECT v.record::text, s.stats::text FROM versions v
                 LEFT JOIN version_stats s ON s.tenant = v.tenant AND s.agent = v.agent
                     AND s.version_id = v.id
                 WHERE v.tenant = $1 AND v.agent = $2";
            const ORDER: &str = "ORDER BY v.record->>'created_at' DESC, v.id DESC";
            let rows = match (&after_at, &after_id) {
                (Some(at), Some(id)) => {
                    let statement = client
                        .prepare_cached(&format!(
                            "{COLUMNS} AND (v.record->>'created_at', v.id) < ($3::text, $4::text)
                             {ORDER} LIMIT $5"
                        ))
                        .await
                        .map_err(pg_error)?;
                    client
                        .query(&statement, &[&tenant, &agent, at, id, &fetch])
                        .await
                        .map_err(pg_error)?
                }
                _ => {
                    let statement = client
                        .prepare_cached(&format!("{COLUMNS} {ORDER} LIMIT $3"))
                        .await
                        .map_err(pg_error)?;
                    client
                        .query(&statement, &[&tenant, &agent, &fetch])
                        .await
                        .map_err(pg_error)?
                }
            };
            let mut items = Vec::with_capacity(rows.len().min(limit));
            for row in rows.iter().take(limit) {
                let record: VersionRecord = decode("version", row.get(0))?;
                let stats = row
                    .get::<_, Option<&str>>(1)
                    .map(|s| decode("version's statistics", s))
                    .transpose()?;
                items.push((record, stats));
            }
            let next_cursor = (rows.len() > limit).then(|| items.last()).flatten().map(
                |(last, _): &(VersionRecord, _)| VersionCursor {
                    created_at: last.created_at.clone(),
                    id: last.id.clone(),
                },
            );
            Ok(VersionPage { items, next_cursor })
        })
    }

    fn stats<'a>(
        &'a self,
        key: &'a VersionKey,
    ) -> BoxFuture<'a, Result<Option<VersionStats>, StorageError>> {
        let key = key.clone();
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached(
                    "SELECT stats::text FROM version_stats
                     WHERE tenant = $1 AND agent = $2 AND version_id = $3",
                )
                .await
                .map_err(pg_error)?;
            let row = client
                .query_opt(&statement, &[&key.tenant, &key.agent, &key.version_id])
                .await
                .map_err(pg_error)?;
            row.map(|r| decode("version's statistics", r.get(0)))
                .transpose()
        })
    }

    fn add_stats<'a>(
        &'a self,
        batch: &'a [(VersionKey, VersionStats)],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        // A key's entries summed first (a statement may touch a row once); one statement for
        // the batch (all or none), adding to what other instances stored.
        let mut last: HashMap<&VersionKey, VersionStats> = HashMap::new();
        for (key, stats) in batch {
            last.entry(key).or_default().add(stats);
        }
        // In key order, as retention locks them: two batches never wait on each other in a
        // cycle.
        let mut last: Vec<(&VersionKey, VersionStats)> = last.into_iter().collect();
        last.sort_by(|(a, _), (b, _)| {
            (&a.tenant, &a.agent, &a.version_id).cmp(&(&b.tenant, &b.agent, &b.version_id))
        });
        let (mut tenants, mut agents, mut ids, mut stats) = (vec![], vec![], vec![], vec![]);
        for (key, value) in last {
            tenants.push(key.tenant.clone());
            agents.push(key.agent.clone());
            ids.push(key.version_id.clone());
            stats.push(to_json("version's statistics", &value));
        }
        self.db.run(move |client| async move {
            if tenants.is_empty() {
                return Ok(());
            }
            let stats = stats.into_iter().collect::<Result<Vec<String>, _>>()?;
            let statement = client
                .prepare_cached(
                    "INSERT INTO version_stats (tenant, agent, version_id, stats)
                     SELECT t, a, v, s::json FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])
                         AS b(t, a, v, s)
                     ON CONFLICT (tenant, agent, version_id) DO UPDATE SET stats = json_build_object(
                         'run_count', (version_stats.stats->>'run_count')::bigint
                             + (EXCLUDED.stats->>'run_count')::bigint,
                         'error_count', (version_stats.stats->>'error_count')::bigint
                             + (EXCLUDED.stats->>'error_count')::bigint,
                         'cost_usd', (version_stats.stats->>'cost_usd')::float8
                             + (EXCLUDED.stats->>'cost_usd')::float8,
                         'total_duration_seconds',
                             (version_stats.stats->>'total_duration_seconds')::float8
                             + (EXCLUDED.stats->>'total_duration_seconds')::float8,
                         -- RFC 3339 times of one format: their byte order is time order.
                         'first_used_at', LEAST(version_stats.stats->>'first_used_at' COLLATE \"C\",
                                                EXCLUDED.stats->>'first_used_at' COLLATE \"C\"),
                         'last_used_at', GREATEST(version_stats.stats->>'last_used_at' COLLATE \"C\",
                                                  EXCLUDED.stats->>'last_used_at' COLLATE \"C\"))",
                )
                .await
                .map_err(pg_error)?;
            client
                .execute(&statement, &[&tenants, &agents, &ids, &stats])
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }
}

pub struct PgConversationStore {
    db: Arc<Db>,
}

impl PgConversationStore {
    pub(super) fn new(db: Arc<Db>) -> PgConversationStore {
        PgConversationStore { db }
    }
}

impl ConversationStore for PgConversationStore {
    fn find<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        hash: &'a ConversationHash,
    ) -> BoxFuture<'a, Result<Option<Uuid>, StorageError>> {
        let (tenant, agent, hash) = (tenant.to_string(), agent.to_string(), hash.to_vec());
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached(
                    "SELECT conversation_id FROM conversations
                     WHERE tenant = $1 AND agent = $2 AND hash = $3",
                )
                .await
                .map_err(pg_error)?;
            let row = client
                .query_opt(&statement, &[&tenant, &agent, &hash])
                .await
                .map_err(pg_error)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn link_batch<'a>(
        &'a self,
        links: &'a [ConversationLink],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        // The last link of a hash wins, in one statement.
        let mut last: HashMap<(&str, &str, &ConversationHash), Uuid> = HashMap::new();
        for link in links {
            last.insert(
                (&link.tenant, &link.agent, &link.hash),
                link.conversation_id,
            );
        }
        let (mut tenants, mut agents, mut hashes, mut ids) = (vec![], vec![], vec![], vec![]);
        for ((tenant, agent, hash), id) in last {
            tenants.push(tenant.to_string());
            agents.push(agent.to_string());
            hashes.push(hash.to_vec());
            ids.push(id);
        }
        self.db.run(move |client| async move {
            if tenants.is_empty() {
                return Ok(());
            }
            let statement = client
                .prepare_cached(
                    "INSERT INTO conversations (tenant, agent, hash, conversation_id)
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::uuid[])
                     ON CONFLICT (tenant, agent, hash)
                     DO UPDATE SET conversation_id = EXCLUDED.conversation_id",
                )
                .await
                .map_err(pg_error)?;
            client
                .execute(&statement, &[&tenants, &agents, &hashes, &ids])
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }
}
