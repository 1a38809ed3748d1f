//! The runs' stats on sled:
//!
//! * `stats_hours`: `tenant \0 agent \0 source hour` (the source a byte, the hour 4 bytes big
//!   endian) → the [`Aggregate`] as JSON, so an agent's hours of a source are one range scan.
//! * `stats_agents`: `tenant \0 agent \0 source` → the latest run's time (8 bytes big endian,
//!   milliseconds), so the tenant's agents are one prefix scan.
//! * `stats_days`, the daily roll-up (`crate::stats::daily`): `tenant \0 day source agent \0
//!   model` (the day 4 bytes big endian, the source a byte) → runs, errors (8 bytes each, big
//!   endian) and cost (an `f64`'s 8 bytes, big endian), so a tenant's days are one range scan.
//!   A data directory of a release without it gets it filled once, when it is opened, from
//!   its hourly aggregates (a scan of `stats_hours`, not of the runs: milliseconds, not
//!   minutes, at 1M runs), under the model `(before upgrade)`; a thread then finds those runs'
//!   models in the background (`stats_backfill.rs`).
//!
//! A batch of increments is computed, then written key by key (see `add_now` for why not
//! as a `sled::Batch`). A data directory of an earlier
//! release gets its aggregates built once from its stored runs when it is first opened.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;

use super::backend;
use super::off_thread;
use super::run_files::RunRecords;
use super::stats_backfill::{Backfill, StopOnDrop, CUT_OFF};
use crate::recorder::run::RunSource;
use crate::stats::daily::{self, Day, DayKey, DayTotals, BEFORE_UPGRADE};
use crate::stats::{Aggregate, Hour, RunFigures, RunView, StatsKey};
use crate::storage::{AgentLastRun, StatsQuery, StatsStore, StorageError};

/// An aggregate without its latency histogram, which is skipped over rather than built: for
/// reads that show no latency (decoding the histograms was most of the cost page's time at
/// 1M runs: `perf`, `bench/ui.sh`).
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct Totals {
    runs: u64,
    errors: u64,
    cancelled: u64,
    cost_usd: f64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cache_hits: u64,
    last_run_ms: u64,
}

impl From<Totals> for Aggregate {
    fn from(t: Totals) -> Aggregate {
        Aggregate {
            runs: t.runs,
            errors: t.errors,
            cancelled: t.cancelled,
            cost_usd: t.cost_usd,
            prompt_tokens: t.prompt_tokens,
            completion_tokens: t.completion_tokens,
            cache_hits: t.cache_hits,
            latency: Default::default(),
            last_run_ms: t.last_run_ms,
        }
    }
}

/// Marks aggregates built for every run stored before they existed.
const BUILT_MARK: &[u8] = b"\xff\xffbuilt-v1";
/// Marks the daily roll-up as counting every run the hourly aggregates count (in `stats_days`;
/// no tenant name starts with 0xff, which UTF-8 never holds).
const DAYS_MARK: &[u8] = b"\xff\xffdays-v1";

/// Cheap to clone (the trees are handles).
#[derive(Clone)]
pub struct SledStatsStore {
    hours: ::sled::Tree,
    agents: ::sled::Tree,
    days: ::sled::Tree,
    /// Stops the thread that finds the models of older runs (`stats_backfill.rs`) when the
    /// last clone goes.
    _backfill: Option<Arc<StopOnDrop>>,
    /// Held by each read-modify-write of `hours` and `days`: the recorder adds, retention
    /// subtracts, the backfill replaces, each on its own thread.
    writer: Arc<Mutex<()>>,
}

fn source_code(source: RunSource) -> u8 {
    match source {
        RunSource::Api => 0,
        RunSource::Playground => 1,
        RunSource::Replay => 2,
        RunSource::Benchmark => 3,
    }
}

fn source_of(code: u8) -> Option<RunSource> {
    match code {
        0 => Some(RunSource::Api),
        1 => Some(RunSource::Playground),
        2 => Some(RunSource::Replay),
        3 => Some(RunSource::Benchmark),
        _ => None,
    }
}

/// `tenant \0 agent \0 source`.
fn agent_source_key(tenant: &str, agent: &str, source: RunSource) -> Vec<u8> {
    let mut key = super::agent_prefix(tenant, agent);
    key.push(source_code(source));
    key
}

