//! Runs search on PostgreSQL: SQL narrows the candidates (tenant, agent, id and time range,
//! the categorical columns, cost, duration, feedback, free text with `LIKE` over the
//! lowercased texts, which a trigram index serves when the server has pg_trgm), and the
//! shared matcher ([`crate::search`]) decides on every candidate read, so pages hold exactly
//! what sled's would.
//!
//! A filter whose SQL says exactly what the matcher says is *exact*; when every filter is,
//! the count is a bounded `count(*)` (exact below [`COUNT_BOUND`]), as sled counts from its
//! facets. The page reads candidates newest first in chunks until it holds `limit` matches
//! and sees one candidate more, or its budget is spent; its cursor is the last id looked at.

use std::time::{Duration, Instant};

use deadpool_postgres::Object;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::runs::{decode_run, TEXT_SEPARATOR};
use super::{pg_error, to_i64};
use crate::search::{id_bounds, Field, Filter, Operand, Operator, RunFacts, RunQuery};
use crate::storage::{SearchPage, SearchScope, StorageError};

/// Candidates read for one page at most, and for how long (as on sled).
const SCAN_BUDGET: usize = 200_000;
const TIME_BUDGET: Duration = Duration::from_millis(900);
/// Candidates read per statement when the matcher has filters of its own to check.
const CHUNK: usize = 500;
/// Matches counted at most: past it, the count is a lower bound.
const COUNT_BOUND: i64 = 1_000;

type Param = Box<dyn ToSql + Sync + Send>;

/// A `WHERE` clause under construction, with its parameters.
#[derive(Default)]
struct Where {
    conditions: Vec<String>,
    params: Vec<Param>,
}

