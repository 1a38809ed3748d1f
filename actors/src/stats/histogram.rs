//! A latency histogram with fixed log-spaced buckets: each bucket is 4% wider than the one
//! below it, from 0.1 ms to about 2.8 hours, so a percentile read from it (the geometric middle
//! of its bucket, kept within the smallest and largest value seen) is within 2% of the exact
//! one. The buckets are the same everywhere, so histograms of different hours, sources and
//! agents add up by bucket; only the buckets that counted something are kept.

use serde::{Deserialize, Serialize};

/// The lower bound of the first regular bucket, in seconds.
const FLOOR_SECONDS: f64 = 1e-4;
/// Each bucket's upper bound over its lower bound.
const GROWTH: f64 = 1.04;
/// Regular buckets; index 0 holds what is below the floor, `REGULAR + 1` what is above the top.
const REGULAR: u16 = 470;

/// Durations counted by bucket, with their smallest, largest and sum.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// `(bucket, count)`, by bucket, only non-zero counts.
    counts: Vec<(u16, u64)>,
    min: f64,
    max: f64,
    sum: f64,
}

/// The bucket a duration falls in.
fn bucket_of(seconds: f64) -> u16 {
    if seconds.is_nan() || seconds < FLOOR_SECONDS {
        return 0;
    }
    let index = ((seconds / FLOOR_SECONDS).ln() / GROWTH.ln()).floor();
    if index >= f64::from(REGULAR) {
        REGULAR + 1
    } else {
        index as u16 + 1
    }
}

/// The geometric middle of a regular bucket.
fn middle_of(bucket: u16) -> f64 {
    FLOOR_SECONDS * GROWTH.powf(f64::from(bucket) - 0.5)
}

