//! What the stats keep per tenant, agent, source and hour: counts, cost, tokens and a latency
//! histogram, which add up across hours (and sources, and agents) without the runs.

use serde::{Deserialize, Serialize};

use super::histogram::LatencyHistogram;
use crate::recorder::run::{CacheStatus, RunRecord, RunSource, RunStatus};

/// An hour, in hours since the Unix epoch (UTC).
pub type Hour = u32;

pub const HOUR_MS: u64 = 3_600_000;
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// The hour a time in milliseconds falls in.
pub fn hour_of(ms: u64) -> Hour {
    (ms / HOUR_MS).min(u64::from(Hour::MAX)) as Hour
}

/// The longest model name the stats keep: a longer one is cut (at a character boundary), so
/// that a client's `model` string cannot bloat the daily roll-up's keys.
pub const MAX_MODEL_CHARS: usize = 128;

/// Whose runs an aggregate counts: one agent's runs of one source and one model in one hour.
///
/// The hourly aggregates sum over models: a store merges the keys that differ only by
/// `model` into one hour, and reads hours back with `model` empty. The model is kept apart in
/// the daily roll-up ([`super::daily`]), which is written and pruned from the same batches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatsKey {
    pub tenant: String,
    pub agent: String,
    pub source: RunSource,
    pub hour: Hour,
    /// The model that answered, else the one asked for; at most [`MAX_MODEL_CHARS`]
    /// characters. Empty in hourly aggregates read back from a store.
    pub model: String,
}

impl StatsKey {
    /// The key of the hour alone (the model dropped): what the hourly aggregates are stored
    /// under.
    pub fn hour_key(&self) -> StatsKey {
        StatsKey {
            model: String::new(),
            ..self.clone()
        }
    }
}

/// `model` cut to [`MAX_MODEL_CHARS`] characters.
pub fn bounded_model(model: &str) -> &str {
    match model.char_indices().nth(MAX_MODEL_CHARS) {
        Some((at, _)) => &model[..at],
        None => model,
    }
}

/// The sums over some runs. Every field adds up: the aggregate of two sets of runs is the
/// [`merge`](Aggregate::merge) of theirs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Aggregate {
    pub runs: u64,
    /// Runs that ended in an error.
    pub errors: u64,
    /// Runs the client went away from.
    pub cancelled: u64,
    pub cost_usd: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Runs answered from the cache or by an identical request in flight.
    pub cache_hits: u64,
    /// The durations of the successful runs (an error's or a cancellation's time says little
    /// about how fast the agent answers).
    pub latency: LatencyHistogram,
    /// When the latest run started, in milliseconds since the epoch.
    pub last_run_ms: u64,
}

/// What the stats need of a run: the part of a [`RunRecord`] they read, so that runs stored
/// by earlier releases are counted without reading the rest.
#[derive(Debug, Clone, Deserialize)]
pub struct RunFigures {
    pub id: uuid::Uuid,
    pub tenant: String,
    pub agent: String,
    pub status: RunStatus,
    #[serde(default)]
    pub usage: crate::completion::Usage,
    #[serde(default)]
    pub cost_usd: f64,
    #[serde(default)]
    pub duration_seconds: f64,
    pub cache: CacheStatus,
    #[serde(default)]
    pub source: RunSource,
    #[serde(default)]
    pub requested_model: String,
    #[serde(default)]
    pub model: Option<String>,
}

impl Aggregate {
    /// Counts one run.
    pub fn add(&mut self, run: &RunView<'_>) {
        self.runs += 1;
        match run.status {
            RunStatus::Success => self.latency.record(run.duration_seconds),
            RunStatus::Error => self.errors += 1,
            RunStatus::Cancelled => self.cancelled += 1,
        }
        if run.cost_usd.is_finite() {
            self.cost_usd += run.cost_usd;
        }
        self.prompt_tokens += run.prompt_tokens;
        self.completion_tokens += run.completion_tokens;
        if matches!(run.cache, CacheStatus::Hit | CacheStatus::Coalesced) {
            self.cache_hits += 1;
        }
        self.last_run_ms = self.last_run_ms.max(run.at_ms);
    }

