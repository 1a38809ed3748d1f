//! The engine: runs a request's attempt plan against the providers, coalesces identical
//! requests, and turns each request into exactly one recorded run.
//!
//! Upstream I/O runs here, in the request's own task on its HTTP worker, never inside an actor's
//! mailbox turn. Actors are told what happened (provider outcomes, finished runs) with
//! non-blocking sends.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use serde_json::Value;
use uuid::Uuid;

use crate::agents::AgentStore;
use crate::answer::{Answer, LiveStream};
use crate::breaker::CircuitState;
use crate::cache::{is_cacheable, Cache, CacheKey, Join, StreamJoin, StreamSource};
use crate::catalog::{Catalog, Prices};
use crate::completion::{Completion, CompletionAccumulator, FinishReason, StreamEvent, Usage};
use crate::error::{AttemptSummary, ErrorKind, GatewayError};
use crate::provider::actor::{Admission, AttemptOutcome};
use crate::provider::UpstreamRequest;
use crate::recorder::metrics::Metrics;
use crate::recorder::run::{feedback_token, CacheStatus, RunRecord, RunStatus, StructuredRecord};
use crate::recorder::RecorderHandle;
use crate::retry::RetryPolicy;
use crate::router::{
    auto_fallback_attempts, plan, FallbackPlan, PlanRoute, PlannedAttempt, ProviderRegistry,
    RouterHandle, Scores, Strategy,
};
use crate::storage::{FeedbackStore, RunStore};
use crate::structured::{
    answer_text, repair_request, validate_tool_calls, Layer, StructuredSpec, Target, Validators,
};
use crate::wire::ChatRequest;

/// Everything the request path needs. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub providers: Arc<ProviderRegistry>,
    pub catalog: Arc<ArcSwap<Catalog>>,
    pub cache: Cache,
    pub recorder: RecorderHandle,
    /// The recorded runs (read by the HTTP edge; written by the recorder).
    pub runs: Arc<dyn RunStore>,
    /// End users' feedback on runs.
    pub feedback: Arc<dyn FeedbackStore>,
    /// Agents' schemas, versions, deployments, conversations and feedback.
    pub agents: AgentStore,
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
    fn routing_scores(&self) -> Option<Arc<Scores>> {
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

/// What is known of a run before it is executed.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub run_id: Uuid,
    pub tenant: String,
    pub agent: String,
    pub requested_model: String,
    pub version_id: Option<String>,
    pub stream: bool,
    pub started: Instant,
    pub created_at: SystemTime,
    pub request: Option<Box<serde_json::value::RawValue>>,
    pub input: Option<serde_json::Value>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub feedback_token: String,
    pub schema_id: Option<u32>,
    pub conversation_id: Option<Uuid>,
    /// The messages sent upstream, when templates were rendered or a deployment supplied them.
    pub rendered_messages: Option<Vec<crate::wire::Message>>,
}

impl RunContext {
    pub fn new(tenant: &str, agent: &str, requested_model: &str, stream: bool) -> RunContext {
        let run_id = Uuid::now_v7();
        RunContext {
            run_id,
            tenant: tenant.to_string(),
            agent: agent.to_string(),
            requested_model: requested_model.to_string(),
            version_id: None,
            stream,
            started: Instant::now(),
            created_at: SystemTime::now(),
            request: None,
            input: None,
            metadata: None,
            feedback_token: feedback_token(run_id),
            schema_id: None,
            conversation_id: None,
            rendered_messages: None,
        }
    }

    /// `<agent>/<run_id>`, the response `id`.
    pub fn response_id(&self) -> String {
        format!("{}/{}", self.agent, self.run_id)
    }

