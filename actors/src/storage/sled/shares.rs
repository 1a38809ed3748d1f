//! Share links on sled: `shares` maps a token to its [`Share`] (JSON), `shares_by_run` maps
//! `tenant \0 run id` to the token. Both change in one transaction, so a token never outlives
//! its run's entry, and two shares of one run at once agree on a token.

use futures::future::BoxFuture;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use uuid::Uuid;

use super::backend;
use crate::share::Share;
use crate::storage::{ShareStore, StorageError};

/// Cheap to clone (the trees are handles).
#[derive(Clone)]
pub struct SledShareStore {
    shares: ::sled::Tree,
    by_run: ::sled::Tree,
}

fn run_key(tenant: &str, run_id: Uuid) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant.len() + 17);
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key.extend_from_slice(run_id.as_bytes());
    key
}

fn corrupt(e: serde_json::Error) -> StorageError {
    StorageError::Corrupt {
        what: "share",
        detail: e.to_string(),
    }
}

fn transaction_error(e: TransactionError<StorageError>) -> StorageError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    }
}

impl SledShareStore {
    pub(super) fn open(db: &::sled::Db) -> Result<SledShareStore, StorageError> {
        Ok(SledShareStore {
            shares: db.open_tree("shares").map_err(backend)?,
            by_run: db.open_tree("shares_by_run").map_err(backend)?,
        })
    }

    fn share_now(
        &self,
        tenant: &str,
        run_id: Uuid,
        new_token: &str,
    ) -> Result<Share, StorageError> {
        let key = run_key(tenant, run_id);
        let fresh = Share {
            token: new_token.to_string(),
            tenant: tenant.to_string(),
            run_id,
            created_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        };
        let bytes = serde_json::to_vec(&fresh).map_err(corrupt)?;
        (&self.shares, &self.by_run)
            .transaction(|(shares, by_run)| {
                if let Some(token) = by_run.get(&key)? {
                    if let Some(existing) = shares.get(&token)? {
                        return serde_json::from_slice(&existing)
                            .map_err(|e| ConflictableTransactionError::Abort(corrupt(e)));
                    }
                }
                shares.insert(new_token.as_bytes(), bytes.as_slice())?;
                by_run.insert(key.as_slice(), new_token.as_bytes())?;
                Ok(fresh.clone())
            })
            .map_err(transaction_error)
    }

    fn get_now(&self, token: &str) -> Result<Option<Share>, StorageError> {
        match self.shares.get(token.as_bytes()).map_err(backend)? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(corrupt),
            None => Ok(None),
        }
    }

    fn revoke_now(&self, tenant: &str, run_id: Uuid) -> Result<bool, StorageError> {
        let key = run_key(tenant, run_id);
        (&self.shares, &self.by_run)
            .transaction(|(shares, by_run)| {
                let Some(token) = by_run.remove(key.as_slice())? else {
                    return Ok(false);
                };
                shares.remove(token)?;
                Ok(true)
            })
            .map_err(transaction_error)
    }
}

impl ShareStore for SledShareStore {
    fn share<'a>(
        &'a self,
        tenant: &'a str,
        run_id: Uuid,
        new_token: &'a str,
    ) -> BoxFuture<'a, Result<Share, StorageError>> {
        let store = self.clone();
        let (tenant, new_token) = (tenant.to_string(), new_token.to_string());
        super::off_thread(move || store.share_now(&tenant, run_id, &new_token))
    }

    fn get<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Share>, StorageError>> {
        let store = self.clone();
        let token = token.to_string();
        super::off_thread(move || store.get_now(&token))
    }

    fn revoke<'a>(
        &'a self,
        tenant: &'a str,
        run_id: Uuid,
    ) -> BoxFuture<'a, Result<bool, StorageError>> {
        let store = self.clone();
        let tenant = tenant.to_string();
        super::off_thread(move || store.revoke_now(&tenant, run_id))
    }
}
