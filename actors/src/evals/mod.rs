//! Evaluations: datasets of an agent's inputs, reviews of outputs (by people and by an AI
//! reviewer), and benchmarks that run every item of a dataset on every candidate (a version,
//! or a version re-targeted to another model) and sum them up in a table.
//!
//! This module holds the domain types and the arithmetic of the table; the stores are in
//! `storage/evals.rs`, the runner and the HTTP side at the edge (`src/evals/`,
//! `src/http/evals.rs`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Items in one dataset at most.
pub const MAX_ITEMS: usize = 5_000;
/// Candidates in one benchmark at most.
pub const MAX_CANDIDATES: usize = 8;
/// Bytes of one item's input (variables and messages, as JSON) at most.
pub const MAX_ITEM_BYTES: usize = 256 * 1024;

/// A named set of an agent's inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    pub tenant: String,
    pub agent: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub created_ms: u64,
}

/// One input: template variables and/or messages, with what a correct answer is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetItem {
    /// Filled in from the input: items are distinct by it.
    #[serde(default)]
    pub input_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Value>>,
    /// The expected output, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// What a correct answer must contain or do, in words (for the reviewer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The run the item was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_run: Option<Uuid>,
}

impl DatasetItem {
    /// Sets `input_hash` from the input and messages.
    pub fn hashed(mut self) -> DatasetItem {
        self.input_hash = input_hash(self.input.as_ref(), self.messages.as_deref());
        self
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of an input: its variables and messages as canonical JSON (keys sorted).
pub fn input_hash(input: Option<&Value>, messages: Option<&[Value]>) -> String {
    let canonical = serde_json::json!({"input": input, "messages": messages});
    // `serde_json::Value` keeps object keys sorted (no `preserve_order`): one spelling.
    hex(&Sha256::digest(canonical.to_string().as_bytes())[..16])
}

/// The hash of an output text.
pub fn output_hash(output: &str) -> String {
    hex(&Sha256::digest(output.as_bytes())[..16])
}

/// What a review says of an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Positive,
    Negative,
    Unsure,
}

/// Who reviewed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Reviewer {
    /// A person, through the API or the UI.
    User { who: String },
    /// The agent's AI reviewer, with the run that judged.
    Ai { model: String, run_id: Uuid },
}

/// A review of one output for one input: the same pair is never reviewed twice (a person's
/// review replaces the AI's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    pub tenant: String,
    pub agent: String,
    pub input_hash: String,
    pub output_hash: String,
    pub verdict: Verdict,
    #[serde(default)]
    pub comment: Option<String>,
    pub reviewer: Reviewer,
    /// The input and output reviewed (for examples shown to the AI reviewer).
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default)]
    pub output: Option<String>,
    pub created_ms: u64,
}

/// An agent's AI reviewer: what it is told, and the model that judges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewerConfig {
    pub instructions: String,
    pub model: String,
}

/// What a benchmark compares: a version's prompt and parameters on its own model or another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Candidate {
    /// `v1`, `gpt-4o-mini` or `v1 on gpt-4o-mini`.
    pub fn label(&self) -> String {
        match (&self.version_id, &self.model) {
            (Some(v), Some(m)) => format!("{v} on {m}"),
            (Some(v), None) => v.clone(),
            (None, Some(m)) => m.clone(),
            (None, None) => "?".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchStatus {
    Running,
    Done,
    Cancelled,
    Failed,
}

/// A benchmark: what it runs, and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Benchmark {
    pub id: Uuid,
    pub tenant: String,
    pub agent: String,
    pub dataset: String,
    pub candidates: Vec<Candidate>,
    /// Items × candidates.
    pub total: u32,
    pub concurrency: u32,
    pub use_cache: bool,
    pub status: BenchStatus,
    pub created_ms: u64,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
}

/// One item on one candidate: its answer, what it cost, and its review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    pub candidate: u16,
    pub item: u32,
    pub input_hash: String,
    pub run_id: Option<Uuid>,
    pub output: Option<String>,
    pub cost_usd: f64,
    pub duration_seconds: f64,
    /// The OpenAI error object, when the run failed.
    #[serde(default)]
    pub error: Option<Value>,
    #[serde(default)]
    pub verdict: Option<Verdict>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// One candidate's row of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub candidate: Candidate,
    pub label: String,
    pub items: u32,
    pub positive: u32,
    pub negative: u32,
    pub unsure: u32,
    pub errors: u32,
    /// Positive share of the reviewed answers (unsure counted as not positive).
    pub accuracy: Option<f64>,
    pub avg_latency_seconds: Option<f64>,
    pub p90_latency_seconds: Option<f64>,
    pub avg_cost_usd: Option<f64>,
    pub total_cost_usd: f64,
    /// The columns this candidate is best on.
    pub best: Vec<&'static str>,
}

