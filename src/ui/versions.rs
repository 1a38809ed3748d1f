//! `GET /agents/{agent}/versions`: an agent's versions, newest first and a page at a time
//! (`?cursor=`: an agent whose prompts are written per request has a version per run), with
//! templates, parameters, run count, cost and latency from each version's statistics (summed
//! as runs are recorded, never counted from the runs); a diff of two (`?a=&b=`), the dev /
//! staging / production slots with deploy and rollback for admins (`static/versions.js`, over
//! `POST …/versions/{id}/deploy`) and the deployment history: what `GET
//! /api/agents/{agent}/versions` and `…/deployments` answer.

use std::collections::BTreeSet;

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::agents::deployment::DeploymentRecord;
use flowgate_actors::error::GatewayError;
use flowgate_actors::storage::VersionCursor;
use minijinja::context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::format;
use super::page::{self, encode};
use super::runs::label;
use crate::http::AppState;

/// Versions on a page (the first page also shows the deployed ones and those compared).
const PAGE_SIZE: usize = 50;

#[derive(Deserialize)]
pub struct DiffQuery {
    #[serde(default)]
    a: Option<String>,
    #[serde(default)]
    b: Option<String>,
    /// Where the page starts (a version cursor); the newest without.
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(Serialize)]
struct VersionView {
    id: String,
    short: String,
    created: String,
    schema_id: u32,
    model: String,
    messages: Vec<(String, String)>,
    parameters: Option<String>,
    runs: u64,
    errors: u64,
    cost: String,
    average_cost: String,
    average_latency: String,
    environments: Vec<String>,
    /// The playground set up with the version's messages, model and parameters: where a new
    /// version is made from this one.
    playground_url: String,
}

#[derive(Serialize)]
struct DiffRow {
    property: String,
    a: String,
    b: String,
    changed: bool,
}

#[derive(Serialize)]
struct DeploymentView {
    environment: String,
    schema_id: u32,
    version: String,
    previous: Option<String>,
    time: String,
    by: String,
}

fn deployment_view(d: &DeploymentRecord) -> DeploymentView {
    DeploymentView {
        environment: label(&d.environment),
        schema_id: d.schema_id,
        version: d.version_id.clone(),
        previous: d.previous_version_id.clone(),
        time: format::time(&d.deployed_at),
        by: d.deployed_by.clone(),
    }
}

/// Each property of two versions side by side.
fn diff(a: &Value, b: &Value) -> Vec<DiffRow> {
    let empty = serde_json::Map::new();
    let a = a.as_object().unwrap_or(&empty);
    let b = b.as_object().unwrap_or(&empty);
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let show = |v: Option<&Value>| match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => format::pretty(v),
    };
    keys.into_iter()
        .map(|k| DiffRow {
            property: k.clone(),
            a: show(a.get(k)),
            b: show(b.get(k)),
            changed: a.get(k) != b.get(k),
        })
        .collect()
}

