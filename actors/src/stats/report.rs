//! What the stats endpoints answer: buckets of time over a range, checked against the bounds,
//! and the figures of each bucket, merged from the hourly aggregates.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use super::aggregate::{hour_of, Aggregate, Hour, StatsKey, DAY_MS, HOUR_MS};
use super::daily::{DayKey, DayTotals};
use crate::error::GatewayError;
use crate::recorder::run::RunSource;

/// The most buckets one answer holds (40 days of hours).
pub const MAX_BUCKETS: u64 = 1000;
/// The most agents `GET /api/agents` lists.
pub const MAX_AGENTS: usize = 1000;
/// The days `GET /api/agents` sums, today included.
pub const AGENT_DAYS: u64 = 7;
/// The most rows of the daily roll-up the cost page reads (days × agents × models × sources):
/// a bound on its time for a tenant with very many agents.
pub const MAX_DAY_ROWS: usize = 100_000;
/// Times past the year 9999 are refused.
const MAX_MS: u64 = 253_402_300_799_000;

/// How wide a bucket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketWidth {
    Hour,
    Day,
}

impl BucketWidth {
    pub fn parse(text: &str) -> Result<BucketWidth, GatewayError> {
        match text {
            "hour" => Ok(BucketWidth::Hour),
            "day" => Ok(BucketWidth::Day),
            _ => Err(GatewayError::invalid(format!(
                "`bucket` is `hour` or `day`, not `{}`",
                crate::error::excerpt(text, 32)
            ))
            .with_param("bucket")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BucketWidth::Hour => "hour",
            BucketWidth::Day => "day",
        }
    }

    fn ms(self) -> u64 {
        match self {
            BucketWidth::Hour => HOUR_MS,
            BucketWidth::Day => DAY_MS,
        }
    }
}

/// The sources a `source` parameter names: `api` (the default: the app's own traffic),
/// `playground`, `replay`, `benchmark` or `all`.
pub fn sources_of(param: Option<&str>) -> Result<Vec<RunSource>, GatewayError> {
    match param.unwrap_or("api") {
        "api" => Ok(vec![RunSource::Api]),
        "playground" => Ok(vec![RunSource::Playground]),
        "replay" => Ok(vec![RunSource::Replay]),
        "benchmark" => Ok(vec![RunSource::Benchmark]),
        "all" => Ok(vec![
            RunSource::Api,
            RunSource::Playground,
            RunSource::Replay,
            RunSource::Benchmark,
        ]),
        other => Err(GatewayError::invalid(format!(
            "`source` is one of `api`, `playground`, `replay`, `benchmark`, `all`, not `{}`",
            crate::error::excerpt(other, 32)
        ))
        .with_param("source")),
    }
}

/// Whole buckets covering a range of time (UTC): from the start of the bucket `from` falls in
/// to the end of the one `to` falls in.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsRange {
    /// The first bucket's start, in milliseconds since the epoch.
    pub start_ms: u64,
    pub buckets: u64,
    pub width: BucketWidth,
}

impl StatsRange {
    /// The range from `from_ms` to `to_ms` (end excluded); without `to`, up to `now_ms`;
    /// without `from`, the last 7 days (the current bucket and those before it). At most
    /// [`MAX_BUCKETS`] buckets.
    pub fn new(
        from_ms: Option<u64>,
        to_ms: Option<u64>,
        width: BucketWidth,
        now_ms: u64,
    ) -> Result<StatsRange, GatewayError> {
        let to = to_ms.unwrap_or(now_ms);
        for (param, at) in [("from", from_ms), ("to", Some(to))] {
            if at.is_some_and(|at| at > MAX_MS) {
                return Err(
                    GatewayError::invalid(format!("`{param}` is past the year 9999"))
                        .with_param(param),
                );
            }
        }
        let from = from_ms.unwrap_or_else(|| (to + width.ms()).saturating_sub(AGENT_DAYS * DAY_MS));
        if from >= to {
            return Err(GatewayError::invalid("`from` must be before `to`").with_param("from"));
        }
        let start_ms = from - from % width.ms();
        let buckets = (to - start_ms).div_ceil(width.ms());
        if buckets > MAX_BUCKETS {
            return Err(GatewayError::invalid(format!(
                "`from` to `to` spans {buckets} {} buckets; an answer holds at most {MAX_BUCKETS}: \
                 narrow the range or use wider buckets",
                width.as_str()
            ))
            .with_param("from"));
        }
        Ok(StatsRange {
            start_ms,
            buckets,
            width,
        })
    }

