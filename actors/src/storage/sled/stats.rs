//! The runs' stats on sled:
//!
//! * `stats_hours`: `tenant \0 agent \0 source hour` (the source a byte, the hour 4 bytes big
//!   endian) → the [`Aggregate`] as JSON, so an agent's hours of a source are one range scan.
//! * `stats_agents`: `tenant \0 agent \0 source` → the latest run's time (8 bytes big endian,
//!   milliseconds), so the tenant's agents are one prefix scan.
//!
//! A batch of increments is computed, then written key by key (see `add_now` for why not
//! as a `sled::Batch`). A data directory of an earlier
//! release gets its aggregates built once from its stored runs when it is first opened.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::{BoxFuture, FutureExt};

use super::backend;
use super::off_thread;
use crate::recorder::run::RunSource;
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

/// Cheap to clone (the trees are handles).
#[derive(Clone)]
pub struct SledStatsStore {
    hours: ::sled::Tree,
    agents: ::sled::Tree,
    /// Held by each read-modify-write of `hours`: the recorder adds, retention subtracts, each
    /// on its own thread.
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
    pub(super) fn open(db: &::sled::Db) -> Result<SledStatsStore, StorageError> {
        let store = SledStatsStore {
            hours: db.open_tree("stats_hours").map_err(backend)?,
            agents: db.open_tree("stats_agents").map_err(backend)?,
            writer: Arc::default(),
        };
        store.build_once(&db.open_tree("runs").map_err(backend)?)?;
        Ok(store)
    }

    /// Counts the runs stored before the stats existed (once per data directory): their
    /// aggregates are summed in memory and written as one batch, with the mark.
    fn build_once(&self, runs: &::sled::Tree) -> Result<(), StorageError> {
        if self.hours.contains_key(BUILT_MARK).map_err(backend)? {
            return Ok(());
        }
        let mut sums: HashMap<StatsKey, Aggregate> = HashMap::new();
        let mut n = 0u64;
        for entry in runs.iter() {
            let (_, bytes) = entry.map_err(backend)?;
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
        let mut hours = Vec::with_capacity(batch.len());
        let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
        for (key, increment) in batch {
            let at = hour_key(&key.tenant, &key.agent, key.source, key.hour);
            let mut sums = match self.hours.get(&at).map_err(backend)? {
                Some(bytes) => serde_json::from_slice::<Aggregate>(&bytes).map_err(corrupt)?,
                None => Aggregate::default(),
            };
            sums.merge(increment);
            hours.push((at, serde_json::to_vec(&sums).map_err(corrupt)?));
            let last = latest
                .entry(agent_source_key(&key.tenant, &key.agent, key.source))
                .or_default();
            *last = (*last).max(increment.last_run_ms);
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
        if mark {
            self.hours
                .insert(BUILT_MARK, &[] as &[u8])
                .map_err(backend)?;
        }
        Ok(())
    }

    fn write_lock(&self) -> MutexGuard<'_, ()> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the sums of deleted runs out of their hours (retention): an hour left with no
    /// run is deleted, and so is an agent's latest run per source once none of its hours is
    /// left, so that the stats count exactly the runs still stored. Hours first: an agent
    /// whose hours are gone but whose latest run is still listed shows no runs.
    pub(super) fn subtract_now(
        &self,
        batch: &HashMap<StatsKey, Aggregate>,
    ) -> Result<(), StorageError> {
        let _writer = self.write_lock();
        // Key by key, not as a `sled::Batch` (see `add_now`).
        let mut touched = HashSet::new();
        for (key, deleted) in batch {
            let at = hour_key(&key.tenant, &key.agent, key.source, key.hour);
            touched.insert(agent_source_key(&key.tenant, &key.agent, key.source));
            let Some(bytes) = self.hours.get(&at).map_err(backend)? else {
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
        futures::future::ready(self.add_now(increments, false)).boxed()
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
}