pub async fn page(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<DiffQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let viewer = match page::viewer(&req, &state).await {
        Ok(v) => v,
        Err(redirect) => return *redirect,
    };
    let agent = match crate::http::search::agent_of(path.into_inner()) {
        Ok(a) => a,
        Err(e) => return page::error(Some(&viewer), &e),
    };
    let after = match query.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(text) => match VersionCursor::decode(text) {
            Some(cursor) => Some(cursor),
            None => {
                return page::error(
                    Some(&viewer),
                    &GatewayError::invalid("`cursor` is not a versions cursor")
                        .with_param("cursor"),
                )
            }
        },
    };
    crate::http::runs::settle(&state).await;
    let agents = &state.gateway.agents;
    let (page_of, deployments) = match futures::future::try_join(
        agents.versions_page(&viewer.tenant, &agent, after.as_ref(), PAGE_SIZE),
        agents.deployments(&viewer.tenant, &agent),
    )
    .await
    {
        Ok(found) => found,
        Err(e) => return page::error(Some(&viewer), &e),
    };
    let (mut shown, next) = page_of;
    // The versions compared, and on the first page the deployed ones, are shown wherever
    // they are in the order: read one by one (a few).
    let mut named: Vec<&str> = [query.a.as_deref(), query.b.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    if after.is_none() {
        named.extend(
            deployments
                .deployments
                .iter()
                .map(|d| d.version_id.as_str()),
        );
    }
    for id in named {
        if shown.iter().any(|v| v.record.id == id) {
            continue;
        }
        match agents.version_summary(&viewer.tenant, &agent, id).await {
            Ok(Some(v)) => shown.push(v),
            Ok(None) => {}
            Err(e) => return page::error(Some(&viewer), &e),
        }
    }
    let next_url = next.map(|c| {
        format!(
            "/agents/{}/versions?cursor={}",
            encode(&agent),
            encode(&c.encode())
        )
    });
    let first_url = after
        .is_some()
        .then(|| format!("/agents/{}/versions", encode(&agent)));
    let mut properties = Vec::with_capacity(shown.len());
    let views: Vec<VersionView> = shown
        .iter()
        .map(|v| {
            let props = serde_json::to_value(&v.record.properties).unwrap_or_default();
            let mut params = props.clone();
            if let Some(o) = params.as_object_mut() {
                o.remove("model");
                o.remove("messages");
            }
            let messages: Vec<(String, String)> = v
                .record
                .properties
                .messages
                .iter()
                .map(|m| {
                    let m = serde_json::to_value(m).unwrap_or_default();
                    (
                        m.get("role")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_string(),
                        format::content_text(m.get("content")),
                    )
                })
                .collect();
            let playground = serde_json::json!({
                "models": [v.record.properties.model],
                "messages": messages.iter().map(|(role, content): &(String, String)| {
                    serde_json::json!({"role": role, "content": content})
                }).collect::<Vec<_>>(),
                "temperature": v.record.properties.temperature,
                "max_tokens": v.record.properties.max_tokens,
                "agent": agent,
            });
            properties.push((v.record.id.clone(), props));
            VersionView {
                id: v.record.id.clone(),
                short: v.record.id.chars().take(12).collect(),
                created: format::time(&v.record.created_at),
                schema_id: v.record.schema_id,
                model: v.record.properties.model.clone(),
                messages,
                parameters: params
                    .as_object()
                    .filter(|o| !o.is_empty())
                    .map(|_| format::pretty(&params)),
                runs: v.stats.run_count,
                errors: v.stats.error_count,
                cost: format::cost(v.stats.cost_usd),
                average_cost: v.average_cost_usd.map(format::cost).unwrap_or_default(),
                average_latency: v
                    .average_duration_seconds
                    .map(format::seconds)
                    .unwrap_or_default(),
                environments: deployments
                    .deployments
                    .iter()
                    .filter(|d| d.version_id == v.record.id)
                    .map(|d| format!("{} (#{})", label(&d.environment), d.schema_id))
                    .collect(),
                playground_url: format!("/playground?s={}", encode(&playground.to_string())),
            }
        })
        .collect();

    let find = |id: &Option<String>| {
        id.as_ref()
            .and_then(|id| properties.iter().find(|(v, _)| v == id))
            .map(|(_, p)| p.clone())
    };
    let diff_rows = match (find(&query.a), find(&query.b)) {
        (Some(a), Some(b)) => Some(diff(&a, &b)),
        _ => None,
    };
    let slots: Vec<(String, Vec<DeploymentView>)> = ["dev", "staging", "production"]
        .iter()
        .map(|env| {
            (
                env.to_string(),
                deployments
                    .deployments
                    .iter()
                    .map(deployment_view)
                    .filter(|d| d.environment == *env)
                    .collect(),
            )
        })
        .collect();
    let history: Vec<DeploymentView> = deployments.history.iter().map(deployment_view).collect();
    page::ok(
        &viewer,
        "agents",
        "versions.html",
        context! {
            agent => agent,
            tab => "versions",
            versions => views,
            diff => diff_rows,
            diff_a => query.a.as_deref(),
            diff_b => query.b.as_deref(),
            slots => slots,
            history => history,
            is_admin => viewer.is_admin(),
            next_url => next_url,
            first_url => first_url,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_marks_what_changed() {
        let a = serde_json::json!({"model": "m1", "temperature": 0.5, "messages": []});
        let b = serde_json::json!({"model": "m2", "messages": []});
        let rows = diff(&a, &b);
        let changed: Vec<&str> = rows
            .iter()
            .filter(|r| r.changed)
            .map(|r| r.property.as_str())
            .collect();
        assert_eq!(changed, ["model", "temperature"]);
    }
}
