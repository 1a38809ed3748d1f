//! Stored answers on PostgreSQL: table `answers`, each entry with its store time, last use
//! and size; `answers_by_use` is the eviction order. An entry and its place in that order are
//! one row, so they always change together. Shared by every instance: an answer one stored
//! is a hit on the others.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::{pg_error, to_i64, to_u64, Db};
use crate::cache::{CacheKey, StoredAnswer};
use crate::storage::{AnswerEntry, AnswerStore, AnswerTotals, PutOutcome, StorageError};

/// Bytes counted for an entry besides its JSON: the key and the two times, as sled counts a
/// format byte and a time (sizes are comparable across backends).
const OVERHEAD: u64 = 32 + 9;

pub struct PgAnswerStore {
    db: Arc<Db>,
}

impl PgAnswerStore {
    pub(super) fn new(db: Arc<Db>) -> PgAnswerStore {
        PgAnswerStore { db }
    }
}

fn corrupt(detail: impl ToString) -> StorageError {
    StorageError::Corrupt {
        what: "cached answer",
        detail: detail.to_string(),
    }
}

impl AnswerStore for PgAnswerStore {
    fn get<'a>(
        &'a self,
        key: &'a CacheKey,
    ) -> BoxFuture<'a, Result<Option<AnswerEntry>, StorageError>> {
        let key = key.as_bytes().to_vec();
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached(
                    "SELECT answer::text, stored_at_ms, last_use_ms FROM answers WHERE key = $1",
                )
                .await
                .map_err(pg_error)?;
            let Some(row) = client
                .query_opt(&statement, &[&key])
                .await
                .map_err(pg_error)?
            else {
                return Ok(None);
            };
            let mut answer: StoredAnswer = serde_json::from_str(row.get(0)).map_err(corrupt)?;
            // The column is the store time (the JSON may not carry it).
            answer.stored_at_ms = to_u64(row.get(1));
            Ok(Some(AnswerEntry {
                answer,
                last_use_ms: to_u64(row.get(2)),
            }))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        answer: &'a StoredAnswer,
        now_ms: u64,
        max_size: u64,
    ) -> BoxFuture<'a, Result<PutOutcome, StorageError>> {
        let key = key.as_bytes().to_vec();
        let json = serde_json::to_string(answer)
            .map_err(|e| StorageError::Backend(format!("cannot serialize an answer: {e}")));
        let stored_at_ms = to_i64(answer.stored_at_ms);
        self.db.run(move |mut client| async move {
            let json = json?;
            let size = json.len() as u64 + OVERHEAD;
            if size > max_size {
                return Ok(PutOutcome::TooLarge { size });
            }
            let tx = client.transaction().await.map_err(pg_error)?;
            // The replaced entry's size, its row locked until the new one is in.
            let replaced = tx
                .query_opt(
                    "SELECT size FROM answers WHERE key = $1 FOR UPDATE",
                    &[&key],
                )
                .await
                .map_err(pg_error)?
                .map(|row| to_u64(row.get(0)));
            tx.execute(
                "INSERT INTO answers (key, stored_at_ms, last_use_ms, size, answer)
                 VALUES ($1, $2, $3, $4, $5::text::json)
                 ON CONFLICT (key) DO UPDATE SET stored_at_ms = EXCLUDED.stored_at_ms,
                     last_use_ms = EXCLUDED.last_use_ms, size = EXCLUDED.size,
                     answer = EXCLUDED.answer",
                &[&key, &stored_at_ms, &to_i64(now_ms), &to_i64(size), &json],
            )
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(PutOutcome::Stored { size, replaced })
        })
    }

    fn touch<'a>(
        &'a self,
        key: &'a CacheKey,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let key = key.as_bytes().to_vec();
        self.db.run(move |client| async move {
            // Never back in time; nothing when there is no entry.
            let statement = client
                .prepare_cached(
                    "UPDATE answers SET last_use_ms = $2 WHERE key = $1 AND last_use_ms < $2",
                )
                .await
                .map_err(pg_error)?;
            client
                .execute(&statement, &[&key, &to_i64(now_ms)])
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }

    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        let key = key.as_bytes().to_vec();
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached("DELETE FROM answers WHERE key = $1 RETURNING size")
                .await
                .map_err(pg_error)?;
            let row = client
                .query_opt(&statement, &[&key])
                .await
                .map_err(pg_error)?;
            Ok(row.map(|r| to_u64(r.get(0))))
        })
    }

    fn oldest(&self) -> BoxFuture<'_, Result<Option<(u64, CacheKey)>, StorageError>> {
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached(
                    "SELECT last_use_ms, key FROM answers ORDER BY last_use_ms, key LIMIT 1",
                )
                .await
                .map_err(pg_error)?;
            let Some(row) = client.query_opt(&statement, &[]).await.map_err(pg_error)? else {
                return Ok(None);
            };
            let key: Vec<u8> = row.get(1);
            let key = <[u8; 32]>::try_from(key.as_slice())
                .map_err(|_| corrupt(format!("a key of {} bytes", key.len())))?;
            Ok(Some((to_u64(row.get(0)), CacheKey::from_bytes(key))))
        })
    }

    fn totals(&self) -> BoxFuture<'_, Result<AnswerTotals, StorageError>> {
        self.db.run(move |client| async move {
            let row = client
                .query_one(
                    "SELECT COALESCE(sum(size), 0)::bigint, count(*) FROM answers",
                    &[],
                )
                .await
                .map_err(pg_error)?;
            Ok(AnswerTotals {
                bytes: to_u64(row.get(0)),
                entries: to_u64(row.get(1)),
            })
        })
    }
}