fn hour_key(tenant: &str, agent: &str, source: RunSource, hour: Hour) -> Vec<u8> {
    let mut key = agent_source_key(tenant, agent, source);
    key.extend_from_slice(&hour.to_be_bytes());
    key
}

fn corrupt(detail: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt {
        what: "run stats",
        detail: detail.to_string(),
    }
}

impl SledStatsStore {
    /// `runs` are read once, to count the runs of a data directory written before the stats
    /// or the daily roll-up existed.
    pub(super) fn open(db: &::sled::Db, runs: &RunRecords) -> Result<SledStatsStore, StorageError> {
        let store = SledStatsStore {
            hours: db.open_tree("stats_hours").map_err(backend)?,
            agents: db.open_tree("stats_agents").map_err(backend)?,
            days: db.open_tree("stats_days").map_err(backend)?,
            _backfill: None,
            writer: Arc::default(),
        };
        store.build_once(runs)?;
        store.fill_days_once(runs)?;
        let backfill = Backfill {
            runs: runs.clone(),
            days: store.days.clone(),
            writer: store.writer.clone(),
        };
        Ok(SledStatsStore {
            _backfill: backfill.start()?.map(Arc::new),
            ..store
        })
    }

    /// Fills the daily roll-up of a data directory written before it existed from the hourly
    /// aggregates (once: the mark says it is done; `build_once` sets it for the runs it
    /// counts, whose models it knows), and keeps the last run's id for the thread that then
    /// finds their models (`stats_backfill.rs`). Nothing else writes while a store opens.
    fn fill_days_once(&self, runs: &RunRecords) -> Result<(), StorageError> {
        if self.days.contains_key(DAYS_MARK).map_err(backend)? {
            return Ok(());
        }
        let mut days: HashMap<DayKey, DayTotals> = HashMap::new();
        for entry in self.hours.iter() {
            let (key, bytes) = entry.map_err(backend)?;
            let Some(mut key) = decode_hour_key(&key) else {
                continue;
            };
            let sums: Aggregate = serde_json::from_slice::<Totals>(&bytes)
                .map_err(corrupt)?
                .into();
            key.model = BEFORE_UPGRADE.to_string();
            days.entry(DayKey::of(&key))
                .or_default()
                .add(&DayTotals::of(&sums));
        }
        let counted: u64 = days.values().map(|d| d.runs).sum();
        let _writer = self.write_lock();
        for (key, totals) in &days {
            let at = day_key(key);
            let mut stored = self.stored_day(&at)?;
            stored.add(totals);
            self.days
                .insert(at, &encode_day(&stored))
                .map_err(backend)?;
        }
        if counted > 0 {
            // The runs the thread will read for their models: those stored until now.
            if let Some(last) = runs.last_id()? {
                self.days.insert(CUT_OFF, &last).map_err(backend)?;
            }
            tracing::info!(
                runs = counted,
                rows = days.len(),
                "filled the daily cost roll-up from the hourly stats: the runs stored before \
                 this release show under the model \"(before upgrade)\" until their models are \
                 found"
            );
        }
        self.days.insert(DAYS_MARK, &[] as &[u8]).map_err(backend)?;
        Ok(())
    }

    fn stored_day(&self, at: &[u8]) -> Result<DayTotals, StorageError> {
        match self.days.get(at).map_err(backend)? {
            Some(bytes) => decode_day(&bytes).ok_or_else(|| corrupt("a day of the roll-up")),
            None => Ok(DayTotals::default()),
        }
    }

    /// Counts the runs stored before the stats existed (once per data directory): their
    /// aggregates are summed in memory and written as one batch, with the mark.
    fn build_once(&self, runs: &RunRecords) -> Result<(), StorageError> {
        if self.hours.contains_key(BUILT_MARK).map_err(backend)? {
            return Ok(());
        }
        let mut sums: HashMap<StatsKey, Aggregate> = HashMap::new();
        let mut n = 0u64;
        for entry in runs.iter() {
            let (_, bytes) = entry?;
            match serde_json::from_slice::<RunFigures>(&bytes) {
                Ok(run) => {
                    let view = RunView::from(&run);
                    sums.entry(view.key()).or_default().add(&view);
                    n += 1;
                }
                Err(e) => tracing::warn!(error = %e, "a stored run cannot be read: not counted"),
            }
        }
        let batch: Vec<(StatsKey, Aggregate)> = sums.into_iter().collect();
        self.add_now(&batch, true)?;
        if n > 0 {
            tracing::info!(
                runs = n,
                "counted the runs stored by an earlier release in the stats"
            );
        }
        Ok(())
    }

