//! Share links on sled: `shares` maps a token to its [`Share`] (JSON), `shares_by_run` maps
//! `tenant \0 run id` to the token. Two shares of one run at once agree on a token (the run's
//! entry is claimed by compare-and-swap), and a token never outlives its run's entry: the
//! share is written after the entry and removed before it. No sled transaction (see
//! `agents.rs`: the first would put every sled read of the process behind a global lock).

use futures::future::BoxFuture;
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
        loop {
            let token = match self
                .by_run
                .compare_and_swap(&key, None::<&[u8]>, Some(new_token.as_bytes()))
                .map_err(backend)?
            {
                Ok(()) => new_token.as_bytes().to_vec(),
                Err(taken) => match taken.current {
                    Some(token) => {
                        if let Some(existing) = self.shares.get(&token).map_err(backend)? {
                            return serde_json::from_slice(&existing).map_err(corrupt);
                        }
                        // An entry whose share a crash (or a revoke in between) did not write.
                        token.to_vec()
                    }
                    None => continue,
                },
            };
            let share = Share {
                token: String::from_utf8_lossy(&token).into_owned(),
                ..fresh.clone()
            };
            let bytes = if token == new_token.as_bytes() {
                bytes.clone()
            } else {
                serde_json::to_vec(&share).map_err(corrupt)?
            };
            self.shares.insert(&token, bytes).map_err(backend)?;
            // A revoke that ran meanwhile removed the entry: the share must not outlive it.
            if self.by_run.get(&key).map_err(backend)?.as_deref() == Some(token.as_slice()) {
                return Ok(share);
            }
            self.shares.remove(&token).map_err(backend)?;
        }
    }

    fn get_now(&self, token: &str) -> Result<Option<Share>, StorageError> {
        match self.shares.get(token.as_bytes()).map_err(backend)? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(corrupt),
            None => Ok(None),
        }
    }

    fn revoke_now(&self, tenant: &str, run_id: Uuid) -> Result<bool, StorageError> {
        let key = run_key(tenant, run_id);
        let Some(token) = self.by_run.get(&key).map_err(backend)? else {
            return Ok(false);
        };
        // The share first: once it is gone the link fails, whatever happens next.
        self.shares.remove(&token).map_err(backend)?;
        Ok(self
            .by_run
            .compare_and_swap(&key, Some(token), None::<&[u8]>)
            .map_err(backend)?
            .is_ok())
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
