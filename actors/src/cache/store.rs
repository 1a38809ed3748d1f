//! Stored answers on sled, bounded by a TTL and a byte budget.
//!
//! Three trees in the run store's database (so they share its file and its periodic flush):
//! `cache_entries` (key → entry), `cache_by_use` (last use ‖ key → entry size, the eviction
//! order, oldest first) and `cache_last_use` (key → last use, to find an entry's place in that
//! order). The three change together in one transaction, so a crash never leaves an entry the
//! eviction order does not know.
//!
//! Reads come from any thread, straight from sled. Writes are made by one [`CacheWriter`] actor
//! on its own thread, which also keeps the byte count: request tasks only encode the entry and
//! hand it over.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionResult, TransactionError};
use sled::Transactional;
use uuid::Uuid;

use super::{CacheKey, WallClock};
use crate::answer::Answer;
use crate::completion::Completion;
use crate::recorder::metrics::Metrics;

/// Version of the entry layout; an entry of another version reads as absent.
const FORMAT: u8 = 1;
/// The format byte, then the store time (unix milliseconds, big endian), then the JSON answer.
const HEADER_LEN: usize = 9;
/// Bytes of a key, counted in an entry's size.
const KEY_LEN: u64 = 32;
/// A hit moves its entry to the young end of the eviction order at most this often, so a hot
/// key does not turn every hit into a write.
pub(super) const TOUCH_EVERY_MS: u64 = 1_000;
const WRITER_MAILBOX: usize = 4096;

/// A successful, validated answer as stored: what a hit replays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAnswer {
    pub completion: Completion,
    /// Catalog id of the model that answered.
    pub model: String,
    pub provider: String,
    pub provider_model: String,
    /// The run that called the provider; a hit's run links to it.
    pub source_run_id: Uuid,
    /// When it was stored (unix milliseconds); kept in the entry header.
    #[serde(skip)]
    pub stored_at_ms: u64,
}

impl StoredAnswer {
    /// The part of an answer worth keeping (attempts and cost belong to the source run).
    pub fn from_answer(answer: &Answer) -> StoredAnswer {
        StoredAnswer {
            completion: answer.completion.clone(),
            model: answer.model.clone(),
            provider: answer.provider.clone(),
            provider_model: answer.provider_model.clone(),
            source_run_id: answer.run_id,
            stored_at_ms: 0,
        }
    }

    /// The answer a hit returns: no attempts, nothing paid, and `run_id` naming the source run.
    pub fn into_answer(self) -> Answer {
        Answer {
            completion: self.completion,
            model: self.model,
            provider: self.provider,
            provider_model: self.provider_model,
            cost_usd: 0.0,
            attempts: Vec::new(),
            run_id: self.source_run_id,
        }
    }

