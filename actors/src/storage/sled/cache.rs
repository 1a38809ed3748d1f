//! Stored answers on sled, in the trees and encoding earlier releases wrote:
//!
//! * `cache_entries`: key → the entry: a format byte, the store time (unix milliseconds, 8
//!   bytes big endian), then the answer's JSON;
//! * `cache_by_use`: last use (8 bytes) ‖ key → the entry's size (8 bytes): the eviction order,
//!   oldest first;
//! * `cache_last_use`: key → last use, to find an entry's place in that order.
//!
//! The writes come from the cache's own writer thread, one at a time, and change the three
//! trees in an order whose every prefix is harmless — not in a sled transaction, whose first
//! use would put every sled read of the process behind a global lock (see `agents.rs`): the
//! eviction order learns of an entry before the entry is written and forgets it after it is
//! removed, so a crash never leaves an entry the eviction order does not know; an order entry
//! a crash left behind (its key's last use is another time) is dropped when it comes first.
//! Reads answer in place: a lookup is a memory read for a hot key.

use futures::future::{ready, BoxFuture, FutureExt};

use super::backend;
use crate::cache::{CacheKey, StoredAnswer};
use crate::storage::{AnswerEntry, AnswerStore, AnswerTotals, PutOutcome, StorageError};

/// Version of the entry layout; an entry of another version cannot be read.
const FORMAT: u8 = 1;
/// The format byte and the store time.
const HEADER_LEN: usize = 9;
/// Bytes of a key, counted in an entry's size.
const KEY_LEN: u64 = 32;

fn encode(answer: &StoredAnswer) -> Result<Vec<u8>, StorageError> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + 512);
    bytes.push(FORMAT);
    bytes.extend_from_slice(&answer.stored_at_ms.to_be_bytes());
    serde_json::to_writer(&mut bytes, answer)
        .map_err(|e| StorageError::Backend(format!("cannot serialize an answer: {e}")))?;
    Ok(bytes)
}

fn corrupt(detail: impl ToString) -> StorageError {
    StorageError::Corrupt {
        what: "cached answer",
        detail: detail.to_string(),
    }
}

fn decode(bytes: &[u8]) -> Result<StoredAnswer, StorageError> {
    let stored_at_ms = match bytes {
        [FORMAT, rest @ ..] => rest.get(..8).and_then(read_u64),
        _ => None,
    }
    .ok_or_else(|| corrupt("unknown entry format"))?;
    let mut answer: StoredAnswer = serde_json::from_slice(&bytes[HEADER_LEN..]).map_err(corrupt)?;
    answer.stored_at_ms = stored_at_ms;
    Ok(answer)
}

fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// `last use ‖ key`: sorts the eviction order by time, ties by key.
fn use_key(last_use_ms: u64, key: &CacheKey) -> [u8; 40] {
    let mut out = [0; 40];
    out[..8].copy_from_slice(&last_use_ms.to_be_bytes());
    out[8..].copy_from_slice(key.as_bytes());
    out
}

/// The cache's trees. Cheap to clone (the trees are handles).
#[derive(Clone)]
pub struct SledAnswerStore {
    entries: ::sled::Tree,
    by_use: ::sled::Tree,
    last_use: ::sled::Tree,
}

impl SledAnswerStore {
    pub(super) fn open(db: &::sled::Db) -> Result<SledAnswerStore, StorageError> {
        Ok(SledAnswerStore {
            entries: db.open_tree("cache_entries").map_err(backend)?,
            by_use: db.open_tree("cache_by_use").map_err(backend)?,
            last_use: db.open_tree("cache_last_use").map_err(backend)?,
        })
    }

    fn get_now(&self, key: &CacheKey) -> Result<Option<AnswerEntry>, StorageError> {
        let Some(bytes) = self.entries.get(key.as_bytes()).map_err(backend)? else {
            return Ok(None);
        };
        let answer = decode(&bytes)?;
        let last_use_ms = self
            .last_use
            .get(key.as_bytes())
            .map_err(backend)?
            .and_then(|v| read_u64(&v))
            // Not in the eviction order (it cannot happen; all three change together): as old
            // as it is.
            .unwrap_or(answer.stored_at_ms);
        Ok(Some(AnswerEntry {
            answer,
            last_use_ms,
        }))
    }

