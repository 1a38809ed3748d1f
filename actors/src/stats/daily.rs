//! The daily roll-up beside the hourly aggregates: runs, errors and cost per tenant, day,
//! agent, model and source, for the cost page.
//!
//! Over 30 days the hourly aggregates are 720 records per agent and source, each mostly a
//! latency histogram; the roll-up is one small record per day, agent, model and source. A
//! store writes it in the same step as the hours ([`crate::storage::StatsStore::add_batch`],
//! from the same increments: their keys carry the model) and retention takes deleted runs out
//! of it where it takes them out of the hours, so the two always count the same runs.
//!
//! Data written before the roll-up existed gets it filled once: on PostgreSQL by the migration
//! that adds it, from the stored runs' columns; on sled at once from the hourly aggregates,
//! which do not know the model, so those runs count under [`BEFORE_UPGRADE`] until a thread
//! has read their models from the runs (`storage/sled/stats_backfill.rs`).
//! [`DayTotals::take_deleted`] explains how retention finds runs counted under it.

use std::collections::{BTreeMap, HashMap};

use super::aggregate::{Aggregate, Hour, StatsKey};
use crate::recorder::run::RunSource;

/// A day, in days since the Unix epoch (UTC).
pub type Day = u32;

/// The day an hour falls in.
pub fn day_of(hour: Hour) -> Day {
    hour / 24
}

/// The model the roll-up counts the runs under that were stored before it existed, on sled,
/// until their models are read from the runs (the hourly aggregates it is first filled from do
/// not know the model).
pub const BEFORE_UPGRADE: &str = "(before upgrade)";

/// Whose runs a day's totals count.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DayKey {
    pub tenant: String,
    pub day: Day,
    pub agent: String,
    pub source: RunSource,
    /// As in [`StatsKey::model`] (bounded), or [`BEFORE_UPGRADE`].
    pub model: String,
}

impl DayKey {
    /// The day's key of an hourly increment.
    pub fn of(key: &StatsKey) -> DayKey {
        DayKey {
            tenant: key.tenant.clone(),
            day: day_of(key.hour),
            agent: key.agent.clone(),
            source: key.source,
            model: key.model.clone(),
        }
    }
}

/// Runs, errors and cost of some runs. They add up across days, agents, models and sources.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DayTotals {
    pub runs: u64,
    pub errors: u64,
    pub cost_usd: f64,
}

impl DayTotals {
    /// The totals of the runs an aggregate counts.
    pub fn of(sums: &Aggregate) -> DayTotals {
        DayTotals {
            runs: sums.runs,
            errors: sums.errors,
            cost_usd: sums.cost_usd,
        }
    }

    /// Adds other totals to these.
    pub fn add(&mut self, other: &DayTotals) {
        self.runs += other.runs;
        self.errors += other.errors;
        self.cost_usd += other.cost_usd;
    }

    /// Takes as much of `want` out of these as they hold, each figure on its own; what was
    /// taken.
    fn take(&mut self, want: &DayTotals) -> DayTotals {
        let taken = DayTotals {
            runs: self.runs.min(want.runs),
            errors: self.errors.min(want.errors),
            cost_usd: self.cost_usd.min(want.cost_usd).max(0.0),
        };
        self.runs -= taken.runs;
        self.errors -= taken.errors;
        self.cost_usd -= taken.cost_usd;
        taken
    }

    /// Takes the runs of `model` that retention deleted out of one day of one agent and
    /// source, whose stored rows are `rows` (by model); rows left with no run are removed.
    ///
    /// Runs counted under [`BEFORE_UPGRADE`] go first: retention deletes the oldest runs
    /// first, and on the day of the upgrade the runs stored before it are the oldest. The
    /// totals are exact; only within the hour of the upgrade may a deleted run of an earlier
    /// release be taken from its model's row rather than from [`BEFORE_UPGRADE`] (or the
    /// reverse), when one batch deletes runs from both sides of it.
    pub fn take_deleted(rows: &mut BTreeMap<String, DayTotals>, model: &str, deleted: &DayTotals) {
        let mut rest = *deleted;
        for from in [BEFORE_UPGRADE, model] {
            let Some(row) = rows.get_mut(from) else {
                continue;
            };
            let taken = row.take(&rest);
            rest.runs -= taken.runs;
            rest.errors -= taken.errors;
            rest.cost_usd = (rest.cost_usd - taken.cost_usd).max(0.0);
            if row.runs == 0 {
                rows.remove(from);
            }
        }
    }
}