    /// Adds a batch. The new values are computed first, then written one key at a time —
    /// not as a `sled::Batch`, whose first use would put every sled read of the process
    /// (the request path's among them) behind a global lock (see `agents.rs`). The recorder is
    /// the only one to add (one write at a time), and retention waits for the writer lock, so
    /// nothing changes in between. The latest runs'
    /// times go first: writing them again is harmless. An I/O error part way leaves the hours
    /// written before it counted, and the retry of the whole counts them again: sled fails a
    /// write only when its disk does, and a few runs counted twice then is the lesser harm
    /// than sums lost.
    fn add_now(&self, batch: &[(StatsKey, Aggregate)], mark: bool) -> Result<(), StorageError> {
        let _writer = self.write_lock();
        // Increments that differ only by model go to the same hour: merged first, so that each
        // hour is read and written once.
        let mut merged: HashMap<Vec<u8>, Aggregate> = HashMap::new();
        let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
        for (key, increment) in batch {
            merged
                .entry(hour_key(&key.tenant, &key.agent, key.source, key.hour))
                .or_default()
                .merge(increment);
            let last = latest
                .entry(agent_source_key(&key.tenant, &key.agent, key.source))
                .or_default();
            *last = (*last).max(increment.last_run_ms);
        }
        let mut hours = Vec::with_capacity(merged.len());
        for (at, increment) in merged {
            let mut sums = match self.hours.get(&at).map_err(backend)? {
                Some(bytes) => serde_json::from_slice::<Aggregate>(&bytes).map_err(corrupt)?,
                None => Aggregate::default(),
            };
            sums.merge(&increment);
            hours.push((at, serde_json::to_vec(&sums).map_err(corrupt)?));
        }
        let mut days = Vec::new();
        for (key, increment) in daily::days_of(batch.iter().map(|(k, s)| (k, s))) {
            let at = day_key(&key);
            let mut totals = self.stored_day(&at)?;
            totals.add(&increment);
            days.push((at, encode_day(&totals)));
        }
        for (agent, last_run_ms) in latest {
            let stored = self.agents.get(&agent).map_err(backend)?;
            if stored.is_none_or(|bytes| last_run_ms > last_ms(&bytes)) {
                self.agents
                    .insert(agent, &last_run_ms.to_be_bytes())
                    .map_err(backend)?;
            }
        }
        for (at, sums) in hours {
            self.hours.insert(at, sums).map_err(backend)?;
        }
        for (at, totals) in days {
            self.days.insert(at, &totals).map_err(backend)?;
        }
        if mark {
            self.hours
                .insert(BUILT_MARK, &[] as &[u8])
                .map_err(backend)?;
            // Built from the runs, whose models it knows: nothing to fill from the hours.
            self.days.insert(DAYS_MARK, &[] as &[u8]).map_err(backend)?;
        }
        Ok(())
    }

