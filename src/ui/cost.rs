//! `GET /cost?days=7|14|30`: runs and cost per day of each agent and of each model (stacked
//! bars, drawn here as SVG) and each model's totals over the range, from the stats' daily
//! roll-up (`flowgate_actors::stats::daily`): one small record per day, agent, model and
//! source, so 30 days cost about as little to read as 7. `GET /api/cost` answers the same
//! figures as JSON.

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::stats::{sources_of, BEFORE_UPGRADE};
use minijinja::context;
use serde::{Deserialize, Serialize};

use super::format;
use super::page;
use crate::http::AppState;

/// Agents (or models) drawn one by one; the rest are summed as "other".
const MAX_SERIES: usize = 7;
const CHART_WIDTH: f64 = 720.0;
const CHART_HEIGHT: f64 = 180.0;

/// The page's query. Other parameters are ignored: `models=1`, which once asked for the
/// cost per model on demand, may still be in bookmarks.
#[derive(Deserialize)]
pub struct CostQuery {
    #[serde(default)]
    days: Option<u64>,
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

/// Series to draw, the costliest first: `(name, runs per day, cost per day)`; past
/// [`MAX_SERIES`], one "other".
type Drawn = Vec<(String, Vec<f64>, Vec<f64>)>;

fn drawn(rows: Vec<(String, Vec<(u64, f64)>)>, days: usize) -> Drawn {
    let mut series: Drawn = rows
        .into_iter()
        .map(|(name, per_day)| {
            let runs = per_day.iter().map(|d| d.0 as f64).collect();
            let cost = per_day.iter().map(|d| d.1).collect();
            (name, runs, cost)
        })
        .collect();
    let total = |x: &Vec<f64>| x.iter().sum::<f64>();
    // Costliest first; among equals (free models), the busiest.
    series.sort_by(|a, b| {
        total(&b.2)
            .total_cmp(&total(&a.2))
            .then(total(&b.1).total_cmp(&total(&a.1)))
    });
    if series.len() > MAX_SERIES {
        let rest = series.split_off(MAX_SERIES - 1);
        let mut runs = vec![0.0; days];
        let mut cost = vec![0.0; days];
        for (_, r, c) in rest {
            for i in 0..days {
                runs[i] += r[i];
                cost[i] += c[i];
            }
        }
        series.push(("other".into(), runs, cost));
    }
    series
}

fn legend(series: &Drawn) -> Vec<Series> {
    series
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
        .collect()
}

/// The cost and runs charts of `series`.
fn charts(days: &[String], series: &Drawn) -> (Chart, Chart) {
    let runs: Vec<(String, Vec<f64>)> = series
        .iter()
        .map(|(n, r, _)| (n.clone(), r.clone()))
        .collect();
    let cost: Vec<(String, Vec<f64>)> = series
        .iter()
        .map(|(n, _, c)| (n.clone(), c.clone()))
        .collect();
    (
        stacked(days, &cost, format::cost),
        stacked(days, &runs, count),
    )
}

/// A row of the models table.
#[derive(Serialize)]
struct ModelRow {
    model: String,
    runs: u64,
    cost: String,
    /// The bar's width, in px of 300, against the costliest model.
    width: f64,
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
    let days = query
        .days
        .unwrap_or(7)
        .clamp(1, crate::http::stats::MAX_COST_DAYS);
    let sources = match sources_of(None) {
        Ok(s) => s,
        Err(e) => return page::error(Some(&viewer), &e),
    };
    crate::http::runs::settle(&state).await;
    // Runs and cost per day of every agent and model, in one read of the daily roll-up.
    let now = crate::http::stats::now_ms();
    let cost = match state
        .gateway
        .stats
        .cost_by_day(&viewer.tenant, &sources, days, now)
        .await
    {
        Ok(cost) => cost,
        Err(e) => return page::error(Some(&viewer), &e.into()),
    };
    let n = cost.starts.len();
    // The table lists every model, costliest first.
    let mut models: Vec<(String, u64, f64)> = cost
        .models
        .iter()
        .map(|(m, per_day)| {
            let runs = per_day.iter().map(|d| d.0).sum();
            let usd = per_day.iter().map(|d| d.1).sum();
            (m.clone(), runs, usd)
        })
        .filter(|m| m.1 > 0)
        .collect();
    models.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.1.cmp(&a.1)));
    let max_model_cost = models.iter().map(|m| m.2).fold(0.0_f64, f64::max);
    let model_rows: Vec<ModelRow> = models
        .into_iter()
        .map(|(model, runs, usd)| ModelRow {
            model,
            runs,
            cost: format::cost(usd),
            width: if max_model_cost > 0.0 {
                300.0 * usd / max_model_cost
            } else {
                0.0
            },
        })
        .collect();
    let before_upgrade = cost.models.iter().any(|(m, _)| m == BEFORE_UPGRADE);
    let per_agent = drawn(cost.agents, n);
    let per_model = drawn(cost.models, n);
    let total_cost: f64 = per_agent
        .iter()
        .map(|(_, _, c)| c.iter().sum::<f64>())
        .sum();
    let total_runs: f64 = per_agent
        .iter()
        .map(|(_, r, _)| r.iter().sum::<f64>())
        .sum();
    let (cost_chart, runs_chart) = charts(&cost.starts, &per_agent);
    let (model_cost_chart, model_runs_chart) = charts(&cost.starts, &per_model);
    page::ok(
        &viewer,
        "cost",
        "cost.html",
        context! {
            days => days,
            cost_chart => cost_chart,
            runs_chart => runs_chart,
            legend => legend(&per_agent),
            model_cost_chart => model_cost_chart,
            model_runs_chart => model_runs_chart,
            model_legend => legend(&per_model),
            models => model_rows,
            before_upgrade => before_upgrade,
            truncated => cost.truncated,
            total_cost => format::cost(total_cost),
            total_runs => total_runs as u64,
        },
    )
}
