//! Keys on sled: `keys` maps a key id to its record (JSON), `key_usage` a subject to its
//! usage (JSON). Both are small: one entry per key or tenant.

use futures::future::{BoxFuture, FutureExt};

use super::backend;
use crate::keys::KeyRecord;
use crate::storage::{KeyStore, StorageError, SubjectUsage};

#[derive(Clone)]
pub struct SledKeyStore {
    keys: ::sled::Tree,
    usage: ::sled::Tree,
}

fn corrupt(e: serde_json::Error) -> StorageError {
    StorageError::Corrupt {
        what: "key",
        detail: e.to_string(),
    }
}

impl SledKeyStore {
    pub(super) fn open(db: &::sled::Db) -> Result<SledKeyStore, StorageError> {
        Ok(SledKeyStore {
            keys: db.open_tree("keys").map_err(backend)?,
            usage: db.open_tree("key_usage").map_err(backend)?,
        })
    }

    fn put_now(&self, key: &KeyRecord) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(key).map_err(corrupt)?;
        self.keys
            .insert(key.id.as_bytes(), bytes)
            .map_err(backend)?;
        // A revoked key must stay revoked after a crash.
        self.keys.flush().map_err(backend)?;
        Ok(())
    }

    fn all_now(&self) -> Result<Vec<KeyRecord>, StorageError> {
        self.keys
            .iter()
            .values()
            .map(|v| serde_json::from_slice(&v.map_err(backend)?).map_err(corrupt))
            .collect()
    }

    fn put_usage_now(&self, usage: &[(String, SubjectUsage)]) -> Result<(), StorageError> {
        for (subject, usage) in usage {
            let bytes = serde_json::to_vec(usage).map_err(corrupt)?;
            self.usage
                .insert(subject.as_bytes(), bytes)
                .map_err(backend)?;
        }
        Ok(())
    }

    fn usage_now(&self) -> Result<Vec<(String, SubjectUsage)>, StorageError> {
        let mut out = Vec::new();
        for entry in self.usage.iter() {
            let (k, v) = entry.map_err(backend)?;
            out.push((
                String::from_utf8_lossy(&k).into_owned(),
                serde_json::from_slice(&v).map_err(corrupt)?,
            ));
        }
        Ok(out)
    }
}

impl KeyStore for SledKeyStore {
    fn put<'a>(&'a self, key: &'a KeyRecord) -> BoxFuture<'a, Result<(), StorageError>> {
        futures::future::ready(self.put_now(key)).boxed()
    }

    fn all(&self) -> BoxFuture<'_, Result<Vec<KeyRecord>, StorageError>> {
        futures::future::ready(self.all_now()).boxed()
    }

    fn put_usage<'a>(
        &'a self,
        usage: &'a [(String, SubjectUsage)],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        futures::future::ready(self.put_usage_now(usage)).boxed()
    }

    fn usage(&self) -> BoxFuture<'_, Result<Vec<(String, SubjectUsage)>, StorageError>> {
        futures::future::ready(self.usage_now()).boxed()
    }
}
