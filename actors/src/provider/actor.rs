//! The provider actor: owns one provider's circuit breaker and health figures, and publishes them
//! on a [`HealthBoard`] that the request path reads without waiting on the mailbox.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use arc_swap::ArcSwap;
use dashmap::DashMap;
use serde::Serialize;

use crate::breaker::{BreakerSettings, CircuitBreaker, CircuitState};
use crate::error::ErrorKind;
use crate::outbox::{self, Drains, Outbox, Pending};
use crate::recorder::metrics::Metrics;

/// Time source, injectable so breaker transitions can be tested without sleeping.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// What readers see of a provider's health.
#[derive(Debug, Clone, Serialize)]
pub struct HealthSnapshot {
    pub state: CircuitState,
    /// Failures among the last outcomes (up to [`WINDOW`]).
    pub error_rate: f64,
    /// Exponentially weighted mean latency of successful calls.
    pub latency_seconds: Option<f64>,
    pub requests_total: u64,
    pub failures_total: u64,
    /// Seconds until an open circuit lets a probe through.
    pub retry_in_seconds: Option<f64>,
}

/// Outcomes kept for the error rate.
pub const WINDOW: usize = 100;

/// Published health of one provider: a snapshot swapped atomically, and the probe permits of a
/// half-open circuit.
#[derive(Debug)]
pub struct HealthBoard {
    snapshot: ArcSwap<HealthSnapshot>,
    probe_permits: AtomicU32,
    /// Circuits of single models, for errors that concern one model of the provider (rate
    /// limits and overload are per model at most providers). Absent: closed.
    models: DashMap<String, ModelGate>,
}

/// The published circuit of one model.
#[derive(Debug)]
struct ModelGate {
    state: AtomicU8,
    probe_permits: AtomicU32,
}

fn state_code(state: CircuitState) -> u8 {
    match state {
        CircuitState::Closed => 0,
        CircuitState::Open => 1,
        CircuitState::HalfOpen => 2,
    }
}

/// The request path's answer from [`HealthBoard::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Circuit closed: go.
    Admitted,
    /// Circuit half-open and a probe permit was taken: go, and report the outcome.
    Probe,
    /// Circuit open: skip this provider.
    Refused,
}

impl HealthBoard {
    fn new() -> Self {
        HealthBoard {
            snapshot: ArcSwap::from_pointee(HealthSnapshot {
                state: CircuitState::Closed,
                error_rate: 0.0,
                latency_seconds: None,
                requests_total: 0,
                failures_total: 0,
                retry_in_seconds: None,
            }),
            probe_permits: AtomicU32::new(0),
            models: DashMap::new(),
        }
    }

    pub fn snapshot(&self) -> Arc<HealthSnapshot> {
        self.snapshot.load_full()
    }

    pub fn state(&self) -> CircuitState {
        self.snapshot.load().state
    }

    /// Admission for one model of the provider: the provider's circuit, then the model's.
    pub fn admit_model(&self, model: &str) -> Admission {
        let provider = self.admit();
        if provider == Admission::Refused {
            return provider;
        }
        let Some(gate) = self.models.get(model) else {
            return provider;
        };
        match gate.state.load(Ordering::Acquire) {
            0 => provider,
            _ => {
                let taken = gate
                    .probe_permits
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1))
                    .is_ok();
                if taken {
                    Admission::Probe
                } else {
                    Admission::Refused
                }
            }
        }
    }

    /// The models whose own circuit is not closed.
    pub fn open_models(&self) -> Vec<String> {
        let mut models: Vec<String> = self
            .models
            .iter()
            .filter(|g| g.state.load(Ordering::Acquire) != 0)
            .map(|g| g.key().clone())
            .collect();
        models.sort();
        models
    }

    /// Lock-free admission check for the request path.
    pub fn admit(&self) -> Admission {
        match self.snapshot.load().state {
            CircuitState::Closed => Admission::Admitted,
            CircuitState::Open | CircuitState::HalfOpen => {
                let taken = self
                    .probe_permits
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1))
                    .is_ok();
                if taken {
                    Admission::Probe
                } else {
                    Admission::Refused
                }
            }
        }
    }
}

/// The result of one upstream call, reported by the request path through the actor's outbox.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    /// The provider's model id the call was for.
    pub model: String,
    /// `None` on success.
    pub error: Option<ErrorKind>,
    pub latency: Duration,
    /// The call held a half-open probe permit.
    pub probe: bool,
}

/// The outcomes a provider actor took in one drain, handed on to whoever learns from them
/// (the router): one message per batch, between actors on the same arbiter, so learning costs
/// the request path nothing more than the breaker already does.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Outcomes {
    pub provider: Arc<str>,
    pub outcomes: Vec<AttemptOutcome>,
    /// When the batch was taken (the outcomes are at most a batch window older).
    pub at: std::time::Instant,
}

