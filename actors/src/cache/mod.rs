//! The answer cache: identical requests share one upstream call while it is in flight
//! ([`flight`]), and successful answers are stored for later identical requests ([`store`]).
//!
//! Whether a request takes part is `use_cache` ([`is_cacheable`]); what makes two requests
//! identical is [`CacheKey`]. The in-flight table is split over shard actors, so no single
//! mailbox sees every cacheable request; a request that is not cacheable never touches them.
//! Stored answers live in an [`AnswerStore`]: lookups read it straight from the request's
//! task, and one writer actor on its own thread applies stores, hits and evictions.

mod flight;
pub mod replay;
mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use sha2::{Digest, Sha256};

pub use flight::{
    FollowedStream, Join, Leadership, Shared, StreamFollower, StreamJoin, StreamLeadership,
    StreamSource,
};
pub use replay::replay_stream;
pub use store::StoredAnswer;

use crate::answer::Answer;
use crate::completion::Completion;
use crate::error::GatewayError;
use crate::recorder::metrics::Metrics;
use crate::storage::AnswerStore;
use crate::wire::{ChatRequest, UseCache};
use flight::CacheShard;
use futures::FutureExt;
use store::{CacheWriter, Expire, Keeper, Put, Settle, Touch, Unwritten, TOUCH_EVERY_MS};

/// A digest of everything that shapes the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key without a version: see [`CacheKey::with_version`].
    pub fn new(tenant: &str, agent: &str, request: &ChatRequest) -> CacheKey {
        CacheKey::with_version(tenant, agent, None, request)
    }

    /// Builds the key from the tenant, the agent, the version id (which names the resolved
    /// model and, for deployments, the deployed prompt) and the request. The request is
    /// destructured field by field, so adding a field to [`ChatRequest`] does not compile until
    /// it is either part of the key or ignored here. Messages and their `input` variables
    /// together determine the rendered messages.
    pub fn with_version(
        tenant: &str,
        agent: &str,
        version_id: Option<&str>,
        request: &ChatRequest,
    ) -> CacheKey {
        let ChatRequest {
            model,
            messages,
            // Streamed or not, the answer is the same: a stored answer serves both.
            stream: _,
            stream_options: _,
            temperature,
            top_p,
            max_tokens,
            max_completion_tokens,
            n,
            stop,
            seed,
            presence_penalty,
            frequency_penalty,
            logit_bias,
            logprobs,
            top_logprobs,
            user: _,
            tools,
            tool_choice,
            parallel_tool_calls,
            response_format,
            reasoning_effort,
            input,
            use_cache: _,
            use_fallback,
            provider,
            agent_id: _,
            environment,
            schema_id,
            metadata: _,
            reasoning,
        } = request;
        let shaping = serde_json::json!([
            // Bumped when the key's makeup changes, so stored entries of the old makeup are
            // never served for the new one.
            "flowgate-cache-key/1",
            tenant,
            agent,
            version_id,
            model,
            messages,
            temperature,
            top_p,
            max_tokens,
            max_completion_tokens,
            n,
            stop,
            seed,
            presence_penalty,
            frequency_penalty,
            logit_bias,
            logprobs,
            top_logprobs,
            tools,
            tool_choice,
            parallel_tool_calls,
            response_format,
            reasoning_effort,
            input,
            use_fallback,
            provider,
            environment,
            schema_id,
            reasoning,
        ]);
        let mut hasher = Sha256::new();
        hasher.update(shaping.to_string().as_bytes());
        CacheKey(hasher.finalize().into())
    }

    /// The digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key of this digest, as a store reads it back.
    pub fn from_bytes(digest: [u8; 32]) -> CacheKey {
        CacheKey(digest)
    }

    fn shard(&self, shards: usize) -> usize {
        usize::from(self.0[0]) % shards.max(1)
    }
}

