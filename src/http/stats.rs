//! Stats of the recorded runs, from the aggregates the recorder keeps (never from the runs):
//!
//! * `GET /api/agents?source=` — each agent of the tenant with its runs, errors and cost over
//!   the last 7 days (today, UTC, and the 6 days before), one point a day, and its last run.
//! * `GET /api/agents/{agent}/stats?from=&to=&bucket=hour|day&source=` — per bucket: runs,
//!   errors, cancelled, cost, tokens, p50/p90/p99 latency of the successful runs, cache hit
//!   rate; and the totals. Defaults: the last 7 days, day buckets. `from` and `to` are RFC 3339
//!   (UTC) or Unix seconds; at most 1,000 buckets (40 days of hours).
//! * `GET /api/cost?days=&source=` — runs and cost per day over the last `days` days (7 by
//!   default, at most 40; today so far included) of each agent and of each model, from the
//!   daily roll-up: what the cost page draws.
//!
//! `source` is `api` (the default: the app's own traffic), `playground`, `replay` or `all`.
//! Tenants see their own agents only; an admin key reads the tenant it names. Any other
//! parameter, or a bad value, is a 400 that names it.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::error::{excerpt, GatewayError};
use flowgate_actors::stats::{sources_of, BucketWidth, StatsRange};
use serde_json::json;

use super::agents::reader_tenant;
use super::search::agent_of;
use super::AppState;

/// The query parameters, each checked against the ones the endpoint takes.
fn params(req: &HttpRequest, allowed: &[&str]) -> Result<HashMap<String, String>, GatewayError> {
    let params = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map_err(|e| GatewayError::invalid(format!("the query string cannot be read: {e}")))?
        .into_inner();
    if let Some(unknown) = params.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(GatewayError::invalid(format!(
            "unknown parameter `{}`; the parameters are {}",
            excerpt(unknown, 32),
            allowed
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .with_param(excerpt(unknown, 32).into_owned()));
    }
    Ok(params)
}

/// RFC 3339 text or Unix seconds, in milliseconds.
fn time_param(name: &str, text: &str) -> Result<u64, GatewayError> {
    let ms = match text.parse::<f64>() {
        Ok(seconds) => Some(seconds)
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e13)
            .map(|s| (s * 1000.0) as u64),
        Err(_) => humantime::parse_rfc3339_weak(text)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64),
    };
    ms.ok_or_else(|| {
        GatewayError::invalid(format!(
            "`{name}` is a time: RFC 3339 in UTC (`2026-12-01T00:00:00Z`) or Unix seconds, not `{}`",
            excerpt(text, 64)
        ))
        .with_param(name)
    })
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub async fn list_agents(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let params = params(&req, &["source"])?;
    let source = params.get("source").map(String::as_str);
    let sources = sources_of(source)?;
    // A client reads its own writes.
    super::runs::settle(&state).await;
    let list = state
        .gateway
        .stats
        .agents(&tenant, &sources, now_ms())
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "source": source.unwrap_or("api"),
        "from": list.from,
        "agents": list.agents,
        "truncated": list.truncated,
    })))
}

/// The most days `GET /api/cost` (and the cost page) sums.
pub(crate) const MAX_COST_DAYS: u64 = 40;

pub async fn cost(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let params = params(&req, &["days", "source"])?;
    let source = params.get("source").map(String::as_str);
    let sources = sources_of(source)?;
    let days = match params.get("days") {
        None => 7,
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|d| (1..=MAX_COST_DAYS).contains(d))
            .ok_or_else(|| {
                GatewayError::invalid(format!(
                    "`days` is a number of days from 1 to {MAX_COST_DAYS}, not `{}`",
                    excerpt(text, 32)
                ))
                .with_param("days")
            })?,
    };
    super::runs::settle(&state).await;
    let cost = state
        .gateway
        .stats
        .cost_by_day(&tenant, &sources, days, now_ms())
        .await?;
    let series = |rows: Vec<(String, Vec<(u64, f64)>)>, name: &str| -> Vec<serde_json::Value> {
        rows.into_iter()
            .map(|(key, per_day)| {
                json!({
                    name: key,
                    "runs": per_day.iter().map(|d| d.0).sum::<u64>(),
                    "cost_usd": per_day.iter().map(|d| d.1).sum::<f64>(),
                    "daily": per_day
                        .iter()
                        .map(|(runs, cost)| json!({"runs": runs, "cost_usd": cost}))
                        .collect::<Vec<_>>(),
                })
            })
            .collect()
    };
    Ok(HttpResponse::Ok().json(json!({
        "source": source.unwrap_or("api"),
        "days": cost.starts,
        "agents": series(cost.agents, "agent"),
        "models": series(cost.models, "model"),
        "truncated": cost.truncated,
    })))
}

pub async fn agent_stats(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let agent = agent_of(path.into_inner())?;
    let params = params(&req, &["from", "to", "bucket", "source"])?;
    let source = params.get("source").map(String::as_str);
    let sources = sources_of(source)?;
    let width = match params.get("bucket") {
        Some(bucket) => BucketWidth::parse(bucket)?,
        None => BucketWidth::Day,
    };
    let time = |name: &str| params.get(name).map(|t| time_param(name, t)).transpose();
    let range = StatsRange::new(time("from")?, time("to")?, width, now_ms())?;
    super::runs::settle(&state).await;
    let series = state
        .gateway
        .stats
        .series(&tenant, &agent, &sources, &range)
        .await?;
    let mut body = serde_json::to_value(&series)
        .map_err(|e| GatewayError::internal(format!("cannot write the stats: {e}")))?;
    body["agent"] = json!(agent);
    body["source"] = json!(source.unwrap_or("api"));
    Ok(HttpResponse::Ok().json(body))
}
