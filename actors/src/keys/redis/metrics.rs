//! The limiter's calls to Redis, as metrics: calls by operation and outcome, their latency,
//! admissions decided without Redis, charges waiting for it, and whether it answers.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};

/// The Redis calls' metrics, registered into each scrape's registry.
pub(super) struct RedisMetrics {
    pub(super) calls: IntCounterVec,
    pub(super) seconds: HistogramVec,
    pub(super) fallbacks: IntCounterVec,
    pub(super) pending: IntGauge,
    pub(super) up: IntGauge,
}

impl RedisMetrics {
    pub(super) fn new() -> prometheus::Result<RedisMetrics> {
        Ok(RedisMetrics {
            calls: IntCounterVec::new(
                Opts::new(
                    "flowgate_redis_calls_total",
                    "Calls to Redis by the limiter, by operation and outcome (ok, error, timeout)",
                ),
                &["op", "outcome"],
            )?,
            seconds: HistogramVec::new(
                HistogramOpts::new(
                    "flowgate_redis_call_duration_seconds",
                    "Time of the limiter's calls to Redis, by operation",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                ]),
                &["op"],
            )?,
            fallbacks: IntCounterVec::new(
                Opts::new(
                    "flowgate_redis_fallbacks_total",
                    "Admissions decided without Redis, by decision (local, refused)",
                ),
                &["decision"],
            )?,
            pending: IntGauge::new(
                "flowgate_redis_pending_charges",
                "Charges of finished runs waiting for Redis to answer again",
            )?,
            up: IntGauge::new(
                "flowgate_redis_up",
                "1 when the limiter's last call to Redis succeeded",
            )?,
        })
    }
}