    pub fn created_unix(&self) -> u64 {
        self.created_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// Guarantees one run record per request: finish it with a result, or dropping it (the client
/// went away) records a cancelled run with whatever was produced and what it cost.
pub struct RunGuard {
    gateway: Gateway,
    pub ctx: RunContext,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub provider_model: Option<String>,
    prices: Prices,
    pub attempts: Vec<AttemptSummary>,
    pub cache: CacheStatus,
    pub source_run_id: Option<Uuid>,
    /// How a structured output was produced and repaired.
    pub structured: StructuredRecord,
    /// A streamed structured output, validated once the stream ends.
    streamed_spec: Option<(StructuredSpec, Layer)>,
    /// What the finished upstream calls of a non-streamed run used and cost, repairs and
    /// failed validations included: paid even when the run fails.
    paid_usage: Usage,
    paid_usd: f64,
    /// Streamed output so far.
    accumulator: CompletionAccumulator,
    /// A streaming attempt still open, to report to its provider when the stream ends.
    open_attempt: Option<OpenAttempt>,
    recorded: bool,
}

struct OpenAttempt {
    planned: PlannedAttempt,
    admission: Admission,
    started: Instant,
    index: usize,
}

impl RunGuard {
    pub fn new(gateway: Gateway, ctx: RunContext) -> RunGuard {
        RunGuard {
            gateway,
            ctx,
            model: None,
            provider: None,
            provider_model: None,
            prices: Prices::default(),
            attempts: Vec::new(),
            cache: CacheStatus::Bypass,
            source_run_id: None,
            structured: StructuredRecord::default(),
            streamed_spec: None,
            paid_usage: Usage::default(),
            paid_usd: 0.0,
            accumulator: CompletionAccumulator::default(),
            open_attempt: None,
            recorded: false,
        }
    }

    pub fn duration_seconds(&self) -> f64 {
        self.ctx.started.elapsed().as_secs_f64()
    }

    fn record(
        &mut self,
        status: RunStatus,
        output: Option<Completion>,
        cost_usd: f64,
        error: Option<&GatewayError>,
    ) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        let usage = output.as_ref().map(|c| c.usage).unwrap_or(self.paid_usage);
        let run = RunRecord {
            id: self.ctx.run_id,
            tenant: self.ctx.tenant.clone(),
            agent: self.ctx.agent.clone(),
            created_at: humantime::format_rfc3339_millis(self.ctx.created_at).to_string(),
            status,
            requested_model: self.ctx.requested_model.clone(),
            model: self.model.clone(),
            provider: self.provider.clone(),
            provider_model: self.provider_model.clone(),
            version_id: self.ctx.version_id.clone(),
            stream: self.ctx.stream,
            request: self.ctx.request.take(),
            input: self.ctx.input.take(),
            output,
            attempts: std::mem::take(&mut self.attempts),
            usage,
            cost_usd,
            duration_seconds: self.duration_seconds(),
            cache: self.cache,
            error: error.map(|e| e.body()),
            metadata: self.ctx.metadata.take(),
            feedback_token: self.ctx.feedback_token.clone(),
            source_run_id: self.source_run_id,
            structured: (self.structured.layer.is_some())
                .then(|| std::mem::take(&mut self.structured)),
            schema_id: self.ctx.schema_id,
            conversation_id: self.ctx.conversation_id,
            rendered_messages: self.ctx.rendered_messages.take(),
        };
        self.gateway.metrics.count_attempt_reasons(&run.attempts);
        self.gateway.recorder.record(Box::new(run));
    }

    /// Records a failed run; returns the error with the attempts as its details.
    pub fn fail(mut self, mut error: GatewayError) -> GatewayError {
        // Close a streaming attempt first, so the details say how it ended.
        self.close_attempt(Some(error.kind));
        if error.attempts.is_empty() {
            error.attempts = self.attempts.clone();
        }
        let output = {
            let acc = std::mem::take(&mut self.accumulator);
            let c = acc.finish();
            (!c.choices.is_empty()).then_some(c)
        };
        let cost = output
            .as_ref()
            .map(|c| c.usage.cost_usd(&self.prices))
            .unwrap_or(0.0)
            + self.paid_usd;
        self.record(RunStatus::Error, output, cost, Some(&error));
        error
    }

    /// Adds a finished upstream call to what the run paid.
    fn pay(&mut self, usage: &Usage, prices: &Prices) {
        self.paid_usage.add(usage);
        self.paid_usd += usage.cost_usd(prices);
    }

    /// Records a successful non-streamed run. The completion is moved into the run when the
    /// answer is not shared (no coalesced follower holds it), copied otherwise.
    pub fn succeed(mut self, answer: Arc<Answer>, cost_usd: f64) {
        let answer = Arc::try_unwrap(answer).unwrap_or_else(|shared| (*shared).clone());
        self.model = Some(answer.model);
        self.provider = Some(answer.provider);
        self.provider_model = Some(answer.provider_model);
        self.record(RunStatus::Success, Some(answer.completion), cost_usd, None);
    }

    // ---- streaming ----

    /// Adds a streamed event to the run's output.
    pub fn push_event(&mut self, event: &StreamEvent) {
        self.accumulator.push(event);
    }

    /// The cost of the streamed usage so far.
    pub fn streamed_cost(&self) -> f64 {
        self.accumulator
            .usage
            .map(|u| u.cost_usd(&self.prices))
            .unwrap_or(0.0)
    }

    pub fn streamed_usage(&self) -> Usage {
        self.accumulator.usage.unwrap_or_default()
    }

    fn close_attempt(&mut self, error: Option<ErrorKind>) {
        if let Some(open) = self.open_attempt.take() {
            let elapsed = open.started.elapsed();
            if let Some(summary) = self.attempts.get_mut(open.index) {
                summary.duration_seconds = elapsed.as_secs_f64();
                if let Some(kind) = error {
                    summary.error = Some(kind.metric_label().to_string());
                }
            }
            report(&open.planned, open.admission, error, elapsed);
        }
    }

    /// Records a stream that ended well.
    pub fn finish_stream(mut self) {
        self.close_attempt(None);
        let completion = std::mem::take(&mut self.accumulator).finish();
        if let Some((spec, layer)) = self.streamed_spec.take() {
            // Content already went out: the outcome is recorded, not repaired.
            let checked = spec
                .extract(&completion, Layer::Native)
                .and_then(|value| self.gateway.validators.validate(&spec.schema, &value));
            self.structured.layer = Some(layer);
            let outcome = match checked {
                Ok(()) => "valid",
                Err(problem) => {
                    self.structured.validation_errors.push(problem);
                    "invalid"
                }
            };
            self.gateway
                .metrics
                .structured_outputs
                .with_label_values(&[layer.as_str(), outcome])
                .inc();
        }
        let cost = completion.usage.cost_usd(&self.prices);
        self.record(RunStatus::Success, Some(completion), cost, None);
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        self.close_attempt(Some(ErrorKind::Cancelled));
        let completion = std::mem::take(&mut self.accumulator).finish();
        let cost = completion.usage.cost_usd(&self.prices);
        let output = (!completion.choices.is_empty()).then_some(completion);
        let error = GatewayError::new(ErrorKind::Cancelled, "the client closed the connection");
        self.record(RunStatus::Cancelled, output, cost, Some(&error));
    }
}

/// Tells the provider actor how a call went, without waiting (it hands the outcome on to the
/// router, which learns from it).
fn report(planned: &PlannedAttempt, admission: Admission, error: Option<ErrorKind>, d: Duration) {
    let outcome = AttemptOutcome {
        model: planned.offer.model.clone(),
        error,
        latency: d,
        probe: admission == Admission::Probe,
    };
    planned.provider.report(outcome);
}

fn summary(planned: &PlannedAttempt, previous: Option<&GatewayError>) -> AttemptSummary {
    AttemptSummary {
        provider: planned.provider.name().to_string(),
        model: planned.offer.model.clone(),
        status: None,
        error: None,
        duration_seconds: 0.0,
        reason: match (planned.reason, previous) {
            (Some(reason), Some(e)) => Some(format!("{reason} after {}", e.kind.metric_label())),
            (Some(reason), None) => Some(reason.to_string()),
            (None, _) => None,
        },
    }
}

/// The tracing span of one upstream call: `provider`, `model`, `attempt` (1-based within the
/// run) and, once known, `outcome` (`ok` or the error's metric label). Debug level: free
/// unless asked for (`FLOWGATE_LOG=flowgate_actors=debug`).
fn attempt_span(planned: &PlannedAttempt, attempt: usize) -> tracing::Span {
    tracing::debug_span!(
        "attempt",
        provider = planned.provider.name(),
        model = %planned.offer.model,
        attempt,
        outcome = tracing::field::Empty,
    )
}

/// Records an attempt's outcome on its span.
fn record_outcome<T>(span: &tracing::Span, result: &Result<T, GatewayError>) {
    if !span.is_disabled() {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.kind.metric_label(),
        };
        span.record("outcome", outcome);
    }
}

