//! `GET /agents/{agent}/benchmarks/{id}`: one benchmark: its progress (refreshed while it runs
//! by `static/benchmark.js`, polling `GET /api/agents/{agent}/benchmarks/{id}`), its table
//! (per candidate: accuracy, latency, cost, errors; the best on each column marked), cancel
//! while running, and two candidates side by side (`?a=&b=`: each item's input, expected
//! answer, both outputs with their verdicts and reasons, what `…/compare` answers).
//!
//! Another tenant's benchmark is a 404, as in the JSON API.

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::evals::{table, BenchResult, BenchStatus, Candidate, Row};
use minijinja::context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::format;
use super::page;
use super::runs::label;
use crate::http::AppState;

/// Items shown side by side at most.
const MAX_SIDE_BY_SIDE: usize = 500;

#[derive(Deserialize)]
pub struct SideQuery {
    #[serde(default)]
    a: Option<usize>,
    #[serde(default)]
    b: Option<usize>,
}

/// A cell of the table: its text and whether it is the best of its column.
#[derive(Serialize)]
struct Cell {
    text: String,
    best: bool,
}

#[derive(Serialize)]
struct RowView {
    index: usize,
    label: String,
    full_label: String,
    items: u32,
    accuracy: Cell,
    verdicts: String,
    avg_latency: Cell,
    p90_latency: Cell,
    avg_cost: Cell,
    total_cost: Cell,
    errors: Cell,
}

fn cell(row: &Row, column: &str, text: Option<String>) -> Cell {
    Cell {
        best: text.is_some() && row.best.contains(&column),
        text: text.unwrap_or_else(|| "-".into()),
    }
}

/// A candidate's label with its version id shortened (as the versions page shows them).
pub(crate) fn short_label(candidate: &Candidate) -> String {
    let version = candidate
        .version_id
        .as_ref()
        .map(|v| v.chars().take(12).collect::<String>());
    Candidate {
        version_id: version,
        model: candidate.model.clone(),
    }
    .label()
}

fn row_view(index: usize, row: &Row) -> RowView {
    RowView {
        index,
        label: short_label(&row.candidate),
        full_label: row.label.clone(),
        items: row.items,
        accuracy: cell(row, "accuracy", row.accuracy.map(format::percent)),
        verdicts: format!("{} / {} / {}", row.positive, row.negative, row.unsure),
        avg_latency: cell(
            row,
            "avg_latency_seconds",
            row.avg_latency_seconds.map(format::seconds),
        ),
        p90_latency: cell(
            row,
            "p90_latency_seconds",
            row.p90_latency_seconds.map(format::seconds),
        ),
        avg_cost: cell(row, "avg_cost_usd", row.avg_cost_usd.map(format::cost)),
        // Every candidate runs the same items: the cheapest on average is the cheapest in all.
        total_cost: cell(
            row,
            "avg_cost_usd",
            (row.items > 0).then(|| format::cost(row.total_cost_usd)),
        ),
        errors: cell(
            row,
            "errors",
            (row.items > 0).then(|| row.errors.to_string()),
        ),
    }
}

/// One candidate's answer to one item.
#[derive(Serialize)]
struct AnswerView {
    output: String,
    error: String,
    verdict: String,
    reason: String,
    run_id: String,
    facts: String,
}

#[derive(Serialize)]
struct SideItem {
    number: usize,
    input: String,
    expected: String,
    a: Option<AnswerView>,
    b: Option<AnswerView>,
}

fn answer_view(result: &BenchResult) -> AnswerView {
    AnswerView {
        output: result.output.clone().unwrap_or_default(),
        error: result
            .error
            .as_ref()
            .map(|e| {
                e.get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format::pretty(e))
            })
            .unwrap_or_default(),
        verdict: result.verdict.map(|v| label(&v)).unwrap_or_default(),
        reason: result.reason.clone().unwrap_or_default(),
        run_id: result.run_id.map(|r| r.to_string()).unwrap_or_default(),
        facts: format!(
            "{} · {}",
            format::seconds(result.duration_seconds),
            format::cost(result.cost_usd)
        ),
    }
}

pub async fn page(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<SideQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let viewer = match page::viewer(&req, &state).await {
        Ok(v) => v,
        Err(redirect) => return *redirect,
    };
    let (agent, id) = path.into_inner();
    let benchmark = match crate::http::evals::agent_name(agent) {
        Ok(agent) => crate::http::evals::benchmark_of(&state, &viewer.tenant, &agent, &id).await,
        Err(e) => Err(e),
    };
    let benchmark = match benchmark {
        Ok(b) => b,
        Err(e) => return page::error(Some(&viewer), &e),
    };
    let store = &state.gateway.eval_store;
    let results = match store.results(benchmark.id).await {
        Ok(r) => r,
        Err(e) => return page::error(Some(&viewer), &e.into()),
    };
    let rows: Vec<RowView> = table(&benchmark.candidates, &results)
        .iter()
        .enumerate()
        .map(|(i, row)| row_view(i, row))
        .collect();
    let n = benchmark.candidates.len();
    let side = match (query.a, query.b) {
        (Some(a), Some(b)) if a < n && b < n => {
            let dataset = crate::http::evals::dataset_of(
                &state,
                &viewer.tenant,
                &benchmark.agent,
                &benchmark.dataset,
            )
            .await;
            let items = match dataset {
                Ok(d) => store.items(&d).await.map_err(Into::into),
                Err(e) => Err(e),
            };
            let items = match items {
                Ok(items) => items,
                Err(e) => return page::error(Some(&viewer), &e),
            };
            let pick = |c: usize, i: usize| {
                results
                    .iter()
                    .find(|r| usize::from(r.candidate) == c && r.item as usize == i)
                    .map(answer_view)
            };
            let side: Vec<SideItem> = items
                .iter()
                .take(MAX_SIDE_BY_SIDE)
                .enumerate()
                .map(|(i, item)| SideItem {
                    number: i + 1,
                    input: match (&item.input, &item.messages) {
                        (Some(input), _) => format::pretty(input),
                        (None, Some(messages)) => messages
                            .iter()
                            .map(|m| {
                                format!(
                                    "{}: {}",
                                    m.get("role").and_then(Value::as_str).unwrap_or("?"),
                                    format::content_text(m.get("content"))
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n"),
                        (None, None) => String::new(),
                    },
                    expected: item
                        .expected
                        .clone()
                        .or_else(|| item.note.clone())
                        .unwrap_or_default(),
                    a: pick(a, i),
                    b: pick(b, i),
                })
                .collect();
            Some((a, b, side))
        }
        _ => None,
    };
    let running = benchmark.status == BenchStatus::Running;
    let (side_a, side_b, side_items) = match side {
        Some((a, b, items)) => (Some(a), Some(b), Some(items)),
        None => (None, None, None),
    };
    let labels: Vec<String> = benchmark.candidates.iter().map(short_label).collect();
    page::ok(
        &viewer,
        "agents",
        "benchmark.html",
        context! {
            agent => &benchmark.agent,
            tab => "benchmarks",
            id => benchmark.id.to_string(),
            dataset => &benchmark.dataset,
            status => label(&benchmark.status),
            running => running,
            done => results.len(),
            total => benchmark.total,
            concurrency => benchmark.concurrency,
            created => format::time_ms(benchmark.created_ms),
            finished => benchmark.finished_ms.map(format::time_ms),
            error => &benchmark.error,
            rows => rows,
            labels => labels,
            side_a => side_a,
            side_b => side_b,
            side => side_items,
        },
    )
}
