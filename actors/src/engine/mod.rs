//! The engine: one entry, [`Gateway::run`], takes a request with its [`Run`] (the record in the
//! making, private to the engine), plans it on the published catalog and routing snapshots,
//! answers it from the cache, shares it with an identical request in flight, or runs the
//! attempt loop (`attempts.rs`) against the providers; the run is recorded exactly once
//! (`run.rs`).
//!
//! Upstream I/O runs here, in the request's own task on its HTTP worker, never inside an actor's
//! mailbox turn. Actors are told what happened (provider outcomes, finished runs) with
//! non-blocking sends.

mod attempts;
mod embed;
mod run;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

pub use embed::EmbedRequest;
pub use run::{Run, RunContext};

use crate::agents::AgentStore;
use crate::answer::{Answer, LiveStream};
use crate::cache::{is_cacheable, Cache, CacheKey, Join, StreamJoin, StreamSource};
use crate::capabilities::Needs;
use crate::catalog::Catalog;
use crate::error::{ErrorKind, GatewayError};
use crate::recorder::metrics::Metrics;
use crate::recorder::run::CacheStatus;
use crate::recorder::RecorderHandle;
use crate::retry::RetryPolicy;
use crate::router::{
    plan, FallbackPlan, PlanRoute, ProviderRegistry, RouterHandle, Scores, Strategy,
};
use crate::stats::RunStats;
use crate::storage::{FeedbackStore, RunStore, ShareStore};
use crate::structured::{StructuredSpec, Validators};
use crate::version::version_id;
use crate::wire::ChatRequest;
use attempts::{Call, Produced};

/// Everything the request path needs. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub providers: Arc<ProviderRegistry>,
    pub catalog: Arc<ArcSwap<Catalog>>,
    pub cache: Cache,
    pub recorder: RecorderHandle,
    /// The recorded runs (read by the HTTP edge; written by the recorder).
    pub runs: Arc<dyn RunStore>,
    /// The local spool in front of a network run store (PostgreSQL); `None` with sled.
    pub spool: Option<Arc<crate::storage::spool::Spool>>,
    /// End users' feedback on runs.
    pub feedback: Arc<dyn FeedbackStore>,
    /// Share links to runs.
    pub shares: Arc<dyn ShareStore>,
    /// Virtual API keys and their usage (read by the edge's key registry).
    pub key_store: Arc<dyn crate::storage::KeyStore>,
    /// Datasets, reviews and benchmarks (driven by the edge's benchmark runner).
    pub eval_store: Arc<dyn crate::storage::EvalStore>,
    /// What changed in the store, here or on another instance (the key registry reads the
    /// keys again when they did).
    pub changes: Arc<crate::storage::Changes>,
    /// The web UI's sign-in sessions.
    pub sessions: Arc<dyn crate::storage::SessionStore>,
    /// Agents' schemas, versions, deployments, conversations and feedback.
    pub agents: AgentStore,
    /// The runs' stats per agent and hour, summed by the recorder.
    pub stats: RunStats,
    pub metrics: Metrics,
    /// Base of the web UI links put on each choice.
    pub public_url: Arc<str>,
    /// Compiled JSON schemas for structured outputs.
    pub validators: Arc<Validators>,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Hedged requests for the agents that opted in.
    pub hedging: Arc<HedgingPolicy>,
    /// What routing learns from every call, and how plans use it.
    pub router: RouterHandle,
}

impl Gateway {
    /// What routing has learned, when the strategy orders providers by it.
    pub(super) fn routing_scores(&self) -> Option<Arc<Scores>> {
        match self.router.strategy {
            Strategy::Ordered => None,
            Strategy::Fastest => Some(self.router.scores()),
        }
    }

    /// The attempt plan for `route`, on the published catalog and routing snapshots: a plain
    /// function call, no actor in the way.
    pub fn plan(&self, route: &PlanRoute) -> Result<FallbackPlan, GatewayError> {
        plan(
            &self.catalog.load(),
            &self.providers,
            self.routing_scores().as_deref(),
            route,
        )
    }
}

/// Hedged requests, off by default: for the listed agents, a second provider is started when
/// the first has not answered within `after_ms`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HedgingPolicy {
    pub agents: Vec<String>,
    pub after_ms: u64,
}

