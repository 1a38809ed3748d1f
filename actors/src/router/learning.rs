//! What routing learns: per provider and model, a peak-EWMA of latency and an EWMA of the
//! failure rate, learned by the router actor from every upstream call and published as a
//! [`Scores`] snapshot that the planner reads lock-free. No request waits on the actor, and
//! the request path does nothing for it: each provider actor hands on the batch of outcomes it
//! took for its breaker ([`Outcomes`]), one message per batch.
//!
//! Peak-EWMA (Finagle's, as linkerd's and Helicone's balancers use it): a latency above the
//! average replaces it at once, so a provider that slows down loses its place on the next
//! request; below the average it decays towards the sample with a time constant
//! ([`DECAY`]), so a recovered provider regains its place within seconds, not after a fixed
//! number of calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use arc_swap::ArcSwap;
use serde::Serialize;

use crate::error::ErrorKind;
use crate::provider::actor::Outcomes;

/// How fast what was learned fades: the weight of the past after `t` is `exp(-t / DECAY)`.
pub const DECAY: Duration = Duration::from_secs(10);
/// A failure costs as much as this much latency (a provider that fails half its calls ranks
/// behind one that is 2.5 s slower).
const FAILURE_PENALTY_MS: f64 = 5_000.0;
/// A sample moves the averages by this share at least, even when it comes at the same instant
/// as the previous one (concurrent calls finish together).
const MIN_WEIGHT: f64 = 0.1;

/// How the planner orders the providers of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// In the catalog's order (the default): the first offer is always tried first.
    #[default]
    Ordered,
    /// Lowest learned cost first (peak-EWMA latency plus a penalty per failure share);
    /// offers not measured yet go first, so every one is measured.
    Fastest,
}

/// One upstream call, as routing learns from it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub provider: Arc<str>,
    pub model: String,
    pub latency: Duration,
    pub failed: bool,
    pub at: Instant,
}

/// What was learned of one provider serving one model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    /// Peak-EWMA of the call latency.
    pub latency_ms: f64,
    /// EWMA of the share of calls that failed.
    pub error_rate: f64,
    pub samples: u64,
    #[serde(skip)]
    updated: Instant,
}

impl Score {
    fn first(sample: &Sample) -> Score {
        Score {
            latency_ms: sample.latency.as_secs_f64() * 1000.0,
            error_rate: if sample.failed { 1.0 } else { 0.0 },
            samples: 1,
            updated: sample.at,
        }
    }

    fn learn(&mut self, sample: &Sample) {
        let elapsed = sample.at.saturating_duration_since(self.updated);
        let fresh = (1.0 - (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()).max(MIN_WEIGHT);
        let keep = 1.0 - fresh;
        // A failure's latency says little of how fast answers come (an error is often quick).
        if !sample.failed {
            let latency = sample.latency.as_secs_f64() * 1000.0;
            self.latency_ms = if latency > self.latency_ms {
                latency
            } else {
                self.latency_ms * keep + latency * fresh
            };
        }
        let failed = if sample.failed { 1.0 } else { 0.0 };
        self.error_rate = self.error_rate * keep + failed * fresh;
        self.samples += 1;
        self.updated = self.updated.max(sample.at);
    }

    /// What the planner minimizes.
    pub fn cost(&self) -> f64 {
        self.latency_ms + FAILURE_PENALTY_MS * self.error_rate
    }
}

/// The published snapshot: scores by provider, then by the provider's model id.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scores {
    pub providers: HashMap<String, HashMap<String, Score>>,
}

impl Scores {
    pub fn get(&self, provider: &str, model: &str) -> Option<&Score> {
        self.providers.get(provider)?.get(model)
    }
}

/// How the rest of the gateway reaches the router: where provider actors send their
/// outcomes, and the published scores. Cheap to clone.
#[derive(Clone)]
pub struct RouterHandle {
    addr: Addr<Router>,
    scores: Arc<ArcSwap<Scores>>,
    pub strategy: Strategy,
}

impl RouterHandle {
    /// What routing has learned so far.
    pub fn scores(&self) -> Arc<Scores> {
        self.scores.load_full()
    }

    /// Where a provider actor hands on its outcomes.
    pub fn learner(&self) -> Recipient<Outcomes> {
        self.addr.clone().recipient()
    }
}

/// The router actor: owns what routing learns.
pub struct Router {
    learned: Scores,
    published: Arc<ArcSwap<Scores>>,
}

