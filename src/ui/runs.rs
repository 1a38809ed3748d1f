//! `GET /runs` (every agent of the tenant) and `GET /agents/{agent}/runs`: the runs, newest
//! first, a page at a time, filtered by the search chips kept in the URL.
//!
//! A chip is `f=<field>|<operator>|<value>` (repeatable): the page is a bookmark of its search.
//! The add-a-chip form submits `nf`, `no` and `nv`; the page answers with a redirect to its
//! URL with one chip more, so the search works without script too. The rows come from the
//! same search as `POST /api/…/runs/search`, its fields from `…/runs/search/fields`.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::agents::feedback::Outcome;
use flowgate_actors::search::{FieldQueryBody, SearchBody};
use minijinja::context;
use serde::Serialize;
use serde_json::Value;

use super::format;
use super::page::{self, encode, Viewer};
use crate::http::AppState;

/// Runs per page.
const PAGE: usize = 50;
/// Most chips in one search.
const MAX_CHIPS: usize = 20;

/// One search chip, as the URL holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chip {
    pub field: String,
    pub operator: String,
    pub value: String,
}

impl Chip {
    fn parse(text: &str) -> Option<Chip> {
        let mut parts = text.splitn(3, '|');
        let field = parts.next()?.trim().to_string();
        let operator = parts.next()?.trim().to_string();
        let value = parts.next().unwrap_or("").to_string();
        (!field.is_empty() && !operator.is_empty()).then_some(Chip {
            field,
            operator,
            value,
        })
    }

    fn param(&self) -> String {
        format!(
            "f={}",
            encode(&format!("{}|{}|{}", self.field, self.operator, self.value))
        )
    }

    /// The chip as the search takes it: numbers for number fields, two values for `between`
    /// (`a..b` or `a,b`), none for the emptiness tests.
    fn query(&self, kinds: &[(String, &'static str)]) -> FieldQueryBody {
        let kind = kinds
            .iter()
            .find(|(f, _)| *f == self.field)
            .map_or("", |(_, k)| *k);
        let typed = |text: &str| -> Value {
            let text = text.trim();
            if kind == "number" {
                if let Ok(n) = text.parse::<f64>() {
                    if let Some(n) = serde_json::Number::from_f64(n) {
                        return Value::Number(n);
                    }
                }
            }
            Value::String(text.to_string())
        };
        let values = match self.operator.as_str() {
            "is empty" | "is not empty" => vec![],
            "between" => {
                let (a, b) = self
                    .value
                    .split_once("..")
                    .or_else(|| self.value.split_once(','))
                    .unwrap_or((&self.value, ""));
                vec![typed(a), typed(b)]
            }
            _ => vec![typed(&self.value)],
        };
        FieldQueryBody {
            field: self.field.clone(),
            operator: self.operator.clone(),
            values,
        }
    }
}

/// What the query string holds.
struct Query {
    chips: Vec<Chip>,
    cursor: Option<String>,
    /// A chip to add (the add-a-chip form).
    added: Option<Chip>,
}

fn parse_query(raw: &str) -> Query {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(raw)
        .map(|q| q.into_inner())
        .unwrap_or_default();
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let chips = pairs
        .iter()
        .filter(|(k, _)| k == "f")
        .filter_map(|(_, v)| Chip::parse(v))
        .take(MAX_CHIPS)
        .collect();
    let added = match (get("nf"), get("no")) {
        (Some(field), Some(operator)) if !field.is_empty() && !operator.is_empty() => Some(Chip {
            field,
            operator,
            value: get("nv").unwrap_or_default(),
        }),
        _ => None,
    };
    Query {
        chips,
        cursor: get("cursor").filter(|c| !c.is_empty()),
        added,
    }
}

/// The URL of the page with these chips.
fn url_of(base: &str, chips: &[Chip], cursor: Option<&str>) -> String {
    let mut params: Vec<String> = chips.iter().map(Chip::param).collect();
    if let Some(cursor) = cursor {
        params.push(format!("cursor={}", encode(cursor)));
    }
    if params.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", params.join("&"))
    }
}

#[derive(Serialize)]
struct ChipView {
    label: String,
    /// As the `f` parameter holds it.
    raw: String,
    remove_url: String,
}

#[derive(Serialize)]
struct FieldView {
    field: String,
    kind: &'static str,
    operators: String,
    values: String,
}

#[derive(Serialize)]
struct RunRow {
    id: String,
    agent: String,
    time: String,
    status: String,
    model: String,
    version: String,
    input: String,
    output: String,
    cost: String,
    latency: String,
    cache: String,
    feedback: String,
}

/// The serde name of an enum value (`success`, `hit`, …).
pub fn label<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

pub async fn all_runs(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    runs_page(req, state, None).await
}

pub async fn agent_runs(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    runs_page(req, state, Some(path.into_inner())).await
}

async fn runs_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    agent: Option<String>,
) -> HttpResponse {
    let viewer = match page::viewer(&req, &state).await {
        Ok(v) => v,
        Err(redirect) => return *redirect,
    };
    if let Some(a) = &agent {
        if let Err(e) = crate::http::search::agent_of(a.clone()) {
            return page::error(Some(&viewer), &e);
        }
    }
    let base = match &agent {
        Some(a) => format!("/agents/{a}/runs"),
        None => "/runs".to_string(),
    };
    let query = parse_query(req.query_string());
    if let Some(added) = query.added {
        let mut chips = query.chips.clone();
        chips.push(added);
        return HttpResponse::SeeOther()
            .insert_header((header::LOCATION, url_of(&base, &chips, None)))
            .finish();
    }
    match gather(&state, &viewer, agent.clone(), &query, &base).await {
        Ok(ctx) => page::ok(&viewer, "runs", "runs.html", ctx),
        Err((status, ctx)) => page::render(status, Some(&viewer), "runs", "runs.html", ctx),
    }
}

