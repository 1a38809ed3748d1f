//! `GET /cost?days=7|14|30`: runs and cost per day of each agent (stacked bars, drawn here as
//! SVG) from the stats aggregates `GET /api/agents/{agent}/stats` reads, and cost per model
//! from the versions' usage (`GET /api/agents/{agent}/versions`).

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::stats::{sources_of, BucketWidth, StatsRange};
use minijinja::context;
use serde::{Deserialize, Serialize};

use super::format;
use super::page;
use crate::http::AppState;

const DAY_MS: u64 = 86_400_000;
/// Agents drawn one by one; the rest are summed as "other".
const MAX_SERIES: usize = 7;
const CHART_WIDTH: f64 = 720.0;
const CHART_HEIGHT: f64 = 180.0;

#[derive(Deserialize)]
pub struct CostQuery {
    #[serde(default)]
    days: Option<u64>,
    /// Also the cost per model (reads every version of every agent: on demand).
    #[serde(default)]
    models: Option<u8>,
}

#[derive(Serialize)]
struct Bar {
    x: f64,
    y: f64,
    width: f64,
    height: f64,
    class: String,
    title: String,
}

#[derive(Serialize)]
struct AxisLabel {
    x: f64,
    text: String,
}

#[derive(Serialize)]
struct Chart {
    bars: Vec<Bar>,
    labels: Vec<AxisLabel>,
    max: String,
    width: f64,
    height: f64,
}

#[derive(Serialize)]
struct Series {
    name: String,
    class: String,
    total: String,
}

/// Stacked bars: one bar per day, one segment per series.
fn stacked(days: &[String], series: &[(String, Vec<f64>)], show: fn(f64) -> String) -> Chart {
    let totals: Vec<f64> = (0..days.len())
        .map(|i| series.iter().map(|(_, v)| v[i]).sum())
        .collect();
    let max = totals.iter().cloned().fold(0.0_f64, f64::max);
    let slot = CHART_WIDTH / days.len().max(1) as f64;
    let mut bars = Vec::new();
    for (i, day) in days.iter().enumerate() {
        let mut top = CHART_HEIGHT;
        for (s, (name, values)) in series.iter().enumerate() {
            let v = values[i];
            if v <= 0.0 || max <= 0.0 {
                continue;
            }
            let h = (CHART_HEIGHT - 4.0) * v / max;
            top -= h;
            bars.push(Bar {
                x: i as f64 * slot + slot * 0.15,
                y: top,
                width: slot * 0.7,
                height: h,
                class: format!("c{s}"),
                title: format!("{day} · {name}: {}", show(v)),
            });
        }
    }
    let step = (days.len() / 7).max(1);
    let labels = days
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0)
        .map(|(i, d)| AxisLabel {
            x: i as f64 * slot + slot / 2.0,
            text: d.get(5..10).unwrap_or(d).to_string(),
        })
        .collect();
    Chart {
        bars,
        labels,
        max: show(max),
        width: CHART_WIDTH,
        height: CHART_HEIGHT,
    }
}

fn count(v: f64) -> String {
    format!("{v:.0}")
}

pub async fn page(
    req: HttpRequest,
    query: web::Query<CostQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let viewer = match page::viewer(&req, &state).await {
        Ok(v) => v,
        Err(redirect) => return *redirect,
    };
    let days = query.days.unwrap_or(7).clamp(1, 40);
    let now = crate::http::stats::now_ms();
    let today = now - now % DAY_MS;
    let from = today.saturating_sub((days - 1) * DAY_MS);
    let range = match StatsRange::new(Some(from), Some(today + DAY_MS), BucketWidth::Day, now) {
        Ok(r) => r,
        Err(e) => return page::error(Some(&viewer), &e),
    };
    let sources = match sources_of(None) {
        Ok(s) => s,
        Err(e) => return page::error(Some(&viewer), &e),
    };
    crate::http::runs::settle(&state).await;
    // Runs and cost per day of every agent, in one read of the aggregates.
    let totals = match state
        .gateway
        .stats
        .totals_by_agent(&viewer.tenant, &sources, &range)
        .await
    {
        Ok(totals) => totals,
        Err(e) => return page::error(Some(&viewer), &e.into()),
    };
    let day_names = totals.starts;
    let mut per_agent: Vec<(String, Vec<f64>, Vec<f64>)> = Vec::new();
    let mut by_model: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for (agent, days) in totals.agents {
        let runs = days.iter().map(|d| d.0 as f64).collect();
        let cost = days.iter().map(|d| d.1).collect();
        if query.models == Some(1) {
            if let Ok(versions) = state.gateway.agents.versions(&viewer.tenant, &agent).await {
                for v in versions {
                    let entry = by_model
                        .entry(v.record.properties.model.clone())
                        .or_default();
                    entry.0 += v.stats.run_count;
                    entry.1 += v.stats.cost_usd;
                }
            }
        }
        per_agent.push((agent, runs, cost));
    }
    // The costliest agents first; past MAX_SERIES, one "other" series.
    per_agent.sort_by(|a, b| {
        let total = |x: &Vec<f64>| x.iter().sum::<f64>();
        total(&b.2).total_cmp(&total(&a.2))
    });
    if per_agent.len() > MAX_SERIES {
        let rest = per_agent.split_off(MAX_SERIES - 1);
        let n = day_names.len();
        let mut runs = vec![0.0; n];
        let mut cost = vec![0.0; n];
        for (_, r, c) in rest {
            for i in 0..n {
                runs[i] += r[i];
                cost[i] += c[i];
            }
        }
        per_agent.push(("other".into(), runs, cost));
    }
    let runs_series: Vec<(String, Vec<f64>)> = per_agent
        .iter()
        .map(|(n, r, _)| (n.clone(), r.clone()))
        .collect();
    let cost_series: Vec<(String, Vec<f64>)> = per_agent
        .iter()
        .map(|(n, _, c)| (n.clone(), c.clone()))
        .collect();
    let legend: Vec<Series> = per_agent
        .iter()
        .enumerate()
        .map(|(i, (name, runs, cost))| Series {
            name: name.clone(),
            class: format!("c{i}"),
            total: format!(
                "{} runs · {}",
                runs.iter().sum::<f64>() as u64,
                format::cost(cost.iter().sum())
            ),
        })
        .collect();
    let mut models: Vec<(String, u64, f64)> =
        by_model.into_iter().map(|(m, (r, c))| (m, r, c)).collect();
    models.sort_by(|a, b| b.2.total_cmp(&a.2));
    let max_model_cost = models.iter().map(|m| m.2).fold(0.0_f64, f64::max);
    let model_rows: Vec<(String, u64, String, f64)> = models
        .into_iter()
        .map(|(m, r, c)| {
            let width = if max_model_cost > 0.0 {
                300.0 * c / max_model_cost
            } else {
                0.0
            };
            (m, r, format::cost(c), width)
        })
        .collect();
    let total_cost: f64 = per_agent
        .iter()
        .map(|(_, _, c)| c.iter().sum::<f64>())
        .sum();
    let total_runs: f64 = per_agent
        .iter()
        .map(|(_, r, _)| r.iter().sum::<f64>())
        .sum();
    page::ok(
        &viewer,
        "cost",
        "cost.html",
        context! {
            days => days,
            cost_chart => stacked(&day_names, &cost_series, format::cost),
            runs_chart => stacked(&day_names, &runs_series, count),
            legend => legend,
            models => model_rows,
            total_cost => format::cost(total_cost),
            total_runs => total_runs as u64,
            with_models => query.models == Some(1),
        },
    )
}