/// One upstream call under the provider's total timeout, reported to its actor, in its own
/// `attempt` span.
async fn call_provider(
    planned: &PlannedAttempt,
    admission: Admission,
    request: &ChatRequest,
    attempt: usize,
) -> (Result<Completion, GatewayError>, Duration) {
    use tracing::Instrument;
    let span = attempt_span(planned, attempt);
    let (result, elapsed) = call_provider_in_span(planned, admission, request)
        .instrument(span.clone())
        .await;
    record_outcome(&span, &result);
    (result, elapsed)
}

async fn call_provider_in_span(
    planned: &PlannedAttempt,
    admission: Admission,
    request: &ChatRequest,
) -> (Result<Completion, GatewayError>, Duration) {
    let call = UpstreamRequest {
        request,
        model: &planned.offer.model,
        reasoning_effort: planned.reasoning_effort.as_deref(),
    };
    let started = Instant::now();
    let total = planned.provider.settings.timeouts.total();
    let result = match tokio::time::timeout(total, planned.provider.client.complete(call)).await {
        Ok(result) => result,
        Err(_) => Err(GatewayError::new(
            ErrorKind::Timeout,
            format!(
                "provider `{}` did not answer within {:.1}s",
                planned.provider.name(),
                total.as_secs_f64()
            ),
        )),
    };
    let elapsed = started.elapsed();
    report(
        planned,
        admission,
        result.as_ref().err().map(|e| e.kind),
        elapsed,
    );
    (result, elapsed)
}

/// Whether a provider refused the request because of its JSON schema (unsupported keywords,
/// strict-mode rules): then the next layer down is tried.
fn rejects_schema(error: &GatewayError) -> bool {
    if error.kind != ErrorKind::UpstreamBadRequest {
        return false;
    }
    let message = error.message.to_ascii_lowercase();
    ["schema", "response_format", "strict", "json mode"]
        .iter()
        .any(|needle| message.contains(needle))
}

