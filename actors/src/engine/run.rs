//! One run, from the moment a request is taken to its record: what is known before it is
//! executed ([`RunContext`], filled in by the HTTP edge), and the [`Run`] the engine owns while
//! it executes. A run is recorded exactly once: finished with a result, or, dropped (the client
//! went away), as a cancelled run with whatever was produced and what it cost.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use uuid::Uuid;

use super::Gateway;
use crate::agents::conversation::{answer_of, continuation_of};
use crate::answer::Answer;
use crate::catalog::Prices;
use crate::completion::{Completion, CompletionAccumulator, StreamEvent, Usage};
use crate::error::{AttemptSummary, ErrorKind, GatewayError};
use crate::provider::actor::Admission;
use crate::recorder::metrics::InFlight;
use crate::recorder::run::{
    feedback_token, CacheStatus, Door, RunRecord, RunSource, RunStatus, RunTelemetry,
    StructuredRecord,
};
use crate::router::PlannedAttempt;
use crate::structured::{Layer, StructuredSpec};

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
    /// The part of the run's time spent waiting for others: the client's body, upstream calls
    /// and streams, retry backoff, an identical request in flight. The rest is the gateway's
    /// overhead (`flowgate_gateway_overhead_seconds`).
    pub waited: Duration,
    pub created_at: SystemTime,
    pub request: Option<Box<serde_json::value::RawValue>>,
    pub input: Option<serde_json::Value>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub feedback_token: String,
    pub schema_id: Option<u32>,
    pub conversation_id: Option<Uuid>,
    /// The hash of the messages as sent, once resolved: an answered run's conversation link
    /// is its extension by the answer, kept in memory until the recorder stores it.
    pub messages_hash: Option<[u8; 32]>,
    /// The messages sent upstream, when templates were rendered or a deployment supplied them.
    pub rendered_messages: Option<Vec<crate::wire::Message>>,
    /// What started the run.
    pub source: RunSource,
    /// For a replay: the run it replays.
    pub replay_of: Option<Uuid>,
    /// The API the request came in through.
    pub door: Door,
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
            waited: Duration::ZERO,
            created_at: SystemTime::now(),
            request: None,
            input: None,
            metadata: None,
            feedback_token: feedback_token(run_id),
            schema_id: None,
            conversation_id: None,
            messages_hash: None,
            rendered_messages: None,
            source: RunSource::Api,
            replay_of: None,
            door: Door::ChatCompletions,
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
///
/// Boxed: a run lives in the request's futures, which hold it as an argument and again as a
/// local at each level and are copied whole when made; its state (1.2 KB) would be copied
/// with them a dozen times a request.
pub struct Run(Box<RunState>);

/// A [`Run`]'s state.
pub struct RunState {
    pub(super) gateway: Arc<Gateway>,
    pub(super) ctx: RunContext,
    pub(super) model: Option<String>,
    pub(super) provider: Option<String>,
    pub(super) provider_model: Option<String>,
    pub(super) prices: Prices,
    pub(super) attempts: Vec<AttemptSummary>,
    pub(super) cache: CacheStatus,
    pub(super) source_run_id: Option<Uuid>,
    /// How a structured output was produced and repaired.
    pub(super) structured: StructuredRecord,
    /// A streamed structured output, validated once the stream ends.
    pub(super) streamed_spec: Option<(StructuredSpec, Layer)>,
    /// What the finished upstream calls of a non-streamed run used and cost, repairs and
    /// failed validations included: paid even when the run fails.
    pub(super) paid_usage: Usage,
    pub(super) paid_usd: f64,
    /// Streamed output so far.
    accumulator: CompletionAccumulator,
    /// A streaming attempt still open, to report to its provider when the stream ends.
    pub(super) open_attempt: Option<OpenAttempt>,
    /// When the stream began to be relayed: from then on it goes at the pace of its provider
    /// and its client, and the run waits on them.
    pub(super) relaying_since: Option<Instant>,
    /// When the first event of a streamed answer went to the client.
    first_event_at: Option<Instant>,
    recorded: bool,
    /// The run's place in its key's and tenant's limits, charged when it is recorded.
    admission: Option<crate::keys::Admission>,
    /// Counts the run in `flowgate_requests_in_flight` while it lives.
    _in_flight: InFlight,
}

pub(super) struct OpenAttempt {
    pub(super) planned: PlannedAttempt,
    pub(super) admission: Admission,
    pub(super) started: Instant,
    pub(super) index: usize,
}

impl std::ops::Deref for Run {
    type Target = RunState;

    fn deref(&self) -> &RunState {
        &self.0
    }
}

impl std::ops::DerefMut for Run {
    fn deref_mut(&mut self) -> &mut RunState {
        &mut self.0
    }
}

impl Run {
    pub(super) fn new(gateway: Arc<Gateway>, ctx: RunContext) -> Run {
        let in_flight = gateway.metrics.in_flight();
        Run(Box::new(RunState {
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
            relaying_since: None,
            first_event_at: None,
            recorded: false,
            admission: None,
            _in_flight: in_flight,
        }))
    }

    pub fn duration_seconds(&self) -> f64 {
        self.ctx.started.elapsed().as_secs_f64()
    }

    /// What is known of the run before it is executed.
    pub fn context(&self) -> &RunContext {
        &self.ctx
    }

    /// Filled in by the edge while it reads and resolves the request, before
    /// [`Gateway::run`](super::Gateway::run).
    pub fn context_mut(&mut self) -> &mut RunContext {
        &mut self.ctx
    }