    fn put_now(
        &self,
        key: &CacheKey,
        answer: &StoredAnswer,
        now_ms: u64,
        max_size: u64,
    ) -> Result<PutOutcome, StorageError> {
        let entry = encode(answer)?;
        let size = entry.len() as u64 + KEY_LEN;
        if size > max_size {
            return Ok(PutOutcome::TooLarge { size });
        }
        self.by_use
            .insert(&use_key(now_ms, key)[..], &size.to_be_bytes())
            .map_err(backend)?;
        let old = self
            .last_use
            .insert(key.as_bytes(), &now_ms.to_be_bytes())
            .map_err(backend)?
            .and_then(|v| read_u64(&v));
        let mut replaced = None;
        if let Some(old) = old.filter(|old| *old != now_ms) {
            replaced = self
                .by_use
                .remove(&use_key(old, key)[..])
                .map_err(backend)?
                .and_then(|v| read_u64(&v));
        }
        self.entries
            .insert(key.as_bytes(), entry.as_slice())
            .map_err(backend)?;
        Ok(PutOutcome::Stored { size, replaced })
    }

    fn remove_now(&self, key: &CacheKey) -> Result<Option<u64>, StorageError> {
        self.entries.remove(key.as_bytes()).map_err(backend)?;
        let Some(old) = self
            .last_use
            .remove(key.as_bytes())
            .map_err(backend)?
            .and_then(|v| read_u64(&v))
        else {
            return Ok(None);
        };
        Ok(self
            .by_use
            .remove(&use_key(old, key)[..])
            .map_err(backend)?
            .and_then(|v| read_u64(&v)))
    }

    fn touch_now(&self, key: &CacheKey, now_ms: u64) -> Result<(), StorageError> {
        let Some(old) = self
            .last_use
            .get(key.as_bytes())
            .map_err(backend)?
            .and_then(|v| read_u64(&v))
        else {
            return Ok(());
        };
        if old >= now_ms {
            return Ok(());
        }
        let Some(size) = self.by_use.get(&use_key(old, key)[..]).map_err(backend)? else {
            return Ok(());
        };
        self.by_use
            .insert(&use_key(now_ms, key)[..], size)
            .map_err(backend)?;
        self.last_use
            .insert(key.as_bytes(), &now_ms.to_be_bytes())
            .map_err(backend)?;
        self.by_use
            .remove(&use_key(old, key)[..])
            .map_err(backend)?;
        Ok(())
    }

    fn oldest_now(&self) -> Result<Option<(u64, CacheKey)>, StorageError> {
        loop {
            let Some((k, _)) = self.by_use.first().map_err(backend)? else {
                return Ok(None);
            };
            let last_use = k.get(..8).and_then(read_u64);
            let key = k
                .get(8..)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .map(CacheKey::from_bytes);
            if let (Some(last_use), Some(key)) = (last_use, key) {
                let current = self
                    .last_use
                    .get(key.as_bytes())
                    .map_err(backend)?
                    .and_then(|v| read_u64(&v));
                if current == Some(last_use) {
                    return Ok(Some((last_use, key)));
                }
            }
            // Not ours to read, or left by a write a crash cut short: drop it rather than
            // stall eviction on it forever.
            self.by_use.remove(k).map_err(backend)?;
        }
    }

    /// From the eviction order: small values only.
    fn totals_now(&self) -> Result<AnswerTotals, StorageError> {
        let mut totals = AnswerTotals::default();
        for item in self.by_use.iter() {
            let (_, size) = item.map_err(backend)?;
            totals.bytes += read_u64(&size).unwrap_or(0);
            totals.entries += 1;
        }
        Ok(totals)
    }
}