/// The error once every attempt failed or was skipped.
fn exhausted(
    last: Option<GatewayError>,
    attempts: &[AttemptSummary],
    skipped: &[String],
) -> GatewayError {
    let mut error = match last {
        Some(e) => e,
        None => GatewayError::new(
            ErrorKind::NoProviderAvailable,
            format!(
                "every provider for this model has its circuit open: {}",
                skipped.join(", ")
            ),
        )
        .with_retry_after(Some(Duration::from_secs(1))),
    };
    error.attempts = attempts.to_vec();
    error
}

/// Walks a plan's attempts, then, with `use_fallback: auto`, the catalog's fallback models for
/// the class of the last error.
struct AttemptCursor {
    index: usize,
    extra: Vec<PlannedAttempt>,
    extended: bool,
}

impl AttemptCursor {
    fn new() -> Self {
        AttemptCursor {
            index: 0,
            extra: Vec::new(),
            extended: false,
        }
    }

    /// Adds the auto fallback models once the plan's own attempts are used up.
    fn extend(&mut self, gateway: &Gateway, plan: &FallbackPlan, last: Option<&GatewayError>) {
        if self.index >= plan.attempts.len() + self.extra.len() && !self.extended {
            self.extended = true;
            if let Some(error) = last.filter(|e| plan.auto_fallback && e.should_fallback()) {
                self.extra = auto_fallback_attempts(
                    &gateway.catalog.load(),
                    &gateway.providers,
                    gateway.routing_scores().as_deref(),
                    plan,
                    error.kind,
                );
            }
        }
    }

    /// Whether anything is left to try after `last`.
    fn has_more(&mut self, gateway: &Gateway, plan: &FallbackPlan, last: &GatewayError) -> bool {
        self.extend(gateway, plan, Some(last));
        self.index < plan.attempts.len() + self.extra.len()
    }

    fn next<'a>(
        &'a mut self,
        gateway: &Gateway,
        plan: &'a FallbackPlan,
        last: Option<&GatewayError>,
    ) -> Option<&'a PlannedAttempt> {
        let planned = plan.attempts.len();
        self.extend(gateway, plan, last);
        let i = self.index;
        self.index += 1;
        if i < planned {
            plan.attempts.get(i)
        } else {
            self.extra.get(i - planned)
        }
    }
}

/// What follows a failed upstream call.
enum AfterFailure {
    /// The same provider again (the wait is over).
    Retry,
    /// The next attempt of the plan.
    NextAttempt,
    /// The error goes back to the client (it is not one another provider would fix).
    Stop,
}

impl LiveStream {
    /// Turns content deltas into argument deltas of one call to `name` (and the final `stop`
    /// into `tool_calls`), for a forced tool answered below the native layer.
    fn into_tool_call(self, name: String, run_id: Uuid) -> LiveStream {
        use futures::StreamExt;

        let id = format!("call_{}", run_id.simple());
        let mut named = false;
        let mut convert = move |event: StreamEvent| match event {
            StreamEvent::Content { index, text } => {
                let first = !std::mem::replace(&mut named, true);
                StreamEvent::ToolCall {
                    index,
                    call: 0,
                    id: first.then(|| id.clone()),
                    name: first.then(|| name.clone()),
                    arguments: text,
                }
            }
            StreamEvent::Finish { index, reason } => StreamEvent::Finish {
                index,
                reason: if reason == FinishReason::Stop {
                    FinishReason::ToolCalls
                } else {
                    reason
                },
            },
            other => other,
        };
        let first = convert(self.first);
        LiveStream {
            first,
            rest: self.rest.map(move |item| item.map(&mut convert)).boxed(),
            model: self.model,
        }
    }
}

impl Gateway {
    /// Runs a non-streaming request to the end: coalesced with identical in-flight requests when
    /// the cache applies, otherwise straight through the plan.
    pub async fn complete(
        &self,
        guard: &mut RunGuard,
        plan: &FallbackPlan,
        request: &ChatRequest,
    ) -> Result<Arc<Answer>, GatewayError> {
        if !is_cacheable(request) {
            return self.execute(guard, plan, request).await.map(Arc::new);
        }
        let key = CacheKey::with_version(
            &guard.ctx.tenant,
            &guard.ctx.agent,
            guard.ctx.version_id.as_deref(),
            request,
        );
        if let Some(stored) = self.cache.lookup(&key).await {
            guard.cache = CacheStatus::Hit;
            guard.source_run_id = Some(stored.source_run_id);
            return Ok(Arc::new(stored.into_answer()));
        }
        match self.cache.join(key).await? {
            Join::Lead => {
                guard.cache = CacheStatus::Miss;
                let leadership = self.cache.leader(key);
                let result = self.execute(guard, plan, request).await.map(Arc::new);
                if let Ok(answer) = &result {
                    self.cache.store(key, answer);
                }
                leadership.complete(result.clone());
                result
            }
            Join::Follow(rx) => match rx.await {
                Ok(Ok(answer)) => {
                    self.metrics.coalesced.inc();
                    guard.cache = CacheStatus::Coalesced;
                    guard.source_run_id = Some(answer.run_id);
                    Ok(answer)
                }
                // The leader went away: do the work ourselves.
                Ok(Err(e)) if e.kind == ErrorKind::Cancelled => {
                    self.execute(guard, plan, request).await.map(Arc::new)
                }
                Ok(Err(e)) => {
                    guard.cache = CacheStatus::Coalesced;
                    Err(e)
                }
                Err(_) => self.execute(guard, plan, request).await.map(Arc::new),
            },
        }
    }

