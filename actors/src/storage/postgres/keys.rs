//! Keys on PostgreSQL: `keys` (a record per key, its secret's digest only) and `key_usage`
//! (spend and last use per subject), both small.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::{corrupt, listen, pg_error, to_json, Db};
use crate::keys::KeyRecord;
use crate::storage::{Change, KeyStore, StorageError, SubjectUsage};

pub struct PgKeyStore {
    db: Arc<Db>,
}

impl PgKeyStore {
    pub(super) fn new(db: Arc<Db>) -> PgKeyStore {
        PgKeyStore { db }
    }
}

impl KeyStore for PgKeyStore {
    fn put<'a>(&'a self, key: &'a KeyRecord) -> BoxFuture<'a, Result<(), StorageError>> {
        let (id, json) = (key.id.clone(), to_json("key", key));
        let db = self.db.clone();
        self.db.run(move |mut client| async move {
            let json = json?;
            let tx = client.transaction().await.map_err(pg_error)?;
            tx.execute(
                "INSERT INTO keys (id, record) VALUES ($1, $2::text::json)
                 ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
                &[&id, &json],
            )
            .await
            .map_err(pg_error)?;
            // The other instances read the keys again once this commits (a revocation holds
            // everywhere at once).
            tx.execute(listen::NOTIFY, &[&db.channel, &Change::Keys.as_str()])
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(())
        })
    }

    fn all(&self) -> BoxFuture<'_, Result<Vec<KeyRecord>, StorageError>> {
        self.db.run(move |client| async move {
            let rows = client
                .query("SELECT record::text FROM keys", &[])
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|row| serde_json::from_str(row.get::<_, &str>(0)).map_err(corrupt("key")))
                .collect()
        })
    }

    fn put_usage<'a>(
        &'a self,
        usage: &'a [(String, SubjectUsage)],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let rows: Result<(Vec<String>, Vec<String>), StorageError> =
            usage
                .iter()
                .try_fold((vec![], vec![]), |(mut s, mut u), (subject, usage)| {
                    s.push(subject.clone());
                    u.push(to_json("key usage", usage)?);
                    Ok((s, u))
                });
        self.db.run(move |client| async move {
            let (subjects, usages) = rows?;
            // One statement for the whole batch.
            client
                .execute(
                    "INSERT INTO key_usage (subject, usage)
                     SELECT s, u::json FROM UNNEST($1::text[], $2::text[]) AS t(s, u)
                     ON CONFLICT (subject) DO UPDATE SET usage = EXCLUDED.usage",
                    &[&subjects, &usages],
                )
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn usage(&self) -> BoxFuture<'_, Result<Vec<(String, SubjectUsage)>, StorageError>> {
        self.db.run(move |client| async move {
            let rows = client
                .query("SELECT subject, usage::text FROM key_usage", &[])
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|row| {
                    let usage = serde_json::from_str(row.get::<_, &str>(1))
                        .map_err(corrupt("key usage"))?;
                    Ok((row.get::<_, String>(0), usage))
                })
                .collect()
        })
    }
}
