//! The attempt loop: one loop for whole answers and streams. It walks the plan's attempts (then
//! the catalog's automatic fallbacks), retries the same provider on transient errors, steps
//! down a structured-output layer when a provider rejects the schema, repairs an invalid output
//! once, and hedges for the agents that opted in. Every call is reported to its provider actor
//! (which hands it on to the router) and kept in the run's attempts.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use super::run::{OpenAttempt, Run};
use super::Gateway;
use crate::answer::{Answer, LiveStream};
use crate::breaker::CircuitState;
use crate::completion::{Completion, FinishReason, StreamEvent};
use crate::error::{AttemptSummary, ErrorKind, GatewayError};
use crate::provider::actor::Admission;
use crate::provider::{EventStream, UpstreamRequest};
use crate::retry::RetryPolicy;
use crate::router::{auto_fallback_attempts, FallbackPlan, PlannedAttempt};
use crate::structured::{
    answer_text, repair_request, validate_tool_calls, Layer, StructuredSpec, Target,
};
use crate::wire::ChatRequest;

/// What the plan's attempts are called for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    /// A whole answer, checked (and repaired) before it is returned.
    Complete,
    /// A stream: an attempt has answered once its first event arrived.
    Stream,
}

/// What the attempt that answered produced.
pub(super) enum Produced {
    Answer(Answer),
    Stream(LiveStream),
}