impl HedgingPolicy {
    /// The hedge delay for `agent`, if it opted in.
    pub fn after_for(&self, agent: &str) -> Option<Duration> {
        (self.after_ms > 0 && self.agents.iter().any(|a| a == agent))
            .then(|| Duration::from_millis(self.after_ms))
    }
}
/// A request for the engine: the client's request and the catalog name that answers it (the
/// request's `model`, or what its agent's deployment resolved to).
#[derive(Debug, Clone, Copy)]
pub struct RunRequest<'a> {
    pub chat: &'a ChatRequest,
    pub model: &'a str,
}

/// What a run produced.
pub enum RunOutput {
    /// A whole answer (shared with coalesced followers, hence the `Arc`).
    Answer(Arc<Answer>),
    /// A stream whose first event has arrived.
    Stream(LiveStream),
}

impl Gateway {
    /// Starts a run: from here on the request is recorded exactly once, whatever happens.
    pub fn start(self: &Arc<Self>, ctx: RunContext) -> Run {
        Run::new(Arc::clone(self), ctx)
    }

    /// The engine's one entry: plans `request` on the published snapshots, then answers it
    /// (streamed or whole, as it asked). The run learns which model and provider answered and
    /// how; finish it with [`Run::succeed`], [`Run::finish_stream`] or [`Run::fail`].
    pub async fn run(
        &self,
        run: &mut Run,
        request: RunRequest<'_>,
    ) -> Result<RunOutput, GatewayError> {
        let chat = request.chat;
        let plan = self.plan(&PlanRoute {
            model: request.model.to_string(),
            use_fallback: chat.use_fallback.clone(),
            provider: chat.provider.clone(),
            needs: Needs::of(chat),
        })?;
        if plan.model.embedding.is_some() {
            return Err(GatewayError::invalid(format!(
                "`{}` is an embedding model: send it to `/v1/embeddings`",
                plan.model.id
            ))
            .with_param("model")
            .with_code("embedding_model"));
        }
        run.model = Some(plan.model.id.clone());
        // The edge versioned the agent's templates; this covers a request it could not resolve.
        if run.ctx.version_id.is_none() {
            run.ctx.version_id = Some(version_id(&plan.model.id, chat));
        }
        // Both boxed: an async fn's future is as large as everything it holds across an await,
        // and is copied whole when it is made and again into each future that awaits it; the
        // request's futures nest a dozen deep (the edge's handler down to the HTTP client), so
        // one allocation here spares copying these kilobytes at every level above.
        if chat.is_stream() {
            let live = Box::pin(self.stream(run, &plan, chat)).await?;
            // From its first event a stream goes at the pace of its provider and of the
            // client that reads it (a replay from the cache too): not the gateway's overhead.
            run.relaying_since = Some(Instant::now());
            return Ok(RunOutput::Stream(live));
        }
        let answer = Box::pin(self.complete(run, &plan, chat)).await?;
        run.model = Some(answer.model.clone());
        run.provider = Some(answer.provider.clone());
        Ok(RunOutput::Answer(answer))
    }

    /// Runs a non-streaming request to the end: coalesced with identical in-flight requests when
    /// the cache applies, otherwise straight through the plan.
    async fn complete(
        &self,
        run: &mut Run,
        plan: &FallbackPlan,
        request: &ChatRequest,
    ) -> Result<Arc<Answer>, GatewayError> {
        if !is_cacheable(request) {
            return self.execute(run, plan, request).await.map(Arc::new);
        }
        let key = CacheKey::with_version(
            &run.ctx.tenant,
            &run.ctx.agent,
            run.ctx.version_id.as_deref(),
            request,
        );
        if let Some(stored) = self.cache.lookup(&key).await {
            run.cache = CacheStatus::Hit;
            run.source_run_id = Some(stored.source_run_id);
            return Ok(Arc::new(stored.into_answer()));
        }
        match self.cache.join(key).await? {
            Join::Lead => {
                run.cache = CacheStatus::Miss;
                let leadership = self.cache.leader(key);
                let result = self.execute(run, plan, request).await.map(Arc::new);
                if let Ok(answer) = &result {
                    self.cache.store(key, answer);
                }
                leadership.complete(result.clone());
                result
            }
            Join::Follow(rx) => {
                // The leader's upstream call is what this request waits for.
                let waiting = Instant::now();
                let shared = rx.await;
                run.ctx.waited += waiting.elapsed();
                match shared {
                    Ok(Ok(answer)) => {
                        self.metrics.coalesced.inc();
                        run.cache = CacheStatus::Coalesced;
                        run.source_run_id = Some(answer.run_id);
                        Ok(answer)
                    }
                    // The leader went away: do the work ourselves.
                    Ok(Err(e)) if e.kind == ErrorKind::Cancelled => {
                        self.execute(run, plan, request).await.map(Arc::new)
                    }
                    Ok(Err(e)) => {
                        run.cache = CacheStatus::Coalesced;
                        Err(e)
                    }
                    Err(_) => self.execute(run, plan, request).await.map(Arc::new),
                }
            }
        }
    }

