//! Runs search: the query a client sends (`field_queries` of field, operator and values),
//! checked against what each field accepts and turned into typed [`Filter`]s, and the rule that
//! says whether a run matches them. Backend-free: a store narrows the candidates with its
//! indexes ([`Filter::indexed`]) and checks the rest here, so every backend answers alike.
//!
//! Every input is bounded: the number of field queries, of values per query, a value's length,
//! a JSON path's length and depth, and the page size. Past a bound, or for an unknown field or
//! operator or a value of the wrong type, the client gets a 400 that says what is allowed.

mod fields;
mod matcher;

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::error::GatewayError;

pub use fields::{field_catalog, FieldInfo};
pub use matcher::{run_texts, RunFacts, TextNeedle};

/// At most this many field queries in one search.
pub const MAX_FIELD_QUERIES: usize = 20;
/// At most this many values in one field query.
pub const MAX_VALUES: usize = 50;
/// A value (or a `metadata.`/`input.`/`output.` path) is at most this long, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024;
/// A JSON path has at most this many steps.
pub const MAX_PATH_STEPS: usize = 16;
/// The page size when none is asked for, and the most a page holds.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 200;

/// The body of `POST …/runs/search`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    #[serde(default)]
    pub field_queries: Vec<FieldQueryBody>,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub cursor: Option<String>,
}

/// One `{"field", "operator", "values"}` as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldQueryBody {
    pub field: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<Value>,
}

/// The operators, spelled as clients send them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Is,
    IsNot,
    Contains,
    DoesNotContain,
    GreaterThan,
    GreaterThanOrEqual,
    LessThan,
    LessThanOrEqual,
    Between,
    Before,
    After,
    IsEmpty,
    IsNotEmpty,
}

impl Operator {
    pub const ALL: [Operator; 13] = [
        Operator::Is,
        Operator::IsNot,
        Operator::Contains,
        Operator::DoesNotContain,
        Operator::GreaterThan,
        Operator::GreaterThanOrEqual,
        Operator::LessThan,
        Operator::LessThanOrEqual,
        Operator::Between,
        Operator::Before,
        Operator::After,
        Operator::IsEmpty,
        Operator::IsNotEmpty,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Is => "is",
            Operator::IsNot => "is not",
            Operator::Contains => "contains",
            Operator::DoesNotContain => "does not contain",
            Operator::GreaterThan => "greater than",
            Operator::GreaterThanOrEqual => "greater than or equal to",
            Operator::LessThan => "less than",
            Operator::LessThanOrEqual => "less than or equal to",
            Operator::Between => "between",
            Operator::Before => "before",
            Operator::After => "after",
            Operator::IsEmpty => "is empty",
            Operator::IsNotEmpty => "is not empty",
        }
    }

    pub fn parse(text: &str) -> Option<Operator> {
        Operator::ALL.into_iter().find(|op| op.as_str() == text)
    }

    /// How many values the operator takes: `(min, max)`.
    fn arity(self) -> (usize, usize) {
        match self {
            Operator::IsEmpty | Operator::IsNotEmpty => (0, 0),
            Operator::Between => (2, 2),
            Operator::GreaterThan
            | Operator::GreaterThanOrEqual
            | Operator::LessThan
            | Operator::LessThanOrEqual
            | Operator::Before
            | Operator::After => (1, 1),
            Operator::Is | Operator::IsNot | Operator::Contains | Operator::DoesNotContain => {
                (1, MAX_VALUES)
            }
        }
    }
}

/// A step of a JSON path: an object key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// What a field query looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Status,
    Model,
    Provider,
    Version,
    Schema,
    CostUsd,
    DurationSeconds,
    CreatedAt,
    Cache,
    Feedback,
    Conversation,
    Source,
    Agent,
    Metadata(String),
    Input(Vec<Step>),
    Output(Vec<Step>),
    Text,
}

/// A typed operand.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Text(String),
    Number(f64),
    /// Milliseconds since the Unix epoch.
    Time(u64),
    /// A JSON value, compared with a run's JSON (`metadata.`, `input.`, `output.`).
    Json(Value),
    /// An environment name (`version is production`), resolved: the versions deployed there
    /// and when.
    Deployed(Vec<DeployedSpan>),
}

