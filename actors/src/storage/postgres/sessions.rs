//! Sign-in sessions on PostgreSQL: table `ui_sessions`, one row per session, found by its id
//! digest, by its key digest (a revoked key) or by expiry.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio_postgres::Row;

use super::{pg_error, to_i64, to_u64, Db};
use crate::storage::{SessionRecord, SessionStore, StorageError};

pub struct PgSessionStore {
    db: Arc<Db>,
}

impl PgSessionStore {
    pub(super) fn new(db: Arc<Db>) -> PgSessionStore {
        PgSessionStore { db }
    }
}

fn session_of(row: &Row) -> SessionRecord {
    SessionRecord {
        id_digest: row.get(0),
        key_digest: row.get(1),
        sealed_key: row.get(2),
        tenant: row.get(3),
        admin: row.get(4),
        csrf: row.get(5),
        created_ms: to_u64(row.get(6)),
        expires_ms: to_u64(row.get(7)),
    }
}

impl SessionStore for PgSessionStore {
    fn put<'a>(&'a self, session: &'a SessionRecord) -> BoxFuture<'a, Result<(), StorageError>> {
        let s = session.clone();
        self.db.run(move |client| async move {
            client
                .execute(
                    "INSERT INTO ui_sessions (id_digest, key_digest, sealed_key, tenant, admin, \
                         csrf, created_ms, expires_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (id_digest) DO UPDATE SET key_digest = EXCLUDED.key_digest,
                         sealed_key = EXCLUDED.sealed_key, tenant = EXCLUDED.tenant,
                         admin = EXCLUDED.admin, csrf = EXCLUDED.csrf,
                         created_ms = EXCLUDED.created_ms, expires_ms = EXCLUDED.expires_ms",
                    &[
                        &s.id_digest,
                        &s.key_digest,
                        &s.sealed_key,
                        &s.tenant,
                        &s.admin,
                        &s.csrf,
                        &to_i64(s.created_ms),
                        &to_i64(s.expires_ms),
                    ],
                )
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }

    fn get<'a>(
        &'a self,
        id_digest: &'a str,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, StorageError>> {
        let id = id_digest.to_string();
        self.db.run(move |client| async move {
            // On every page and every API call a page makes: prepared once per connection.
            let select = client
                .prepare_cached(
                    "SELECT id_digest, key_digest, sealed_key, tenant, admin, csrf, created_ms, \
                         expires_ms
                     FROM ui_sessions WHERE id_digest = $1 AND expires_ms > $2",
                )
                .await
                .map_err(pg_error)?;
            let row = client
                .query_opt(&select, &[&id, &to_i64(now_ms)])
                .await
                .map_err(pg_error)?;
            Ok(row.as_ref().map(session_of))
        })
    }

    fn delete<'a>(&'a self, id_digest: &'a str) -> BoxFuture<'a, Result<bool, StorageError>> {
        let id = id_digest.to_string();
        self.db.run(move |client| async move {
            let n = client
                .execute("DELETE FROM ui_sessions WHERE id_digest = $1", &[&id])
                .await
                .map_err(pg_error)?;
            Ok(n > 0)
        })
    }

    fn delete_for_key<'a>(
        &'a self,
        key_digest: &'a str,
    ) -> BoxFuture<'a, Result<u64, StorageError>> {
        let key = key_digest.to_string();
        self.db.run(move |client| async move {
            client
                .execute("DELETE FROM ui_sessions WHERE key_digest = $1", &[&key])
                .await
                .map_err(pg_error)
        })
    }

    fn delete_expired(&self, now_ms: u64) -> BoxFuture<'_, Result<u64, StorageError>> {
        self.db.run(move |client| async move {
            client
                .execute(
                    "DELETE FROM ui_sessions WHERE expires_ms <= $1",
                    &[&to_i64(now_ms)],
                )
                .await
                .map_err(pg_error)
        })
    }
}