    fn write_lock(&self) -> MutexGuard<'_, ()> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the sums of deleted runs out of their hours and out of the daily roll-up
    /// (retention): an hour or a day's row left with no run is deleted, and so is an agent's
    /// latest run per source once none of its hours is left, so that the stats count exactly
    /// the runs still stored. Hours first: an agent whose hours are gone but whose latest run
    /// is still listed shows no runs. The keys' models say which rows of the roll-up count
    /// the runs ([`DayTotals::take_deleted`]).
    pub(super) fn subtract_now(
        &self,
        batch: &HashMap<StatsKey, Aggregate>,
    ) -> Result<(), StorageError> {
        let _writer = self.write_lock();
        // Key by key, not as a `sled::Batch` (see `add_now`).
        let mut touched = HashSet::new();
        // The models of an hour together: each hour read and written once.
        let mut merged: HashMap<Vec<u8>, Aggregate> = HashMap::new();
        for (key, deleted) in batch {
            merged
                .entry(hour_key(&key.tenant, &key.agent, key.source, key.hour))
                .or_default()
                .merge(deleted);
            touched.insert(agent_source_key(&key.tenant, &key.agent, key.source));
        }
        for (at, deleted) in &merged {
            let Some(bytes) = self.hours.get(at).map_err(backend)? else {
                continue;
            };
            let mut sums = serde_json::from_slice::<Aggregate>(&bytes).map_err(corrupt)?;
            sums.subtract(deleted);
            if sums.runs == 0 {
                self.hours.remove(at).map_err(backend)?;
            } else {
                self.hours
                    .insert(at, serde_json::to_vec(&sums).map_err(corrupt)?)
                    .map_err(backend)?;
            }
        }
        for (group, models) in daily::deleted_by_day(batch.iter()) {
            let prefix = day_key(&group);
            let mut rows = BTreeMap::new();
            for entry in self.days.scan_prefix(&prefix) {
                let (key, bytes) = entry.map_err(backend)?;
                let model = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                let totals = decode_day(&bytes).ok_or_else(|| corrupt("a day of the roll-up"))?;
                rows.insert(model, totals);
            }
            let before = rows.clone();
            for (model, deleted) in &models {
                DayTotals::take_deleted(&mut rows, model, deleted);
            }
            for (model, totals) in &before {
                let mut at = prefix.clone();
                at.extend_from_slice(model.as_bytes());
                match rows.get(model) {
                    None => {
                        self.days.remove(at).map_err(backend)?;
                    }
                    Some(kept) if kept != totals => {
                        self.days.insert(at, &encode_day(kept)).map_err(backend)?;
                    }
                    Some(_) => {}
                }
            }
        }
        for agent in touched {
            if self.hours.scan_prefix(&agent).next().is_none() {
                self.agents.remove(&agent).map_err(backend)?;
            }
        }
        Ok(())
    }

    fn read_now(&self, query: &StatsQuery) -> Result<Vec<(StatsKey, Aggregate)>, StorageError> {
        let mut found = Vec::new();
        if query.hours.is_empty() {
            return Ok(found);
        }
        for agent in &query.agents {
            for &source in &query.sources {
                let from = hour_key(&query.tenant, agent, source, query.hours.start);
                let to = hour_key(&query.tenant, agent, source, query.hours.end);
                for entry in self.hours.range(from..to) {
                    let (key, bytes) = entry.map_err(backend)?;
                    let hour = key
                        .len()
                        .checked_sub(4)
                        .and_then(|at| key[at..].try_into().ok())
                        .map(Hour::from_be_bytes)
                        .ok_or_else(|| corrupt("a key without its hour"))?;
                    let sums = if query.latency {
                        serde_json::from_slice(&bytes).map_err(corrupt)?
                    } else {
                        serde_json::from_slice::<Totals>(&bytes)
                            .map_err(corrupt)?
                            .into()
                    };
                    let key = StatsKey {
                        tenant: query.tenant.clone(),
                        agent: agent.clone(),
                        source,
                        hour,
                        model: String::new(),
                    };
                    found.push((key, sums));
                }
            }
        }
        Ok(found)
    }

    fn agents_now(&self, tenant: &str, max: usize) -> Result<Vec<AgentLastRun>, StorageError> {
        let mut prefix = tenant.as_bytes().to_vec();
        prefix.push(0);
        let mut out: Vec<AgentLastRun> = Vec::new();
        let mut agents = 0;
        for entry in self.agents.scan_prefix(&prefix) {
            let (key, value) = entry.map_err(backend)?;
            // `agent \0 source`
            let rest = &key[prefix.len()..];
            let Some((&code, name)) = rest.split_last() else {
                continue;
            };
            let (Some(name), Some(source)) = (name.strip_suffix(&[0]), source_of(code)) else {
                continue;
            };
            let agent = String::from_utf8_lossy(name).into_owned();
            if out.last().is_none_or(|last| last.agent != agent) {
                agents += 1;
                if agents > max {
                    break;
                }
            }
            out.push(AgentLastRun {
                agent,
                source,
                last_run_ms: last_ms(&value),
            });
        }
        Ok(out)
    }