/// A version deployed to an environment from `from_ms` until `to_ms` (exclusive).
#[derive(Debug, Clone, PartialEq)]
pub struct DeployedSpan {
    pub version_id: String,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// The environment names `version` accepts besides version ids.
pub const ENVIRONMENTS: [&str; 3] = ["dev", "staging", "production"];

/// One checked field query.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub field: Field,
    pub operator: Operator,
    pub operands: Vec<Operand>,
}

impl Filter {
    /// For an `is` on a field a store indexes: the field's index name and the values, any of
    /// which matches.
    pub fn indexed(&self) -> Option<(IndexedField, Vec<&str>)> {
        if self.operator != Operator::Is {
            return None;
        }
        let field = match self.field {
            Field::Status => IndexedField::Status,
            Field::Model => IndexedField::Model,
            Field::Provider => IndexedField::Provider,
            Field::Version => IndexedField::Version,
            Field::Cache => IndexedField::Cache,
            Field::Source => IndexedField::Source,
            _ => return None,
        };
        let mut values = Vec::new();
        for operand in &self.operands {
            match operand {
                Operand::Text(text) => values.push(text.as_str()),
                // A superset: the versions ever deployed there (the matcher checks when).
                Operand::Deployed(spans) => {
                    values.extend(spans.iter().map(|s| s.version_id.as_str()))
                }
                _ => return None,
            }
        }
        values.sort_unstable();
        values.dedup();
        Some((field, values))
    }

    /// The time range `created_at` must fall in, in milliseconds, when this is a time filter.
    pub fn time_range(&self) -> Option<(u64, u64)> {
        if self.field != Field::CreatedAt {
            return None;
        }
        let time = |i: usize| match self.operands.get(i) {
            Some(Operand::Time(ms)) => Some(*ms),
            _ => None,
        };
        match self.operator {
            Operator::After | Operator::GreaterThan | Operator::GreaterThanOrEqual => {
                Some((time(0)?, u64::MAX))
            }
            Operator::Before | Operator::LessThan | Operator::LessThanOrEqual => {
                Some((0, time(0)?))
            }
            Operator::Between => {
                let (a, b) = (time(0)?, time(1)?);
                Some((a.min(b), a.max(b)))
            }
            _ => None,
        }
    }
}

/// The categorical fields a store keeps an index of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IndexedField {
    Status,
    Model,
    Provider,
    Version,
    Cache,
    Source,
}

impl IndexedField {
    pub const ALL: [IndexedField; 6] = [
        IndexedField::Status,
        IndexedField::Model,
        IndexedField::Provider,
        IndexedField::Version,
        IndexedField::Cache,
        IndexedField::Source,
    ];

    /// One byte in index keys.
    pub fn code(self) -> u8 {
        match self {
            IndexedField::Status => b's',
            IndexedField::Model => b'm',
            IndexedField::Provider => b'p',
            IndexedField::Version => b'v',
            IndexedField::Cache => b'c',
            IndexedField::Source => b'o',
        }
    }
}

/// A checked search: its filters (all must match), the page size and where the page starts.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    pub filters: Vec<Filter>,
    pub limit: usize,
    /// Runs strictly older than this one.
    pub cursor: Option<Uuid>,
}

impl RunQuery {
    /// Checks a search body. `all_agents`: the search spans the tenant's agents (then `agent`
    /// is a field too).
    pub fn parse(body: SearchBody, all_agents: bool) -> Result<RunQuery, GatewayError> {
        if body.field_queries.len() > MAX_FIELD_QUERIES {
            return Err(invalid(
                format!(
                    "{} field queries, more than the limit of {MAX_FIELD_QUERIES}",
                    body.field_queries.len()
                ),
                "field_queries",
            ));
        }
        let limit = body.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(invalid(
                format!("`limit` must be between 1 and {MAX_LIMIT}, not {limit}"),
                "limit",
            ));
        }
        let cursor = match body.cursor.as_deref() {
            None | Some("") => None,
            Some(raw) => Some(parse_cursor(raw)?),
        };
        let filters = body
            .field_queries
            .into_iter()
            .enumerate()
            .map(|(i, q)| fields::check(q, all_agents, i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RunQuery {
            filters,
            limit,
            cursor,
        })
    }