impl LatencyHistogram {
    /// How many durations were counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|(_, c)| c).sum()
    }

    /// The sum of the counted durations, in seconds.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Counts one duration, in seconds (negative and non-finite ones count as zero).
    pub fn record(&mut self, seconds: f64) {
        let seconds = if seconds.is_finite() {
            seconds.max(0.0)
        } else {
            0.0
        };
        let first = self.counts.is_empty();
        self.add(bucket_of(seconds), 1);
        if first {
            (self.min, self.max) = (seconds, seconds);
        } else {
            self.min = self.min.min(seconds);
            self.max = self.max.max(seconds);
        }
        self.sum += seconds;
    }

    fn add(&mut self, bucket: u16, n: u64) {
        match self.counts.binary_search_by_key(&bucket, |(b, _)| *b) {
            Ok(at) => self.counts[at].1 += n,
            Err(at) => self.counts.insert(at, (bucket, n)),
        }
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            (self.min, self.max) = (other.min, other.max);
        } else {
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
        }
        for &(bucket, n) in &other.counts {
            self.add(bucket, n);
        }
        self.sum += other.sum;
    }

    /// Takes another histogram's counts (of durations this one counted) out of this one, for
    /// runs deleted by retention. The smallest and largest stay as they were (the runs left
    /// lie within them, and the exact ones are gone with the runs); they reset once nothing
    /// is counted.
    pub fn subtract(&mut self, other: &LatencyHistogram) {
        for &(bucket, n) in &other.counts {
            if let Ok(at) = self.counts.binary_search_by_key(&bucket, |(b, _)| *b) {
                self.counts[at].1 = self.counts[at].1.saturating_sub(n);
            }
        }
        self.counts.retain(|(_, n)| *n > 0);
        self.sum = (self.sum - other.sum).max(0.0);
        if self.counts.is_empty() {
            *self = LatencyHistogram::default();
        }
    }

    /// The `q` quantile (0 < q ≤ 1) by nearest rank, in seconds; `None` when nothing was
    /// counted.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for &(bucket, n) in &self.counts {
            seen += n;
            if seen >= rank {
                let estimate = match bucket {
                    0 => self.min,
                    b if b > REGULAR => self.max,
                    b => middle_of(b),
                };
                return Some(estimate.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtracting_what_was_merged_leaves_the_rest() {
        let (mut kept, mut gone) = (LatencyHistogram::default(), LatencyHistogram::default());
        for s in [0.05, 0.2, 0.2, 1.5] {
            kept.record(s);
        }
        for s in [0.2, 3.0, 0.0001] {
            gone.record(s);
        }
        let mut all = kept.clone();
        all.merge(&gone);
        all.subtract(&gone);
        assert_eq!(all.counts, kept.counts);
        assert_eq!(all.count(), 4);
        assert!((all.sum() - kept.sum()).abs() < 1e-9);
        assert_eq!(all.quantile(0.5), kept.quantile(0.5));
        // Nothing left: as new.
        all.subtract(&kept);
        assert_eq!(all, LatencyHistogram::default());
    }

    /// The exact `q` quantile by nearest rank.
    fn exact(sorted: &[f64], q: f64) -> f64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1]
    }

    fn assert_close(estimate: f64, exact: f64, what: &str) {
        let error = (estimate - exact).abs() / exact;
        assert!(
            error <= 0.02,
            "{what}: {estimate} vs exact {exact} ({:.2}%)",
            error * 100.0
        );
    }

    #[test]
    fn percentiles_are_within_two_percent_of_the_exact_ones() {
        // Three shapes: uniform 1..1000 ms, a long tail over six decades, a few values only.
        let mut rng = fastrand::Rng::with_seed(7);
        let uniform: Vec<f64> = (1..=1000).map(|ms| ms as f64 / 1000.0).collect();
        let tail: Vec<f64> = (0..20_000)
            .map(|_| 10f64.powf(rng.f64() * 6.0 - 3.5))
            .collect();
        let few = vec![0.25, 0.3, 4.0];
        for (name, data) in [("uniform", uniform), ("tail", tail), ("few", few)] {
            let mut histogram = LatencyHistogram::default();
            for &d in &data {
                histogram.record(d);
            }
            let mut sorted = data.clone();
            sorted.sort_by(f64::total_cmp);
            for q in [0.5, 0.9, 0.99, 1.0] {
                let estimate = histogram.quantile(q).unwrap();
                assert_close(estimate, exact(&sorted, q), &format!("{name} p{q}"));
            }
            assert_eq!(histogram.count(), data.len() as u64);
            assert!((histogram.sum() - data.iter().sum::<f64>()).abs() < 1e-6);
        }
    }

    #[test]
    fn merged_histograms_answer_like_one_over_all_the_data() {
        let mut rng = fastrand::Rng::with_seed(11);
        let data: Vec<f64> = (0..5000).map(|_| rng.f64() * 3.0 + 0.01).collect();
        let mut whole = LatencyHistogram::default();
        let mut parts = vec![LatencyHistogram::default(); 7];
        for (i, &d) in data.iter().enumerate() {
            whole.record(d);
            parts[i % 7].record(d);
        }
        let mut merged = LatencyHistogram::default();
        for part in &parts {
            merged.merge(part);
        }
        assert_eq!(merged.counts, whole.counts);
        assert_eq!((merged.min, merged.max), (whole.min, whole.max));
        for q in [0.5, 0.9, 0.99] {
            assert_eq!(merged.quantile(q), whole.quantile(q));
        }
    }

    #[test]
    fn the_edges_are_counted_not_lost() {
        let mut histogram = LatencyHistogram::default();
        assert_eq!(histogram.quantile(0.5), None);
        histogram.record(0.0);
        histogram.record(-1.0);
        histogram.record(f64::NAN);
        histogram.record(50_000.0);
        assert_eq!(histogram.count(), 4);
        assert_eq!(histogram.quantile(0.5), Some(0.0));
        assert_eq!(histogram.quantile(1.0), Some(50_000.0));
        // The regular buckets cover 0.1 ms to past two hours.
        assert_eq!(bucket_of(FLOOR_SECONDS), 1);
        assert!(bucket_of(7200.0) <= REGULAR);
        assert_eq!(bucket_of(20_000.0), REGULAR + 1);
    }

    #[test]
    fn it_round_trips_through_json_compactly() {
        let mut histogram = LatencyHistogram::default();
        for d in [0.2, 0.2, 0.21, 1.5] {
            histogram.record(d);
        }
        let text = serde_json::to_string(&histogram).unwrap();
        assert!(text.len() < 120, "{text}");
        let back: LatencyHistogram = serde_json::from_str(&text).unwrap();
        assert_eq!(back, histogram);
    }
}
