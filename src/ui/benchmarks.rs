//! `GET /agents/{agent}/benchmarks`: an agent's datasets (with their item counts) and
//! benchmarks (status, progress, when), and the form that starts one (`static/benchmarks.js`,
//! over `POST /api/agents/{agent}/benchmarks`): what `GET …/datasets` and `GET …/benchmarks`
//! answer.

use actix_web::{web, HttpRequest, HttpResponse};
use minijinja::context;
use serde::Serialize;

use super::format;
use super::page;
use super::runs::label;
use crate::http::AppState;

/// Benchmarks listed (the newest).
const MAX_SHOWN: usize = 50;
/// Versions offered as candidates (the newest).
const MAX_VERSIONS: usize = 50;

#[derive(Serialize)]
struct DatasetView {
    name: String,
    description: String,
    items: usize,
    created: String,
}

#[derive(Serialize)]
struct BenchmarkView {
    id: String,
    dataset: String,
    candidates: Vec<String>,
    status: String,
    done: usize,
    total: u32,
    created: String,
}

#[derive(Serialize)]
struct VersionOption {
    id: String,
    short: String,
    model: String,
    created: String,
}

pub async fn page(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let viewer = match page::viewer(&req, &state).await {
        Ok(v) => v,
        Err(redirect) => return *redirect,
    };
    let agent = match crate::http::evals::agent_name(path.into_inner()) {
        Ok(a) => a,
        Err(e) => return page::error(Some(&viewer), &e),
    };
    let store = &state.gateway.eval_store;
    let gathered = async {
        let mut datasets = Vec::new();
        for d in store.datasets(&viewer.tenant, &agent).await? {
            let items = store.items(&d).await?.len();
            datasets.push(DatasetView {
                name: d.name.clone(),
                description: d.description.clone().unwrap_or_default(),
                items,
                created: format::time_ms(d.created_ms),
            });
        }
        let mut benchmarks = Vec::new();
        for b in store
            .benchmarks(&viewer.tenant, &agent)
            .await?
            .into_iter()
            .take(MAX_SHOWN)
        {
            let done = store.results(b.id).await?.len();
            benchmarks.push(BenchmarkView {
                id: b.id.to_string(),
                dataset: b.dataset.clone(),
                candidates: b
                    .candidates
                    .iter()
                    .map(super::benchmark::short_label)
                    .collect(),
                status: label(&b.status),
                done,
                total: b.total,
                created: format::time_ms(b.created_ms),
            });
        }
        Ok::<_, flowgate_actors::error::GatewayError>((datasets, benchmarks))
    };
    let (datasets, benchmarks) = match gathered.await {
        Ok(found) => found,
        Err(e) => return page::error(Some(&viewer), &e),
    };
    let versions = match state
        .gateway
        .agents
        .versions_page(&viewer.tenant, &agent, None, MAX_VERSIONS)
        .await
    {
        Ok((v, _)) => v,
        Err(e) => return page::error(Some(&viewer), &e),
    };
    let versions: Vec<VersionOption> = versions
        .iter()
        .map(|v| VersionOption {
            id: v.record.id.clone(),
            short: v.record.id.chars().take(12).collect(),
            model: v.record.properties.model.clone(),
            created: format::time(&v.record.created_at),
        })
        .collect();
    let models: Vec<String> = state
        .gateway
        .catalog
        .load()
        .models()
        .iter()
        .map(|m| m.id.clone())
        .collect();
    page::ok(
        &viewer,
        "agents",
        "benchmarks.html",
        context! {
            agent => agent,
            tab => "benchmarks",
            datasets => datasets,
            benchmarks => benchmarks,
            versions => versions,
            models => models,
        },
    )
}