impl Router {
    /// Starts the router on the current arbiter (the provider actors' own).
    pub fn start(strategy: Strategy) -> RouterHandle {
        let scores = Arc::new(ArcSwap::from_pointee(Scores::default()));
        let router = Router {
            learned: Scores::default(),
            published: scores.clone(),
        };
        RouterHandle {
            addr: router.start(),
            scores,
            strategy,
        }
    }

    fn learn(&mut self, sample: &Sample) {
        let models = match self.learned.providers.get_mut(&*sample.provider) {
            Some(models) => models,
            None => self
                .learned
                .providers
                .entry(sample.provider.to_string())
                .or_default(),
        };
        match models.get_mut(&sample.model) {
            Some(score) => score.learn(sample),
            None => {
                models.insert(sample.model.clone(), Score::first(sample));
            }
        }
    }
}

impl Actor for Router {
    type Context = Context<Self>;
}

impl Handler<Outcomes> for Router {
    type Result = ();

    /// Learns from a provider's batch, then publishes the new scores once.
    fn handle(&mut self, batch: Outcomes, _: &mut Self::Context) {
        for outcome in batch.outcomes {
            self.learn(&Sample {
                provider: batch.provider.clone(),
                model: outcome.model,
                latency: outcome.latency,
                failed: outcome.error.is_some_and(ErrorKind::is_provider_failure),
                at: batch.at,
            });
        }
        self.published.store(Arc::new(self.learned.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, ms: u64, failed: bool) -> Sample {
        Sample {
            provider: Arc::from("p"),
            model: "m".into(),
            latency: Duration::from_millis(ms),
            failed,
            at,
        }
    }

    #[test]
    fn a_slower_call_takes_over_at_once_and_a_faster_one_decays_in() {
        let t0 = Instant::now();
        let mut score = Score::first(&sample(t0, 100, false));
        assert_eq!(score.latency_ms, 100.0);
        // Peak: a slower call is the new estimate at once.
        score.learn(&sample(t0 + Duration::from_millis(10), 900, false));
        assert_eq!(score.latency_ms, 900.0);
        // A faster call right after moves it a little; after several decay times it dominates.
        score.learn(&sample(t0 + Duration::from_millis(20), 100, false));
        assert!(
            score.latency_ms > 800.0 && score.latency_ms < 900.0,
            "{}",
            score.latency_ms
        );
        score.learn(&sample(t0 + DECAY * 5, 100, false));
        assert!(score.latency_ms < 110.0, "{}", score.latency_ms);
        assert_eq!(score.samples, 4);
    }

    #[test]
    fn failures_raise_the_cost_and_fade() {
        let t0 = Instant::now();
        let mut flaky = Score::first(&sample(t0, 50, true));
        let steady = Score::first(&sample(t0, 400, false));
        assert!(flaky.cost() > steady.cost());
        for i in 1..=10u32 {
            flaky.learn(&sample(t0 + DECAY * i, 50, false));
        }
        assert!(flaky.error_rate < 0.01, "{}", flaky.error_rate);
        assert!(flaky.cost() < steady.cost());
    }

    #[actix_rt::test]
    async fn the_router_publishes_what_it_learned_from_a_batch() {
        use crate::provider::actor::AttemptOutcome;
        let handle = Router::start(Strategy::Fastest);
        assert!(handle.scores().get("p", "m").is_none());
        let outcome = |ms, error| AttemptOutcome {
            model: "m".into(),
            error,
            latency: Duration::from_millis(ms),
            probe: false,
        };
        handle
            .addr
            .send(Outcomes {
                provider: Arc::from("p"),
                outcomes: vec![
                    outcome(120, None),
                    outcome(80, Some(ErrorKind::UpstreamServer)),
                    // Not the provider's fault: not counted as a failure.
                    outcome(5, Some(ErrorKind::UpstreamBadRequest)),
                ],
                at: Instant::now(),
            })
            .await
            .unwrap();
        let scores = handle.scores();
        let score = scores.get("p", "m").unwrap();
        assert_eq!(score.samples, 3);
        // A failure's latency does not count; a client error's does.
        assert_eq!(score.latency_ms, 120.0 * 0.9 + 5.0 * 0.1);
        // One failure of three, each moving the rate by a tenth at least: 0.1 then 0.09.
        assert!(
            (score.error_rate - 0.09).abs() < 1e-9,
            "{}",
            score.error_rate
        );
    }
}