/// Whether `use_cache` lets this request share an answer, in flight or stored: `always`,
/// never with `never`, and with `auto` only when temperature is 0 and there are no tools.
/// Streaming requests take part like the others.
pub fn is_cacheable(request: &ChatRequest) -> bool {
    match request.use_cache.unwrap_or_default() {
        UseCache::Never => false,
        UseCache::Always => true,
        UseCache::Auto => {
            request.temperature == Some(0.0)
                && request.tools.as_ref().is_none_or(|tools| tools.is_empty())
        }
    }
}

/// Wall-clock time for entry ages: it must survive restarts, so not `Instant`.
pub trait WallClock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemWallClock;

impl WallClock for SystemWallClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis().try_into().unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// How the cache is run (the `[cache]` config section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Shards of the in-flight table.
    pub shards: usize,
    /// How long a stored answer is served. Zero: answers are not stored (in-flight
    /// coalescing still applies).
    pub ttl: Duration,
    /// Bound on the stored bytes; the least recently used answers are evicted first. Zero:
    /// answers are not stored.
    pub max_bytes: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            shards: 8,
            ttl: Duration::from_secs(24 * 3600),
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

impl CacheSettings {
    fn stores(&self) -> bool {
        !self.ttl.is_zero() && self.max_bytes > 0
    }
}

const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The cache: the in-flight shards and the stored answers. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    shards: Arc<Vec<Addr<CacheShard>>>,
    /// `None`: coalescing only.
    stored: Option<Arc<Stored>>,
}

struct Stored {
    store: Arc<dyn AnswerStore>,
    unwritten: Unwritten,
    writer: Addr<CacheWriter>,
    ttl_ms: u64,
    clock: Arc<dyn WallClock>,
    metrics: Metrics,
}

fn start_shards(shards: usize) -> Arc<Vec<Addr<CacheShard>>> {
    Arc::new(
        (0..shards.max(1))
            .map(|_| {
                CacheShard::start_in_arbiter(&Arbiter::new().handle(), |_| CacheShard::default())
            })
            .collect(),
    )
}

impl Cache {
    /// Starts `shards` shard actors, each on its own arbiter, with no stored answers (in-flight
    /// coalescing only). Must run inside an actix system.
    pub fn start(shards: usize) -> Cache {
        Cache {
            shards: start_shards(shards),
            stored: None,
        }
    }

    /// Starts the shards and the writer of the stored answers, kept in `answers`. Expired
    /// entries and entries over the budget are removed first. Must run inside an actix system.
    pub fn open(
        answers: Arc<dyn AnswerStore>,
        settings: CacheSettings,
        metrics: &Metrics,
    ) -> Result<Cache, String> {
        Self::open_with_clock(answers, settings, metrics, Arc::new(SystemWallClock))
    }

    /// [`Cache::open`] with the clock that ages entries (tests move it by hand).
    pub fn open_with_clock(
        answers: Arc<dyn AnswerStore>,
        settings: CacheSettings,
        metrics: &Metrics,
        clock: Arc<dyn WallClock>,
    ) -> Result<Cache, String> {
        if !settings.stores() {
            return Ok(Cache::start(settings.shards));
        }
        let opening = Keeper::open(
            answers.clone(),
            settings.ttl,
            settings.max_bytes,
            clock.clone(),
            metrics.clone(),
        )
        .boxed();
        let writer = CacheWriter::new(opening, settings.ttl)
            .map_err(|e| format!("cannot read the answer cache: {e}"))?;
        let unwritten = writer.unwritten();
        let writer = CacheWriter::start_in_arbiter(&Arbiter::new().handle(), move |_| writer);
        Ok(Cache {
            shards: start_shards(settings.shards),
            stored: Some(Arc::new(Stored {
                store: answers,
                unwritten,
                writer,
                ttl_ms: settings.ttl.as_millis().try_into().unwrap_or(u64::MAX),
                clock,
                metrics: metrics.clone(),
            })),
        })
    }

