//! The models of the runs stored before the daily roll-up existed, found in the background.
//!
//! When a data directory of an earlier release is first opened, its roll-up is filled at once
//! from the hourly aggregates, under [`BEFORE_UPGRADE`] (`stats.rs`): the totals are right
//! from the start, at the cost of a scan of the hours (milliseconds). Then a thread of its own
//! reads the runs stored until then (the last one's id is the cut-off, kept in `stats_days`),
//! one day at a time, oldest first, and replaces each day's [`BEFORE_UPGRADE`] rows with rows
//! per model. Starting never waits for it (`examples/roll_up_upgrade.rs`: the 1M runs of
//! `bench/ui.sh` took 7.4 s, on a busy 2-core machine, the open 0.27 s); the log says how far
//! it got, and a store reopened before it is done carries on with the days left.
//!
//! The recorder adds and retention takes away at the same time. The recorder's runs are newer
//! than the cut-off. Retention removes runs from the tree first and takes them out of the
//! stats afterwards, under the stats' writer lock, so a day is replaced only when, under that
//! lock, the runs read are still all there and their count per agent and source equals the
//! [`BEFORE_UPGRADE`] row's: then every run the row counts was read, and a run retention
//! deletes later comes out of its model's row. Otherwise (a retention batch in flight) the day
//! is tried again a moment later, and after [`ATTEMPTS`] it keeps its [`BEFORE_UPGRADE`] rows,
//! which stay exact in total.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::backend;
use super::run_files::RunRecords;
use super::stats::{day_key, decode_day, decode_day_key, encode_day};
use crate::search::id_bounds;
use crate::stats::{
    Aggregate, Day, DayKey, DayTotals, RunFigures, RunView, BEFORE_UPGRADE, DAY_MS,
};
use crate::storage::StorageError;

/// The last run stored before the roll-up existed (16 bytes), in `stats_days`.
pub(super) const CUT_OFF: &[u8] = b"\xff\xffdays-cut-off";
/// Marks the models found for every run up to the cut-off.
const DONE: &[u8] = b"\xff\xffdays-models-v1";
/// Tries of a day whose runs do not match its counts before it is left as it is.
const ATTEMPTS: u32 = 20;
const RETRY: Duration = Duration::from_millis(250);

/// Stops the thread when the store it works for is dropped (the last clone of it).
pub(super) struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The work: what it reads and writes.
pub(super) struct Backfill {
    pub(super) runs: RunRecords,
    pub(super) days: ::sled::Tree,
    pub(super) writer: Arc<Mutex<()>>,
}

/// How one day went.
#[derive(Debug, PartialEq)]
pub(super) enum DayOutcome {
    /// Its rows are per model now.
    Replaced { runs: u64 },
    /// Its runs do not match its counts (yet).
    Mismatch,
}