/// The table of a benchmark's results: a row per candidate, the best on each column marked
/// (highest accuracy; lowest latency, cost and errors).
pub fn table(candidates: &[Candidate], results: &[BenchResult]) -> Vec<Row> {
    let mut rows: Vec<Row> = candidates
        .iter()
        .enumerate()
        .map(|(i, candidate)| {
            let mine: Vec<&BenchResult> = results
                .iter()
                .filter(|r| usize::from(r.candidate) == i)
                .collect();
            let count = |v: Verdict| mine.iter().filter(|r| r.verdict == Some(v)).count() as u32;
            let answered: Vec<&&BenchResult> = mine.iter().filter(|r| r.error.is_none()).collect();
            let mut latencies: Vec<f64> = answered.iter().map(|r| r.duration_seconds).collect();
            latencies.sort_by(f64::total_cmp);
            let total_cost: f64 = mine.iter().map(|r| r.cost_usd).sum();
            let (positive, negative, unsure) = (
                count(Verdict::Positive),
                count(Verdict::Negative),
                count(Verdict::Unsure),
            );
            let reviewed = positive + negative + unsure;
            let n = answered.len();
            Row {
                candidate: candidate.clone(),
                label: candidate.label(),
                items: mine.len() as u32,
                positive,
                negative,
                unsure,
                errors: (mine.len() - n) as u32,
                accuracy: (reviewed > 0).then(|| f64::from(positive) / f64::from(reviewed)),
                avg_latency_seconds: (n > 0).then(|| latencies.iter().sum::<f64>() / n as f64),
                p90_latency_seconds: (n > 0)
                    .then(|| latencies[((n as f64 * 0.9).ceil() as usize).clamp(1, n) - 1]),
                avg_cost_usd: (!mine.is_empty()).then(|| total_cost / mine.len() as f64),
                total_cost_usd: total_cost,
                best: Vec::new(),
            }
        })
        .collect();
    let mark = |rows: &mut Vec<Row>, column: &'static str, key: &dyn Fn(&Row) -> Option<f64>| {
        let best = rows.iter().filter_map(key).min_by(f64::total_cmp);
        if let Some(best) = best {
            for row in rows.iter_mut() {
                if key(row) == Some(best) {
                    row.best.push(column);
                }
            }
        }
    };
    mark(&mut rows, "accuracy", &|r| r.accuracy.map(|a| -a));
    mark(&mut rows, "avg_latency_seconds", &|r| r.avg_latency_seconds);
    mark(&mut rows, "p90_latency_seconds", &|r| r.p90_latency_seconds);
    mark(&mut rows, "avg_cost_usd", &|r| r.avg_cost_usd);
    mark(&mut rows, "errors", &|r| {
        (r.items > 0).then_some(f64::from(r.errors))
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(
        candidate: u16,
        item: u32,
        verdict: Option<Verdict>,
        secs: f64,
        cost: f64,
    ) -> BenchResult {
        BenchResult {
            candidate,
            item,
            input_hash: format!("h{item}"),
            run_id: None,
            output: Some("x".into()),
            cost_usd: cost,
            duration_seconds: secs,
            error: None,
            verdict,
            reason: None,
        }
    }

    #[test]
    fn the_table_sums_each_candidate_and_marks_the_best() {
        let candidates = vec![
            Candidate {
                version_id: Some("v1".into()),
                model: None,
            },
            Candidate {
                version_id: Some("v1".into()),
                model: Some("big".into()),
            },
        ];
        let mut results = Vec::new();
        for item in 0..10 {
            let wrong = item % 5 == 0;
            results.push(result(
                0,
                item,
                Some(if wrong {
                    Verdict::Negative
                } else {
                    Verdict::Positive
                }),
                0.1 * f64::from(item + 1),
                0.001,
            ));
            results.push(result(1, item, Some(Verdict::Positive), 2.0, 0.01));
        }
        results[2].verdict = Some(Verdict::Unsure);
        let rows = table(&candidates, &results);
        assert_eq!(rows[0].label, "v1");
        assert_eq!(rows[1].label, "v1 on big");
        assert_eq!(
            (rows[0].positive, rows[0].negative, rows[0].unsure),
            (7, 2, 1)
        );
        assert_eq!(rows[0].accuracy, Some(0.7));
        assert_eq!(rows[1].accuracy, Some(1.0));
        assert!((rows[0].avg_latency_seconds.unwrap() - 0.55).abs() < 1e-9);
        assert!((rows[0].p90_latency_seconds.unwrap() - 0.9).abs() < 1e-9);
        assert!((rows[1].total_cost_usd - 0.1).abs() < 1e-9);
        assert_eq!(rows[1].best, vec!["accuracy", "errors"]);
        assert_eq!(
            rows[0].best,
            vec![
                "avg_latency_seconds",
                "p90_latency_seconds",
                "avg_cost_usd",
                "errors"
            ]
        );
    }

    #[test]
    fn inputs_hash_alike_whatever_the_key_order() {
        let a: Value = serde_json::from_str(r#"{"a": 1, "b": 2}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b": 2, "a": 1}"#).unwrap();
        assert_eq!(input_hash(Some(&a), None), input_hash(Some(&b), None));
        assert_ne!(input_hash(Some(&a), None), input_hash(None, None));
    }
}