async fn gather(
    state: &AppState,
    viewer: &Viewer,
    agent: Option<String>,
    query: &Query,
    base: &str,
) -> Result<minijinja::Value, (StatusCode, minijinja::Value)> {
    let fields = crate::http::search::search_fields(state, viewer.tenant.clone(), agent.clone())
        .await
        .unwrap_or_default();
    let kinds: Vec<(String, &'static str)> =
        fields.iter().map(|f| (f.field.clone(), f.kind)).collect();
    let field_views: Vec<FieldView> = fields
        .iter()
        .map(|f| FieldView {
            field: f.field.clone(),
            kind: f.kind,
            operators: serde_json::to_string(&f.operators).unwrap_or_default(),
            values: serde_json::to_string(&f.values.clone().unwrap_or_default())
                .unwrap_or_default(),
        })
        .collect();
    let chips: Vec<ChipView> = query
        .chips
        .iter()
        .enumerate()
        .map(|(i, chip)| {
            let rest: Vec<Chip> = query
                .chips
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, c)| c.clone())
                .collect();
            ChipView {
                label: format!("{} {} {}", chip.field, chip.operator, chip.value)
                    .trim()
                    .to_string(),
                raw: format!("{}|{}|{}", chip.field, chip.operator, chip.value),
                remove_url: url_of(base, &rest, None),
            }
        })
        .collect();
    let body = SearchBody {
        field_queries: query.chips.iter().map(|c| c.query(&kinds)).collect(),
        limit: Some(PAGE),
        cursor: query.cursor.clone(),
    };
    let common = |rows: Vec<RunRow>, error: Option<String>, next: Option<String>, count: String| {
        context! {
            agent => agent,
            base => base,
            chips => chips,
            fields => field_views,
            runs => rows,
            error => error,
            next_url => next,
            first_url => query.cursor.as_ref().map(|_| url_of(base, &query.chips, None)),
            count => count,
            all_agents => agent.is_none(),
        }
    };
    let page =
        match crate::http::search::search_page(state, viewer.tenant.clone(), agent.clone(), body)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                let status = e.status_code();
                return Err((
                    status,
                    common(vec![], Some(e.message.clone()), None, String::new()),
                ));
            }
        };
    let feedback = futures::future::join_all(
        page.items
            .iter()
            .map(|item| state.gateway.feedback.for_run(item.id)),
    )
    .await;
    let rows = page
        .items
        .iter()
        .zip(feedback)
        .map(|(item, feedback)| {
            let feedback = feedback.unwrap_or_default();
            let up = feedback
                .iter()
                .filter(|f| f.outcome == Outcome::Positive)
                .count();
            let down = feedback.len() - up;
            RunRow {
                id: item.id.to_string(),
                agent: item.agent.clone(),
                time: format::time(&item.created_at),
                status: label(&item.status),
                model: item.model.clone().unwrap_or_else(|| "-".into()),
                version: item
                    .version_id
                    .as_deref()
                    .map(|v| v.chars().take(8).collect())
                    .unwrap_or_default(),
                input: item.input_preview.clone(),
                output: item.output_preview.clone(),
                cost: format::cost(item.cost_usd),
                latency: format::seconds(item.duration_seconds),
                cache: label(&item.cache),
                feedback: match (up, down) {
                    (0, 0) => String::new(),
                    (u, 0) => format!("👍 {u}"),
                    (0, d) => format!("👎 {d}"),
                    (u, d) => format!("👍 {u} 👎 {d}"),
                },
            }
        })
        .collect();
    let count = format!(
        "{}{} run{}",
        page.count,
        if page.count_is_exact { "" } else { "+" },
        if page.count == 1 { "" } else { "s" }
    );
    let next = page
        .next_cursor
        .as_deref()
        .map(|c| url_of(base, &query.chips, Some(c)));
    Ok(common(rows, None, next, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chips_round_trip_through_the_url() {
        let chips = vec![
            Chip::parse("text|contains|hello world").unwrap(),
            Chip::parse("cost_usd|between|0.1..0.2").unwrap(),
        ];
        let url = url_of("/runs", &chips, None);
        let query = parse_query(url.split_once('?').unwrap().1);
        assert_eq!(query.chips, chips);
        let kinds = vec![("cost_usd".to_string(), "number")];
        let q = chips[1].query(&kinds);
        assert_eq!(
            q.values,
            vec![serde_json::json!(0.1), serde_json::json!(0.2)]
        );
        assert_eq!(
            chips[0].query(&kinds).values,
            vec![serde_json::json!("hello world")]
        );
        assert!(Chip::parse("nofield").is_none());
    }
}
