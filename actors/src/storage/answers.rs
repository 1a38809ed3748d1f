//! Stored answers of the answer cache. The store keeps each entry with its last use and size;
//! the policy (what is fresh, what to evict, when a hit counts as a use) is the cache's.

use futures::future::BoxFuture;

use super::StorageError;
use crate::cache::{CacheKey, StoredAnswer};

/// An entry as a lookup reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerEntry {
    /// With its store time (`stored_at_ms`).
    pub answer: StoredAnswer,
    /// When the entry was last stored or marked used (unix milliseconds).
    pub last_use_ms: u64,
}

/// What [`AnswerStore::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored; `replaced` is the size of the entry it replaced under the same key.
    Stored { size: u64, replaced: Option<u64> },
    /// Not stored: the entry would be larger than allowed.
    TooLarge { size: u64 },
}

/// What the store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnswerTotals {
    pub bytes: u64,
    pub entries: u64,
}

/// Stored answers by cache key, with the order of their last use (the eviction order).
/// Each write changes an entry and its place in that order together.
pub trait AnswerStore: Send + Sync + 'static {
    /// The entry under `key`, whatever its age. An entry the store cannot read (another
    /// format, damage) is [`StorageError::Corrupt`]: the cache removes it.
    fn get<'a>(
        &'a self,
        key: &'a CacheKey,
    ) -> BoxFuture<'a, Result<Option<AnswerEntry>, StorageError>>;

    /// Stores `answer` (stored at its `stored_at_ms`) under `key`, used at `now_ms`, unless its
    /// size (as this store counts it: its bytes and its key's) exceeds `max_size`.
    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        answer: &'a StoredAnswer,
        now_ms: u64,
        max_size: u64,
    ) -> BoxFuture<'a, Result<PutOutcome, StorageError>>;

    /// Marks the entry under `key` used at `now_ms`, if it exists and was last used before.
    fn touch<'a>(
        &'a self,
        key: &'a CacheKey,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Removes the entry under `key`; its size, if it was there.
    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<u64>, StorageError>>;

    /// The least recently used entry: its last use and key.
    fn oldest(&self) -> BoxFuture<'_, Result<Option<(u64, CacheKey)>, StorageError>>;

    /// Bytes and number of the stored entries.
    fn totals(&self) -> BoxFuture<'_, Result<AnswerTotals, StorageError>>;
}