    /// Tries the plan's attempts in order until one answers or an error should not fall back.
    async fn execute(
        &self,
        guard: &mut RunGuard,
        plan: &FallbackPlan,
        request: &ChatRequest,
    ) -> Result<Answer, GatewayError> {
        let spec = StructuredSpec::of(request);
        let mut last: Option<GatewayError> = None;
        let mut skipped = Vec::new();
        let deadline = guard.ctx.started + self.retry.request_timeout();
        let mut cursor = AttemptCursor::new();
        if spec.is_none() {
            if let Some(after) = self.hedge_after(&guard.ctx.agent, plan) {
                match self.hedged(guard, plan, request, after).await {
                    (Ok((completion, planned)), _) => {
                        guard.pay(&completion.usage, &planned.offer.prices);
                        return Ok(self.answer(guard, planned, completion));
                    }
                    (Err(error), tried) => {
                        cursor.index = tried;
                        let fallback = error.should_fallback();
                        last = Some(error);
                        if !fallback {
                            return Err(exhausted(last, &guard.attempts, &skipped));
                        }
                    }
                }
            }
        }
        while let Some(planned) = cursor.next(self, plan, last.as_ref()) {
            // Owned, so the cursor can be asked what is left while this attempt runs.
            let planned = &planned.clone();
            let admission = planned.provider.health.admit_model(&planned.offer.model);
            if admission == Admission::Refused {
                skipped.push(planned.provider.name().to_string());
                continue;
            }
            guard.model = Some(planned.model.id.clone());
            guard.provider = Some(planned.provider.name().to_string());
            guard.provider_model = Some(planned.offer.model.clone());
            guard.prices = planned.offer.prices;
            let supports = planned.model.supports;
            let mut layer = spec.as_ref().map(|s| s.layer_for(&supports));
            let mut sent: Cow<'_, ChatRequest> = match (&spec, layer) {
                (Some(spec), Some(layer)) if layer != Layer::Native => {
                    Cow::Owned(spec.rewrite(request, layer))
                }
                _ => Cow::Borrowed(request),
            };
            let mut reason: Option<String> = None;
            let mut repairs_left = 1;
            let mut retries = 0;
            // Calls to this provider: the first, a repair, or a lower layer.
            loop {
                let mut attempt = summary(planned, last.as_ref());
                if reason.is_some() {
                    attempt.reason = reason.take();
                }
                let (result, elapsed) =
                    call_provider(planned, admission, &sent, guard.attempts.len() + 1).await;
                attempt.duration_seconds = elapsed.as_secs_f64();
                let completion = match result {
                    Ok(completion) => completion,
                    Err(error) => {
                        attempt.status = error.upstream_status;
                        attempt.error = Some(error.kind.metric_label().to_string());
                        guard.attempts.push(attempt);
                        tracing::warn!(
                            provider = planned.provider.name(),
                            model = %planned.offer.model,
                            error = %error,
                            "attempt failed"
                        );
                        // A provider that rejects the schema gets the next layer down.
                        if let (Some(spec), Some(current)) = (&spec, layer) {
                            if current == Layer::Native && rejects_schema(&error) {
                                if let Some(lower) = current.degrade(&supports) {
                                    layer = Some(lower);
                                    sent = Cow::Owned(spec.rewrite(request, lower));
                                    reason = Some(format!(
                                        "schema_rejected, retry at {}",
                                        lower.as_str()
                                    ));
                                    continue;
                                }
                            }
                        }
                        let next = self
                            .after_failure(
                                &error,
                                &mut retries,
                                &mut reason,
                                deadline,
                                &mut cursor,
                                plan,
                            )
                            .await;
                        last = Some(error);
                        match next {
                            AfterFailure::Retry => continue,
                            AfterFailure::NextAttempt => break,
                            AfterFailure::Stop => {
                                return Err(exhausted(last, &guard.attempts, &skipped))
                            }
                        }
                    }
                };
                attempt.status = Some(200);
                // Every upstream call of the run is paid for, repairs and failed ones included.
                guard.pay(&completion.usage, &planned.offer.prices);
                // The object the client asked for (a spec), or the tool calls the model chose
                // to make, checked against their schemas.
                let current = layer.unwrap_or(Layer::Native);
                let checked: Result<Option<Value>, String> = match &spec {
                    Some(spec) => spec.extract(&completion, current).and_then(|value| {
                        self.validators
                            .validate(&spec.schema, &value)
                            .map(|_| Some(value))
                    }),
                    None => match validate_tool_calls(&self.validators, &sent, &completion) {
                        Ok(true) => Ok(None),
                        Ok(false) => {
                            guard.attempts.push(attempt);
                            return Ok(self.answer(guard, planned, completion));
                        }
                        Err(problem) => Err(problem),
                    },
                };
                match checked {
                    Ok(value) => {
                        guard.attempts.push(attempt);
                        guard.structured.layer = Some(current);
                        let outcome = if guard.structured.repairs > 0 {
                            "repaired"
                        } else {
                            "valid"
                        };
                        self.count_structured(current, outcome);
                        let shaped = match (&spec, value) {
                            (Some(spec), Some(value)) => spec.shape(completion, &value),
                            _ => completion,
                        };
                        return Ok(self.answer(guard, planned, shaped));
                    }
                    Err(problem) => {
                        attempt.error = Some(
                            ErrorKind::InvalidStructuredOutput
                                .metric_label()
                                .to_string(),
                        );
                        guard.attempts.push(attempt);
                        guard.structured.layer = Some(current);
                        guard.structured.validation_errors.push(problem.clone());
                        self.count_structured(current, "invalid");
                        if repairs_left > 0 {
                            repairs_left -= 1;
                            guard.structured.repairs += 1;
                            sent = Cow::Owned(repair_request(
                                &sent,
                                &answer_text(&completion),
                                &problem,
                            ));
                            reason = Some("repair after invalid_structured_output".to_string());
                            continue;
                        }
                        let what = spec
                            .as_ref()
                            .map_or("its tool calls' schemas", |s| s.name.as_str());
                        last = Some(GatewayError::new(
                            ErrorKind::InvalidStructuredOutput,
                            format!(
                                "`{}` did not produce output matching `{what}`: {problem}",
                                planned.model.id
                            ),
                        ));
                        break;
                    }
                }
            }
        }
        Err(exhausted(last, &guard.attempts, &skipped))
    }

    fn answer(
        &self,
        guard: &RunGuard,
        planned: &PlannedAttempt,
        mut completion: Completion,
    ) -> Answer {
        completion.usage = guard.paid_usage;
        Answer {
            completion,
            model: planned.model.id.clone(),
            provider: planned.provider.name().to_string(),
            provider_model: planned.offer.model.clone(),
            cost_usd: guard.paid_usd,
            attempts: guard.attempts.clone(),
            run_id: guard.ctx.run_id,
        }
    }

    /// The hedge delay, when the agent opted in and the plan starts with two healthy providers.
    fn hedge_after(&self, agent: &str, plan: &FallbackPlan) -> Option<Duration> {
        let after = self.hedging.after_for(agent)?;
        let [first, second, ..] = plan.attempts.as_slice() else {
            return None;
        };
        let healthy = |p: &PlannedAttempt| p.provider.health.state() == CircuitState::Closed;
        (first.provider.name() != second.provider.name() && healthy(first) && healthy(second))
            .then_some(after)
    }

    /// A hedged request: the first attempt, and if it has not answered within `after`, the
    /// second one too; the first success wins and the other call is cancelled. Returns the
    /// answer and its attempt, or the last error and how many plan attempts were used.
    async fn hedged<'p>(
        &self,
        guard: &mut RunGuard,
        plan: &'p FallbackPlan,
        request: &ChatRequest,
        after: Duration,
    ) -> (
        Result<(Completion, &'p PlannedAttempt), GatewayError>,
        usize,
    ) {
        use futures::future::{select, Either};

        let (first, second) = (&plan.attempts[0], &plan.attempts[1]);
        let record = |guard: &mut RunGuard,
                      planned: &PlannedAttempt,
                      result: &Result<Completion, GatewayError>,
                      elapsed: Duration,
                      reason: Option<String>| {
            let mut attempt = summary(planned, None);
            attempt.reason = reason;
            attempt.duration_seconds = elapsed.as_secs_f64();
            match result {
                Ok(_) => attempt.status = Some(200),
                Err(e) => {
                    attempt.status = e.upstream_status;
                    attempt.error = Some(e.kind.metric_label().to_string());
                }
            }
            guard.attempts.push(attempt);
        };
        let n = guard.attempts.len();
        let mut a = Box::pin(call_provider(first, Admission::Admitted, request, n + 1));
        let timer = Box::pin(tokio::time::sleep(after));
        if let Either::Left(((result, elapsed), _)) = select(a.as_mut(), timer).await {
            // Answered (or failed) before the hedge was needed.
            record(guard, first, &result, elapsed, None);
            return (result.map(|c| (c, first)), 1);
        }
        let hedge_started = Instant::now();
        let b = Box::pin(call_provider(second, Admission::Admitted, request, n + 2));
        let hedge = || Some("hedge".to_string());
        match select(a, b).await {
            Either::Left(((result, elapsed), b)) => {
                record(guard, first, &result, elapsed, None);
                if let Ok(completion) = result {
                    drop(b);
                    let cancelled = Err(GatewayError::new(ErrorKind::Cancelled, "hedge lost"));
                    record(guard, second, &cancelled, hedge_started.elapsed(), hedge());
                    return (Ok((completion, first)), 2);
                }
                let (result, elapsed) = b.await;
                record(guard, second, &result, elapsed, hedge());
                (result.map(|c| (c, second)), 2)
            }
            Either::Right(((result, elapsed), a)) => {
                if let Ok(completion) = result {
                    drop(a);
                    let cancelled = Err(GatewayError::new(ErrorKind::Cancelled, "hedge lost"));
                    record(
                        guard,
                        first,
                        &cancelled,
                        after + hedge_started.elapsed(),
                        None,
                    );
                    record(guard, second, &Ok(completion.clone()), elapsed, hedge());
                    return (Ok((completion, second)), 2);
                }
                record(guard, second, &result, elapsed, hedge());
                let (result, elapsed) = a.await;
                record(guard, first, &result, after + elapsed, None);
                (result.map(|c| (c, first)), 2)
            }
        }
    }

    /// After a failed call: waits and says `Retry` when this provider is to be tried again,
    /// else whether the next attempt of the plan may follow.
    async fn after_failure(
        &self,
        error: &GatewayError,
        retries: &mut u32,
        reason: &mut Option<String>,
        deadline: Instant,
        cursor: &mut AttemptCursor,
        plan: &FallbackPlan,
    ) -> AfterFailure {
        if let Some(delay) = self.retry_delay(error, *retries, deadline, cursor, plan) {
            *retries += 1;
            *reason = Some(format!("retry after {}", error.kind.metric_label()));
            tokio::time::sleep(delay).await;
            return AfterFailure::Retry;
        }
        if error.should_fallback() {
            AfterFailure::NextAttempt
        } else {
            AfterFailure::Stop
        }
    }

    /// How long to wait before retrying the same provider after `error`, if at all: only for
    /// transient errors, when the plan has nothing else to try, within the retry budget and
    /// the request's deadline.
    fn retry_delay(
        &self,
        error: &GatewayError,
        retries: u32,
        deadline: Instant,
        cursor: &mut AttemptCursor,
        plan: &FallbackPlan,
    ) -> Option<Duration> {
        if !RetryPolicy::is_retryable(error.kind)
            || retries >= self.retry.max_retries
            || cursor.has_more(self, plan, error)
        {
            return None;
        }
        let delay = self.retry.delay(retries, error.retry_after)?;
        (Instant::now() + delay < deadline).then_some(delay)
    }

    fn count_structured(&self, layer: Layer, outcome: &str) {
        self.metrics
            .structured_outputs
            .with_label_values(&[layer.as_str(), outcome])
            .inc();
    }

    /// A streamed answer: replayed from the cache, shared with an identical stream in flight,
    /// or opened on a provider.
    pub async fn stream(
        &self,
        guard: &mut RunGuard,
        plan: &FallbackPlan,
        request: &ChatRequest,
    ) -> Result<LiveStream, GatewayError> {
        if !is_cacheable(request) {
            return self.open_stream(guard, plan, request).await;
        }
        let key = CacheKey::with_version(
            &guard.ctx.tenant,
            &guard.ctx.agent,
            guard.ctx.version_id.as_deref(),
            request,
        );
        if let Some(stored) = self.cache.lookup(&key).await {
            guard.cache = CacheStatus::Hit;
            guard.source_run_id = Some(stored.source_run_id);
            guard.model = Some(stored.model.clone());
            guard.provider = Some(stored.provider.clone());
            guard.provider_model = Some(stored.provider_model.clone());
            return Ok(stored.replay());
        }
        match self.cache.join_stream(key).await? {
            StreamJoin::Lead(leadership) => {
                guard.cache = CacheStatus::Miss;
                match self.open_stream(guard, plan, request).await {
                    Ok(live) => {
                        let source = StreamSource {
                            run_id: guard.ctx.run_id,
                            model: live.model.clone(),
                            provider: guard.provider.clone().unwrap_or_default(),
                            provider_model: guard.provider_model.clone().unwrap_or_default(),
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
            StreamJoin::Follow(follower) => match follower.open().await {
                Ok(followed) => {
                    self.metrics.coalesced.inc();
                    guard.cache = CacheStatus::Coalesced;
                    guard.source_run_id = Some(followed.source.run_id);
                    guard.model = Some(followed.source.model.clone());
                    guard.provider = Some(followed.source.provider.clone());
                    guard.provider_model = Some(followed.source.provider_model.clone());
                    Ok(followed.live)
                }
                Err(e) if e.kind == ErrorKind::Cancelled => {
                    self.open_stream(guard, plan, request).await
                }
                Err(e) => {
                    guard.cache = CacheStatus::Coalesced;
                    Err(e)
                }
            },
        }
    }

    /// Opens a stream on the first attempt of the plan that delivers a first event. Failures
    /// before that are invisible to the client: the next attempt is tried.
    pub async fn open_stream(
        &self,
        guard: &mut RunGuard,
        plan: &FallbackPlan,
        request: &ChatRequest,
    ) -> Result<LiveStream, GatewayError> {
        use futures::StreamExt;
        use tracing::Instrument;

        let spec = StructuredSpec::of(request);
        let mut last: Option<GatewayError> = None;
        let mut skipped = Vec::new();
        let deadline = guard.ctx.started + self.retry.request_timeout();
        let mut cursor = AttemptCursor::new();
        while let Some(planned) = cursor.next(self, plan, last.as_ref()) {
            let planned = &planned.clone();
            let admission = planned.provider.health.admit_model(&planned.offer.model);
            if admission == Admission::Refused {
                skipped.push(planned.provider.name().to_string());
                continue;
            }
            let layer = spec.as_ref().map(|s| s.layer_for(&planned.model.supports));
            let sent: Cow<'_, ChatRequest> = match (&spec, layer) {
                (Some(spec), Some(layer)) if layer != Layer::Native => {
                    Cow::Owned(spec.rewrite(request, layer))
                }
                _ => Cow::Borrowed(request),
            };
            let mut retries = 0;
            let mut reason: Option<String> = None;
            loop {
                let mut attempt = summary(planned, last.as_ref());
                if reason.is_some() {
                    attempt.reason = reason.take();
                }
                let call = UpstreamRequest {
                    request: &sent,
                    model: &planned.offer.model,
                    reasoning_effort: planned.reasoning_effort.as_deref(),
                };
                let started = Instant::now();
                let first_byte = planned.provider.settings.timeouts.first_byte();
                let span = attempt_span(planned, guard.attempts.len() + 1);
                let opened = tokio::time::timeout(first_byte, async {
                    let mut stream = planned.provider.client.stream(call).await?;
                    match stream.next().await {
                        Some(Ok(first)) => Ok((first, stream)),
                        Some(Err(e)) => Err(e),
                        None => Err(GatewayError::new(
                            ErrorKind::UpstreamMalformed,
                            format!(
                                "provider `{}` sent an empty stream",
                                planned.provider.name()
                            ),
                        )),
                    }
                })
                .instrument(span.clone())
                .await
                .unwrap_or_else(|_| {
                    Err(GatewayError::new(
                        ErrorKind::Timeout,
                        format!(
                            "provider `{}` sent nothing within {:.1}s",
                            planned.provider.name(),
                            first_byte.as_secs_f64()
                        ),
                    ))
                });
                record_outcome(&span, &opened);
                match opened {
                    Ok((first, rest)) => {
                        attempt.status = Some(200);
                        guard.attempts.push(attempt);
                        guard.model = Some(planned.model.id.clone());
                        guard.provider = Some(planned.provider.name().to_string());
                        guard.provider_model = Some(planned.offer.model.clone());
                        guard.prices = planned.offer.prices;
                        guard.open_attempt = Some(OpenAttempt {
                            planned: planned.clone(),
                            admission,
                            started,
                            index: guard.attempts.len() - 1,
                        });
                        let mut live = LiveStream {
                            first,
                            rest,
                            model: planned.model.id.clone(),
                        };
                        if let (Some(spec), Some(layer)) = (spec, layer) {
                            // Below the native layer, prose and code fences around the JSON
                            // never reach the client.
                            if layer != Layer::Native {
                                live = live.isolate_json();
                            }
                            // A forced tool answered in JSON or text mode still reaches the
                            // client as tool-call argument deltas.
                            if let (Target::Tool(name), true) =
                                (&spec.target, layer != Layer::Native)
                            {
                                live = live.into_tool_call(name.clone(), guard.ctx.run_id);
                            }
                            guard.streamed_spec = Some((spec, layer));
                        }
                        return Ok(live);
                    }
                    Err(error) => {
                        let elapsed = started.elapsed();
                        report(planned, admission, Some(error.kind), elapsed);
                        attempt.duration_seconds = elapsed.as_secs_f64();
                        attempt.status = error.upstream_status;
                        attempt.error = Some(error.kind.metric_label().to_string());
                        guard.attempts.push(attempt);
                        tracing::warn!(
                            provider = planned.provider.name(),
                            model = %planned.offer.model,
                            error = %error,
                            "stream attempt failed before its first event"
                        );
                        let next = self
                            .after_failure(
                                &error,
                                &mut retries,
                                &mut reason,
                                deadline,
                                &mut cursor,
                                plan,
                            )
                            .await;
                        last = Some(error);
                        match next {
                            AfterFailure::Retry => continue,
                            AfterFailure::NextAttempt => break,
                            AfterFailure::Stop => {
                                return Err(exhausted(last, &guard.attempts, &skipped))
                            }
                        }
                    }
                }
            }
        }
        Err(exhausted(last, &guard.attempts, &skipped))
    }
}

#[cfg(test)]
mod tests;