/// What becomes of an upstream answer once checked.
enum Checked {
    /// The answer for the client.
    Done(Answer),
    /// It did not validate: the same provider is asked to repair it with this request.
    Repair(Box<ChatRequest>),
    /// Invalid, and no repair is left: the next attempt.
    Invalid(GatewayError),
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
    // Boxed: the provider call's future (1.9 KB, the HTTP client's inside) would otherwise be
    // copied into each of the attempt loop's futures (see `Gateway::run`).
    let call = Box::pin(planned.provider.client.complete(call));
    let result = match tokio::time::timeout(total, call).await {
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
    planned.report(admission, result.as_ref().err().map(|e| e.kind), elapsed);
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
    /// Tries the plan's attempts in order until one answers or an error should not fall back.
    /// For a stream, failures before the first event are invisible to the client.
    pub(super) async fn attempts(
        &self,
        run: &mut Run,
        plan: &FallbackPlan,
        request: &ChatRequest,
        call: Call,
    ) -> Result<Produced, GatewayError> {
        let mut spec = StructuredSpec::of(request);
        let mut last: Option<GatewayError> = None;
        let mut skipped = Vec::new();
        let deadline = run.ctx.started + self.retry.request_timeout();
        let mut cursor = AttemptCursor::new();
        if call == Call::Complete && spec.is_none() {
            if let Some(after) = self.hedge_after(&run.ctx.agent, plan) {
                let waiting = Instant::now();
                let hedged = self.hedged(run, plan, request, after).await;
                run.ctx.waited += waiting.elapsed();
                match hedged {
                    (Ok((completion, planned)), _) => {
                        run.pay(&completion.usage, &planned.offer.prices);
                        return Ok(Produced::Answer(self.answer(run, planned, completion)));
                    }
                    (Err(error), tried) => {
                        cursor.index = tried;
                        let fallback = error.should_fallback();
                        last = Some(error);
                        if !fallback {
                            return Err(exhausted(last, &run.attempts, &skipped));
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
            run.model = Some(planned.model.id.clone());
            run.provider = Some(planned.provider.name().to_string());
            run.provider_model = Some(planned.offer.model.clone());
            run.prices = planned.offer.prices;
            let supports = planned.model.supports;
            let mut layer = spec.as_ref().map(|s| s.layer_for(&supports));
            let mut sent: Cow<'_, ChatRequest> = match (&spec, layer) {
                (Some(spec), Some(layer)) if layer != Layer::Native => {
                    Cow::Owned(spec.rewrite(request, layer))
                }
                _ => Cow::Borrowed(request),
            };
            let mut reason: Option<String> = None;
            let mut repairs_left = 1u32;
            let mut retries = 0;
            // Calls to this provider: the first, a retry, a repair, or a lower layer.
            loop {
                let mut attempt = summary(planned, last.as_ref());
                if reason.is_some() {
                    attempt.reason = reason.take();
                }
                let number = run.attempts.len() + 1;
                let error = match call {
                    Call::Complete => {
                        let (result, elapsed) =
                            call_provider(planned, admission, &sent, number).await;
                        run.ctx.waited += elapsed;
                        attempt.duration_seconds = elapsed.as_secs_f64();
                        match result {
                            Err(error) => error,
                            Ok(completion) => {
                                attempt.status = Some(200);
                                // Every upstream call of the run is paid for, repairs and
                                // failed ones included.
                                run.pay(&completion.usage, &planned.offer.prices);
                                let checked = self.check(
                                    run,
                                    planned,
                                    spec.as_ref(),
                                    layer,
                                    &sent,
                                    completion,
                                    attempt,
                                    &mut repairs_left,
                                );
                                match checked {
                                    Checked::Done(answer) => return Ok(Produced::Answer(answer)),
                                    Checked::Repair(repaired) => {
                                        sent = Cow::Owned(*repaired);
                                        reason =
                                            Some("repair after invalid_structured_output".into());
                                        continue;
                                    }
                                    Checked::Invalid(error) => {
                                        last = Some(error);
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Call::Stream => {
                        let started = Instant::now();
                        let first = first_event(planned, &sent, number).await;
                        run.ctx.waited += started.elapsed();
                        match first {
                            Ok((first, rest)) => {
                                attempt.status = Some(200);
                                run.attempts.push(attempt);
                                let open = OpenAttempt {
                                    planned: planned.clone(),
                                    admission,
                                    started,
                                    index: run.attempts.len() - 1,
                                };
                                let live = LiveStream {
                                    first,
                                    rest,
                                    model: planned.model.id.clone(),
                                };
                                return Ok(Produced::Stream(opened(
                                    run,
                                    open,
                                    live,
                                    spec.take(),
                                    layer,
                                )));
                            }
                            Err(error) => {
                                let elapsed = started.elapsed();
                                planned.report(admission, Some(error.kind), elapsed);
                                attempt.duration_seconds = elapsed.as_secs_f64();
                                error
                            }
                        }
                    }
                };
                attempt.status = error.upstream_status;
                attempt.error = Some(error.kind.metric_label().to_string());
                run.attempts.push(attempt);
                tracing::warn!(
                    provider = planned.provider.name(),
                    model = %planned.offer.model,
                    stream = call == Call::Stream,
                    error = %error,
                    "attempt failed"
                );
                // A provider that rejects the schema gets the next layer down.
                if let (Some(spec), Some(current)) = (&spec, layer) {
                    if current == Layer::Native && rejects_schema(&error) {
                        if let Some(lower) = current.degrade(&supports) {
                            layer = Some(lower);
                            sent = Cow::Owned(spec.rewrite(request, lower));
                            reason = Some(format!("schema_rejected, retry at {}", lower.as_str()));
                            continue;
                        }
                    }
                }
                let waiting = Instant::now();
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
                    AfterFailure::Retry => {
                        // The backoff is the retry policy's, not the gateway's own time.
                        run.ctx.waited += waiting.elapsed();
                        continue;
                    }
                    AfterFailure::NextAttempt => break,
                    AfterFailure::Stop => return Err(exhausted(last, &run.attempts, &skipped)),
                }
            }
        }
        Err(exhausted(last, &run.attempts, &skipped))
    }

    /// Checks an answer: the object the client asked for (a spec), or the tool calls the model
    /// chose to make, against their schemas.
    #[allow(clippy::too_many_arguments)]
    fn check(
        &self,
        run: &mut Run,
        planned: &PlannedAttempt,
        spec: Option<&StructuredSpec>,
        layer: Option<Layer>,
        sent: &ChatRequest,
        completion: Completion,
        mut attempt: AttemptSummary,
        repairs_left: &mut u32,
    ) -> Checked {
        let current = layer.unwrap_or(Layer::Native);
        let checked: Result<Option<Value>, String> = match spec {
            Some(spec) => spec.extract(&completion, current).and_then(|value| {
                self.validators
                    .validate(&spec.schema, &value)
                    .map(|_| Some(value))
            }),
            None => match validate_tool_calls(&self.validators, sent, &completion) {
                Ok(true) => Ok(None),
                Ok(false) => {
                    run.attempts.push(attempt);
                    return Checked::Done(self.answer(run, planned, completion));
                }
                Err(problem) => Err(problem),
            },
        };
        match checked {
            Ok(value) => {
                run.attempts.push(attempt);
                run.structured.layer = Some(current);
                let outcome = if run.structured.repairs > 0 {
                    "repaired"
                } else {
                    "valid"
                };
                self.count_structured(current, outcome);
                let shaped = match (spec, value) {
                    (Some(spec), Some(value)) => spec.shape(completion, &value),
                    _ => completion,
                };
                Checked::Done(self.answer(run, planned, shaped))
            }
            Err(problem) => {
                attempt.error = Some(
                    ErrorKind::InvalidStructuredOutput
                        .metric_label()
                        .to_string(),
                );
                run.attempts.push(attempt);
                run.structured.layer = Some(current);
                run.structured.validation_errors.push(problem.clone());
                self.count_structured(current, "invalid");
                if *repairs_left > 0 {
                    *repairs_left -= 1;
                    run.structured.repairs += 1;
                    return Checked::Repair(Box::new(repair_request(
                        sent,
                        &answer_text(&completion),
                        &problem,
                    )));
                }
                let what = spec.map_or("its tool calls' schemas", |s| s.name.as_str());
                Checked::Invalid(GatewayError::new(
                    ErrorKind::InvalidStructuredOutput,
                    format!(
                        "`{}` did not produce output matching `{what}`: {problem}",
                        planned.model.id
                    ),
                ))
            }
        }
    }

    fn answer(&self, run: &Run, planned: &PlannedAttempt, mut completion: Completion) -> Answer {
        completion.usage = run.paid_usage;
        Answer {
            completion,
            model: planned.model.id.clone(),
            provider: planned.provider.name().to_string(),
            provider_model: planned.offer.model.clone(),
            cost_usd: run.paid_usd,
            attempts: run.attempts.clone(),
            run_id: run.ctx.run_id,
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
        run: &mut Run,
        plan: &'p FallbackPlan,
        request: &ChatRequest,
        after: Duration,
    ) -> (
        Result<(Completion, &'p PlannedAttempt), GatewayError>,
        usize,
    ) {
        use futures::future::{select, Either};

        let (first, second) = (&plan.attempts[0], &plan.attempts[1]);
        let record = |run: &mut Run,
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
            run.attempts.push(attempt);
        };
        let n = run.attempts.len();
        let mut a = Box::pin(call_provider(first, Admission::Admitted, request, n + 1));
        let timer = Box::pin(tokio::time::sleep(after));
        if let Either::Left(((result, elapsed), _)) = select(a.as_mut(), timer).await {
            // Answered (or failed) before the hedge was needed.
            record(run, first, &result, elapsed, None);
            return (result.map(|c| (c, first)), 1);
        }
        let hedge_started = Instant::now();
        let b = Box::pin(call_provider(second, Admission::Admitted, request, n + 2));
        let hedge = || Some("hedge".to_string());
        match select(a, b).await {
            Either::Left(((result, elapsed), b)) => {
                record(run, first, &result, elapsed, None);
                if let Ok(completion) = result {
                    drop(b);
                    let cancelled = Err(GatewayError::new(ErrorKind::Cancelled, "hedge lost"));
                    record(run, second, &cancelled, hedge_started.elapsed(), hedge());
                    return (Ok((completion, first)), 2);
                }
                let (result, elapsed) = b.await;
                record(run, second, &result, elapsed, hedge());
                (result.map(|c| (c, second)), 2)
            }
            Either::Right(((result, elapsed), a)) => {
                if let Ok(completion) = result {
                    drop(a);
                    let cancelled = Err(GatewayError::new(ErrorKind::Cancelled, "hedge lost"));
                    record(
                        run,
                        first,
                        &cancelled,
                        after + hedge_started.elapsed(),
                        None,
                    );
                    record(run, second, &Ok(completion.clone()), elapsed, hedge());
                    return (Ok((completion, second)), 2);
                }
                record(run, second, &result, elapsed, hedge());
                let (result, elapsed) = a.await;
                record(run, first, &result, after + elapsed, None);
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
}

/// Opens a stream and waits for its first event, under the provider's first-byte timeout, in
/// the attempt's span.
async fn first_event(
    planned: &PlannedAttempt,
    request: &ChatRequest,
    attempt: usize,
) -> Result<(StreamEvent, EventStream), GatewayError> {
    use futures::StreamExt;
    use tracing::Instrument;

    let call = UpstreamRequest {
        request,
        model: &planned.offer.model,
        reasoning_effort: planned.reasoning_effort.as_deref(),
    };
    let first_byte = planned.provider.settings.timeouts.first_byte();
    let span = attempt_span(planned, attempt);
    let opened = tokio::time::timeout(first_byte, async {
        // Boxed, as the whole answer's call is (`call_provider_in_span`).
        let mut stream = Box::pin(planned.provider.client.stream(call)).await?;
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
    opened
}

/// A stream that delivered its first event: the run keeps its attempt open until the stream
/// ends, and a structured output below the native layer is shaped on the way out.
fn opened(
    run: &mut Run,
    open: OpenAttempt,
    mut live: LiveStream,
    spec: Option<StructuredSpec>,
    layer: Option<Layer>,
) -> LiveStream {
    run.open_attempt = Some(open);
    if let (Some(spec), Some(layer)) = (spec, layer) {
        // Below the native layer, prose and code fences around the JSON never reach the
        // client.
        if layer != Layer::Native {
            live = live.isolate_json();
        }
        // A forced tool answered in JSON or text mode still reaches the client as tool-call
        // argument deltas.
        if let (Target::Tool(name), true) = (&spec.target, layer != Layer::Native) {
            live = live.into_tool_call(name.clone(), run.ctx.run_id);
        }
        run.streamed_spec = Some((spec, layer));
    }
    live
}
