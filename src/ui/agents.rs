//! `GET /agents`: the tenant's agents with their runs and cost over the last 7 days, their
//! last run and a sparkline of runs per day (what `GET /api/agents` answers).

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::stats::sources_of;
use minijinja::context;
use serde::Serialize;

use super::format;
use super::page;
use crate::http::AppState;

#[derive(Serialize)]
struct AgentRow {
    name: String,
    runs: u64,
    errors: u64,
    cost: String,
    last_run: String,
    spark: String,
    spark_label: String,
}

pub async fn page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let viewer = match page::viewer(&req, &state).await {
        Ok(v) => v,
        Err(redirect) => return *redirect,
    };
    let sources = match sources_of(None) {
        Ok(s) => s,
        Err(e) => return page::error(Some(&viewer), &e),
    };
    crate::http::runs::settle(&state).await;
    let list = match state
        .gateway
        .stats
        .agents(&viewer.tenant, &sources, crate::http::stats::now_ms())
        .await
    {
        Ok(list) => list,
        Err(e) => return page::error(Some(&viewer), &e.into()),
    };
    let rows: Vec<AgentRow> = list
        .agents
        .iter()
        .map(|a| {
            let runs: Vec<f64> = a.daily.iter().map(|d| d.runs as f64).collect();
            AgentRow {
                name: a.agent.clone(),
                runs: a.runs,
                errors: a.errors,
                cost: format::cost(a.cost_usd),
                last_run: a
                    .last_run_at
                    .as_deref()
                    .map(format::time)
                    .unwrap_or_default(),
                spark: format::sparkline(&runs, 120.0, 24.0),
                spark_label: format!(
                    "runs per day: {}",
                    a.daily
                        .iter()
                        .map(|d| d.runs.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        })
        .collect();
    page::ok(
        &viewer,
        "agents",
        "agents.html",
        context! { agents => rows, truncated => list.truncated },
    )
}
