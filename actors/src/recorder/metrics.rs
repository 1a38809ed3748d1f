//! The Prometheus registry and every `flowgate_*` metric. Owned by the recorder; other actors
//! hold a clone of the handles (prometheus metrics are atomic, so updates never queue).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Handles to every metric. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by outcome code (`ok` or the error's metric label) and cache status.
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    /// Upstream calls, by provider and outcome.
    pub upstream_attempts: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub cost_usd: prometheus::CounterVec,
    pub tokens: IntCounterVec,
    pub runs_recorded: IntCounter,
    pub recorder_errors: IntCounter,
    pub recorder_write_seconds: Histogram,
    pub circuit_state: IntGaugeVec,
    pub circuit_transitions: IntCounterVec,
    pub coalesced: IntCounter,
    /// Lookups answered from the stored cache.
    pub cache_hits: IntCounter,
    /// Lookups that found no usable stored answer (absent or expired).
    pub cache_misses: IntCounter,
    /// Stored answers removed, by reason (`size`: the byte bound; `expired`: the TTL).
    pub cache_evictions: IntCounterVec,
    /// Bytes of stored answers (keys and encoded entries).
    pub cache_stored_bytes: IntGauge,
    /// Stored answers.
    pub cache_entries: IntGauge,
    /// Request body bytes held by the requests in flight (bounded by
    /// `limits.max_inflight_body_mb`).
    pub body_bytes_in_flight: IntGauge,
    /// Answers not stored because the cache writer's mailbox was full.
    pub cache_writes_dropped: IntCounter,
    /// Structured outputs by layer and outcome (valid, repaired, invalid).
    pub structured_outputs: IntCounterVec,
    /// Retries of the same provider, by provider and the error that caused them.
    pub retries: IntCounterVec,
    /// Attempts on another provider or model, by reason and the error that caused them.
    pub fallbacks: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "flowgate_requests_total",
                "Chat completion requests answered",
            ),
            &["code", "stream"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "flowgate_request_duration_seconds",
                "Time from request to the end of the answer",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["stream"],
        )?;
        let upstream_attempts = IntCounterVec::new(
            Opts::new("flowgate_upstream_attempts_total", "Upstream calls"),
            &["provider", "outcome"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "flowgate_upstream_duration_seconds",
                "Duration of upstream calls",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider"],
        )?;
        let cost_usd = prometheus::CounterVec::new(
            Opts::new(
                "flowgate_cost_usd_total",
                "Cost of upstream calls in US dollars",
            ),
            &["provider"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new("flowgate_tokens_total", "Tokens used"),
            &["provider", "kind"],
        )?;
        let runs_recorded =
            IntCounter::new("flowgate_runs_recorded_total", "Runs written to the store")?;
        let recorder_errors = IntCounter::new(
            "flowgate_recorder_errors_total",
            "Runs the recorder failed to write",
        )?;
        let recorder_write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "flowgate_recorder_write_seconds",
                "Time to write one run to the store",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let circuit_state = IntGaugeVec::new(
            Opts::new(
                "flowgate_circuit_state",
                "Circuit state per provider: 0 closed, 1 open, 2 half-open",
            ),
            &["provider"],
        )?;
        let circuit_transitions = IntCounterVec::new(
            Opts::new(
                "flowgate_circuit_transitions_total",
                "Circuit breaker transitions",
            ),
            &["provider", "to"],
        )?;
        let coalesced = IntCounter::new(
            "flowgate_cache_coalesced_total",
            "Requests answered by an identical in-flight request",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_attempts.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(cost_usd.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(runs_recorded.clone()))?;
        registry.register(Box::new(recorder_errors.clone()))?;
        registry.register(Box::new(recorder_write_seconds.clone()))?;
        registry.register(Box::new(circuit_state.clone()))?;
        registry.register(Box::new(circuit_transitions.clone()))?;
        registry.register(Box::new(coalesced.clone()))?;
        let cache_hits = IntCounter::new(
            "flowgate_cache_hits_total",
            "Requests answered from a stored answer",
        )?;
        let cache_misses = IntCounter::new(
            "flowgate_cache_misses_total",
            "Cache lookups that found no usable stored answer",
        )?;
        let cache_evictions = IntCounterVec::new(
            Opts::new(
                "flowgate_cache_evictions_total",
                "Stored answers removed, by reason (size, expired)",
            ),
            &["reason"],
        )?;
        // Both series exist from the start, so dashboards see zero rather than nothing.
        for reason in ["size", "expired"] {
            cache_evictions.with_label_values(&[reason]);
        }
        let cache_stored_bytes =
            IntGauge::new("flowgate_cache_stored_bytes", "Bytes of stored answers")?;
        let cache_entries = IntGauge::new("flowgate_cache_entries", "Stored answers")?;
        let body_bytes_in_flight = IntGauge::new(
            "flowgate_request_body_bytes_in_flight",
            "Request body bytes held by the requests in flight",
        )?;
        let cache_writes_dropped = IntCounter::new(
            "flowgate_cache_writes_dropped_total",
            "Answers not stored because the cache writer was saturated",
        )?;
        registry.register(Box::new(cache_hits.clone()))?;
        registry.register(Box::new(cache_misses.clone()))?;
        registry.register(Box::new(cache_evictions.clone()))?;
        registry.register(Box::new(cache_stored_bytes.clone()))?;
        registry.register(Box::new(cache_entries.clone()))?;
        registry.register(Box::new(body_bytes_in_flight.clone()))?;
        registry.register(Box::new(cache_writes_dropped.clone()))?;
        let structured_outputs = IntCounterVec::new(
            Opts::new(
                "flowgate_structured_outputs_total",
                "Structured outputs by layer and outcome",
            ),
            &["layer", "outcome"],
        )?;
        registry.register(Box::new(structured_outputs.clone()))?;
        let retries = IntCounterVec::new(
            Opts::new(
                "flowgate_retries_total",
                "Retries of the same provider after a transient error",
            ),
            &["provider", "error"],
        )?;
        registry.register(Box::new(retries.clone()))?;
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "flowgate_fallbacks_total",
                "Attempts moved to another provider or model",
            ),
            &["reason", "error"],
        )?;
        registry.register(Box::new(fallbacks.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            request_duration,
            upstream_attempts,
            upstream_duration,
            cost_usd,
            tokens,
            runs_recorded,
            recorder_errors,
            recorder_write_seconds,
            circuit_state,
            circuit_transitions,
            coalesced,
            cache_hits,
            cache_misses,
            cache_evictions,
            cache_stored_bytes,
            cache_entries,
            body_bytes_in_flight,
            cache_writes_dropped,
            structured_outputs,
            retries,
            fallbacks,
        })
    }

    /// Counts the retries and fallbacks among a run's attempts, from their `reason`
    /// (`retry after <error>`, `other_provider after <error>`, `hedge`, …).
    pub fn count_attempt_reasons(&self, attempts: &[crate::error::AttemptSummary]) {
        for attempt in attempts {
            let Some(reason) = attempt.reason.as_deref() else {
                continue;
            };
            let (kind, error) = match reason.split_once(" after ") {
                Some((kind, error)) => (kind, error),
                None => (reason, "none"),
            };
            match kind {
                "retry" => self
                    .retries
                    .with_label_values(&[&attempt.provider, error])
                    .inc(),
                "other_provider" | "fallback_model" | "auto_fallback" | "hedge" => {
                    self.fallbacks.with_label_values(&[kind, error]).inc()
                }
                // Repairs and schema downgrades are counted by the structured-output metric.
                _ => {}
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
