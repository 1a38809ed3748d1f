//! Stats of the recorded runs, per agent and bucket of time: runs, errors, cost, tokens,
//! latency percentiles and cache hit rate, for `GET /api/agents` and `GET
//! /api/agents/{agent}/stats`.
//!
//! They are never computed from the runs. The recorder adds each run it stores to an
//! [`Aggregate`] per tenant, agent, source and hour, in memory ([`RunStats::observe`]), and
//! writes what it summed to the [`StatsStore`] as one batch of increments within the flush
//! interval, on `Flush` and when it stops ([`RunStats::write_pending`]). Readers add what is in
//! memory to what is stored, so a run counts as soon as it is recorded. A day or a range is the
//! merge of its hours: counts and sums add up, and so do the latency histograms, whose fixed
//! buckets give percentiles within 2% ([`histogram`]). The same increments, which carry the
//! run's model, also feed a daily roll-up of runs, errors and cost per model ([`daily`]):
//! what the cost page reads.

mod aggregate;
pub mod daily;
pub mod histogram;
mod report;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::{BoxFuture, FutureExt};

pub use aggregate::{
    bounded_model, hour_of, Aggregate, Hour, RunFigures, RunView, StatsKey, DAY_MS, HOUR_MS,
    MAX_MODEL_CHARS,
};
pub use daily::{Day, DayKey, DayTotals, BEFORE_UPGRADE};
pub use histogram::LatencyHistogram;
pub use report::{
    sources_of, AgentList, AgentSeries, AgentSummary, BucketStats, BucketWidth, CostByDay,
    DailyPoint, StatsRange, AGENT_DAYS, MAX_AGENTS, MAX_BUCKETS, MAX_DAY_ROWS,
};

use crate::recorder::run::{RunRecord, RunSource};
use crate::storage::{StatsQuery, StatsStore, StorageError};

/// The runs' stats: what the recorder summed and has not written yet, and the store. Cheap to
/// clone.
#[derive(Clone)]
pub struct RunStats {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn StatsStore>,
    /// Summed since the last write.
    pending: Mutex<HashMap<StatsKey, Aggregate>>,
    /// A write holds it exclusively while it moves the pending sums to the store, and a read
    /// shared while it reads both: a read finds every sum in one place, never in both or in
    /// neither.
    gate: tokio::sync::RwLock<()>,
}