    pub fn id(&self) -> Uuid {
        self.ctx.run_id
    }

    /// Holds the run's place in its key's and tenant's limits until it is recorded, then
    /// charges them with what it cost and the tokens it used.
    pub fn hold(&mut self, admission: crate::keys::Admission) {
        self.admission = Some(admission);
    }

    /// The catalog model that answers (or was planned, until one answers).
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The provider that answered, or the last one tried.
    pub fn provider(&self) -> Option<&str> {
        self.provider.as_deref()
    }

    /// How the cache took part in the run.
    pub fn cache(&self) -> CacheStatus {
        self.cache
    }

    /// What the run's finished upstream calls cost so far (a failed run pays them too).
    pub fn paid_usd(&self) -> f64 {
        self.paid_usd
    }

    /// The upstream calls so far, in order.
    pub fn attempts(&self) -> &[AttemptSummary] {
        &self.attempts
    }

    pub(super) fn record(
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
        let duration = self.ctx.started.elapsed();
        let waited = self.ctx.waited + self.relaying_since.map_or(Duration::ZERO, |t| t.elapsed());
        let telemetry = RunTelemetry {
            http_status: error.map_or(200, |e| e.status_code().as_u16()),
            overhead_seconds: duration.saturating_sub(waited).as_secs_f64(),
            first_token_seconds: self
                .first_event_at
                .map(|t| t.saturating_duration_since(self.ctx.started).as_secs_f64()),
        };
        let usage = output.as_ref().map(|c| c.usage).unwrap_or(self.paid_usage);
        let conversation_id = self.ctx.conversation_id;
        // The link the next turn looks for, held in memory until stored: the client may send
        // the next turn as soon as it has this answer, before the recorder's batch is written.
        // The app's own runs only: a replay or a playground run with the same answer must not
        // take over the link, nor the app's next turn join its conversation.
        let links = self.ctx.source == RunSource::Api;
        let continuation = self
            .ctx
            .messages_hash
            .filter(|_| links)
            .and_then(|messages| {
                let answer = answer_of(status, output.as_ref())?;
                let hash = continuation_of(&messages, answer);
                let conversation = conversation_id.unwrap_or(self.ctx.run_id);
                self.gateway.agents.link_pending(
                    &self.ctx.tenant,
                    &self.ctx.agent,
                    hash,
                    conversation,
                );
                Some(hash)
            });
        // Recorded once, by a method that takes the run: its strings move into the record.
        let run = RunRecord {
            id: self.ctx.run_id,
            tenant: std::mem::take(&mut self.ctx.tenant),
            agent: std::mem::take(&mut self.ctx.agent),
            created_at: humantime::format_rfc3339_millis(self.ctx.created_at).to_string(),
            status,
            requested_model: std::mem::take(&mut self.ctx.requested_model),
            model: self.model.take(),
            provider: self.provider.take(),
            provider_model: self.provider_model.take(),
            version_id: self.ctx.version_id.take(),
            stream: self.ctx.stream,
            request: self.ctx.request.take(),
            input: self.ctx.input.take(),
            output,
            attempts: std::mem::take(&mut self.attempts),
            usage,
            cost_usd,
            duration_seconds: duration.as_secs_f64(),
            cache: self.cache,
            error: error.map(|e| e.body()),
            metadata: self.ctx.metadata.take(),
            feedback_token: std::mem::take(&mut self.ctx.feedback_token),
            source_run_id: self.source_run_id,
            structured: (self.structured.layer.is_some())
                .then(|| std::mem::take(&mut self.structured)),
            schema_id: self.ctx.schema_id,
            conversation_id,
            rendered_messages: self.ctx.rendered_messages.take(),
            source: self.ctx.source,
            replay_of: self.ctx.replay_of,
            door: self.ctx.door,
            continuation,
            telemetry,
        };
        if let Some(admission) = self.admission.take() {
            admission.charge(cost_usd, usage.total_tokens());
        }
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
    pub(super) fn pay(&mut self, usage: &Usage, prices: &Prices) {
        self.paid_usage.add(usage);
        self.paid_usd += usage.cost_usd(prices);
    }

    /// What this run pays for `answer`: the run that called the provider pays; a cache hit or
    /// a coalesced follower costs nothing.
    pub fn cost_of(&self, answer: &Answer) -> f64 {
        match self.cache {
            CacheStatus::Coalesced | CacheStatus::Hit => 0.0,
            CacheStatus::Miss | CacheStatus::Bypass => answer.cost_usd,
        }
    }

    /// Records a successful non-streamed run. The completion is moved into the run when the
    /// answer is not shared (no coalesced follower holds it), copied otherwise.
    pub fn succeed(mut self, answer: Arc<Answer>) {
        let cost_usd = self.cost_of(&answer);
        let answer = Arc::try_unwrap(answer).unwrap_or_else(|shared| (*shared).clone());
        self.model = Some(answer.model);
        self.provider = Some(answer.provider);
        self.provider_model = Some(answer.provider_model);
        self.record(RunStatus::Success, Some(answer.completion), cost_usd, None);
    }

    // ---- streaming ----

    /// Adds a streamed event to the run's output.
    pub fn push_event(&mut self, event: &StreamEvent) {
        if self.first_event_at.is_none() {
            self.first_event_at = Some(Instant::now());
        }
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
            open.planned.report(open.admission, error, elapsed);
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

impl Drop for Run {
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
