//! The cache actors: in-flight coalescing of identical requests. The key space is split over
//! several shard actors, so no single mailbox sees every cacheable request; a request that is
//! not cacheable never touches them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::engine::Answer;
use crate::error::{ErrorKind, GatewayError};
use crate::wire::{ChatRequest, UseCache};

/// What followers of an in-flight request receive.
pub type Shared = Result<Arc<Answer>, GatewayError>;

/// A digest of everything that shapes the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// Builds the key. The request is destructured field by field, so adding a field to
    /// [`ChatRequest`] does not compile until it is either part of the key or ignored here.
    pub fn new(tenant: &str, agent: &str, request: &ChatRequest) -> CacheKey {
        let ChatRequest {
            model,
            messages,
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
            tenant,
            agent,
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

    fn shard(&self, shards: usize) -> usize {
        usize::from(self.0[0]) % shards.max(1)
    }
}

/// Whether `use_cache` lets this request share an answer: `auto` only when temperature is 0 and
/// there are no tools.
pub fn is_cacheable(request: &ChatRequest) -> bool {
    if request.is_stream() {
        return false;
    }
    match request.use_cache.unwrap_or_default() {
        UseCache::Never => false,
        UseCache::Always => true,
        UseCache::Auto => {
            request.temperature == Some(0.0)
                && request.tools.as_ref().is_none_or(|tools| tools.is_empty())
        }
    }
}

/// The caller's role for a key.
pub enum Join {
    /// Nobody is computing this answer: you do, then send [`Complete`].
    Lead,
    /// Someone is: wait for their answer.
    Follow(oneshot::Receiver<Shared>),
}

#[derive(Message)]
#[rtype(result = "Join")]
struct JoinKey(CacheKey);

#[derive(Message)]
#[rtype(result = "()")]
struct Complete(CacheKey, Shared);

/// One shard of the in-flight table.
#[derive(Default)]
pub struct CacheShard {
    in_flight: HashMap<CacheKey, Vec<oneshot::Sender<Shared>>>,
}

impl Actor for CacheShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16 * 1024);
    }
}

impl Handler<JoinKey> for CacheShard {
    type Result = MessageResult<JoinKey>;

    fn handle(&mut self, JoinKey(key): JoinKey, _: &mut Self::Context) -> Self::Result {
        match self.in_flight.get_mut(&key) {
            Some(waiters) => {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                MessageResult(Join::Follow(rx))
            }
            None => {
                self.in_flight.insert(key, Vec::new());
                MessageResult(Join::Lead)
            }
        }
    }
}

impl Handler<Complete> for CacheShard {
    type Result = ();

    fn handle(&mut self, Complete(key, result): Complete, _: &mut Self::Context) {
        for waiter in self.in_flight.remove(&key).unwrap_or_default() {
            let _ = waiter.send(result.clone());
        }
    }
}

const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The shards, addressed by key.
#[derive(Clone)]
pub struct Cache {
    shards: Arc<Vec<Addr<CacheShard>>>,
}

impl Cache {
    /// Starts `shards` shard actors, each on its own arbiter.
    pub fn start(shards: usize) -> Cache {
        let shards = (0..shards.max(1))
            .map(|_| {
                CacheShard::start_in_arbiter(&Arbiter::new().handle(), |_| CacheShard::default())
            })
            .collect();
        Cache {
            shards: Arc::new(shards),
        }
    }

    fn shard(&self, key: &CacheKey) -> &Addr<CacheShard> {
        &self.shards[key.shard(self.shards.len())]
    }

    /// Joins the in-flight table for `key`.
    pub async fn join(&self, key: CacheKey) -> Result<Join, GatewayError> {
        self.shard(&key)
            .send(JoinKey(key))
            .timeout(SEND_TIMEOUT)
            .await
            .map_err(|e| GatewayError::internal(format!("cache actor did not answer: {e}")))
    }

    /// A guard for the leader of `key`: complete it, or dropping it tells the followers to go
    /// on their own.
    pub fn leader(&self, key: CacheKey) -> Leadership {
        Leadership {
            cache: self.clone(),
            key,
            done: false,
        }
    }
}

/// Held by the request computing a shared answer.
pub struct Leadership {
    cache: Cache,
    key: CacheKey,
    done: bool,
}

impl Leadership {
    pub fn complete(mut self, result: Shared) {
        self.done = true;
        self.cache
            .shard(&self.key)
            .do_send(Complete(self.key, result));
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if !self.done {
            let abandoned = GatewayError::new(
                ErrorKind::Cancelled,
                "the identical request this one waited on was cancelled",
            );
            self.cache
                .shard(&self.key)
                .do_send(Complete(self.key, Err(abandoned)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(CacheKey::new("t", "x", &a), CacheKey::new("t", "x", &b));
        let c = request(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "b"}]}),
        );
        assert_ne!(CacheKey::new("t", "x", &a), CacheKey::new("t", "x", &c));
        assert_ne!(CacheKey::new("t", "x", &a), CacheKey::new("u", "x", &a));
    }

    #[test]
    fn auto_caches_only_deterministic_requests() {
        let mut r = request(serde_json::json!({"model": "m", "messages": []}));
        assert!(!is_cacheable(&r));
        r.temperature = Some(0.0);
        assert!(is_cacheable(&r));
        r.use_cache = Some(UseCache::Never);
        assert!(!is_cacheable(&r));
        r.use_cache = Some(UseCache::Always);
        r.temperature = Some(1.0);
        assert!(is_cacheable(&r));
    }

    #[actix_rt::test]
    async fn second_joiner_follows_and_gets_the_leaders_answer() {
        let cache = Cache::start(2);
        let key = CacheKey([7; 32]);
        assert!(matches!(cache.join(key).await.unwrap(), Join::Lead));
        let Join::Follow(rx) = cache.join(key).await.unwrap() else {
            panic!("expected to follow")
        };
        drop(cache.leader(key));
        let got = rx.await.unwrap();
        assert_eq!(got.unwrap_err().kind, ErrorKind::Cancelled);
        // The key is free again.
        assert!(matches!(cache.join(key).await.unwrap(), Join::Lead));
    }
}
