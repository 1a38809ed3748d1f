//! Stored answers, bounded by a TTL and a byte budget: what an entry is, and the writer that
//! keeps the store within its bounds.
//!
//! The entries live behind the [`AnswerStore`] trait, with their last use (the eviction order)
//! and size. Reads come from any request's task, straight from the store. Writes are made by
//! one [`CacheWriter`] actor on its own thread, which also keeps the byte count and decides
//! what to evict: request tasks only hand the answer over.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::future::{BoxFuture, FutureExt, LocalBoxFuture};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{CacheKey, WallClock};
use crate::answer::Answer;
use crate::completion::Completion;
use crate::recorder::metrics::Metrics;
use crate::storage::{AnswerStore, PutOutcome, StorageError};

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
    /// When it was stored (unix milliseconds); the store keeps it beside the answer.
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
}

/// Store this answer (its `stored_at_ms` set).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Put {
    pub key: CacheKey,
    pub answer: Arc<StoredAnswer>,
}

/// Answers handed to the writer and not yet in the store, so that a lookup finds an answer
/// as soon as it is stored, not once the writer has run.
pub(super) type Unwritten = Arc<dashmap::DashMap<CacheKey, Arc<StoredAnswer>>>;

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

/// What the writer knows of the store: the store itself, its bounds and what it holds. Its
/// operations are async (the store may be across a network); the writer runs one at a time.
pub(super) struct Keeper {
    store: Arc<dyn AnswerStore>,
    ttl_ms: u64,
    max_bytes: u64,
    clock: Arc<dyn WallClock>,
    metrics: Metrics,
    bytes: u64,
    entries: u64,
}

impl Keeper {
    /// Counts what the store holds, then removes what is expired or over the budget (a
    /// restart with a smaller budget shrinks the store).
    pub(super) async fn open(
        store: Arc<dyn AnswerStore>,
        ttl: Duration,
        max_bytes: u64,
        clock: Arc<dyn WallClock>,
        metrics: Metrics,
    ) -> Result<Keeper, StorageError> {
        let totals = store.totals().await?;
        let mut keeper = Keeper {
            store,
            ttl_ms: ttl.as_millis().try_into().unwrap_or(u64::MAX),
            max_bytes,
            clock,
            metrics,
            bytes: totals.bytes,
            entries: totals.entries,
        };
        keeper.sweep().await;
        keeper.evict_to_budget().await;
        keeper.publish();
        Ok(keeper)
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

    /// Stores `answer` unless it is larger than the whole budget, then evicts to the budget.
    pub(super) async fn put(&mut self, key: &CacheKey, answer: &StoredAnswer) {
        let now = self.clock.now_ms();
        match self.store.put(key, answer, now, self.max_bytes).await {
            Ok(PutOutcome::Stored { size, replaced }) => {
                match replaced {
                    Some(old) => self.bytes = self.bytes.saturating_sub(old),
                    None => self.entries += 1,
                }
                self.bytes += size;
                self.evict_to_budget().await;
            }
            Ok(PutOutcome::TooLarge { size }) => {
                tracing::debug!(size, max = self.max_bytes, "answer larger than the cache");
            }
            Err(e) => tracing::warn!(error = %e, "cache: cannot store an answer"),
        }
        self.publish();
    }

    pub(super) async fn touch(&mut self, key: &CacheKey) {
        if let Err(e) = self.store.touch(key, self.clock.now_ms()).await {
            tracing::warn!(error = %e, "cache: cannot record a hit");
        }
    }

    /// Removes the entry under `key` if it is expired or unreadable.
    pub(super) async fn expire(&mut self, key: &CacheKey) {
        let now = self.clock.now_ms();
        let stale = match self.store.get(key).await {
            Ok(Some(entry)) => now.saturating_sub(entry.answer.stored_at_ms) >= self.ttl_ms,
            Ok(None) => false,
            Err(StorageError::Corrupt { .. }) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cache: cannot read an entry");
                false
            }
        };
        if stale {
            match self.store.remove(key).await {
                Ok(size) => self.removed(size, "expired"),
                Err(e) => tracing::warn!(error = %e, "cache: cannot remove an entry"),
            }
            self.publish();
        }
    }