    /// The stored answer for `key`, if there is one younger than the TTL. Counts a hit or a
    /// miss. Reads the store from the caller's task; never waits on an actor.
    pub async fn lookup(&self, key: &CacheKey) -> Option<StoredAnswer> {
        let stored = self.stored.as_ref()?;
        let now = stored.clock.now_ms();
        let found = match stored.store.get(key).await {
            Ok(Some(entry)) => Some((entry.answer, entry.last_use_ms)),
            // Not written yet: as if never used, so that a hit marks it used.
            Ok(None) => stored
                .unwritten
                .get(key)
                .map(|answer| (StoredAnswer::clone(&answer), 0)),
            Err(e) => {
                tracing::warn!(error = %e, "cache: unreadable entry");
                let _ = stored.writer.try_send(Expire(*key));
                None
            }
        };
        match found {
            Some((answer, last_use)) if now.saturating_sub(answer.stored_at_ms) < stored.ttl_ms => {
                stored.metrics.cache_hits.inc();
                if now.saturating_sub(last_use) >= TOUCH_EVERY_MS {
                    // A lost touch only makes the entry look older than it is.
                    let _ = stored.writer.try_send(Touch(*key));
                }
                Some(answer)
            }
            Some(_) => {
                stored.metrics.cache_misses.inc();
                let _ = stored.writer.try_send(Expire(*key));
                None
            }
            None => {
                stored.metrics.cache_misses.inc();
                None
            }
        }
    }

    /// Stores a successful, validated answer under `key`, without waiting: the entry is
    /// handed to the cache's writer, which stores it. A no-op when answers are not stored.
    pub fn store(&self, key: CacheKey, answer: &Answer) {
        self.store_answer(key, StoredAnswer::from_answer(answer));
    }

    /// Stores a streamed answer that ended well (and, with a schema, validated): the
    /// accumulated `completion` of the stream `source` opened.
    pub fn store_streamed(&self, key: CacheKey, source: &StreamSource, completion: Completion) {
        self.store_answer(
            key,
            StoredAnswer {
                completion,
                model: source.model.clone(),
                provider: source.provider.clone(),
                provider_model: source.provider_model.clone(),
                source_run_id: source.run_id,
                stored_at_ms: 0,
            },
        );
    }

    fn store_answer(&self, key: CacheKey, mut answer: StoredAnswer) {
        let Some(stored) = &self.stored else {
            return;
        };
        if answer.completion.choices.is_empty() {
            return;
        }
        answer.stored_at_ms = stored.clock.now_ms();
        let answer = Arc::new(answer);
        stored.unwritten.insert(key, answer.clone());
        if stored.writer.try_send(Put { key, answer }).is_err() {
            stored.unwritten.remove(&key);
            stored.metrics.cache_writes_dropped.inc();
        }
    }