    /// The time range every matching run falls in (the intersection of the time filters).
    pub fn time_range(&self) -> (u64, u64) {
        self.filters
            .iter()
            .filter_map(Filter::time_range)
            .fold((0, u64::MAX), |(lo, hi), (a, b)| (lo.max(a), hi.min(b)))
    }

    /// Whether a `version` filter names an environment.
    pub fn names_environments(&self) -> bool {
        self.filters.iter().any(|f| {
            f.field == Field::Version
                && f.operands
                    .iter()
                    .any(|o| matches!(o, Operand::Text(t) if ENVIRONMENTS.contains(&t.as_str())))
        })
    }

    /// Turns the environment names of `version` filters into the versions deployed there and
    /// when, from the agent's deployment history (any order): a run matches `version is
    /// production` when its version was the one deployed to production when it ran (for any
    /// of the agent's schemas).
    pub fn resolve_environments(&mut self, history: &[crate::agents::DeploymentRecord]) {
        let mut history: Vec<&crate::agents::DeploymentRecord> = history.iter().collect();
        history.sort_by_key(|d| d.sequence);
        let spans_of = |env: &str| -> Vec<DeployedSpan> {
            let mut spans = Vec::new();
            for (i, d) in history.iter().enumerate() {
                if d.environment.as_str() != env {
                    continue;
                }
                let from_ms = millis_of(&d.deployed_at);
                let to_ms = history[i + 1..]
                    .iter()
                    .find(|n| n.environment == d.environment && n.schema_id == d.schema_id)
                    .map_or(u64::MAX, |n| millis_of(&n.deployed_at));
                spans.push(DeployedSpan {
                    version_id: d.version_id.clone(),
                    from_ms,
                    to_ms,
                });
            }
            spans
        };
        for filter in &mut self.filters {
            if filter.field != Field::Version {
                continue;
            }
            for operand in &mut filter.operands {
                if let Operand::Text(t) = operand {
                    if ENVIRONMENTS.contains(&t.as_str()) {
                        *operand = Operand::Deployed(spans_of(t));
                    }
                }
            }
        }
    }

    /// For each `text contains` filter, its words (ASCII-lowercased): a matching run holds
    /// one of each filter's.
    pub fn text_words(&self) -> Vec<Vec<Vec<u8>>> {
        self.filters
            .iter()
            .filter(|f| f.field == Field::Text && f.operator == Operator::Contains)
            .map(|f| {
                f.operands
                    .iter()
                    .filter_map(|o| match o {
                        Operand::Text(t) => Some(t.as_bytes().to_ascii_lowercase()),
                        _ => None,
                    })
                    .collect()
            })
            .collect()
    }

    /// Whether the query asks about feedback (which lives beside the runs).
    pub fn needs_feedback(&self) -> bool {
        self.filters.iter().any(|f| f.field == Field::Feedback)
    }
}

fn millis_of(rfc3339: &str) -> u64 {
    humantime::parse_rfc3339_weak(rfc3339)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// A cursor is the id of the last run of the previous page.
pub fn parse_cursor(raw: &str) -> Result<Uuid, GatewayError> {
    if raw.len() > 64 {
        return Err(invalid("`cursor` is not one this API returned", "cursor"));
    }
    raw.parse().map_err(|_| {
        invalid(
            format!("`cursor` `{raw}` is not one this API returned"),
            "cursor",
        )
    })
}

fn invalid(message: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid(message)
        .with_param(param)
        .with_code("invalid_search")
}

/// The first id a UUIDv7 created at `ms` can have, and the last.
pub fn id_bounds(ms: u64) -> (Uuid, Uuid) {
    let ms = ms.min((1u64 << 48) - 1);
    let mut low = [0u8; 16];
    low[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    let mut high = [0xffu8; 16];
    high[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    (Uuid::from_bytes(low), Uuid::from_bytes(high))
}

/// The creation time of a UUIDv7, in milliseconds.
pub fn id_millis(id: &Uuid) -> u64 {
    let b = id.as_bytes();
    u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
}

#[cfg(test)]
mod tests;
