//! The Prometheus registry and every `flowgate_*` metric. Owned by the recorder; other actors
//! hold a clone of the handles (prometheus metrics are atomic, so updates never queue).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The gateway's own time is meant to be a few milliseconds: finer buckets at the low end,
/// so that a p99 alert at tens of milliseconds has buckets to tell it.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The value a bounded label takes once its bound is reached ([`LabelBound`]).
pub const OTHER_LABEL: &str = "_other";

/// Handles to every metric. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by HTTP status, outcome code (`ok` or the error's code) and stream.
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    /// The time a request spent in flowgate itself, without what it waited for (the client's
    /// body, upstream calls, a stream's relay once its first event is out, retry backoff, an
    /// identical request in flight), by stream.
    pub gateway_overhead: HistogramVec,
    /// From the request to the first event of a streamed answer, by provider and model.
    pub time_to_first_token: HistogramVec,
    /// Runs under way (requests, replays and playground models): a gauge moved by the
    /// run's own guard, so a client that goes away takes its run off too.
    pub requests_in_flight: IntGauge,
    /// Upstream calls, by provider and outcome.
    pub upstream_attempts: IntCounterVec,
    /// Upstream calls' duration, by provider and the provider's model id.
    pub upstream_duration: HistogramVec,
    /// Cost, by provider, catalog model, tenant and agent (agents bounded, see [`LabelBound`]).
    pub cost_usd: prometheus::CounterVec,
    /// Tokens, by provider, catalog model, tenant, agent and kind (prompt, completion).
    pub tokens: IntCounterVec,
    pub runs_recorded: IntCounter,
    pub recorder_errors: IntCounter,
    pub recorder_write_seconds: Histogram,
    /// Runs handed to the recorder and not taken for writing yet (set when scraped).
    pub recorder_queue_depth: IntGauge,
    /// Bytes the store uses on disk (set when scraped).
    pub storage_size_bytes: IntGauge,
    /// Runs deleted by retention (`[recorder] max_age_days`, `max_disk_mb`).
    pub runs_pruned: IntCounter,
    /// What retention estimates the stored runs take on disk (set by each pass).
    pub runs_footprint_bytes: IntGauge,
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
    /// The local spool of runs in front of PostgreSQL (zero with the embedded store).
    pub spool: crate::storage::spool::SpoolMetrics,
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
            &["status", "code", "stream"],
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
            &["provider", "model"],
        )?;
        let cost_usd = prometheus::CounterVec::new(
            Opts::new(
                "flowgate_cost_usd_total",
                "Cost of upstream calls in US dollars",
            ),
            &["provider", "model", "tenant", "agent"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new("flowgate_tokens_total", "Tokens used"),
            &["provider", "model", "tenant", "agent", "kind"],
        )?;
        let gateway_overhead = HistogramVec::new(
            HistogramOpts::new(
                "flowgate_gateway_overhead_seconds",
                "Time a request spent in flowgate itself, without the client's body, upstream \
                 calls, a stream's relay after its first event, retry backoff or an identical \
                 request in flight",
            )
            .buckets(OVERHEAD_BUCKETS.to_vec()),
            &["stream"],
        )?;
        let time_to_first_token = HistogramVec::new(
            HistogramOpts::new(
                "flowgate_time_to_first_token_seconds",
                "Time from the request to the first event of a streamed answer",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider", "model"],
        )?;
        let requests_in_flight = IntGauge::new(
            "flowgate_requests_in_flight",
            "Requests (and replays, playground models) under way",
        )?;
        let recorder_queue_depth = IntGauge::new(
            "flowgate_recorder_queue_depth",
            "Runs waiting for the recorder to write them",
        )?;
        let storage_size_bytes = IntGauge::new(
            "flowgate_storage_size_bytes",
            "Bytes the store uses on disk",
        )?;
        let runs_pruned = IntCounter::new(
            "flowgate_runs_pruned_total",
            "Runs deleted by retention (max age or max disk size)",
        )?;
        let runs_footprint_bytes = IntGauge::new(
            "flowgate_runs_footprint_bytes",
            "Estimated bytes the stored runs take on disk, as retention weighs them",
        )?;
        // Both exist from the start, so dashboards see a line at zero rather than nothing.
        for stream in ["false", "true"] {
            gateway_overhead.with_label_values(&[stream]);
        }
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
        registry.register(Box::new(gateway_overhead.clone()))?;
        registry.register(Box::new(time_to_first_token.clone()))?;
        registry.register(Box::new(requests_in_flight.clone()))?;
        registry.register(Box::new(recorder_queue_depth.clone()))?;
        registry.register(Box::new(storage_size_bytes.clone()))?;
        registry.register(Box::new(runs_pruned.clone()))?;
        registry.register(Box::new(runs_footprint_bytes.clone()))?;
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
        let spool = spool_metrics(&registry)?;
        Ok(Metrics {
            registry,
            requests,
            request_duration,
            gateway_overhead,
            time_to_first_token,
            requests_in_flight,
            upstream_attempts,
            upstream_duration,
            cost_usd,
            tokens,
            runs_recorded,
            recorder_errors,
            recorder_write_seconds,
            recorder_queue_depth,
            storage_size_bytes,
            runs_pruned,
            runs_footprint_bytes,
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
            spool,
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

    /// Adds a metric kept elsewhere (the storage's change listener) to those served.
    pub fn register(&self, metric: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
        self.registry.register(metric)
    }

    /// Counts a run in flight until the guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.requests_in_flight.inc();
        InFlight(self.requests_in_flight.clone())
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

/// A run in flight: counted in `flowgate_requests_in_flight` until dropped, however the run
/// ends (answered, failed, or dropped with a client that went away).
#[must_use = "the run is counted only while the guard lives"]
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Keeps a label's values bounded: the first `max` distinct values pass as they are, later
/// new ones become [`OTHER_LABEL`]. For labels clients choose (agent names), so that a client
/// cannot grow `/metrics` without bound.
#[derive(Debug)]
pub struct LabelBound {
    seen: std::collections::HashSet<String>,
    max: usize,
}

impl LabelBound {
    pub fn new(max: usize) -> LabelBound {
        LabelBound {
            seen: std::collections::HashSet::new(),
            max,
        }
    }

    /// `value`, or [`OTHER_LABEL`] when `max` other values came first.
    pub fn label<'a>(&mut self, value: &'a str) -> &'a str {
        if self.seen.contains(value) {
            return value;
        }
        if self.seen.len() < self.max {
            self.seen.insert(value.to_string());
            return value;
        }
        OTHER_LABEL
    }
}

fn spool_metrics(registry: &Registry) -> prometheus::Result<crate::storage::spool::SpoolMetrics> {
    let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
        let gauge = IntGauge::new(name, help)?;
        registry.register(Box::new(gauge.clone()))?;
        Ok(gauge)
    };
    let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
        let counter = IntCounter::new(name, help)?;
        registry.register(Box::new(counter.clone()))?;
        Ok(counter)
    };
    let metrics = crate::storage::spool::SpoolMetrics {
        runs: gauge(
            "flowgate_spool_runs",
            "Runs kept in the local spool until PostgreSQL takes them",
        )?,
        bytes: gauge(
            "flowgate_spool_bytes",
            "Bytes of the runs in the local spool",
        )?,
        spooled: counter(
            "flowgate_spool_spooled_runs_total",
            "Runs written to the local spool because PostgreSQL was unreachable or slow",
        )?,
        replayed: counter(
            "flowgate_spool_replayed_runs_total",
            "Runs replayed from the local spool into PostgreSQL",
        )?,
        refused: counter(
            "flowgate_spool_refused_runs_total",
            "Runs not kept because the local spool was full",
        )?,
        rejected: counter(
            "flowgate_spool_rejected_runs_total",
            "Spooled runs PostgreSQL refused for what they hold, set aside in the spool",
        )?,
        reachable: gauge(
            "flowgate_storage_reachable",
            "1 while the last write reached the store, else 0",
        )?,
    };
    metrics.reachable.set(1);
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_label_lets_the_first_values_through_then_says_other() {
        let mut bound = LabelBound::new(2);
        assert_eq!(bound.label("a"), "a");
        assert_eq!(bound.label("b"), "b");
        assert_eq!(bound.label("c"), OTHER_LABEL);
        // Values seen before keep their name.
        assert_eq!(bound.label("a"), "a");
        assert_eq!(bound.label("b"), "b");
        assert_eq!(bound.label("d"), OTHER_LABEL);
    }

    #[test]
    fn the_in_flight_guard_counts_until_dropped() {
        let metrics = Metrics::new().unwrap();
        let first = metrics.in_flight();
        let second = metrics.in_flight();
        assert_eq!(metrics.requests_in_flight.get(), 2);
        drop(first);
        assert_eq!(metrics.requests_in_flight.get(), 1);
        drop(second);
        assert_eq!(metrics.requests_in_flight.get(), 0);
    }

    #[test]
    fn every_family_is_named_flowgate_with_its_unit() {
        let metrics = Metrics::new().unwrap();
        // A labelled family shows once it has a series.
        metrics.requests.with_label_values(&["200", "ok", "false"]);
        metrics.upstream_attempts.with_label_values(&["p", "ok"]);
        metrics.upstream_duration.with_label_values(&["p", "m"]);
        metrics.time_to_first_token.with_label_values(&["p", "m"]);
        metrics.request_duration.with_label_values(&["false"]);
        metrics.cost_usd.with_label_values(&["p", "m", "t", "a"]);
        metrics
            .tokens
            .with_label_values(&["p", "m", "t", "a", "prompt"]);
        metrics.circuit_state.with_label_values(&["p"]);
        metrics
            .circuit_transitions
            .with_label_values(&["p", "open"]);
        metrics
            .structured_outputs
            .with_label_values(&["native", "valid"]);
        metrics.retries.with_label_values(&["p", "timeout"]);
        metrics
            .fallbacks
            .with_label_values(&["other_provider", "timeout"]);
        let text = metrics.render();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(families.len(), 36, "{text}");
        for family in families {
            let (name, kind) = family.split_once(' ').unwrap();
            assert!(name.starts_with("flowgate_"), "{name}");
            match kind {
                "counter" => assert!(name.ends_with("_total"), "{name}"),
                "histogram" => assert!(name.ends_with("_seconds"), "{name}"),
                _ => {}
            }
        }
    }
}
