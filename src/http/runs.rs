//! The runs admin API: `GET /api/runs/{run_id}` and `GET /api/agents/{agent}/runs` (newest
//! first, cursor-paged). Reads go to the store off the worker thread.
//!
//! A tenant key reads its own tenant's runs; an admin key reads the runs of the tenant named by
//! `x-flowgate-tenant` (the default tenant without it), as it does versions and deployments.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::error::GatewayError;
use flowgate_actors::model_ref::is_slug;
use flowgate_actors::recorder::run::RunRecord;
use flowgate_actors::recorder::Barrier;
use serde::Deserialize;
use uuid::Uuid;

use super::AppState;

const MAX_PAGE: usize = 200;

/// Waits until the recorder has written every run sent before now, so a client reads its own
/// writes.
pub(crate) async fn settle(state: &AppState) {
    let _ = state
        .gateway
        .recorder
        .addr
        .send(Barrier)
        .timeout(Duration::from_secs(5))
        .await;
}

/// The tenant's run, waiting for the recorder once if it is not stored yet; 404 when the
/// tenant has no such run (another tenant's included).
pub(crate) async fn find_run(
    state: &AppState,
    tenant: &str,
    id: Uuid,
) -> Result<RunRecord, GatewayError> {
    let runs = &state.gateway.runs;
    let mut run = runs.get(tenant, id).await?;
    if run.is_none() {
        // It may still be on its way to the store.
        settle(state).await;
        run = runs.get(tenant, id).await?;
    }
    run.ok_or_else(|| GatewayError::not_found(format!("no run `{id}`")))
}

pub(crate) fn parse_run_id(raw: &str) -> Result<Uuid, GatewayError> {
    // Accept the response `id` form `<agent>/<run_id>` too (URL-encoded slash).
    let raw = raw.rsplit('/').next().unwrap_or(raw);
    raw.parse()
        .map_err(|_| GatewayError::invalid(format!("`{raw}` is not a run id")).with_param("run_id"))
}

fn store_error(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::internal(format!("run store: {e}"))
}

pub async fn get_run(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = super::agents::reader_tenant(&req, &state)?;
    let id = parse_run_id(&path.into_inner())?;
    let run = find_run(&state, &tenant, id).await?;
    let mut body = serde_json::to_value(&run).map_err(store_error)?;
    if let Some(object) = body.as_object_mut() {
        // The feedback token belongs to the end user who received the answer.
        object.remove("feedback_token");
        object.insert(
            "url".into(),
            super::completion::run_url(&state.gateway.public_url, &run.id).into(),
        );
    }
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

pub async fn list_agent_runs(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = super::agents::reader_tenant(&req, &state)?;
    let agent = path.into_inner();
    if !is_slug(&agent) {
        return Err(
            GatewayError::invalid(format!("`{agent}` is not an agent name")).with_param("agent"),
        );
    }
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let cursor = match &query.cursor {
        Some(c) => Some(parse_run_id(c).map_err(|e| e.with_param("cursor"))?),
        None => None,
    };
    settle(&state).await;
    let page = state
        .gateway
        .runs
        .list_agent(&tenant, &agent, cursor, limit)
        .await?;
    Ok(HttpResponse::Ok().json(page))
}
