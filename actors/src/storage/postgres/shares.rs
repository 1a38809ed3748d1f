//! Share links on PostgreSQL: table `shares`, one row per live token, unique per (tenant,
//! run): two shares of one run at once agree on a token, since the second insert finds the
//! first's row.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{pg_error, Db};
use crate::share::Share;
use crate::storage::{ShareStore, StorageError};

pub struct PgShareStore {
    db: Arc<Db>,
}

impl PgShareStore {
    pub(super) fn new(db: Arc<Db>) -> PgShareStore {
        PgShareStore { db }
    }
}

fn share_of(row: &Row) -> Share {
    Share {
        token: row.get(0),
        tenant: row.get(1),
        run_id: row.get(2),
        created_at: row.get(3),
    }
}

impl ShareStore for PgShareStore {
    fn share<'a>(
        &'a self,
        tenant: &'a str,
        run_id: Uuid,
        new_token: &'a str,
    ) -> BoxFuture<'a, Result<Share, StorageError>> {
        let (tenant, token) = (tenant.to_string(), new_token.to_string());
        let created_at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        self.db.run(move |client| async move {
            let insert = client
                .prepare_cached(
                    "INSERT INTO shares (token, tenant, run_id, created_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (tenant, run_id) DO NOTHING
                     RETURNING token, tenant, run_id, created_at",
                )
                .await
                .map_err(pg_error)?;
            if let Some(row) = client
                .query_opt(&insert, &[&token, &tenant, &run_id, &created_at])
                .await
                .map_err(pg_error)?
            {
                return Ok(share_of(&row));
            }
            // The run was shared already (perhaps a moment ago, by another call): its token.
            let existing = client
                .prepare_cached(
                    "SELECT token, tenant, run_id, created_at FROM shares
                     WHERE tenant = $1 AND run_id = $2",
                )
                .await
                .map_err(pg_error)?;
            match client
                .query_opt(&existing, &[&tenant, &run_id])
                .await
                .map_err(pg_error)?
            {
                Some(row) => Ok(share_of(&row)),
                // Revoked in between: a retry makes a new one.
                None => Err(StorageError::Unavailable(
                    "the share was revoked while it was made; try again".into(),
                )),
            }
        })
    }

    fn get<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Share>, StorageError>> {
        let token = token.to_string();
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached(
                    "SELECT token, tenant, run_id, created_at FROM shares WHERE token = $1",
                )
                .await
                .map_err(pg_error)?;
            let row = client
                .query_opt(&statement, &[&token])
                .await
                .map_err(pg_error)?;
            Ok(row.as_ref().map(share_of))
        })
    }

    fn revoke<'a>(
        &'a self,
        tenant: &'a str,
        run_id: Uuid,
    ) -> BoxFuture<'a, Result<bool, StorageError>> {
        let tenant = tenant.to_string();
        self.db.run(move |client| async move {
            let statement = client
                .prepare_cached("DELETE FROM shares WHERE tenant = $1 AND run_id = $2")
                .await
                .map_err(pg_error)?;
            let deleted = client
                .execute(&statement, &[&tenant, &run_id])
                .await
                .map_err(pg_error)?;
            Ok(deleted > 0)
        })
    }
}
