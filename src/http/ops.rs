//! Operations endpoints: `/healthz` (the process answers), `/readyz` (it can serve: the
//! recorder answers and a provider is usable), `/metrics` (Prometheus).

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use flowgate_actors::breaker::CircuitState;
use flowgate_actors::recorder::Barrier;
use serde_json::json;

use super::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Each provider's configuration summary and published health.
fn providers_json(state: &AppState) -> (BTreeMap<String, serde_json::Value>, usize) {
    let mut providers = BTreeMap::new();
    let mut usable = 0;
    for (name, provider) in state.gateway.providers.iter() {
        let health = provider.health.snapshot();
        if provider.settings.enabled && health.state != CircuitState::Open {
            usable += 1;
        }
        providers.insert(
            name.clone(),
            json!({
                "type": provider.settings.kind.type_name(),
                "enabled": provider.settings.enabled,
                "disabled_reason": provider.settings.disabled_reason,
                "health": *health,
                // Models with their own open circuit (rate limited, overloaded).
                "open_models": provider.health.open_models(),
            }),
        );
    }
    (providers, usable)
}

/// `GET /api/providers`: state, error rate and latency of every provider.
pub async fn providers(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, flowgate_actors::error::GatewayError> {
    state.auth.tenant(&req)?;
    let (providers, _) = providers_json(&state);
    let data: Vec<serde_json::Value> = providers
        .into_iter()
        .map(|(name, mut p)| {
            p["name"] = json!(name);
            p
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "object": "list", "data": data })))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let recorder_ok = state
        .gateway
        .recorder
        .addr
        .send(Barrier)
        .timeout(Duration::from_secs(2))
        .await
        .is_ok();
    let (providers, usable) = providers_json(&state);
    let ready = recorder_ok && usable > 0;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "recorder": if recorder_ok { "ok" } else { "not_responding" },
        "providers": providers,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.gateway.metrics.render())
}