/// Re-evaluates time-driven transitions (open → half-open). Sent by the actor's own timer.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Tick;

/// Outcomes queued for the actor at most; beyond it samples are dropped (the actor is stuck).
const MAX_QUEUED_OUTCOMES: usize = 16_384;

pub struct ProviderActor {
    /// Outcomes reported by the request path ([`crate::provider::ProviderHandle::report`]).
    outcomes: Arc<Outbox<AttemptOutcome>>,
    drain_scheduled: bool,
    name: String,
    breaker: CircuitBreaker,
    settings: BreakerSettings,
    board: Arc<HealthBoard>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    window: VecDeque<bool>,
    latency_ewma: Option<f64>,
    requests_total: u64,
    failures_total: u64,
    /// Circuits of single models (see [`HealthBoard::admit_model`]).
    model_breakers: HashMap<String, CircuitBreaker>,
    /// Learns from the outcomes too (the router), if any.
    learner: Option<Recipient<Outcomes>>,
}

/// Errors that concern one model rather than the whole provider.
fn is_model_specific(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::RateLimited | ErrorKind::Overloaded)
}

impl ProviderActor {
    pub fn new(
        name: String,
        settings: BreakerSettings,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
    ) -> (ProviderActor, Arc<HealthBoard>) {
        let board = Arc::new(HealthBoard::new());
        metrics.circuit_state.with_label_values(&[&name]).set(0);
        let actor = ProviderActor {
            outcomes: Arc::new(Outbox::bounded(MAX_QUEUED_OUTCOMES)),
            drain_scheduled: false,
            name,
            breaker: CircuitBreaker::new(settings),
            settings,
            board: board.clone(),
            clock,
            metrics,
            window: VecDeque::with_capacity(WINDOW),
            latency_ewma: None,
            requests_total: 0,
            failures_total: 0,
            model_breakers: HashMap::new(),
            learner: None,
        };
        (actor, board)
    }

    /// Hands every batch of outcomes on to `learner` once applied.
    pub fn with_learner(mut self, learner: Recipient<Outcomes>) -> Self {
        self.learner = Some(learner);
        self
    }

    /// Where the request path queues this actor's outcomes.
    pub fn outcomes(&self) -> Arc<Outbox<AttemptOutcome>> {
        self.outcomes.clone()
    }

    fn transitioned(&mut self, to: Option<CircuitState>, ctx: &mut Context<Self>) {
        let Some(to) = to else { return };
        tracing::info!(provider = %self.name, to = to.as_str(), "circuit transition");
        self.metrics
            .circuit_transitions
            .with_label_values(&[&self.name, to.as_str()])
            .inc();
        self.metrics
            .circuit_state
            .with_label_values(&[&self.name])
            .set(to.gauge());
        match to {
            CircuitState::HalfOpen => self
                .board
                .probe_permits
                .store(self.settings.half_open_probes, Ordering::Release),
            CircuitState::Open => {
                self.board.probe_permits.store(0, Ordering::Release);
                // Wake up when the cool-down ends to move to half-open.
                ctx.run_later(self.settings.cooldown, |_, ctx| ctx.notify(Tick));
            }
            CircuitState::Closed => self.board.probe_permits.store(0, Ordering::Release),
        }
    }

    /// The error rate over the window plus one more outcome, and the number of calls in it.
    fn error_rate_with(&self, ok: bool) -> (f64, u32) {
        let skip = usize::from(self.window.len() == WINDOW);
        let calls = self.window.iter().skip(skip).count() + 1;
        let failures = self.window.iter().skip(skip).filter(|ok| !**ok).count() + usize::from(!ok);
        (failures as f64 / calls as f64, calls as u32)
    }

    /// Feeds a model's own circuit and publishes its state.
    fn model_outcome(&mut self, outcome: &AttemptOutcome, now: Instant, ctx: &mut Context<Self>) {
        let model_failure = outcome.error.is_some_and(is_model_specific);
        if !model_failure && !self.model_breakers.contains_key(&outcome.model) {
            return;
        }
        let breaker = self
            .model_breakers
            .entry(outcome.model.clone())
            .or_insert_with(|| CircuitBreaker::new(self.settings));
        let transition = match outcome.error {
            None => breaker.on_success(now),
            Some(kind) if is_model_specific(kind) => breaker.on_failure(now, 0.0, 0),
            Some(_) => None,
        };
        let state = breaker.state();
        if let Some(to) = transition {
            tracing::info!(provider = %self.name, model = %outcome.model, to = to.as_str(), "model circuit transition");
            self.set_model_gate(&outcome.model, to);
            if to == CircuitState::Open {
                ctx.run_later(self.settings.cooldown, |_, ctx| ctx.notify(Tick));
            }
        }
        if state == CircuitState::Closed && outcome.error.is_none() {
            // Healthy again: forget it, so the request path's lookup stays cheap.
            self.model_breakers.remove(&outcome.model);
            self.board.models.remove(&outcome.model);
        }
    }