    fn days_now(
        &self,
        tenant: &str,
        sources: &[RunSource],
        days: std::ops::Range<Day>,
        limit: usize,
    ) -> Result<Vec<(DayKey, DayTotals)>, StorageError> {
        let mut found = Vec::new();
        if days.is_empty() {
            return Ok(found);
        }
        let mut prefix = tenant.as_bytes().to_vec();
        prefix.push(0);
        // Under the writer lock: the backfill replaces a day's before-upgrade rows with rows
        // per model key by key (not as a `sled::Batch`, see `add_now`), and a scan in between
        // would count that day's runs short. The scan is of the roll-up's rows only (days ×
        // agents × models, bounded by `limit`), so the recorder waits for it no longer than
        // for any write.
        let _writer = self.write_lock();
        let bound = |day: Day| {
            let mut key = prefix.clone();
            key.extend_from_slice(&day.to_be_bytes());
            key
        };
        for entry in self.days.range(bound(days.start)..bound(days.end)) {
            if found.len() >= limit {
                break;
            }
            let (key, bytes) = entry.map_err(backend)?;
            let key = decode_day_key(&key).ok_or_else(|| corrupt("a day's key of the roll-up"))?;
            if !sources.contains(&key.source) {
                continue;
            }
            let totals = decode_day(&bytes).ok_or_else(|| corrupt("a day of the roll-up"))?;
            found.push((key, totals));
        }
        Ok(found)
    }
}

/// A day's row's key of the roll-up, decoded; `None` for the marks (and anything else).
pub(super) fn decode_day_key(key: &[u8]) -> Option<DayKey> {
    let tenant_end = key.iter().position(|&b| b == 0)?;
    // `day source agent \0 model`
    let rest = &key[tenant_end + 1..];
    let day = Day::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let source = source_of(*rest.get(4)?)?;
    let agent_end = rest[5..].iter().position(|&b| b == 0)? + 5;
    Some(DayKey {
        tenant: std::str::from_utf8(&key[..tenant_end]).ok()?.to_string(),
        day,
        agent: std::str::from_utf8(&rest[5..agent_end]).ok()?.to_string(),
        source,
        model: String::from_utf8_lossy(&rest[agent_end + 1..]).into_owned(),
    })
}

/// The key of a day's row of the roll-up: `tenant \0 day source agent \0 model` (with the
/// model empty, the prefix of the day's rows of the agent and source).
pub(super) fn day_key(key: &DayKey) -> Vec<u8> {
    let mut at = Vec::with_capacity(key.tenant.len() + key.agent.len() + key.model.len() + 7);
    at.extend_from_slice(key.tenant.as_bytes());
    at.push(0);
    at.extend_from_slice(&key.day.to_be_bytes());
    at.push(source_code(key.source));
    at.extend_from_slice(key.agent.as_bytes());
    at.push(0);
    at.extend_from_slice(key.model.as_bytes());
    at
}

pub(super) fn encode_day(totals: &DayTotals) -> [u8; 24] {
    let mut out = [0; 24];
    out[..8].copy_from_slice(&totals.runs.to_be_bytes());
    out[8..16].copy_from_slice(&totals.errors.to_be_bytes());
    out[16..].copy_from_slice(&totals.cost_usd.to_be_bytes());
    out
}

pub(super) fn decode_day(bytes: &[u8]) -> Option<DayTotals> {
    let at = |i: usize| -> Option<[u8; 8]> { bytes.get(i..i + 8)?.try_into().ok() };
    (bytes.len() == 24).then_some(())?;
    Some(DayTotals {
        runs: u64::from_be_bytes(at(0)?),
        errors: u64::from_be_bytes(at(8)?),
        cost_usd: f64::from_be_bytes(at(16)?),
    })
}

/// The key of a stored hour (`tenant \0 agent \0 source hour`), with no model; `None` for
/// the marks.
fn decode_hour_key(key: &[u8]) -> Option<StatsKey> {
    let tenant_end = key.iter().position(|&b| b == 0)?;
    let rest = &key[tenant_end + 1..];
    // `agent \0`, then the source's byte and 4 bytes of hour.
    let agent_end = rest.len().checked_sub(6)?;
    if rest[agent_end] != 0 {
        return None;
    }
    Some(StatsKey {
        tenant: std::str::from_utf8(&key[..tenant_end]).ok()?.to_string(),
        agent: std::str::from_utf8(&rest[..agent_end]).ok()?.to_string(),
        source: source_of(rest[agent_end + 1])?,
        hour: Hour::from_be_bytes(rest[agent_end + 2..].try_into().ok()?),
        model: String::new(),
    })
}

