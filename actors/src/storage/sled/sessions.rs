//! Sign-in sessions on sled: `ui_sessions` maps an id digest to the session (JSON);
//! `ui_sessions_by_key` holds `key digest \0 id digest` for each, so that a key's sessions
//! are found without reading them all. Both are small: one entry per signed-in browser.

use futures::future::{ready, BoxFuture, FutureExt};

use super::{backend, off_thread};
use crate::storage::{SessionRecord, SessionStore, StorageError};

#[derive(Clone)]
pub struct SledSessionStore {
    db: ::sled::Db,
    sessions: ::sled::Tree,
    by_key: ::sled::Tree,
}

fn corrupt(e: serde_json::Error) -> StorageError {
    StorageError::Corrupt {
        what: "session",
        detail: e.to_string(),
    }
}

fn key_entry(key_digest: &str, id_digest: &str) -> Vec<u8> {
    let mut entry = Vec::with_capacity(key_digest.len() + 1 + id_digest.len());
    entry.extend_from_slice(key_digest.as_bytes());
    entry.push(0);
    entry.extend_from_slice(id_digest.as_bytes());
    entry
}

impl SledSessionStore {
    pub(super) fn open(db: &::sled::Db) -> Result<SledSessionStore, StorageError> {
        Ok(SledSessionStore {
            db: db.clone(),
            sessions: db.open_tree("ui_sessions").map_err(backend)?,
            by_key: db.open_tree("ui_sessions_by_key").map_err(backend)?,
        })
    }

    fn put_now(&self, session: &SessionRecord) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(session).map_err(corrupt)?;
        self.by_key
            .insert(key_entry(&session.key_digest, &session.id_digest), &[])
            .map_err(backend)?;
        self.sessions
            .insert(session.id_digest.as_bytes(), bytes)
            .map_err(backend)?;
        Ok(())
    }

    fn get_now(&self, id_digest: &str, now_ms: u64) -> Result<Option<SessionRecord>, StorageError> {
        let Some(bytes) = self.sessions.get(id_digest.as_bytes()).map_err(backend)? else {
            return Ok(None);
        };
        let session: SessionRecord = serde_json::from_slice(&bytes).map_err(corrupt)?;
        Ok((session.expires_ms > now_ms).then_some(session))
    }

    /// Removes sessions and their key entries; how many sessions were there.
    fn remove(&self, id_digests: &[String]) -> Result<u64, StorageError> {
        let mut removed = 0;
        for id_digest in id_digests {
            if let Some(bytes) = self
                .sessions
                .remove(id_digest.as_bytes())
                .map_err(backend)?
            {
                removed += 1;
                if let Ok(session) = serde_json::from_slice::<SessionRecord>(&bytes) {
                    self.by_key
                        .remove(key_entry(&session.key_digest, id_digest))
                        .map_err(backend)?;
                }
            }
        }
        if removed > 0 {
            // A signed-out session must stay out after a crash.
            self.db.flush().map_err(backend)?;
        }
        Ok(removed)
    }

    fn delete_for_key_now(&self, key_digest: &str) -> Result<u64, StorageError> {
        let mut prefix = key_digest.as_bytes().to_vec();
        prefix.push(0);
        let mut ids = Vec::new();
        for entry in self.by_key.scan_prefix(&prefix) {
            let (entry, _) = entry.map_err(backend)?;
            ids.push(String::from_utf8_lossy(&entry[prefix.len()..]).into_owned());
            self.by_key.remove(entry).map_err(backend)?;
        }
        self.remove(&ids)
    }

    fn delete_expired_now(&self, now_ms: u64) -> Result<u64, StorageError> {
        let mut expired = Vec::new();
        for entry in self.sessions.iter() {
            let (id, bytes) = entry.map_err(backend)?;
            // An unreadable session is of no use to anyone either.
            let over = serde_json::from_slice::<SessionRecord>(&bytes)
                .map_or(true, |s| s.expires_ms <= now_ms);
            if over {
                expired.push(String::from_utf8_lossy(&id).into_owned());
            }
        }
        self.remove(&expired)
    }
}

impl SessionStore for SledSessionStore {
    fn put<'a>(&'a self, session: &'a SessionRecord) -> BoxFuture<'a, Result<(), StorageError>> {
        ready(self.put_now(session)).boxed()
    }

    fn get<'a>(
        &'a self,
        id_digest: &'a str,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, StorageError>> {
        // A point read of a hot key: in place.
        ready(self.get_now(id_digest, now_ms)).boxed()
    }

    fn delete<'a>(&'a self, id_digest: &'a str) -> BoxFuture<'a, Result<bool, StorageError>> {
        let store = self.clone();
        let id = id_digest.to_string();
        // It flushes: on a blocking thread.
        off_thread(move || store.remove(&[id]).map(|n| n > 0))
    }

    fn delete_for_key<'a>(
        &'a self,
        key_digest: &'a str,
    ) -> BoxFuture<'a, Result<u64, StorageError>> {
        let store = self.clone();
        let key = key_digest.to_string();
        off_thread(move || store.delete_for_key_now(&key))
    }

    fn delete_expired(&self, now_ms: u64) -> BoxFuture<'_, Result<u64, StorageError>> {
        let store = self.clone();
        off_thread(move || store.delete_expired_now(now_ms))
    }
}