    fn end_ms(&self) -> u64 {
        self.start_ms + self.buckets * self.width.ms()
    }

    /// The hours the buckets cover.
    pub fn hours(&self) -> std::ops::Range<Hour> {
        hour_of(self.start_ms)..hour_of(self.end_ms())
    }

    /// The bucket an hour falls in.
    fn bucket_of(&self, hour: Hour) -> Option<usize> {
        let ms = u64::from(hour) * HOUR_MS;
        (self.start_ms..self.end_ms())
            .contains(&ms)
            .then(|| ((ms - self.start_ms) / self.width.ms()) as usize)
    }

    /// Sums `found` per bucket.
    fn sum(&self, found: impl IntoIterator<Item = (Hour, Aggregate)>) -> Vec<Aggregate> {
        let mut sums = vec![Aggregate::default(); self.buckets as usize];
        for (hour, sums_of_hour) in found {
            if let Some(bucket) = self.bucket_of(hour) {
                sums[bucket].merge(&sums_of_hour);
            }
        }
        sums
    }
}

/// RFC 3339, UTC, to the second (or millisecond when there are some).
fn rfc3339(ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    if ms.is_multiple_of(1000) {
        humantime::format_rfc3339_seconds(at).to_string()
    } else {
        humantime::format_rfc3339_millis(at).to_string()
    }
}

/// Latency percentiles, in seconds (of the successful runs; `null` without any).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

/// The figures of one bucket (or of a whole range).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BucketStats {
    /// The bucket's start (absent for totals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    pub runs: u64,
    pub errors: u64,
    pub cancelled: u64,
    pub cost_usd: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub latency_seconds: Percentiles,
    /// Runs answered from the cache or by an identical request in flight, over all runs.
    pub cache_hit_rate: Option<f64>,
}

impl BucketStats {
    fn of(start: Option<u64>, sums: &Aggregate) -> BucketStats {
        BucketStats {
            start: start.map(rfc3339),
            runs: sums.runs,
            errors: sums.errors,
            cancelled: sums.cancelled,
            cost_usd: sums.cost_usd,
            prompt_tokens: sums.prompt_tokens,
            completion_tokens: sums.completion_tokens,
            total_tokens: sums.prompt_tokens + sums.completion_tokens,
            latency_seconds: Percentiles {
                p50: sums.latency.quantile(0.5),
                p90: sums.latency.quantile(0.9),
                p99: sums.latency.quantile(0.99),
            },
            cache_hit_rate: sums.cache_hit_rate(),
        }
    }
}

/// One agent's stats over a range.
#[derive(Debug, Clone, Serialize)]
pub struct AgentSeries {
    pub from: String,
    pub to: String,
    pub bucket: BucketWidth,
    /// Every bucket of the range, oldest first, empty ones included.
    pub buckets: Vec<BucketStats>,
    pub totals: BucketStats,
}

pub(super) fn series(range: &StatsRange, found: Vec<(StatsKey, Aggregate)>) -> AgentSeries {
    let sums = range.sum(found.into_iter().map(|(key, sums)| (key.hour, sums)));
    let mut totals = Aggregate::default();
    let width = range.width.ms();
    let buckets = sums
        .iter()
        .enumerate()
        .map(|(i, sums)| {
            totals.merge(sums);
            BucketStats::of(Some(range.start_ms + i as u64 * width), sums)
        })
        .collect();
    AgentSeries {
        from: rfc3339(range.start_ms),
        to: rfc3339(range.end_ms()),
        bucket: range.width,
        buckets,
        totals: BucketStats::of(None, &totals),
    }
}