    /// Adds another aggregate's sums to this one.
    pub fn merge(&mut self, other: &Aggregate) {
        self.runs += other.runs;
        self.errors += other.errors;
        self.cancelled += other.cancelled;
        self.cost_usd += other.cost_usd;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cache_hits += other.cache_hits;
        self.latency.merge(&other.latency);
        self.last_run_ms = self.last_run_ms.max(other.last_run_ms);
    }

    /// Takes the sums of some of the runs this aggregate counts out of it (runs deleted by
    /// retention), so that it counts the runs left: counts, cost, tokens and the latency
    /// buckets are exact; `last_run_ms` and the latency extremes stay as bounds.
    pub fn subtract(&mut self, other: &Aggregate) {
        self.runs = self.runs.saturating_sub(other.runs);
        self.errors = self.errors.saturating_sub(other.errors);
        self.cancelled = self.cancelled.saturating_sub(other.cancelled);
        self.cost_usd = (self.cost_usd - other.cost_usd).max(0.0);
        self.prompt_tokens = self.prompt_tokens.saturating_sub(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_sub(other.completion_tokens);
        self.cache_hits = self.cache_hits.saturating_sub(other.cache_hits);
        self.latency.subtract(&other.latency);
    }

    /// Cache hits over runs; `None` without runs.
    pub fn cache_hit_rate(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.cache_hits as f64 / self.runs as f64)
    }
}

/// One run, as the stats see it (borrowed from a [`RunRecord`] or from [`RunFigures`]).
#[derive(Debug, Clone, Copy)]
pub struct RunView<'a> {
    pub tenant: &'a str,
    pub agent: &'a str,
    pub source: RunSource,
    /// When it started, from its UUIDv7 id.
    pub at_ms: u64,
    pub status: RunStatus,
    pub cost_usd: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub duration_seconds: f64,
    pub cache: CacheStatus,
    /// The model that answered, else the one asked for (unbounded: [`RunView::key`] cuts it).
    pub model: &'a str,
}

impl<'a> From<&'a RunRecord> for RunView<'a> {
    fn from(run: &'a RunRecord) -> Self {
        RunView {
            tenant: &run.tenant,
            agent: &run.agent,
            source: run.source,
            at_ms: crate::search::id_millis(&run.id),
            status: run.status,
            cost_usd: run.cost_usd,
            prompt_tokens: run.usage.prompt_tokens,
            completion_tokens: run.usage.completion_tokens,
            duration_seconds: run.duration_seconds,
            cache: run.cache,
            model: run.model.as_deref().unwrap_or(&run.requested_model),
        }
    }
}

impl<'a> From<&'a RunFigures> for RunView<'a> {
    fn from(run: &'a RunFigures) -> Self {
        RunView {
            tenant: &run.tenant,
            agent: &run.agent,
            source: run.source,
            at_ms: crate::search::id_millis(&run.id),
            status: run.status,
            cost_usd: run.cost_usd,
            prompt_tokens: run.usage.prompt_tokens,
            completion_tokens: run.usage.completion_tokens,
            duration_seconds: run.duration_seconds,
            cache: run.cache,
            model: run.model.as_deref().unwrap_or(&run.requested_model),
        }
    }
}

impl RunView<'_> {
    /// The key of the aggregate that counts this run.
    pub fn key(&self) -> StatsKey {
        StatsKey {
            tenant: self.tenant.to_string(),
            agent: self.agent.to_string(),
            source: self.source,
            hour: hour_of(self.at_ms),
            model: bounded_model(self.model).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_key_names_its_model_bounded() {
        let mut run = crate::storage::conformance::run("t", "a");
        assert_eq!(RunView::from(&run).key().model, "m");
        // No model answered: the one asked for, cut at a character boundary.
        run.model = None;
        run.requested_model = "é".repeat(MAX_MODEL_CHARS + 50);
        let key = RunView::from(&run).key();
        assert_eq!(key.model, "é".repeat(MAX_MODEL_CHARS));
        assert_eq!(key.hour_key().model, "");
        assert_eq!(bounded_model("short"), "short");
    }
}
