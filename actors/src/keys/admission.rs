//! What the request path holds of the limits: the [`Limiter`] it asks to admit a request, the
//! [`Admission`] a run holds until it ends (then charged, or dropped uncharged), what is left
//! of the rates for the answer's `x-ratelimit-*` headers, and a subject's use as the API shows
//! it. The request path never knows which limiter runs: this process's (`limiter.rs`) or the
//! one every instance shares (`redis/`).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::limiter::{period_end, period_start, reset_text, Limits, Subject};
use super::Period;
use crate::error::GatewayError;

/// What is left of the tightest request and token rates once a request is admitted: the
/// `x-ratelimit-*` headers of its answer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Remaining {
    /// (limit, remaining, reset in ms) of the subject with the fewest requests left.
    pub requests: Option<(u64, u64, u64)>,
    /// (limit, remaining, reset in ms) of the subject with the fewest tokens left.
    pub tokens: Option<(u64, u64, u64)>,
}

impl Remaining {
    /// Keeps the tighter of what is known and (limit, remaining, reset).
    pub fn tighten(slot: &mut Option<(u64, u64, u64)>, limit: u64, left: u64, reset_ms: u64) {
        if slot.is_none_or(|(_, known, _)| left < known) {
            *slot = Some((limit, left, reset_ms));
        }
    }

    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        if let Some((limit, left, reset)) = self.requests {
            headers.push(("x-ratelimit-limit-requests", limit.to_string()));
            headers.push(("x-ratelimit-remaining-requests", left.to_string()));
            headers.push(("x-ratelimit-reset-requests", reset_text(reset)));
        }
        if let Some((limit, left, reset)) = self.tokens {
            headers.push(("x-ratelimit-limit-tokens", limit.to_string()));
            headers.push(("x-ratelimit-remaining-tokens", left.to_string()));
            headers.push(("x-ratelimit-reset-tokens", reset_text(reset)));
        }
        headers
    }
}

/// A subject's use as the API and the metrics show it, wherever it was counted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub requests: u64,
    pub tokens: u64,
    pub in_flight: u64,
    /// Each budget's spend in its current period, in the order of the limits' budgets.
    pub spends: Vec<(Period, f64)>,
}

impl Usage {
    /// The JSON of `GET /api/keys/self` and the admin API's `usage`.
    pub fn view(&self, limits: &Limits, now: u64) -> serde_json::Value {
        let budgets: Vec<serde_json::Value> = limits
            .budgets
            .iter()
            .map(|b| {
                let spent = self
                    .spends
                    .iter()
                    .find(|(p, _)| *p == b.period)
                    .map_or(0.0, |(_, usd)| *usd);
                let start = period_start(b.period, now);
                serde_json::json!({
                    "period": b.period, "usd": b.usd, "soft_usd": b.soft_usd,
                    "spent_usd": spent, "remaining_usd": (b.usd - spent).max(0.0),
                    "resets_in_seconds": (period_end(b.period, start) - now) / 1000,
                })
            })
            .collect();
        serde_json::json!({
            "rpm": limits.rpm, "tpm": limits.tpm, "max_parallel": limits.max_parallel,
            "requests_this_minute": self.requests, "tokens_this_minute": self.tokens,
            "in_flight": self.in_flight, "budgets": budgets,
        })
    }
}

/// Where the request path takes a request's place in its key's and tenant's counters. It
/// does not know which implementation runs: [`LocalLimiter`] (this process) or the Redis one
/// (every instance).
pub trait Limiter: Send + Sync + 'static {
    /// Admits a request on every subject, or on none: the first refusal says why.
    fn admit(&self, subjects: Vec<Arc<Subject>>) -> BoxFuture<'_, Result<Admission, GatewayError>>;

    /// Each subject's use, in the order given.
    fn usage<'a>(&'a self, subjects: &'a [Arc<Subject>]) -> BoxFuture<'a, Vec<Usage>>;

    /// Spend read back from the store at start, given to the counters that lack it.
    fn restore<'a>(&'a self, _subjects: &'a [Arc<Subject>]) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// Waits (at most `within`) for the charges of finished runs still on their way.
    fn drain(&self, _within: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Adds the limiter's own metric families (the Redis one's calls and errors).
    fn register_metrics(&self, _registry: &prometheus::Registry) -> prometheus::Result<()> {
        Ok(())
    }
}

/// What an [`Admission`] does when the run ends: give its place back, charged with what the
/// run cost and used (`0.0`, `0`: dropped uncharged).
pub trait Release: Send + 'static {
    fn release(self: Box<Self>, usd: f64, tokens: u64);
}

/// A request's place in its subjects' counters: charged with what the run cost when it ends
/// ([`Admission::charge`]); dropped uncharged, it only gives its place back.
pub struct Admission {
    release: Option<Box<dyn Release>>,
    remaining: Remaining,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl Admission {
    pub fn new(release: Box<dyn Release>, remaining: Remaining) -> Admission {
        Admission {
            release: Some(release),
            remaining,
        }
    }

    /// Adds what also happens when the run ends, after the admission's own release.
    pub fn chain(mut self, then: Box<dyn Release>) -> Admission {
        let first = self.release.take();
        Admission {
            release: Some(Box::new(Chain(first, then))),
            remaining: self.remaining,
        }
    }

    /// The `x-ratelimit-*` headers of the answer.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        self.remaining.headers()
    }

    /// Charges what the run cost and used, and gives its place back.
    pub fn charge(mut self, usd: f64, tokens: u64) {
        if let Some(release) = self.release.take() {
            release.release(usd, tokens);
        }
    }
}

struct Chain(Option<Box<dyn Release>>, Box<dyn Release>);

impl Release for Chain {
    fn release(self: Box<Self>, usd: f64, tokens: u64) {
        if let Some(first) = self.0 {
            first.release(usd, tokens);
        }
        self.1.release(usd, tokens);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release.release(0.0, 0);
        }
    }
}