/// Runs and cost per day of each agent and of each model found in the daily roll-up (`range`
/// is one of days). Agents and models by name.
pub(super) fn cost_by_day(
    range: &StatsRange,
    found: impl IntoIterator<Item = (DayKey, DayTotals)>,
    truncated: bool,
) -> CostByDay {
    let empty = || vec![(0, 0.0); range.buckets as usize];
    let mut agents: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    let mut models: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for (key, totals) in found {
        let Some(bucket) = range.bucket_of(key.day * 24) else {
            continue;
        };
        for row in [
            agents.entry(key.agent).or_insert_with(empty),
            models.entry(key.model).or_insert_with(empty),
        ] {
            row[bucket].0 += totals.runs;
            row[bucket].1 += totals.cost_usd;
        }
    }
    let width = range.width.ms();
    CostByDay {
        starts: (0..range.buckets)
            .map(|i| rfc3339(range.start_ms + i * width))
            .collect(),
        agents: agents.into_iter().collect(),
        models: models.into_iter().collect(),
        truncated,
    }
}

/// Runs and cost per day of each agent and of each model ([`super::RunStats::cost_by_day`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CostByDay {
    /// Each day's start, RFC 3339.
    pub starts: Vec<String>,
    /// By agent name: `(runs, cost)` per day.
    pub agents: Vec<(String, Vec<(u64, f64)>)>,
    /// By model name (runs stored before the roll-up existed under
    /// [`super::BEFORE_UPGRADE`]): `(runs, cost)` per day.
    pub models: Vec<(String, Vec<(u64, f64)>)>,
    /// More rows of the roll-up than [`MAX_DAY_ROWS`] in the range: some are left out.
    pub truncated: bool,
}

/// One day of an agent's runs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DailyPoint {
    pub start: String,
    pub runs: u64,
    pub cost_usd: f64,
}

/// An agent, as `GET /api/agents` lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgentSummary {
    pub agent: String,
    /// Over the days of `daily`.
    pub runs: u64,
    pub errors: u64,
    pub cost_usd: f64,
    pub last_run_at: Option<String>,
    /// One point a day, oldest first, today (so far) last.
    pub daily: Vec<DailyPoint>,
}

/// The tenant's agents.
#[derive(Debug, Clone, Serialize)]
pub struct AgentList {
    /// The start of the first day summed.
    pub from: String,
    pub agents: Vec<AgentSummary>,
    /// More agents than [`MAX_AGENTS`] have runs: the first by name are listed.
    pub truncated: bool,
}

/// The days `GET /api/agents` sums: today (UTC) and the days before it.
pub(super) fn agent_days(now_ms: u64) -> StatsRange {
    last_days(AGENT_DAYS, now_ms)
}

/// `days` days (at least one, at most [`MAX_BUCKETS`]) ending with today (UTC).
pub(super) fn last_days(days: u64, now_ms: u64) -> StatsRange {
    let days = days.clamp(1, MAX_BUCKETS);
    let today = now_ms - now_ms % DAY_MS;
    StatsRange {
        start_ms: today.saturating_sub((days - 1) * DAY_MS),
        buckets: days,
        width: BucketWidth::Day,
    }
}