/// The roll-up's increments of a batch of hourly increments, merged per day.
pub fn days_of<'a>(
    batch: impl IntoIterator<Item = (&'a StatsKey, &'a Aggregate)>,
) -> HashMap<DayKey, DayTotals> {
    let mut days: HashMap<DayKey, DayTotals> = HashMap::new();
    for (key, sums) in batch {
        days.entry(DayKey::of(key))
            .or_default()
            .add(&DayTotals::of(sums));
    }
    days
}

/// The deleted runs of a retention batch per day of an agent and source (the key's model
/// empty), then per model: what [`DayTotals::take_deleted`] takes, group by group.
pub fn deleted_by_day<'a>(
    batch: impl IntoIterator<Item = (&'a StatsKey, &'a Aggregate)>,
) -> HashMap<DayKey, BTreeMap<String, DayTotals>> {
    let mut groups: HashMap<DayKey, BTreeMap<String, DayTotals>> = HashMap::new();
    for (key, model_totals) in days_of(batch) {
        let model = key.model.clone();
        let group = DayKey {
            model: String::new(),
            ..key
        };
        groups
            .entry(group)
            .or_default()
            .entry(model)
            .or_default()
            .add(&model_totals);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(runs: u64, cost_usd: f64) -> DayTotals {
        DayTotals {
            runs,
            errors: 0,
            cost_usd,
        }
    }

    #[test]
    fn deleted_runs_come_out_of_the_runs_stored_before_the_upgrade_first() {
        let mut rows = BTreeMap::from([
            (BEFORE_UPGRADE.to_string(), totals(3, 3.0)),
            ("gpt".to_string(), totals(5, 5.0)),
            ("claude".to_string(), totals(2, 2.0)),
        ]);
        // Two of the oldest runs: both stored before the upgrade.
        DayTotals::take_deleted(&mut rows, "gpt", &totals(2, 2.0));
        assert_eq!(rows[BEFORE_UPGRADE], totals(1, 1.0));
        assert_eq!(rows["gpt"], totals(5, 5.0));
        // Past them: the model's own row, and an emptied row goes.
        DayTotals::take_deleted(&mut rows, "gpt", &totals(4, 4.0));
        assert!(!rows.contains_key(BEFORE_UPGRADE));
        assert_eq!(rows["gpt"], totals(2, 2.0));
        DayTotals::take_deleted(&mut rows, "claude", &totals(2, 2.0));
        assert!(!rows.contains_key("claude"));
        // More than is stored: nothing goes below zero.
        DayTotals::take_deleted(&mut rows, "gpt", &totals(9, 9.0));
        assert!(rows.is_empty());
    }

    #[test]
    fn a_batch_rolls_up_per_day_and_model() {
        let key = |hour: Hour, model: &str| StatsKey {
            tenant: "t".into(),
            agent: "a".into(),
            source: RunSource::Api,
            hour,
            model: model.into(),
        };
        let sums = |runs: u64| Aggregate {
            runs,
            errors: 1,
            cost_usd: runs as f64,
            ..Default::default()
        };
        let batch = [
            (key(24, "m"), sums(2)),
            (key(47, "m"), sums(3)),
            (key(48, "m"), sums(4)),
            (key(30, "n"), sums(1)),
        ];
        let days = days_of(batch.iter().map(|(k, s)| (k, s)));
        let day = |day: Day, model: &str| DayKey {
            day,
            ..DayKey::of(&key(0, model))
        };
        assert_eq!(days.len(), 3);
        assert_eq!(
            days[&day(1, "m")],
            DayTotals {
                runs: 5,
                errors: 2,
                cost_usd: 5.0
            }
        );
        assert_eq!(days[&day(2, "m")].runs, 4);
        assert_eq!(days[&day(1, "n")].runs, 1);
        let groups = deleted_by_day(batch.iter().map(|(k, s)| (k, s)));
        assert_eq!(groups[&day(1, "")].len(), 2);
        assert_eq!(groups[&day(2, "")]["m"].runs, 4);
    }
}