impl Backfill {
    /// Starts the thread if there is work left; the handle stops it when dropped.
    pub(super) fn start(self) -> Result<Option<StopOnDrop>, StorageError> {
        if self.days.contains_key(DONE).map_err(backend)? {
            return Ok(None);
        }
        let Some(cut_off) = self.cut_off()? else {
            self.days.insert(DONE, &[] as &[u8]).map_err(backend)?;
            return Ok(None);
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("stats-backfill".into())
            .spawn(move || {
                if let Err(e) = self.run(&cut_off, &stopped) {
                    tracing::warn!(error = %e, "finding the models of older runs stopped");
                }
            })
            .map_err(|e| StorageError::Backend(format!("cannot start a thread: {e}")))?;
        Ok(Some(StopOnDrop(stop)))
    }

    fn cut_off(&self) -> Result<Option<[u8; 16]>, StorageError> {
        Ok(self
            .days
            .get(CUT_OFF)
            .map_err(backend)?
            .and_then(|bytes| bytes.as_ref().try_into().ok()))
    }

    /// The days with [`BEFORE_UPGRADE`] rows, oldest first, each with the keys of those rows.
    pub(super) fn days_left(&self) -> Result<BTreeMap<Day, BTreeSet<Vec<u8>>>, StorageError> {
        let mut left: BTreeMap<Day, BTreeSet<Vec<u8>>> = BTreeMap::new();
        for key in self.days.iter().keys() {
            let key = key.map_err(backend)?;
            if let Some(day) = decode_day_key(&key).filter(|k| k.model == BEFORE_UPGRADE) {
                left.entry(day.day).or_default().insert(key.to_vec());
            }
        }
        Ok(left)
    }

    fn run(&self, cut_off: &[u8; 16], stop: &AtomicBool) -> Result<(), StorageError> {
        let left = self.days_left()?;
        let total = left.len();
        tracing::info!(
            days = total,
            "finding the models of the runs stored before the daily cost roll-up, in the \
             background"
        );
        let (mut replaced, mut kept, mut runs) = (0usize, 0usize, 0u64);
        for (i, (day, rows)) in left.into_iter().enumerate() {
            let mut outcome = DayOutcome::Mismatch;
            for attempt in 0..ATTEMPTS {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                if attempt > 0 {
                    std::thread::sleep(RETRY);
                }
                outcome = self.replace_day(day, &rows, cut_off)?;
                if outcome != DayOutcome::Mismatch {
                    break;
                }
            }
            match outcome {
                DayOutcome::Replaced { runs: n } => {
                    replaced += 1;
                    runs += n;
                }
                DayOutcome::Mismatch => {
                    kept += 1;
                    tracing::warn!(
                        day,
                        "the stored runs of a day do not match its stats: its runs keep the \
                         model \"(before upgrade)\""
                    );
                }
            }
            if (i + 1) % 10 == 0 || i + 1 == total {
                tracing::info!(
                    days = i + 1,
                    of = total,
                    runs,
                    "found the models of older runs"
                );
            }
        }
        self.days.insert(DONE, &[] as &[u8]).map_err(backend)?;
        tracing::info!(
            days = replaced,
            kept,
            runs,
            "the daily cost roll-up has the models of the runs stored before it"
        );
        Ok(())
    }

    /// Reads the runs of `day` up to the cut-off and, if they are exactly what its
    /// [`BEFORE_UPGRADE`] rows (`rows`, their keys) count, replaces those rows with rows per
    /// model.
    pub(super) fn replace_day(
        &self,
        day: Day,
        rows: &BTreeSet<Vec<u8>>,
        cut_off: &[u8; 16],
    ) -> Result<DayOutcome, StorageError> {
        let start = u64::from(day) * DAY_MS;
        let from = id_bounds(start).0.as_bytes().to_vec();
        let to = id_bounds(start + DAY_MS).0.as_bytes().to_vec();
        let in_range = |key: &[u8]| key <= cut_off.as_slice();
        // Read without the lock (parsing is the slow part)...
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut per_model: HashMap<DayKey, DayTotals> = HashMap::new();
        for entry in self.runs.range(from.clone()..to.clone()) {
            let (key, bytes) = entry?;
            if !in_range(&key) {
                break;
            }
            seen.insert(key.to_vec());
            // Unreadable runs are in no stats either (`build_once`, the recorder).
            let Ok(run) = serde_json::from_slice::<RunFigures>(&bytes) else {
                continue;
            };
            let view = RunView::from(&run);
            let mut one = Aggregate::default();
            one.add(&view);
            per_model
                .entry(DayKey::of(&view.key()))
                .or_default()
                .add(&DayTotals::of(&one));
        }
        // ...and check under it that the runs are the same and the rows count exactly them.
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut still = 0usize;
        for entry in self.runs.pointers(from..to) {
            let (key, _) = entry?;
            if !in_range(&key) {
                break;
            }
            if !seen.contains(key.as_ref()) {
                return Ok(DayOutcome::Mismatch);
            }
            still += 1;
        }
        if still != seen.len() {
            return Ok(DayOutcome::Mismatch);
        }
        let mut read: HashMap<Vec<u8>, u64> = HashMap::new();
        for (key, totals) in &per_model {
            let group = DayKey {
                model: BEFORE_UPGRADE.to_string(),
                ..key.clone()
            };
            *read.entry(day_key(&group)).or_default() += totals.runs;
        }
        let mut counted: HashMap<Vec<u8>, u64> = HashMap::new();
        for row in rows {
            if let Some(bytes) = self.days.get(row).map_err(backend)? {
                let totals = decode_day(&bytes).unwrap_or_default();
                counted.insert(row.clone(), totals.runs);
            }
        }
        if read != counted {
            return Ok(DayOutcome::Mismatch);
        }
        for row in counted.keys() {
            self.days.remove(row).map_err(backend)?;
        }
        let mut runs = 0;
        for (key, totals) in per_model {
            let at = day_key(&key);
            let mut stored = match self.days.get(&at).map_err(backend)? {
                Some(bytes) => decode_day(&bytes).unwrap_or_default(),
                None => DayTotals::default(),
            };
            stored.add(&totals);
            runs += totals.runs;
            self.days
                .insert(at, &encode_day(&stored))
                .map_err(backend)?;
        }
        Ok(DayOutcome::Replaced { runs })
    }
}

/// A day's runs stored as an earlier release left them, and its rows' keys (tests).
#[cfg(test)]
pub(super) mod test_day {
    use super::*;
    use crate::recorder::run::RunSource;
    use crate::storage::conformance::run_at;