pub(super) fn agent_list(
    days: &StatsRange,
    last: HashMap<String, u64>,
    found: Vec<(StatsKey, Aggregate)>,
    truncated: bool,
) -> AgentList {
    let mut by_agent: HashMap<String, Vec<(Hour, Aggregate)>> = HashMap::new();
    for (key, sums) in found {
        by_agent
            .entry(key.agent)
            .or_default()
            .push((key.hour, sums));
    }
    let mut agents: Vec<(u64, AgentSummary)> = last
        .into_iter()
        .map(|(agent, last_ms)| {
            let per_day = days.sum(by_agent.remove(&agent).unwrap_or_default());
            let mut total = Aggregate::default();
            let daily = per_day
                .iter()
                .enumerate()
                .map(|(i, sums)| {
                    total.merge(sums);
                    DailyPoint {
                        start: rfc3339(days.start_ms + i as u64 * DAY_MS),
                        runs: sums.runs,
                        cost_usd: sums.cost_usd,
                    }
                })
                .collect();
            let summary = AgentSummary {
                agent,
                runs: total.runs,
                errors: total.errors,
                cost_usd: total.cost_usd,
                last_run_at: (last_ms > 0).then(|| rfc3339(last_ms)),
                daily,
            };
            (last_ms, summary)
        })
        .collect();
    agents.sort_by(|(a_ms, a), (b_ms, b)| b_ms.cmp(a_ms).then_with(|| a.agent.cmp(&b.agent)));
    AgentList {
        from: rfc3339(days.start_ms),
        agents: agents.into_iter().map(|(_, summary)| summary).collect(),
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_767_225_600_000 + 13 * HOUR_MS + 17_000; // 2026-01-01T13:00:17Z

    #[test]
    fn ranges_are_whole_buckets_within_the_bound() {
        // Defaults: the last 7 days, the current bucket included.
        let days = StatsRange::new(None, None, BucketWidth::Day, NOW).unwrap();
        assert_eq!(days.buckets, 7);
        assert_eq!(rfc3339(days.start_ms), "2025-12-26T00:00:00Z");
        assert_eq!(rfc3339(days.end_ms()), "2026-01-02T00:00:00Z");
        let hours = StatsRange::new(None, None, BucketWidth::Hour, NOW).unwrap();
        assert_eq!(hours.buckets, 168);
        assert_eq!(hours.hours().len(), 168);

        // 40 days of hours fit; 42 do not; a thousand days do.
        let day = DAY_MS;
        assert!(StatsRange::new(Some(NOW - 40 * day), Some(NOW), BucketWidth::Hour, NOW).is_ok());
        let error =
            StatsRange::new(Some(NOW - 42 * day), Some(NOW), BucketWidth::Hour, NOW).unwrap_err();
        assert!(error.to_string().contains("at most 1000"), "{error}");
        assert!(StatsRange::new(Some(NOW - 999 * day), Some(NOW), BucketWidth::Day, NOW).is_ok());

        // `from` after `to`; past the year 9999.
        assert!(StatsRange::new(Some(NOW), Some(NOW - 1), BucketWidth::Day, NOW).is_err());
        assert!(StatsRange::new(Some(0), Some(MAX_MS + 1), BucketWidth::Day, NOW).is_err());
    }

    #[test]
    fn hours_land_in_their_bucket_and_outside_hours_nowhere() {
        let range =
            StatsRange::new(Some(NOW - 2 * DAY_MS), Some(NOW), BucketWidth::Day, NOW).unwrap();
        assert_eq!(range.buckets, 3);
        let first = hour_of(range.start_ms);
        let one = |runs| Aggregate {
            runs,
            ..Aggregate::default()
        };
        let sums = range.sum([
            (first, one(1)),
            (first + 23, one(2)),
            (first + 24, one(4)),
            (first + 71, one(8)),
            (first + 72, one(100)),
            (first - 1, one(100)),
        ]);
        let runs: Vec<u64> = sums.iter().map(|s| s.runs).collect();
        assert_eq!(runs, vec![3, 4, 8]);
    }

    #[test]
    fn sources_and_widths_are_named_or_refused() {
        assert_eq!(sources_of(None).unwrap(), vec![RunSource::Api]);
        assert_eq!(sources_of(Some("all")).unwrap().len(), 4);
        assert_eq!(
            sources_of(Some("benchmark")).unwrap(),
            vec![RunSource::Benchmark]
        );
        let error = sources_of(Some("app")).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("source"));
        assert_eq!(BucketWidth::parse("day").unwrap(), BucketWidth::Day);
        assert_eq!(
            BucketWidth::parse("week").unwrap_err().param.as_deref(),
            Some("bucket")
        );
    }
}
