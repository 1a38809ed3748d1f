//! Runs search: `POST /api/agents/{agent}/runs/search`, `POST /api/runs/search` (every agent
//! of the tenant) and `GET /api/agents/{agent}/runs/search/fields` (`GET
//! /api/runs/search/fields`): which fields, operators and values a search UI can offer.
//!
//! The body is read within the small-body bound (64 KiB); the query is checked by
//! [`RunQuery::parse`] (each bound and each refusal is a 400 that says what is allowed) before
//! the store sees it. Tenants see only their own runs; an admin key reads the tenant it names.

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::error::GatewayError;
use flowgate_actors::model_ref::is_slug;
use flowgate_actors::search::{field_catalog, FieldInfo, IndexedField, RunQuery, SearchBody};
use flowgate_actors::storage::{SearchPage, SearchScope};
use serde_json::json;

use super::agents::{read_small_json, reader_tenant};
use super::AppState;

/// At most this many values of a categorical field are listed.
const MAX_FIELD_VALUES: usize = 100;

pub(crate) fn agent_of(raw: String) -> Result<String, GatewayError> {
    if is_slug(&raw) {
        Ok(raw)
    } else {
        Err(GatewayError::invalid(format!(
            "`{}` is not an agent name",
            flowgate_actors::error::excerpt(&raw, 64)
        ))
        .with_param("agent"))
    }
}

pub async fn search_agent_runs(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let agent = agent_of(path.into_inner())?;
    let body: SearchBody = read_small_json(&req, payload, &state).await?;
    search(&state, tenant, Some(agent), body).await
}

pub async fn search_all_runs(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let body: SearchBody = read_small_json(&req, payload, &state).await?;
    search(&state, tenant, None, body).await
}

async fn search(
    state: &AppState,
    tenant: String,
    agent: Option<String>,
    body: SearchBody,
) -> Result<HttpResponse, GatewayError> {
    let page = search_page(state, tenant, agent, body).await?;
    let mut body = serde_json::to_value(&page)
        .map_err(|e| GatewayError::internal(format!("cannot write the page: {e}")))?;
    if let Some(items) = body.get_mut("items").and_then(|i| i.as_array_mut()) {
        for item in items {
            if let Some(id) = item
                .get("id")
                .and_then(|id| id.as_str())
                .map(str::to_string)
            {
                item["url"] = json!(format!("{}/runs/{id}", state.gateway.public_url));
            }
        }
    }
    Ok(HttpResponse::Ok().json(body))
}

/// One page of a search of the tenant's runs (one agent's, or all of them): what both the
/// JSON endpoints and the runs page show.
pub(crate) async fn search_page(
    state: &AppState,
    tenant: String,
    agent: Option<String>,
    body: SearchBody,
) -> Result<SearchPage, GatewayError> {
    let mut query = RunQuery::parse(body, agent.is_none())?;
    if query.names_environments() {
        let Some(agent) = &agent else {
            return Err(GatewayError::invalid(
                "`version` names an environment: environments are an agent's, so search one \
                 agent's runs (`/api/agents/{agent}/runs/search`) or name version ids",
            )
            .with_param("values")
            .with_code("invalid_search"));
        };
        let deployments = state.gateway.agents.deployments(&tenant, agent).await?;
        query.resolve_environments(&deployments.history);
    }
    // A client reads its own writes.
    super::runs::settle(state).await;
    let scope = SearchScope { tenant, agent };
    Ok(state.gateway.runs.search(&scope, &query).await?)
}

pub async fn agent_fields(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let agent = agent_of(path.into_inner())?;
    fields(&state, tenant, Some(agent)).await
}

pub async fn all_fields(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    fields(&state, tenant, None).await
}

async fn fields(
    state: &AppState,
    tenant: String,
    agent: Option<String>,
) -> Result<HttpResponse, GatewayError> {
    let catalog = search_fields(state, tenant, agent).await?;
    Ok(HttpResponse::Ok().json(json!({ "fields": catalog })))
}

/// The fields a search of the tenant's runs offers, with the values of the categorical ones.
pub(crate) async fn search_fields(
    state: &AppState,
    tenant: String,
    agent: Option<String>,
) -> Result<Vec<FieldInfo>, GatewayError> {
    let all_agents = agent.is_none();
    let scope = SearchScope { tenant, agent };
    let values = state
        .gateway
        .runs
        .field_values(&scope, MAX_FIELD_VALUES)
        .await?;
    let mut catalog = field_catalog(all_agents);
    for info in &mut catalog {
        let field = match info.field.as_str() {
            "model" => IndexedField::Model,
            "provider" => IndexedField::Provider,
            "version" => IndexedField::Version,
            _ => continue,
        };
        let mut listed = values.get(&field).cloned().unwrap_or_default();
        if field == IndexedField::Version {
            // Environment names stand for the version deployed there when a run ran.
            listed.extend(["dev", "staging", "production"].map(String::from));
        }
        info.values = Some(listed);
    }
    Ok(catalog)
}