    fn set_model_gate(&self, model: &str, state: CircuitState) {
        let permits = match state {
            CircuitState::HalfOpen => self.settings.half_open_probes,
            _ => 0,
        };
        let gate = self
            .board
            .models
            .entry(model.to_string())
            .or_insert_with(|| ModelGate {
                state: AtomicU8::new(0),
                probe_permits: AtomicU32::new(0),
            });
        gate.probe_permits.store(permits, Ordering::Release);
        gate.state.store(state_code(state), Ordering::Release);
    }

    fn publish(&self) {
        let failures = self.window.iter().filter(|ok| !**ok).count();
        let now = self.clock.now();
        self.board.snapshot.store(Arc::new(HealthSnapshot {
            state: self.breaker.state(),
            error_rate: if self.window.is_empty() {
                0.0
            } else {
                failures as f64 / self.window.len() as f64
            },
            latency_seconds: self.latency_ewma,
            requests_total: self.requests_total,
            failures_total: self.failures_total,
            retry_in_seconds: self
                .breaker
                .retry_at()
                .map(|at| at.saturating_duration_since(now).as_secs_f64()),
        }));
    }
}

impl Actor for ProviderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        outbox::on_started(self, ctx);
    }
}

impl Handler<Pending> for ProviderActor {
    type Result = ();

    fn handle(&mut self, pending: Pending, ctx: &mut Self::Context) {
        outbox::on_pending(self, pending, ctx);
    }
}

impl Drains for ProviderActor {
    /// Applies every queued outcome, oldest first, then publishes the health once.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        let outcomes = self.outcomes.take();
        if outcomes.is_empty() {
            return;
        }
        for outcome in &outcomes {
            self.apply(outcome, ctx);
        }
        self.publish();
        if let Some(learner) = &self.learner {
            learner.do_send(Outcomes {
                provider: Arc::from(self.name.as_str()),
                outcomes,
                at: std::time::Instant::now(),
            });
        }
    }

    fn drain_scheduled(&mut self) -> &mut bool {
        &mut self.drain_scheduled
    }

    fn has_queued(&self) -> bool {
        !self.outcomes.is_empty()
    }
}

impl ProviderActor {
    /// One outcome: the breakers (provider and model), the window, the latency average.
    fn apply(&mut self, outcome: &AttemptOutcome, ctx: &mut Context<Self>) {
        let now = self.clock.now();
        let tick = self.breaker.tick(now);
        self.transitioned(tick, ctx);
        self.requests_total += 1;
        self.model_outcome(outcome, now, ctx);
        // Rate limits and overload of one model do not count against the whole provider.
        let failed = outcome
            .error
            .is_some_and(|k| k.is_provider_failure() && !is_model_specific(k));
        let transition = match outcome.error {
            None => {
                let latency = outcome.latency.as_secs_f64();
                self.latency_ewma = Some(match self.latency_ewma {
                    None => latency,
                    Some(mean) => mean * 0.9 + latency * 0.1,
                });
                self.breaker.on_success(now)
            }
            Some(_) if failed => {
                self.failures_total += 1;
                let (rate, calls) = self.error_rate_with(false);
                self.breaker.on_failure(now, rate, calls)
            }
            Some(_) => {
                // Not the provider's fault (e.g. a 400 the user caused): give the probe back.
                if outcome.probe && self.breaker.state() == CircuitState::HalfOpen {
                    self.board.probe_permits.fetch_add(1, Ordering::AcqRel);
                }
                None
            }
        };
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(!failed);
        self.transitioned(transition, ctx);
    }
}

impl Handler<Tick> for ProviderActor {
    type Result = ();