    /// Removes the entries unused for longer than the TTL: they are surely expired, since an
    /// entry's last use is never before its store time. Expired entries hit more recently go
    /// when a lookup finds them, or by size.
    pub(super) async fn sweep(&mut self) {
        let now = self.clock.now_ms();
        loop {
            match self.store.oldest().await {
                Ok(Some((last_use, key))) if now.saturating_sub(last_use) >= self.ttl_ms => {
                    match self.store.remove(&key).await {
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
    async fn evict_to_budget(&mut self) {
        while self.bytes > self.max_bytes {
            let removed = match self.store.oldest().await {
                Ok(Some((_, key))) => self.store.remove(&key).await,
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            match removed {
                Ok(Some(size)) => self.removed(Some(size), "size"),
                Ok(None) => {
                    // Nothing left, yet over budget: the count drifted (a bug); recount.
                    let totals = self.store.totals().await.unwrap_or_default();
                    (self.bytes, self.entries) = (totals.bytes, totals.entries);
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

/// The one writer of the stored answers: applies stores, hits and removals, one at a time and
/// in order, through its [`Keeper`]. Runs on its own thread.
pub(super) struct CacheWriter {
    /// `None` while an operation has it; the mailbox waits for the operation meanwhile.
    keeper: Option<Keeper>,
    /// The keeper still being opened (a store that did not answer at once).
    opening: Option<BoxFuture<'static, Result<Keeper, StorageError>>>,
    unwritten: Unwritten,
    ttl: Duration,
}

impl CacheWriter {
    /// A writer over the keeper `opening` makes. When the store answers at once (an embedded one), the
    /// keeper is opened here and a store that cannot be read is an error now; otherwise the
    /// writer finishes opening it before it takes its first message.
    pub(super) fn new(
        mut opening: BoxFuture<'static, Result<Keeper, StorageError>>,
        ttl: Duration,
    ) -> Result<CacheWriter, StorageError> {
        let (keeper, opening) = match (&mut opening).now_or_never() {
            Some(keeper) => (Some(keeper?), None),
            None => (None, Some(opening)),
        };
        Ok(CacheWriter {
            keeper,
            opening,
            unwritten: Unwritten::default(),
            ttl,
        })
    }

    /// Where the answers on their way to this writer wait.
    pub(super) fn unwritten(&self) -> Unwritten {
        self.unwritten.clone()
    }

    /// Runs `operation` on the keeper: at once when the store answers at once, else with
    /// the mailbox waiting until it is done, so operations apply in order.
    fn run(
        &mut self,
        ctx: &mut Context<Self>,
        operation: impl FnOnce(Keeper) -> LocalBoxFuture<'static, Keeper>,
    ) {
        let Some(keeper) = self.keeper.take() else {
            tracing::warn!("cache: the answer store could not be opened; nothing is stored");
            return;
        };
        let mut work = operation(keeper);
        match (&mut work).now_or_never() {
            Some(keeper) => self.keeper = Some(keeper),
            None => ctx.wait(
                work.into_actor(self)
                    .map(|keeper, writer, _| writer.keeper = Some(keeper)),
            ),
        }
    }
}

impl Actor for CacheWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(WRITER_MAILBOX);
        if let Some(opening) = self.opening.take() {
            ctx.wait(
                opening
                    .into_actor(self)
                    .map(|opened, writer, _| match opened {
                        Ok(keeper) => writer.keeper = Some(keeper),
                        Err(e) => {
                            tracing::error!(error = %e, "cache: cannot read the answer store")
                        }
                    }),
            );
        }
        let every = self
            .ttl
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        ctx.run_interval(every, |writer, ctx| {
            writer.run(ctx, |mut keeper| {
                async move {
                    keeper.sweep().await;
                    keeper
                }
                .boxed_local()
            })
        });
    }
}

impl Handler<Put> for CacheWriter {
    type Result = ();

    fn handle(&mut self, Put { key, answer }: Put, ctx: &mut Self::Context) {
        let unwritten = self.unwritten.clone();
        self.run(ctx, move |mut keeper| {
            async move {
                keeper.put(&key, &answer).await;
                // Unless a newer answer for the key is on its way.
                unwritten.remove_if(&key, |_, queued| Arc::ptr_eq(queued, &answer));
                keeper
            }
            .boxed_local()
        });
    }
}

impl Handler<Touch> for CacheWriter {
    type Result = ();

    fn handle(&mut self, Touch(key): Touch, ctx: &mut Self::Context) {
        self.run(ctx, move |mut keeper| {
            async move {
                keeper.touch(&key).await;
                keeper
            }
            .boxed_local()
        });
    }
}

impl Handler<Expire> for CacheWriter {
    type Result = ();

    fn handle(&mut self, Expire(key): Expire, ctx: &mut Self::Context) {
        self.run(ctx, move |mut keeper| {
            async move {
                keeper.expire(&key).await;
                keeper
            }
            .boxed_local()
        });
    }
}

impl Handler<Settle> for CacheWriter {
    type Result = ();

    fn handle(&mut self, _: Settle, _: &mut Self::Context) {}
}