    /// A streamed answer: replayed from the cache, shared with an identical stream in flight,
    /// or opened on a provider.
    async fn stream(
        &self,
        run: &mut Run,
        plan: &FallbackPlan,
        request: &ChatRequest,
    ) -> Result<LiveStream, GatewayError> {
        if !is_cacheable(request) {
            return self.open_stream(run, plan, request).await;
        }
        let key = CacheKey::with_version(
            &run.ctx.tenant,
            &run.ctx.agent,
            run.ctx.version_id.as_deref(),
            request,
        );
        if let Some(stored) = self.cache.lookup(&key).await {
            run.cache = CacheStatus::Hit;
            run.source_run_id = Some(stored.source_run_id);
            run.model = Some(stored.model.clone());
            run.provider = Some(stored.provider.clone());
            run.provider_model = Some(stored.provider_model.clone());
            return Ok(stored.replay());
        }
        match self.cache.join_stream(key).await? {
            StreamJoin::Lead(leadership) => {
                run.cache = CacheStatus::Miss;
                match self.open_stream(run, plan, request).await {
                    Ok(live) => {
                        let source = StreamSource {
                            run_id: run.ctx.run_id,
                            model: live.model.clone(),
                            provider: run.provider.clone().unwrap_or_default(),
                            provider_model: run.provider_model.clone().unwrap_or_default(),
                        };
                        // Structured streams are validated only at their end: not stored.
                        let store = StructuredSpec::of(request).is_none();
                        Ok(leadership.publish(source, live, store))
                    }
                    Err(e) => {
                        leadership.fail(e.clone());
                        Err(e)
                    }
                }
            }
            StreamJoin::Follow(follower) => {
                let waiting = Instant::now();
                let opened = follower.open().await;
                run.ctx.waited += waiting.elapsed();
                match opened {
                    Ok(followed) => {
                        self.metrics.coalesced.inc();
                        run.cache = CacheStatus::Coalesced;
                        run.source_run_id = Some(followed.source.run_id);
                        run.model = Some(followed.source.model.clone());
                        run.provider = Some(followed.source.provider.clone());
                        run.provider_model = Some(followed.source.provider_model.clone());
                        Ok(followed.live)
                    }
                    Err(e) if e.kind == ErrorKind::Cancelled => {
                        self.open_stream(run, plan, request).await
                    }
                    Err(e) => {
                        run.cache = CacheStatus::Coalesced;
                        Err(e)
                    }
                }
            }
        }
    }

    /// The attempt loop for a whole answer.
    async fn execute(
        &self,
        run: &mut Run,
        plan: &FallbackPlan,
        request: &ChatRequest,
    ) -> Result<Answer, GatewayError> {
        match self.attempts(run, plan, request, Call::Complete).await? {
            Produced::Answer(answer) => Ok(answer),
            Produced::Stream(_) => Err(GatewayError::internal("a whole answer was streamed")),
        }
    }

    /// The attempt loop for a stream: opened on the first attempt of the plan that delivers a
    /// first event; failures before that are invisible to the client.
    async fn open_stream(
        &self,
        run: &mut Run,
        plan: &FallbackPlan,
        request: &ChatRequest,
    ) -> Result<LiveStream, GatewayError> {
        match self.attempts(run, plan, request, Call::Stream).await? {
            Produced::Stream(live) => Ok(live),
            Produced::Answer(_) => Err(GatewayError::internal("a stream was answered whole")),
        }
    }
}

#[cfg(test)]
mod tests;