    fn handle(&mut self, _: Tick, ctx: &mut Self::Context) {
        let now = self.clock.now();
        let transition = self.breaker.tick(now);
        self.transitioned(transition, ctx);
        let half_open: Vec<String> = self
            .model_breakers
            .iter_mut()
            .filter_map(|(model, breaker)| breaker.tick(now).map(|_| model.clone()))
            .collect();
        for model in half_open {
            self.set_model_gate(&model, CircuitState::HalfOpen);
        }
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct ManualClock(Mutex<Instant>);

    /// Reports an outcome as the request path does (queued, then handed over) and waits until
    /// the actor has applied it.
    async fn report(
        addr: &Addr<ProviderActor>,
        outcomes: &Outbox<AttemptOutcome>,
        outcome: AttemptOutcome,
    ) {
        outcomes.push(outcome);
        addr.send(Pending { now: true }).await.unwrap();
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    #[actix_rt::test]
    async fn breaker_opens_refuses_probes_and_closes_on_manual_clock() {
        let clock = Arc::new(ManualClock(Mutex::new(Instant::now())));
        let settings = BreakerSettings {
            failure_threshold: 2,
            // Long enough that the actor's own timer never fires during the test.
            cooldown: Duration::from_secs(3600),
            half_open_probes: 1,
            ..BreakerSettings::default()
        };
        let (actor, board) =
            ProviderActor::new("p".into(), settings, clock.clone(), Metrics::new().unwrap());
        let outcomes = actor.outcomes();
        let addr = actor.start();
        let failure = AttemptOutcome {
            model: "m".into(),
            error: Some(ErrorKind::UpstreamServer),
            latency: Duration::from_millis(5),
            probe: false,
        };
        report(&addr, &outcomes, failure.clone()).await;
        assert_eq!(board.admit(), Admission::Admitted);
        report(&addr, &outcomes, failure).await;
        assert_eq!(board.state(), CircuitState::Open);
        assert_eq!(board.admit(), Admission::Refused);

        // Cool-down passes on the manual clock.
        *clock.0.lock().unwrap() += Duration::from_secs(3601);
        addr.send(Tick).await.unwrap();
        assert_eq!(board.state(), CircuitState::HalfOpen);
        assert_eq!(board.admit(), Admission::Probe);
        assert_eq!(board.admit(), Admission::Refused, "one probe at a time");

        report(
            &addr,
            &outcomes,
            AttemptOutcome {
                model: "m".into(),
                error: None,
                latency: Duration::from_millis(5),
                probe: true,
            },
        )
        .await;
        assert_eq!(board.state(), CircuitState::Closed);
        assert_eq!(board.admit(), Admission::Admitted);
        let snapshot = board.snapshot();
        assert_eq!(snapshot.requests_total, 3);
        assert_eq!(snapshot.failures_total, 2);
    }

    #[actix_rt::test]
    async fn rate_limits_open_only_that_models_circuit() {
        let clock = Arc::new(ManualClock(Mutex::new(Instant::now())));
        let settings = BreakerSettings {
            failure_threshold: 2,
            cooldown: Duration::from_secs(3600),
            half_open_probes: 1,
            ..BreakerSettings::default()
        };
        let (actor, board) =
            ProviderActor::new("p".into(), settings, clock.clone(), Metrics::new().unwrap());
        let outcomes = actor.outcomes();
        let addr = actor.start();
        let limited = AttemptOutcome {
            model: "busy-model".into(),
            error: Some(ErrorKind::RateLimited),
            latency: Duration::from_millis(1),
            probe: false,
        };
        report(&addr, &outcomes, limited.clone()).await;
        report(&addr, &outcomes, limited).await;
        assert_eq!(board.admit_model("busy-model"), Admission::Refused);
        assert_eq!(board.admit_model("other-model"), Admission::Admitted);
        assert_eq!(
            board.state(),
            CircuitState::Closed,
            "the provider stays closed"
        );
        assert_eq!(board.open_models(), vec!["busy-model".to_string()]);

        *clock.0.lock().unwrap() += Duration::from_secs(3601);
        addr.send(Tick).await.unwrap();
        assert_eq!(board.admit_model("busy-model"), Admission::Probe);
        report(
            &addr,
            &outcomes,
            AttemptOutcome {
                model: "busy-model".into(),
                error: None,
                latency: Duration::from_millis(1),
                probe: true,
            },
        )
        .await;
        assert_eq!(board.admit_model("busy-model"), Admission::Admitted);
        assert!(board.open_models().is_empty());
    }

    #[actix_rt::test]
    async fn client_errors_do_not_open_the_circuit() {
        let settings = BreakerSettings {
            failure_threshold: 1,
            ..BreakerSettings::default()
        };
        let (actor, board) = ProviderActor::new(
            "p".into(),
            settings,
            Arc::new(SystemClock),
            Metrics::new().unwrap(),
        );
        let outcomes = actor.outcomes();
        let addr = actor.start();
        report(
            &addr,
            &outcomes,
            AttemptOutcome {
                model: "m".into(),
                error: Some(ErrorKind::UpstreamBadRequest),
                latency: Duration::from_millis(1),
                probe: false,
            },
        )
        .await;
        assert_eq!(board.state(), CircuitState::Closed);
    }
}