    /// Waits until every store sent so far is written (tests, and shutdown before the final
    /// flush of the database).
    pub async fn settle(&self) -> Result<(), GatewayError> {
        let Some(stored) = &self.stored else {
            return Ok(());
        };
        stored
            .writer
            .send(Settle)
            .timeout(SETTLE_TIMEOUT)
            .await
            .map_err(|e| GatewayError::internal(format!("cache writer did not answer: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::completion::{AssistantMessage, Choice, FinishReason, Usage};
    use uuid::Uuid;

    fn request(body: serde_json::Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn key_ignores_metadata_but_not_messages() {
        let a = request(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "a"}]}),
        );
        let mut b = a.clone();
        b.metadata = Some(serde_json::Map::new());
        b.stream = Some(true);
        assert_eq!(CacheKey::new("t", "x", &a), CacheKey::new("t", "x", &b));
        let c = request(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "b"}]}),
        );
        assert_ne!(CacheKey::new("t", "x", &a), CacheKey::new("t", "x", &c));
        // Tenants, agents and versions never share a key.
        assert_ne!(CacheKey::new("t", "x", &a), CacheKey::new("u", "x", &a));
        assert_ne!(CacheKey::new("t", "x", &a), CacheKey::new("t", "y", &a));
        assert_ne!(
            CacheKey::with_version("t", "x", Some("v1"), &a),
            CacheKey::with_version("t", "x", Some("v2"), &a)
        );
        // The parts are delimited: moving a character between them changes the key.
        assert_ne!(CacheKey::new("ab", "c", &a), CacheKey::new("a", "bc", &a));
        // Input variables shape the rendered messages.
        let mut d = a.clone();
        d.input = Some(serde_json::Map::from_iter([("x".into(), 1.into())]));
        assert_ne!(CacheKey::new("t", "x", &a), CacheKey::new("t", "x", &d));
    }

    #[test]
    fn auto_caches_only_deterministic_requests() {
        let mut r = request(serde_json::json!({"model": "m", "messages": []}));
        assert!(!is_cacheable(&r));
        r.temperature = Some(0.0);
        assert!(is_cacheable(&r));
        r.stream = Some(true);
        assert!(is_cacheable(&r));
        r.tools = Some(vec![serde_json::from_value(serde_json::json!(
            {"type": "function", "function": {"name": "f", "parameters": {}}}
        ))
        .unwrap()]);
        assert!(!is_cacheable(&r));
        r.use_cache = Some(UseCache::Always);
        assert!(is_cacheable(&r));
        r.use_cache = Some(UseCache::Never);
        r.tools = None;
        assert!(!is_cacheable(&r));
        r.use_cache = Some(UseCache::Always);
        r.temperature = Some(1.0);
        assert!(is_cacheable(&r));
    }

    /// A clock the test moves by hand.
    #[derive(Default)]
    struct ManualClock(AtomicU64);

    impl ManualClock {
        fn advance(&self, ms: u64) {
            self.0.fetch_add(ms, Ordering::SeqCst);
        }
    }

    impl WallClock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn answer(text: &str) -> Answer {
        Answer {
            completion: Completion {
                choices: vec![Choice {
                    index: 0,
                    message: AssistantMessage {
                        content: Some(text.into()),
                        ..AssistantMessage::default()
                    },
                    finish_reason: FinishReason::Stop,
                }],
                usage: Usage {
                    prompt_tokens: 5,
                    completion_tokens: 7,
                    ..Usage::default()
                },
            },
            model: "mock-echo".into(),
            provider: "mock".into(),
            provider_model: "mock-echo".into(),
            cost_usd: 0.25,
            attempts: vec![],
            run_id: Uuid::now_v7(),
        }
    }

    fn key(tenant: &str, text: &str) -> CacheKey {
        let r = request(serde_json::json!(
            {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": text}]}
        ));
        CacheKey::new(tenant, "default", &r)
    }

    struct Setup {
        _dir: tempfile::TempDir,
        answers: Arc<dyn AnswerStore>,
        clock: Arc<ManualClock>,
        metrics: Metrics,
    }

    fn setup() -> Setup {
        let (dir, storage) = crate::storage::temporary();
        let clock = Arc::new(ManualClock(AtomicU64::new(1_700_000_000_000)));
        Setup {
            _dir: dir,
            answers: storage.answers,
            clock,
            metrics: Metrics::new().unwrap(),
        }
    }

    fn open(s: &Setup, ttl_secs: u64, max_bytes: u64) -> Cache {
        let settings = CacheSettings {
            shards: 2,
            ttl: Duration::from_secs(ttl_secs),
            max_bytes,
        };
        Cache::open_with_clock(s.answers.clone(), settings, &s.metrics, s.clock.clone()).unwrap()
    }

    #[actix_rt::test]
    async fn stores_and_serves_an_answer_until_its_ttl() {
        let s = setup();
        let cache = open(&s, 60, 1 << 20);
        let k = key("default", "hello");
        assert!(cache.lookup(&k).await.is_none());
        let original = answer("hello back");
        cache.store(k, &original);
        cache.settle().await.unwrap();

        let hit = cache.lookup(&k).await.unwrap();
        assert_eq!(hit.completion, original.completion);
        assert_eq!(hit.source_run_id, original.run_id);
        assert_eq!(hit.stored_at_ms, s.clock.now_ms());
        // As an answer: the source run's id, and nothing to pay.
        let served = hit.into_answer();
        assert_eq!(served.run_id, original.run_id);
        assert_eq!(served.cost_usd, 0.0);
        assert!(served.attempts.is_empty());
        assert!(s.metrics.cache_stored_bytes.get() > 0);
        assert_eq!(s.metrics.cache_entries.get(), 1);

        s.clock.advance(59_999);
        assert!(cache.lookup(&k).await.is_some());
        s.clock.advance(1);
        assert!(cache.lookup(&k).await.is_none(), "served past its TTL");
        cache.settle().await.unwrap();
        // The expired entry is gone, and counted.
        assert_eq!(s.metrics.cache_stored_bytes.get(), 0);
        assert_eq!(s.metrics.cache_entries.get(), 0);
        assert_eq!(
            s.metrics
                .cache_evictions
                .with_label_values(&["expired"])
                .get(),
            1
        );
        assert_eq!(s.metrics.cache_hits.get(), 2);
        assert_eq!(s.metrics.cache_misses.get(), 2);
    }

    #[actix_rt::test]
    async fn a_stored_answer_is_served_before_the_writer_has_run() {
        let s = setup();
        let cache = open(&s, 60, 1 << 20);
        let k = key("default", "again");
        cache.store(k, &answer("at once"));
        // The writer (another arbiter) may not have written it yet.
        let hit = cache
            .lookup(&k)
            .await
            .expect("served from the answers on their way");
        assert_eq!(
            hit.completion.choices[0].message.content.as_deref(),
            Some("at once")
        );
        cache.settle().await.unwrap();
        let stored = cache.stored.as_ref().unwrap();
        assert!(stored.unwritten.is_empty(), "written, then forgotten");
        assert!(cache.lookup(&k).await.is_some());
    }

    #[actix_rt::test]
    async fn tenants_never_share_an_entry() {
        let s = setup();
        let cache = open(&s, 60, 1 << 20);
        cache.store(key("acme", "q"), &answer("acme's answer"));
        cache.settle().await.unwrap();
        assert!(cache.lookup(&key("acme", "q")).await.is_some());
        assert!(cache.lookup(&key("globex", "q")).await.is_none());
    }

    #[actix_rt::test]
    async fn the_size_bound_evicts_the_least_recently_used() {
        let s = setup();
        // Room for two entries of this size (as the store counts it), not three.
        let one = {
            let probe = setup();
            let entry = StoredAnswer::from_answer(&answer("0"));
            match probe.answers.put(&key("t", "0"), &entry, 0, u64::MAX).await {
                Ok(crate::storage::PutOutcome::Stored { size, .. }) => size,
                other => panic!("{other:?}"),
            }
        };
        let cache = open(&s, 3600, 2 * one + one / 2);
        let (a, b, c) = (key("t", "a"), key("t", "b"), key("t", "c"));
        cache.store(a, &answer("1"));
        cache.settle().await.unwrap();
        s.clock.advance(10);
        cache.store(b, &answer("2"));
        cache.settle().await.unwrap();
        assert_eq!(s.metrics.cache_entries.get(), 2);
        // `a` is hit, so `b` is now the least recently used.
        s.clock.advance(TOUCH_EVERY_MS);
        assert!(cache.lookup(&a).await.is_some());
        cache.settle().await.unwrap();
        s.clock.advance(10);
        cache.store(c, &answer("3"));
        cache.settle().await.unwrap();
        assert!(cache.lookup(&a).await.is_some());
        assert!(
            cache.lookup(&b).await.is_none(),
            "the least recently used stays"
        );
        assert!(cache.lookup(&c).await.is_some());
        assert_eq!(s.metrics.cache_entries.get(), 2);
        assert_eq!(
            s.metrics.cache_stored_bytes.get(),
            i64::try_from(2 * one).unwrap()
        );
        assert_eq!(
            s.metrics.cache_evictions.with_label_values(&["size"]).get(),
            1
        );
        // An answer larger than the whole budget is not stored, and evicts nothing.
        let huge = answer(&"z".repeat(4 * one as usize));
        cache.store(key("t", "huge"), &huge);
        cache.settle().await.unwrap();
        assert!(cache.lookup(&key("t", "huge")).await.is_none());
        assert_eq!(s.metrics.cache_entries.get(), 2);
    }

    /// The writer's keeper and the store in `dir`, without actors, so that dropping them
    /// closes the store.
    async fn reopen(
        dir: &std::path::Path,
        clock: &Arc<ManualClock>,
    ) -> (crate::storage::Storage, Keeper, Metrics) {
        let storage = crate::storage::in_dir(dir);
        let metrics = Metrics::new().unwrap();
        let keeper = Keeper::open(
            storage.answers.clone(),
            Duration::from_secs(60),
            1 << 20,
            clock.clone(),
            metrics.clone(),
        )
        .await
        .unwrap();
        (storage, keeper, metrics)
    }

    #[actix_rt::test]
    async fn entries_survive_a_restart_and_keep_their_age() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock(AtomicU64::new(1_700_000_000_000)));
        let k = key("default", "persist me");
        let original = StoredAnswer {
            stored_at_ms: clock.now_ms(),
            ..StoredAnswer::from_answer(&answer("persisted"))
        };
        {
            let (storage, mut keeper, _) = reopen(dir.path(), &clock).await;
            keeper.put(&k, &original).await;
            let other = StoredAnswer {
                stored_at_ms: clock.now_ms(),
                ..StoredAnswer::from_answer(&answer("other"))
            };
            keeper.put(&key("default", "other"), &other).await;
            assert!(storage.answers.get(&k).await.unwrap().is_some());
            storage.runs.flush().await.unwrap();
        }
        clock.advance(30_000);
        let (storage, keeper, metrics) = reopen(dir.path(), &clock).await;
        let hit = storage.answers.get(&k).await.unwrap().unwrap();
        assert_eq!(
            hit.answer,
            StoredAnswer {
                stored_at_ms: clock.now_ms() - 30_000,
                ..original
            }
        );
        assert_eq!(hit.last_use_ms, clock.now_ms() - 30_000);
        // Counted again at start.
        assert_eq!(metrics.cache_entries.get(), 2);
        assert_eq!(
            metrics.cache_stored_bytes.get(),
            i64::try_from(keeper.bytes()).unwrap()
        );
        assert!(keeper.bytes() > 0);
        storage.runs.flush().await.unwrap();
        drop((storage, keeper));

        // Entries that expired while the gateway was down are removed at start.
        clock.advance(30_000);
        let (storage, keeper, metrics) = reopen(dir.path(), &clock).await;
        assert!(storage.answers.get(&k).await.unwrap().is_none());
        assert_eq!(metrics.cache_entries.get(), 0);
        assert_eq!(keeper.bytes(), 0);
        assert_eq!(
            metrics
                .cache_evictions
                .with_label_values(&["expired"])
                .get(),
            2
        );
    }

    #[actix_rt::test]
    async fn streamed_answers_are_stored_when_asked() {
        use futures::StreamExt;

        let s = setup();
        let cache = open(&s, 60, 1 << 20);
        let k = key("default", "stream me");
        let StreamJoin::Lead(leadership) = cache.join_stream(k).await.unwrap() else {
            panic!("expected to lead")
        };
        let stored = StoredAnswer::from_answer(&answer("streamed answer"));
        let source = StreamSource {
            run_id: stored.source_run_id,
            model: stored.model.clone(),
            provider: stored.provider.clone(),
            provider_model: stored.provider_model.clone(),
        };
        let live = leadership.publish(source, stored.replay(), true);
        let rest: Vec<_> = live.rest.collect().await;
        assert!(rest.iter().all(Result::is_ok));
        cache.settle().await.unwrap();
        let hit = cache.lookup(&k).await.unwrap();
        assert_eq!(
            hit,
            StoredAnswer {
                stored_at_ms: s.clock.now_ms(),
                ..stored
            }
        );
    }

    #[actix_rt::test]
    async fn zero_ttl_or_budget_means_coalescing_only() {
        let s = setup();
        let cache = open(&s, 0, 1 << 20);
        let k = key("default", "q");
        cache.store(k, &answer("a"));
        cache.settle().await.unwrap();
        assert!(cache.lookup(&k).await.is_none());
        assert!(matches!(cache.join(k).await.unwrap(), Join::Lead));
    }
}