impl Where {
    /// Adds a parameter; its placeholder.
    fn param(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    fn sql(&self) -> String {
        if self.conditions.is_empty() {
            "TRUE".into()
        } else {
            self.conditions.join(" AND ")
        }
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// One page of a search.
pub(super) async fn search(
    client: &Object,
    scope: &SearchScope,
    query: &RunQuery,
) -> Result<SearchPage, StorageError> {
    let started = Instant::now();
    let mut base = Where::default();
    let tenant = base.param(scope.tenant.clone());
    base.conditions.push(format!("r.tenant = {tenant}"));
    if let Some(agent) = &scope.agent {
        let agent = base.param(agent.clone());
        base.conditions.push(format!("r.agent = {agent}"));
    }
    // The id range of the time filters: the primary key's order serves it.
    let (from_ms, to_ms) = query.time_range();
    if from_ms > 0 {
        let lower = base.param(id_bounds(from_ms).0);
        base.conditions.push(format!("r.id >= {lower}"));
    }
    if to_ms < u64::MAX {
        let upper = base.param(id_bounds(to_ms).1);
        base.conditions.push(format!("r.id <= {upper}"));
    }
    let mut all_exact = true;
    for filter in &query.filters {
        let (condition, exact) = condition_of(filter, &mut base);
        all_exact &= exact;
        base.conditions.extend(condition);
    }
    let needs_feedback = query.needs_feedback();
    let from = if needs_feedback {
        "runs r LEFT JOIN feedback f ON f.run_id = r.id"
    } else {
        "runs r"
    };
    let outcome = if needs_feedback {
        "f.outcome"
    } else {
        "NULL::text"
    };

    // Every filter in SQL: one more row than the page says whether there is more.
    let chunk = if all_exact { query.limit + 1 } else { CHUNK };
    let mut items = Vec::with_capacity(query.limit);
    let mut below = query.cursor;
    let (mut scanned, mut more, mut budget_spent) = (0usize, false, false);
    'pages: loop {
        let after = below;
        let fetch = to_i64(chunk as u64);
        let rows = {
            let mut params = base.refs();
            params.push(&after);
            let cursor = params.len();
            params.push(&fetch);
            let sql = format!(
                "SELECT r.id, r.record::text, {outcome} FROM {from}
                 WHERE {} AND (${cursor}::uuid IS NULL OR r.id < ${cursor})
                 ORDER BY r.id DESC LIMIT ${}",
                base.sql(),
                params.len()
            );
            client.query(&sql, &params).await.map_err(pg_error)?
        };
        for row in &rows {
            if items.len() == query.limit {
                more = true;
                break 'pages;
            }
            // At least one candidate first: the cursor must move past something, or a page
            // slower than the budget would end the search with no cursor.
            if scanned > 0 && (scanned >= SCAN_BUDGET || started.elapsed() >= TIME_BUDGET) {
                more = true;
                budget_spent = true;
                break 'pages;
            }
            let id: Uuid = row.get(0);
            below = Some(id);
            scanned += 1;
            // A record that cannot be read matches nothing (as on sled).
            let Ok(run) = decode_run(row.get(1)) else {
                continue;
            };
            let feedback: Option<&str> = row.get(2);
            let facts = RunFacts {
                run: &run,
                feedback,
            };
            if run.tenant == scope.tenant && query.filters.iter().all(|f| f.matches(&facts)) {
                items.push(crate::recorder::run::RunSummary::from(&run));
            }
        }
        if rows.len() < chunk {
            break;
        }
    }
    let next_cursor = if more {
        below.map(|id| id.to_string())
    } else {
        None
    };

    let (count, count_is_exact) = if all_exact {
        let mut params = base.refs();
        let bound = COUNT_BOUND + 1;
        params.push(&bound);
        let sql = format!(
            "SELECT count(*) FROM (SELECT 1 FROM {from} WHERE {} LIMIT ${}) c",
            base.sql(),
            params.len()
        );
        let n: i64 = client
            .query_one(&sql, &params)
            .await
            .map_err(pg_error)?
            .get(0);
        (n.min(COUNT_BOUND) as u64, n <= COUNT_BOUND)
    } else if !more {
        (items.len() as u64, query.cursor.is_none())
    } else {
        (items.len() as u64, false)
    };
    Ok(SearchPage {
        items,
        next_cursor,
        count,
        count_is_exact,
        scanned: scanned as u64,
        scan_limit_reached: budget_spent,
    })
}

/// The SQL of a filter, if it narrows at all, and whether it says exactly what the matcher
/// says (else it holds a superset of the matches, or nothing is said).
fn condition_of(filter: &Filter, sql: &mut Where) -> (Option<String>, bool) {
    match &filter.field {
        Field::Status => keyword("r.status", filter, sql),
        Field::Cache => keyword("r.cache", filter, sql),
        Field::Source => keyword("r.source", filter, sql),
        Field::Model => keyword("r.model", filter, sql),
        Field::Provider => keyword("r.provider", filter, sql),
        Field::Agent => keyword("NULLIF(r.agent, '')", filter, sql),
        Field::Feedback => keyword("COALESCE(f.outcome, 'none')", filter, sql),
        Field::Version => version(filter, sql),
        Field::CostUsd => number("r.cost_usd", filter, sql),
        Field::DurationSeconds => number("r.duration_seconds", filter, sql),
        Field::CreatedAt => time("r.created_ms", filter, sql),
        Field::Text => text(filter, sql),
        // JSON paths, schema and conversation ids: the matcher reads the record.
        Field::Schema
        | Field::Conversation
        | Field::Metadata(_)
        | Field::Input(_)
        | Field::Output(_) => (None, false),
    }
}

fn texts(filter: &Filter) -> Option<Vec<String>> {
    filter
        .operands
        .iter()
        .map(|o| match o {
            Operand::Text(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

/// A categorical value (`column` NULL when the run has none), as the matcher's `keyword`.
fn keyword(column: &str, filter: &Filter, sql: &mut Where) -> (Option<String>, bool) {
    let Some(values) = texts(filter) else {
        return (None, false);
    };
    match filter.operator {
        Operator::Is => {
            let p = sql.param(values);
            (Some(format!("{column} = ANY({p}::text[])")), true)
        }
        Operator::IsNot => {
            let p = sql.param(values);
            (
                Some(format!(
                    "({column} IS NULL OR NOT ({column} = ANY({p}::text[])))"
                )),
                true,
            )
        }
        Operator::IsEmpty => (Some(format!("{column} IS NULL")), true),
        Operator::IsNotEmpty => (Some(format!("{column} IS NOT NULL")), true),
        _ => (None, false),
    }
}

/// A version id, or an environment resolved into the versions deployed there: SQL narrows to
/// those versions, and the matcher checks when each was deployed.
fn version(filter: &Filter, sql: &mut Where) -> (Option<String>, bool) {
    if texts(filter).is_some() {
        return keyword("r.version_id", filter, sql);
    }
    if filter.operator != Operator::Is {
        return (None, false);
    }
    let mut ids = Vec::new();
    for operand in &filter.operands {
        match operand {
            Operand::Text(t) => ids.push(t.clone()),
            Operand::Deployed(spans) => ids.extend(spans.iter().map(|s| s.version_id.clone())),
            _ => return (None, false),
        }
    }
    let p = sql.param(ids);
    (Some(format!("r.version_id = ANY({p}::text[])")), false)
}

/// A number column, as the matcher's `number`.
fn number(column: &str, filter: &Filter, sql: &mut Where) -> (Option<String>, bool) {
    let numbers: Vec<f64> = filter
        .operands
        .iter()
        .filter_map(|o| match o {
            Operand::Number(n) => Some(*n),
            Operand::Json(v) => v.as_f64(),
            _ => None,
        })
        .collect();
    let compare = |op: &str, sql: &mut Where| -> (Option<String>, bool) {
        match numbers.first() {
            Some(n) => {
                let p = sql.param(*n);
                (Some(format!("{column} {op} {p}::float8")), true)
            }
            None => (None, false),
        }
    };
    match filter.operator {
        Operator::Is => {
            let p = sql.param(numbers.clone());
            (Some(format!("{column} = ANY({p}::float8[])")), true)
        }
        Operator::IsNot => {
            let p = sql.param(numbers.clone());
            (Some(format!("NOT ({column} = ANY({p}::float8[]))")), true)
        }
        Operator::GreaterThan => compare(">", sql),
        Operator::GreaterThanOrEqual => compare(">=", sql),
        Operator::LessThan => compare("<", sql),
        Operator::LessThanOrEqual => compare("<=", sql),
        Operator::Between => match numbers.as_slice() {
            [a, b] => {
                let lo = sql.param(a.min(*b));
                let hi = sql.param(a.max(*b));
                (
                    Some(format!("{column} BETWEEN {lo}::float8 AND {hi}::float8")),
                    true,
                )
            }
            _ => (None, false),
        },
        _ => (None, false),
    }
}

/// The run's time (milliseconds), as the matcher's `time`.
fn time(column: &str, filter: &Filter, sql: &mut Where) -> (Option<String>, bool) {
    let times: Vec<i64> = filter
        .operands
        .iter()
        .filter_map(|o| match o {
            Operand::Time(t) => Some(to_i64(*t)),
            _ => None,
        })
        .collect();
    match (filter.operator, times.as_slice()) {
        (Operator::Before, [t]) => {
            let p = sql.param(*t);
            (Some(format!("{column} < {p}::bigint")), true)
        }
        (Operator::After, [t]) => {
            let p = sql.param(*t);
            (Some(format!("{column} > {p}::bigint")), true)
        }
        (Operator::Between, [a, b]) => {
            let lo = sql.param(*a.min(b));
            let hi = sql.param(*a.max(b));
            (
                Some(format!("{column} BETWEEN {lo}::bigint AND {hi}::bigint")),
                true,
            )
        }
        _ => (None, false),
    }
}

/// Free text: `search_text` holds each of the run's texts ASCII-lowercased, each followed by
/// a separator, so a `LIKE` of a lowercased needle that holds no separator finds exactly the
/// runs one of whose texts holds it (the matcher's ASCII-insensitive test).
fn text(filter: &Filter, sql: &mut Where) -> (Option<String>, bool) {
    let Some(needles) = texts(filter) else {
        return (None, false);
    };
    let negate = match filter.operator {
        Operator::Contains => false,
        Operator::DoesNotContain => true,
        _ => return (None, false),
    };
    // The matcher finds an empty needle in any text, but not in a run with none; a needle
    // with the separator (or NUL, stored as it) may span texts: the record decides then.
    let plain = needles
        .iter()
        .all(|n| !n.is_empty() && !n.contains(TEXT_SEPARATOR) && !n.contains('\0'));
    if !plain {
        return (None, false);
    }
    // One `LIKE` per needle, ORed (rather than `LIKE ANY(array)`): a trigram index serves
    // each.
    let likes: Vec<String> = needles
        .iter()
        .map(|n| {
            let p = sql.param(format!("%{}%", like_escape(&n.to_ascii_lowercase())));
            format!("r.search_text LIKE {p}::text")
        })
        .collect();
    let any = format!("({})", likes.join(" OR "));
    if negate {
        (Some(format!("NOT ({any})")), true)
    } else {
        (Some(any), true)
    }
}

/// `LIKE` treats `%`, `_` and its escape character `\` specially.
fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_their_wildcards() {
        assert_eq!(like_escape("50%_off\\"), "50\\%\\_off\\\\");
        assert_eq!(like_escape("zebra"), "zebra");
    }
}