    pub(super) fn encode(&self, stored_at_ms: u64) -> Result<Vec<u8>, String> {
        let mut bytes = Vec::with_capacity(HEADER_LEN + 512);
        bytes.push(FORMAT);
        bytes.extend_from_slice(&stored_at_ms.to_be_bytes());
        serde_json::to_writer(&mut bytes, self).map_err(|e| e.to_string())?;
        Ok(bytes)
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<StoredAnswer, String> {
        let stored_at_ms = stored_at(bytes).ok_or("unknown cache entry format")?;
        let mut answer: StoredAnswer =
            serde_json::from_slice(&bytes[HEADER_LEN..]).map_err(|e| e.to_string())?;
        answer.stored_at_ms = stored_at_ms;
        Ok(answer)
    }
}

/// The store time of an encoded entry, if it has the current format.
fn stored_at(entry: &[u8]) -> Option<u64> {
    match entry {
        [FORMAT, rest @ ..] => read_u64(rest.get(..8)?),
        _ => None,
    }
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

fn tx_error(e: TransactionError<()>) -> String {
    match e {
        TransactionError::Storage(e) => e.to_string(),
        TransactionError::Abort(()) => "transaction aborted".to_string(),
    }
}

/// Handle to the stored answers. Cheap to clone; reads from any thread.
#[derive(Clone)]
pub struct CacheStore {
    entries: sled::Tree,
    by_use: sled::Tree,
    last_use: sled::Tree,
}

impl CacheStore {
    /// Opens (or creates) the cache trees in `db`.
    pub fn open(db: &sled::Db) -> sled::Result<CacheStore> {
        Ok(CacheStore {
            entries: db.open_tree("cache_entries")?,
            by_use: db.open_tree("cache_by_use")?,
            last_use: db.open_tree("cache_last_use")?,
        })
    }

    /// The stored answer under `key`, whatever its age.
    pub fn get(&self, key: &CacheKey) -> Result<Option<StoredAnswer>, String> {
        match self
            .entries
            .get(key.as_bytes())
            .map_err(|e| e.to_string())?
        {
            Some(bytes) => StoredAnswer::decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// When the entry under `key` was last stored or hit.
    pub fn last_use_ms(&self, key: &CacheKey) -> Result<Option<u64>, String> {
        let value = self
            .last_use
            .get(key.as_bytes())
            .map_err(|e| e.to_string())?;
        Ok(value.and_then(|v| read_u64(&v)))
    }

    /// Bytes and number of the stored entries, from the eviction order (small values only).
    fn totals(&self) -> Result<(u64, u64), String> {
        let (mut bytes, mut entries) = (0, 0);
        for item in self.by_use.iter() {
            let (_, size) = item.map_err(|e| e.to_string())?;
            bytes += read_u64(&size).unwrap_or(0);
            entries += 1;
        }
        Ok((bytes, entries))
    }

    /// Stores `entry` under `key` as used at `now_ms`; returns the size of the entry it
    /// replaced.
    fn insert(&self, key: &CacheKey, entry: &[u8], now_ms: u64) -> Result<Option<u64>, String> {
        let size = entry.len() as u64 + KEY_LEN;
        (&self.entries, &self.by_use, &self.last_use)
            .transaction(
                |(entries, by_use, last_use)| -> ConflictableTransactionResult<_> {
                    let mut replaced = None;
                    if let Some(old) = last_use.get(key.as_bytes())?.and_then(|v| read_u64(&v)) {
                        replaced = by_use
                            .remove(&use_key(old, key)[..])?
                            .and_then(|v| read_u64(&v));
                    }
                    entries.insert(key.as_bytes(), entry)?;
                    by_use.insert(&use_key(now_ms, key)[..], &size.to_be_bytes())?;
                    last_use.insert(key.as_bytes(), &now_ms.to_be_bytes())?;
                    Ok(replaced)
                },
            )
            .map_err(tx_error)
    }

    /// Removes the entry under `key`; returns its size if it was there.
    fn remove(&self, key: &CacheKey) -> Result<Option<u64>, String> {
        (&self.entries, &self.by_use, &self.last_use)
            .transaction(
                |(entries, by_use, last_use)| -> ConflictableTransactionResult<_> {
                    let mut size = None;
                    if let Some(old) = last_use.remove(key.as_bytes())?.and_then(|v| read_u64(&v)) {
                        size = by_use
                            .remove(&use_key(old, key)[..])?
                            .and_then(|v| read_u64(&v));
                    }
                    entries.remove(key.as_bytes())?;
                    Ok(size)
                },
            )
            .map_err(tx_error)
    }

    /// Moves the entry under `key` to the young end of the eviction order.
    fn touch(&self, key: &CacheKey, now_ms: u64) -> Result<(), String> {
        (&self.by_use, &self.last_use)
            .transaction(|(by_use, last_use)| -> ConflictableTransactionResult<_> {
                let Some(old) = last_use.get(key.as_bytes())?.and_then(|v| read_u64(&v)) else {
                    return Ok(());
                };
                if old >= now_ms {
                    return Ok(());
                }
                if let Some(size) = by_use.remove(&use_key(old, key)[..])? {
                    by_use.insert(&use_key(now_ms, key)[..], size)?;
                    last_use.insert(key.as_bytes(), &now_ms.to_be_bytes())?;
                }
                Ok(())
            })
            .map_err(tx_error)
    }

    /// The least recently used entry: its last use and key.
    fn oldest(&self) -> Result<Option<(u64, CacheKey)>, String> {
        loop {
            let Some((k, _)) = self.by_use.first().map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let last_use = k.get(..8).and_then(read_u64);
            let key = k
                .get(8..)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .map(CacheKey);
            if let (Some(last_use), Some(key)) = (last_use, key) {
                return Ok(Some((last_use, key)));
            }
            // Not ours to read: drop it rather than stall eviction on it forever.
            self.by_use.remove(k).map_err(|e| e.to_string())?;
        }
    }

    /// The store time of the entry under `key`; `Some(None)` when it cannot be read.
    fn stored_at_ms(&self, key: &CacheKey) -> Result<Option<Option<u64>>, String> {
        let entry = self
            .entries
            .get(key.as_bytes())
            .map_err(|e| e.to_string())?;
        Ok(entry.map(|bytes| stored_at(&bytes)))
    }
}

/// Store this encoded entry (see [`StoredAnswer::encode`]).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Put {
    pub key: CacheKey,
    pub entry: Arc<Vec<u8>>,
}

/// Answers handed to the writer and not yet in the store, so that a lookup finds an answer
/// as soon as it is stored, not once the writer has run.
pub(super) type Unwritten = Arc<dashmap::DashMap<CacheKey, Arc<Vec<u8>>>>;

/// The entry was hit: it is young again.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Touch(pub CacheKey);

/// A lookup found the entry expired or unreadable: remove it, if it still is.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Expire(pub CacheKey);

/// Answers once every write sent before it is applied.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Settle;

/// The one writer of the stored answers: applies stores, hits and removals, and keeps the
/// store within its TTL and byte budget. Runs on its own thread.
pub(super) struct CacheWriter {
    store: CacheStore,
    unwritten: Unwritten,
    ttl: Duration,
    max_bytes: u64,
    clock: Arc<dyn WallClock>,
    metrics: Metrics,
    bytes: u64,
    entries: u64,
}

impl CacheWriter {
    /// Counts what the store holds, then removes what is expired or over the budget (a
    /// restart with a smaller budget shrinks the store).
    pub(super) fn new(
        store: CacheStore,
        ttl: Duration,
        max_bytes: u64,
        clock: Arc<dyn WallClock>,
        metrics: Metrics,
    ) -> Result<CacheWriter, String> {
        let (bytes, entries) = store.totals()?;
        let mut writer = CacheWriter {
            store,
            unwritten: Unwritten::default(),
            ttl,
            max_bytes,
            clock,
            metrics,
            bytes,
            entries,
        };
        writer.sweep();
        writer.evict_to_budget();
        writer.publish();
        Ok(writer)
    }

    /// Where the answers on their way to this writer wait.
    pub(super) fn unwritten(&self) -> Unwritten {
        self.unwritten.clone()
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis().try_into().unwrap_or(u64::MAX)
    }

    fn publish(&self) {
        self.metrics
            .cache_stored_bytes
            .set(self.bytes.try_into().unwrap_or(i64::MAX));
        self.metrics
            .cache_entries
            .set(self.entries.try_into().unwrap_or(i64::MAX));
    }

    fn removed(&mut self, size: Option<u64>, reason: &str) {
        if let Some(size) = size {
            self.bytes = self.bytes.saturating_sub(size);
            self.entries = self.entries.saturating_sub(1);
            self.metrics
                .cache_evictions
                .with_label_values(&[reason])
                .inc();
        }
    }

    pub(super) fn put(&mut self, key: &CacheKey, entry: &[u8]) {
        let size = entry.len() as u64 + KEY_LEN;
        if size > self.max_bytes {
            tracing::debug!(size, max = self.max_bytes, "answer larger than the cache");
            return;
        }
        match self.store.insert(key, entry, self.clock.now_ms()) {
            Ok(replaced) => {
                match replaced {
                    Some(old) => self.bytes = self.bytes.saturating_sub(old),
                    None => self.entries += 1,
                }
                self.bytes += size;
                self.evict_to_budget();
            }
            Err(e) => tracing::warn!(error = %e, "cache: cannot store an answer"),
        }
        self.publish();
    }

    pub(super) fn touch(&mut self, key: &CacheKey) {
        if let Err(e) = self.store.touch(key, self.clock.now_ms()) {
            tracing::warn!(error = %e, "cache: cannot record a hit");
        }
    }

    pub(super) fn expire(&mut self, key: &CacheKey) {
        let now = self.clock.now_ms();
        let stale = match self.store.stored_at_ms(key) {
            Ok(Some(Some(at))) => now.saturating_sub(at) >= self.ttl_ms(),
            Ok(Some(None)) => true,
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "cache: cannot read an entry");
                false
            }
        };
        if stale {
            match self.store.remove(key) {
                Ok(size) => self.removed(size, "expired"),
                Err(e) => tracing::warn!(error = %e, "cache: cannot remove an entry"),
            }
            self.publish();
        }
    }

    /// Removes the entries unused for longer than the TTL: they are surely expired, since an
    /// entry's last use is never before its store time. Expired entries hit more recently go
    /// when a lookup finds them, or by size.
    pub(super) fn sweep(&mut self) {
        let now = self.clock.now_ms();
        let ttl = self.ttl_ms();
        loop {
            match self.store.oldest() {
                Ok(Some((last_use, key))) if now.saturating_sub(last_use) >= ttl => {
                    match self.store.remove(&key) {
                        Ok(size) => self.removed(size, "expired"),
                        Err(e) => {
                            tracing::warn!(error = %e, "cache: cannot remove an entry");
                            break;
                        }
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cache: cannot read the eviction order");
                    break;
                }
            }
        }
        self.publish();
    }

    /// Removes the least recently used entries until the store fits its budget.
    fn evict_to_budget(&mut self) {
        while self.bytes > self.max_bytes {
            let removed = self.store.oldest().and_then(|oldest| match oldest {
                Some((_, key)) => self.store.remove(&key),
                None => Ok(None),
            });
            match removed {
                Ok(Some(size)) => self.removed(Some(size), "size"),
                Ok(None) => {
                    // Nothing left, yet over budget: the count drifted (a bug); recount.
                    (self.bytes, self.entries) = self.store.totals().unwrap_or((0, 0));
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cache: cannot evict");
                    break;
                }
            }
        }
    }

    #[cfg(test)]
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Actor for CacheWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(WRITER_MAILBOX);
        let every = self
            .ttl
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        ctx.run_interval(every, |writer, _| writer.sweep());
    }
}

impl Handler<Put> for CacheWriter {
    type Result = ();

    fn handle(&mut self, Put { key, entry }: Put, _: &mut Self::Context) {
        self.put(&key, &entry);
        // Unless a newer answer for the key is on its way.
        self.unwritten
            .remove_if(&key, |_, queued| Arc::ptr_eq(queued, &entry));
    }
}

impl Handler<Touch> for CacheWriter {
    type Result = ();

    fn handle(&mut self, Touch(key): Touch, _: &mut Self::Context) {
        self.touch(&key);
    }
}

impl Handler<Expire> for CacheWriter {
    type Result = ();

    fn handle(&mut self, Expire(key): Expire, _: &mut Self::Context) {
        self.expire(&key);
    }
}

impl Handler<Settle> for CacheWriter {
    type Result = ();

    fn handle(&mut self, _: Settle, _: &mut Self::Context) {}
}