fn last_ms(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

impl StatsStore for SledStatsStore {
    fn add_batch<'a>(
        &'a self,
        increments: &'a [(StatsKey, Aggregate)],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        // Answered at once: the recorder writes on its own thread.
        super::written(self.add_now(increments, false))
    }

    fn read<'a>(
        &'a self,
        query: &'a StatsQuery,
    ) -> BoxFuture<'a, Result<Vec<(StatsKey, Aggregate)>, StorageError>> {
        let store = self.clone();
        let query = query.clone();
        off_thread(move || store.read_now(&query))
    }

    fn agents<'a>(
        &'a self,
        tenant: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<AgentLastRun>, StorageError>> {
        let store = self.clone();
        let tenant = tenant.to_string();
        off_thread(move || store.agents_now(&tenant, max))
    }

    fn days<'a>(
        &'a self,
        tenant: &'a str,
        sources: &'a [RunSource],
        days: std::ops::Range<Day>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(DayKey, DayTotals)>, StorageError>> {
        let store = self.clone();
        let tenant = tenant.to_string();
        let sources = sources.to_vec();
        off_thread(move || store.days_now(&tenant, &sources, days, limit))
    }
}

#[cfg(test)]
mod tests {
    use crate::recorder::run::{RunRecord, RunSource};
    use crate::stats::{BEFORE_UPGRADE, DAY_MS, HOUR_MS};
    use crate::storage::conformance::{increments, run_at};
    use crate::storage::sled::open_waiting;
    use crate::storage::PruneBatch;