impl AnswerStore for SledAnswerStore {
    fn get<'a>(
        &'a self,
        key: &'a CacheKey,
    ) -> BoxFuture<'a, Result<Option<AnswerEntry>, StorageError>> {
        ready(self.get_now(key)).boxed()
    }

    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        answer: &'a StoredAnswer,
        now_ms: u64,
        max_size: u64,
    ) -> BoxFuture<'a, Result<PutOutcome, StorageError>> {
        super::written(self.put_now(key, answer, now_ms, max_size))
    }

    fn touch<'a>(
        &'a self,
        key: &'a CacheKey,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        super::written(self.touch_now(key, now_ms))
    }

    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        super::written(self.remove_now(key))
    }

    fn oldest(&self) -> BoxFuture<'_, Result<Option<(u64, CacheKey)>, StorageError>> {
        ready(self.oldest_now()).boxed()
    }

    fn totals(&self) -> BoxFuture<'_, Result<AnswerTotals, StorageError>> {
        ready(self.totals_now()).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry as earlier releases wrote it, byte for byte, reads back.
    #[test]
    fn entries_of_earlier_releases_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled::reopen_db(dir.path());
        let store = SledAnswerStore::open(&db).unwrap();
        let key = CacheKey::from_bytes([3; 32]);
        let json = br#"{"completion":{"choices":[{"index":0,"message":{"content":"stored"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2}},"model":"m","provider":"p","provider_model":"pm","source_run_id":"01a2426c-5679-70fb-8842-ed1d4eda392f"}"#;
        let mut entry = vec![1];
        entry.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
        entry.extend_from_slice(json);
        let size = entry.len() as u64 + 32;
        store.entries.insert(key.as_bytes(), entry).unwrap();
        let last_use = 1_700_000_001_000u64.to_be_bytes();
        let mut by_use = last_use.to_vec();
        by_use.extend_from_slice(key.as_bytes());
        store.by_use.insert(by_use, &size.to_be_bytes()).unwrap();
        store.last_use.insert(key.as_bytes(), &last_use).unwrap();

        let read = store.get_now(&key).unwrap().unwrap();
        assert_eq!(read.answer.stored_at_ms, 1_700_000_000_000);
        assert_eq!(read.last_use_ms, 1_700_000_001_000);
        assert_eq!(
            read.answer.completion.choices[0].message.content.as_deref(),
            Some("stored")
        );
        assert_eq!(
            read.answer.source_run_id.to_string(),
            "01a2426c-5679-70fb-8842-ed1d4eda392f"
        );
        assert_eq!(
            store.totals_now().unwrap(),
            AnswerTotals {
                bytes: size,
                entries: 1
            }
        );
        assert_eq!(store.oldest_now().unwrap(), Some((1_700_000_001_000, key)));
        // Written again, it keeps the layout: format, store time, JSON; its key counted.
        let outcome = store
            .put_now(&key, &read.answer, 1_700_000_002_000, u64::MAX)
            .unwrap();
        let bytes = store.entries.get(key.as_bytes()).unwrap().unwrap();
        assert_eq!(bytes[0], 1);
        assert_eq!(bytes[1..9], 1_700_000_000_000u64.to_be_bytes());
        let again: StoredAnswer = serde_json::from_slice(&bytes[9..]).unwrap();
        assert_eq!(again.completion, read.answer.completion);
        let size_again = bytes.len() as u64 + 32;
        assert_eq!(
            outcome,
            PutOutcome::Stored {
                size: size_again,
                replaced: Some(size)
            }
        );
        assert_eq!(store.remove_now(&key).unwrap(), Some(size_again));
    }

    #[test]
    fn an_entry_of_another_format_is_corrupt_not_absent() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled::reopen_db(dir.path());
        let store = SledAnswerStore::open(&db).unwrap();
        let key = CacheKey::from_bytes([7; 32]);
        store
            .entries
            .insert(key.as_bytes(), &[2u8, 0, 0][..])
            .unwrap();
        assert!(matches!(
            store.get_now(&key),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