impl RunStats {
    pub fn new(store: Arc<dyn StatsStore>) -> RunStats {
        RunStats {
            inner: Arc::new(Inner {
                store,
                pending: Mutex::default(),
                gate: tokio::sync::RwLock::new(()),
            }),
        }
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<StatsKey, Aggregate>> {
        // Every update is a whole `add`: the map is consistent after a panic elsewhere.
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds stored runs to the sums in memory (on the recorder's thread; no I/O).
    pub fn observe<'a>(&self, runs: impl IntoIterator<Item = &'a RunRecord>) {
        let mut pending = self.pending();
        for run in runs {
            let view = RunView::from(run);
            pending.entry(view.key()).or_default().add(&view);
        }
    }

    /// Whether there are sums to write.
    pub fn has_pending(&self) -> bool {
        !self.pending().is_empty()
    }

    /// Writes the sums in memory to the store as one batch. On an error they stay in memory,
    /// for the next write.
    pub fn write_pending(&self) -> BoxFuture<'static, Result<(), StorageError>> {
        let stats = self.clone();
        async move {
            let _writing = stats.inner.gate.write().await;
            let batch: Vec<(StatsKey, Aggregate)> =
                std::mem::take(&mut *stats.pending()).into_iter().collect();
            if batch.is_empty() {
                return Ok(());
            }
            let written = stats.inner.store.add_batch(&batch).await;
            if written.is_err() {
                let mut pending = stats.pending();
                for (key, sums) in batch {
                    pending.entry(key).or_default().merge(&sums);
                }
            }
            written
        }
        .boxed()
    }

    /// The aggregates of `query`, stored and in memory. The caller holds the gate.
    async fn gather(&self, query: &StatsQuery) -> Result<Vec<(StatsKey, Aggregate)>, StorageError> {
        let mut found = self.inner.store.read(query).await?;
        let agents: HashSet<&str> = query.agents.iter().map(String::as_str).collect();
        let pending = self.pending();
        found.extend(
            pending
                .iter()
                .filter(|(key, _)| {
                    key.tenant == query.tenant
                        && query.hours.contains(&key.hour)
                        && query.sources.contains(&key.source)
                        && agents.contains(key.agent.as_str())
                })
                .map(|(key, sums)| (key.clone(), sums.clone())),
        );
        Ok(found)
    }

    /// One agent's stats over `range`, per bucket, counting the runs of `sources`.
    pub async fn series(
        &self,
        tenant: &str,
        agent: &str,
        sources: &[RunSource],
        range: &StatsRange,
    ) -> Result<AgentSeries, StorageError> {
        let query = StatsQuery {
            tenant: tenant.to_string(),
            agents: vec![agent.to_string()],
            sources: sources.to_vec(),
            hours: range.hours(),
            latency: true,
        };
        let found = {
            let _reading = self.inner.gate.read().await;
            self.gather(&query).await?
        };
        Ok(report::series(range, found))
    }

    /// The tenant's agents that ran `sources` (at most [`MAX_AGENTS`], by name; whether
    /// more were left out), each with its latest run. The caller holds the gate.
    async fn latest_runs(
        &self,
        tenant: &str,
        sources: &[RunSource],
    ) -> Result<(HashMap<String, u64>, bool), StorageError> {
        let mut stored = self.inner.store.agents(tenant, MAX_AGENTS + 1).await?;
        // By name: past the bound, the last name read is the first one left out.
        let names: HashSet<&str> = stored.iter().map(|e| e.agent.as_str()).collect();
        let truncated = names.len() > MAX_AGENTS;
        if truncated {
            if let Some(past) = stored.last().map(|e| e.agent.clone()) {
                stored.retain(|e| e.agent != past);
            }
        }
        let mut last: HashMap<String, u64> = HashMap::new();
        for entry in stored {
            if sources.contains(&entry.source) {
                let at = last.entry(entry.agent).or_default();
                *at = (*at).max(entry.last_run_ms);
            }
        }
        for (key, sums) in self.pending().iter() {
            if key.tenant == tenant
                && sources.contains(&key.source)
                && (last.len() < MAX_AGENTS || last.contains_key(&key.agent))
            {
                let at = last.entry(key.agent.clone()).or_default();
                *at = (*at).max(sums.last_run_ms);
            }
        }
        Ok((last, truncated))
    }

    /// The tenant's agents that ran `sources`, each with its runs and cost over the last
    /// [`AGENT_DAYS`] days (today so far and the days before, in UTC), day by day, and its
    /// latest run; the most recently run first.
    pub async fn agents(
        &self,
        tenant: &str,
        sources: &[RunSource],
        now_ms: u64,
    ) -> Result<AgentList, StorageError> {
        let _reading = self.inner.gate.read().await;
        let (last, truncated) = self.latest_runs(tenant, sources).await?;
        let days = report::agent_days(now_ms);
        let query = StatsQuery {
            tenant: tenant.to_string(),
            agents: last.keys().cloned().collect(),
            sources: sources.to_vec(),
            hours: days.hours(),
            latency: false,
        };
        let found = self.gather(&query).await?;
        Ok(report::agent_list(&days, last, found, truncated))
    }

    /// Runs and cost per day over the last `days` days (today so far and the days before,
    /// in UTC) of each of the tenant's agents and of each model that ran `sources` (the cost
    /// page): one read of the daily roll-up, stored and in memory.
    pub async fn cost_by_day(
        &self,
        tenant: &str,
        sources: &[RunSource],
        days: u64,
        now_ms: u64,
    ) -> Result<CostByDay, StorageError> {
        let range = report::last_days(days, now_ms);
        let hours = range.hours();
        let _reading = self.inner.gate.read().await;
        let mut found = self
            .inner
            .store
            .days(
                tenant,
                sources,
                daily::day_of(hours.start)..daily::day_of(hours.end),
                MAX_DAY_ROWS + 1,
            )
            .await?;
        let truncated = found.len() > MAX_DAY_ROWS;
        found.truncate(MAX_DAY_ROWS);
        found.extend(
            self.pending()
                .iter()
                .filter(|(key, _)| {
                    key.tenant == tenant
                        && hours.contains(&key.hour)
                        && sources.contains(&key.source)
                })
                .map(|(key, sums)| (DayKey::of(key), DayTotals::of(sums))),
        );
        Ok(report::cost_by_day(&range, found, truncated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::run::{CacheStatus, RunStatus};
    use crate::storage::conformance;

    /// 2026-01-01T00:00:00Z.
    const DAY0: u64 = 1_767_225_600_000;

    fn run_at(agent: &str, ms: u64, seconds: f64) -> RunRecord {
        let mut run = conformance::run("t", agent);
        let ts =
            uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, (ms % 1000) as u32 * 1_000_000);
        run.id = uuid::Uuid::new_v7(ts);
        run.duration_seconds = seconds;
        run.cost_usd = 0.5;
        run.usage.prompt_tokens = 10;
        run.usage.completion_tokens = 4;
        run
    }

    #[actix_rt::test]
    async fn cost_by_day_sums_runs_and_cost_per_agent_and_model_stored_and_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::storage::sled::SledStorage::open(
            dir.path(),
            std::time::Duration::from_millis(50),
        )
        .unwrap();
        let stats = RunStats::new(storage.storage().stats);
        let on = |agent: &str, ms: u64, model: Option<&str>| {
            let mut run = run_at(agent, ms, 1.0);
            run.model = model.map(str::to_string);
            run.requested_model = "asked".into();
            run
        };
        stats.observe(&[
            on("a", DAY0 + 5, Some("gpt")),
            on("a", DAY0 + HOUR_MS, Some("claude")),
            // No model answered: the one asked for.
            on("b", DAY0 + DAY_MS + 7, None),
        ]);
        stats.write_pending().await.unwrap();
        let mut played = on("a", DAY0 + DAY_MS + 9, Some("gpt"));
        played.source = RunSource::Playground;
        // In memory only: counted too.
        stats.observe(&[on("a", DAY0 + DAY_MS + 8, Some("gpt")), played]);
        let now = DAY0 + DAY_MS + HOUR_MS;
        let cost = stats
            .cost_by_day("t", &[RunSource::Api], 2, now)
            .await
            .unwrap();
        assert_eq!(
            cost.starts,
            ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]
        );
        assert_eq!(
            cost.agents,
            vec![
                ("a".to_string(), vec![(2, 1.0), (1, 0.5)]),
                ("b".to_string(), vec![(0, 0.0), (1, 0.5)]),
            ]
        );
        assert_eq!(
            cost.models,
            vec![
                ("asked".to_string(), vec![(0, 0.0), (1, 0.5)]),
                ("claude".to_string(), vec![(1, 0.5), (0, 0.0)]),
                ("gpt".to_string(), vec![(1, 0.5), (1, 0.5)]),
            ]
        );
        assert!(!cost.truncated);
        // One day: yesterday's runs are out of it; the playground's when asked for.
        let all = sources_of(Some("all")).unwrap();
        let today = stats.cost_by_day("t", &all, 1, now).await.unwrap();
        assert_eq!(today.starts, ["2026-01-02T00:00:00Z"]);
        assert_eq!(
            today.models,
            vec![
                ("asked".to_string(), vec![(1, 0.5)]),
                ("gpt".to_string(), vec![(2, 1.0)]),
            ]
        );
        let other = stats.cost_by_day("u", &all, 2, now).await.unwrap();
        assert!(other.agents.is_empty() && other.models.is_empty());
    }

    #[actix_rt::test]
    async fn figures_add_what_is_stored_to_what_is_in_memory() {
        let (_dir, storage) = {
            let dir = tempfile::tempdir().unwrap();
            let storage = crate::storage::sled::SledStorage::open(
                dir.path(),
                std::time::Duration::from_millis(50),
            )
            .unwrap();
            (dir, storage)
        };
        let stats = RunStats::new(storage.storage().stats);

        // Day 0: 100 successes of 10..1000 ms, 3 errors, 1 cancelled, 20 cache hits; a
        // playground run. Day 1: 2 runs, still in memory when read.
        let mut day0: Vec<RunRecord> = (1..=100)
            .map(|i| {
                let mut run = run_at("a", DAY0 + i * 60_000, i as f64 / 100.0);
                if i % 5 == 0 {
                    run.cache = CacheStatus::Hit;
                }
                run
            })
            .collect();
        for (i, status) in [
            RunStatus::Error,
            RunStatus::Error,
            RunStatus::Error,
            RunStatus::Cancelled,
        ]
        .into_iter()
        .enumerate()
        {
            let mut run = run_at("a", DAY0 + 7 * HOUR_MS + i as u64, 30.0);
            run.status = status;
            day0.push(run);
        }
        let mut played = run_at("a", DAY0 + 8 * HOUR_MS, 0.2);
        played.source = RunSource::Playground;
        day0.push(played);
        day0.push(run_at("b", DAY0 + 9 * HOUR_MS, 0.3));
        stats.observe(&day0);
        stats.write_pending().await.unwrap();
        assert!(!stats.has_pending());
        let day1 = [
            run_at("a", DAY0 + DAY_MS + 5, 2.0),
            run_at("a", DAY0 + DAY_MS + HOUR_MS, 4.0),
        ];
        stats.observe(&day1);
        assert!(stats.has_pending());

        let api = [RunSource::Api];
        let range =
            StatsRange::new(Some(DAY0), Some(DAY0 + 2 * DAY_MS), BucketWidth::Day, DAY0).unwrap();
        let series = stats.series("t", "a", &api, &range).await.unwrap();
        let [first, second] = &series.buckets[..] else {
            panic!("{series:?}")
        };
        assert_eq!(first.start.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!((first.runs, first.errors, first.cancelled), (104, 3, 1));
        assert!((first.cost_usd - 52.0).abs() < 1e-9);
        assert_eq!((first.prompt_tokens, first.total_tokens), (1040, 1456));
        assert_eq!(first.cache_hit_rate, Some(20.0 / 104.0));
        // Exact: 0.50, 0.90, 0.99 s (the successes only).
        for (estimate, exact) in [
            (first.latency_seconds.p50, 0.5),
            (first.latency_seconds.p90, 0.9),
            (first.latency_seconds.p99, 0.99),
        ] {
            let estimate = estimate.unwrap();
            assert!(
                (estimate - exact).abs() / exact < 0.02,
                "{estimate} vs {exact}"
            );
        }
        assert_eq!(second.runs, 2);
        assert_eq!(second.latency_seconds.p99, Some(4.0));
        assert_eq!(series.totals.runs, 106);

        // Hours: the errors' hour, and the second day in memory.
        let hours = StatsRange::new(
            Some(DAY0 + 7 * HOUR_MS),
            Some(DAY0 + DAY_MS + 2 * HOUR_MS),
            BucketWidth::Hour,
            DAY0,
        )
        .unwrap();
        let series = stats.series("t", "a", &api, &hours).await.unwrap();
        let runs: Vec<u64> = series.buckets.iter().map(|b| b.runs).collect();
        assert_eq!(runs.len(), 19);
        assert_eq!(runs[0], 4);
        assert_eq!(runs[17..], [1, 1]);
        assert_eq!(series.buckets[1].latency_seconds.p50, None);
        assert_eq!(series.buckets[1].cache_hit_rate, None);

        // Sources: the playground run only when asked; another tenant sees nothing.
        let all = sources_of(Some("all")).unwrap();
        let with_played = stats.series("t", "a", &all, &range).await.unwrap();
        assert_eq!(with_played.totals.runs, 107);
        let theirs = stats.series("u", "a", &all, &range).await.unwrap();
        assert_eq!(theirs.totals.runs, 0);

        // The agents, most recently run first, with 7 days ending on day 1.
        let list = stats
            .agents("t", &api, DAY0 + DAY_MS + 12 * HOUR_MS)
            .await
            .unwrap();
        let names: Vec<&str> = list.agents.iter().map(|a| a.agent.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let a = &list.agents[0];
        assert_eq!((a.runs, a.errors), (106, 3));
        assert_eq!(a.daily.len(), 7);
        assert_eq!(a.daily[5].runs, 104);
        assert_eq!(a.daily[6].runs, 2);
        assert_eq!(a.daily[6].start, "2026-01-02T00:00:00Z");
        assert_eq!(a.last_run_at.as_deref(), Some("2026-01-02T01:00:00Z"));
        assert_eq!(list.from, "2025-12-27T00:00:00Z");
        // A week later their runs are out of the window, their last run still shown.
        let later = stats.agents("t", &api, DAY0 + 30 * DAY_MS).await.unwrap();
        assert_eq!(later.agents[0].runs, 0);
        assert!(later.agents[0].last_run_at.is_some());
        assert!(stats
            .agents("u", &all, DAY0)
            .await
            .unwrap()
            .agents
            .is_empty());
    }
}