    /// A data directory of a release without the roll-up gets it filled from its hours once,
    /// under [`BEFORE_UPGRADE`], at once, and then per model from its runs in the background;
    /// runs recorded after count under their model, and retention takes them out of theirs.
    #[actix_rt::test]
    async fn a_roll_up_is_filled_once_for_the_runs_of_an_earlier_release() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::storage::conformance::now_ms();
        let day0 = now - now % DAY_MS - 3 * DAY_MS;
        let at = |ms: u64, model: &str| {
            let mut run = run_at("t", "a", ms, "x");
            run.model = Some(model.into());
            Box::new(run)
        };
        let old: Vec<Box<RunRecord>> = vec![
            at(day0, "gpt"),
            at(day0 + HOUR_MS, "claude"),
            at(day0 + 2 * HOUR_MS, "gpt"),
        ];
        {
            let storage = open_waiting(dir.path()).storage();
            storage.runs.insert_batch(&old).await.unwrap();
            storage.stats.add_batch(&increments(&old)).await.unwrap();
            storage.runs.flush().await.unwrap();
        }
        {
            // What an earlier release left: the same, without the roll-up.
            // Once the store's threads have let go of it.
            let db = super::super::wait_for_lock(|| {
                ::sled::Config::new()
                    .path(dir.path())
                    .open()
                    .map_err(super::super::backend)
            });
            assert!(db.drop_tree("stats_days").unwrap());
            db.flush().unwrap();
        }
        let day = (day0 / DAY_MS) as u32;
        let rows = |storage: crate::storage::Storage| async move {
            let mut rows: Vec<(String, u64, i64)> = storage
                .stats
                .days("t", &[RunSource::Api], day..day + 1, 100)
                .await
                .unwrap()
                .into_iter()
                .map(|(k, t)| (k.model, t.runs, (t.cost_usd * 1e6).round() as i64))
                .collect();
            rows.sort();
            rows
        };
        {
            let storage = open_waiting(dir.path()).storage();
            // At once, the totals; the models once the thread has read the runs.
            let total = |rows: &[(String, u64, i64)]| {
                rows.iter()
                    .map(|r| (r.1, r.2))
                    .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
            };
            assert_eq!(total(&rows(storage.clone()).await), (3, 750_000));
            let mut waited = 0;
            let found = loop {
                let found = rows(storage.clone()).await;
                if found.iter().all(|r| r.0 != BEFORE_UPGRADE) || waited > 200 {
                    break found;
                }
                waited += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            };
            assert_eq!(
                found,
                vec![
                    ("claude".to_string(), 1, 250_000),
                    ("gpt".to_string(), 2, 500_000)
                ]
            );
            let new = vec![at(day0 + 5 * HOUR_MS, "gpt")];
            storage.runs.insert_batch(&new).await.unwrap();
            storage.stats.add_batch(&increments(&new)).await.unwrap();
            // The two oldest runs (a gpt and a claude).
            let pruned = storage
                .runs
                .prune(PruneBatch {
                    before_ms: day0 + HOUR_MS + 1,
                    max_runs: 100,
                })
                .await
                .unwrap();
            assert_eq!(pruned.runs, 2);
            assert_eq!(
                rows(storage.clone()).await,
                vec![("gpt".to_string(), 2, 500_000)]
            );
            storage.runs.flush().await.unwrap();
        }
        // Once: opening again fills nothing twice.
        let storage = open_waiting(dir.path()).storage();
        assert_eq!(rows(storage).await, vec![("gpt".to_string(), 2, 500_000)]);
    }

    /// A read of the roll-up while the backfill replaces a day's before-upgrade rows with rows
    /// per model counts every run of that day, never some: the day is put back and replaced
    /// again many times while another thread reads it without pause.
    #[test]
    fn a_read_during_the_backfill_counts_every_run_of_the_day() {
        use super::super::run_files::{RunFiles, RunRecords, SEGMENT_BYTES};
        use super::super::stats_backfill::test_day::{row, store_runs};
        use super::super::stats_backfill::{Backfill, DayOutcome};
        use super::{encode_day, SledStatsStore};
        use crate::stats::DayTotals;
        use std::collections::BTreeSet;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled::reopen_db(dir.path());
        let runs =
            RunRecords::open(&db, RunFiles::open(&db, dir.path(), SEGMENT_BYTES).unwrap()).unwrap();
        let store = SledStatsStore {
            hours: db.open_tree("stats_hours").unwrap(),
            agents: db.open_tree("stats_agents").unwrap(),
            days: db.open_tree("stats_days").unwrap(),
            _backfill: None,
            writer: Arc::default(),
        };
        let backfill = Backfill {
            runs: runs.clone(),
            days: store.days.clone(),
            writer: store.writer.clone(),
        };
        let day = 20_000u32;
        let models = ["gpt", "claude", "llama", "mistral", "gemini", "gpt"];
        let last = *store_runs(&runs, day, &models).last().unwrap();
        let row = |model: &str| row(day, model);
        let before = row(BEFORE_UPGRADE);
        let rows = BTreeSet::from([before.clone()]);
        let runs_of_the_day = models.len() as u64;
        let put_back = || {
            for model in models {
                store.days.remove(row(model)).unwrap();
            }
            let totals = DayTotals {
                runs: runs_of_the_day,
                errors: 0,
                cost_usd: 0.0,
            };
            store.days.insert(&before, &encode_day(&totals)).unwrap();
        };
        put_back();
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (store, done) = (store.clone(), done.clone());
            std::thread::spawn(move || {
                let mut short = 0u32;
                let mut reads = 0u32;
                while !done.load(Ordering::Relaxed) {
                    let found = store
                        .days_now("t", &[RunSource::Api], day..day + 1, 100)
                        .unwrap();
                    let counted: u64 = found.iter().map(|(_, t)| t.runs).sum();
                    if counted != runs_of_the_day {
                        short += 1;
                    }
                    reads += 1;
                }
                (short, reads)
            })
        };
        for _ in 0..300 {
            {
                let _writer = store.write_lock();
                put_back();
            }
            assert_eq!(
                backfill.replace_day(day, &rows, &last).unwrap(),
                DayOutcome::Replaced {
                    runs: runs_of_the_day
                }
            );
        }
        done.store(true, Ordering::Relaxed);
        let (short, reads) = reader.join().unwrap();
        assert!(reads > 0);
        assert_eq!(short, 0, "{short} of {reads} reads counted the day short");
    }
}