    /// Stores a run of agent `a` of tenant `t` per model, a second apart from the start of
    /// `day`; their ids, in order.
    pub(in crate::storage::sled) fn store_runs(
        runs: &RunRecords,
        day: Day,
        models: &[&str],
    ) -> Vec<[u8; 16]> {
        let start = u64::from(day) * DAY_MS;
        let mut ids = Vec::new();
        for (i, model) in models.iter().enumerate() {
            let mut run = run_at("t", "a", start + i as u64 * 1000, "x");
            run.model = Some(model.to_string());
            ids.push(*run.id.as_bytes());
            runs.ids
                .raw()
                .insert(run.id.as_bytes(), serde_json::to_vec(&run).unwrap())
                .unwrap();
        }
        ids
    }

    /// The key of the row of `model` on `day` (tenant `t`, agent `a`, the API's runs).
    pub(in crate::storage::sled) fn row(day: Day, model: &str) -> Vec<u8> {
        day_key(&DayKey {
            tenant: "t".into(),
            day,
            agent: "a".into(),
            source: RunSource::Api,
            model: model.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::test_day::{row, store_runs};
    use super::*;
    use crate::storage::sled::run_files::{RunFiles, SEGMENT_BYTES};

    /// A day is replaced only when its runs are exactly what its before-upgrade rows count.
    #[test]
    fn a_day_is_replaced_only_when_its_runs_match_its_counts() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled::reopen_db(dir.path());
        let backfill = Backfill {
            runs: RunRecords::open(&db, RunFiles::open(&db, dir.path(), SEGMENT_BYTES).unwrap())
                .unwrap(),
            days: db.open_tree("stats_days").unwrap(),
            writer: Arc::default(),
        };
        let day: Day = 20_000;
        let ids = store_runs(&backfill.runs, day, &["gpt", "claude", "gpt"]);
        let row = |model: &str| row(day, model);
        let before = row(BEFORE_UPGRADE);
        let count = |runs: u64| {
            let totals = DayTotals {
                runs,
                errors: 0,
                cost_usd: 0.25 * runs as f64,
            };
            backfill.days.insert(&before, &encode_day(&totals)).unwrap();
        };
        let rows = BTreeSet::from([before.clone()]);
        assert_eq!(backfill.days_left().unwrap(), BTreeMap::new());
        // Two counted, three stored (a deletion not yet taken out, say): left as it is.
        count(2);
        assert_eq!(
            backfill.days_left().unwrap(),
            BTreeMap::from([(day, rows.clone())])
        );
        assert_eq!(
            backfill.replace_day(day, &rows, &ids[2]).unwrap(),
            DayOutcome::Mismatch
        );
        assert!(backfill.days.get(&before).unwrap().is_some());
        // Runs past the cut-off are not the earlier release's.
        assert_eq!(
            backfill.replace_day(day, &rows, &ids[1]).unwrap(),
            DayOutcome::Replaced { runs: 2 }
        );
        let totals = |model: &str| decode_day(&backfill.days.get(row(model)).unwrap().unwrap());
        assert_eq!(totals("gpt").map(|t| t.runs), Some(1));
        assert_eq!(totals("claude").map(|t| t.runs), Some(1));
        assert!(backfill.days.get(&before).unwrap().is_none());
        assert!(backfill.days_left().unwrap().is_empty());
    }
}
