//! Operations endpoints: `/healthz` (the process answers), `/readyz` (it can serve: the
//! recorder answers and a provider is usable), `/metrics` (Prometheus).
//!
//! `/metrics` and `/readyz` tell how the gateway is used and which providers it has; with
//! `[ops] api_keys` set they need one of those keys (or an admin key) as a bearer token.
//! `/healthz` says nothing and stays open for liveness probes.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::breaker::CircuitState;
use serde_json::json;

use super::agents::bearer;
use super::AppState;
use flowgate_actors::error::{ErrorKind, GatewayError};
use sha2::{Digest, Sha256};

/// Keys that may read the operations endpoints, as digests.
pub struct OpsAuth {
    keys: Vec<[u8; 32]>,
}

impl OpsAuth {
    pub fn new(keys: &[String]) -> OpsAuth {
        OpsAuth {
            keys: keys
                .iter()
                .map(|k| Sha256::digest(k.as_bytes()).into())
                .collect(),
        }
    }

    /// Ok when no ops key is configured, or the caller sends one (or an admin key).
    pub fn check(&self, req: &HttpRequest, state: &AppState) -> Result<(), GatewayError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let Some(token) = bearer(req) else {
            return Err(GatewayError::new(
                ErrorKind::Unauthorized,
                "this endpoint needs an ops key: send `Authorization: Bearer <key of [ops] \
                 api_keys>`",
            )
            .with_code("ops_key_required"));
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if self.keys.contains(&digest) || state.admin.is_admin(req) {
            Ok(())
        } else {
            Err(
                GatewayError::new(ErrorKind::Unauthorized, "this is not an ops key")
                    .with_code("ops_key_required"),
            )
        }
    }
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Each provider's configuration summary and published health.
pub(crate) fn providers_json(state: &AppState) -> (BTreeMap<String, serde_json::Value>, usize) {
    let mut providers = BTreeMap::new();
    let mut usable = 0;
    let scores = state.gateway.router.scores();
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
                // What routing learned of each model it served: peak-EWMA latency, failures.
                "routing": scores.providers.get(name),
            }),
        );
    }
    (providers, usable)
}

/// `GET /api/providers`: state, error rate and latency of every provider.
pub async fn providers(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    // A tenant, an admin or an ops key.
    if state.auth.tenant(&req).is_err() && state.ops.check(&req, &state).is_err() {
        state.auth.tenant(&req)?;
    }
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

/// How long `/readyz` waits for the store's answer (well within a load balancer's check).
const STORAGE_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Runs waiting for the recorder past which `/readyz` takes the instance out: the recorder is
/// stuck or far behind, and every request adds to what it holds in memory.
const READY_MAX_QUEUED_RUNS: usize = 100_000;

/// The storage backend as `/readyz` tells it: which one, whether it answers now, and the local
/// spool's depth when there is one.
async fn storage_json(state: &AppState) -> serde_json::Value {
    let gateway = &state.gateway;
    let ping = tokio::time::timeout(STORAGE_PROBE_TIMEOUT, gateway.runs.ping()).await;
    let (reachable, error) = match ping {
        Ok(Ok(())) => (true, None),
        Ok(Err(e)) => (false, Some(e.to_string())),
        Err(_) => (
            false,
            Some(format!(
                "no answer within {} ms",
                STORAGE_PROBE_TIMEOUT.as_millis()
            )),
        ),
    };
    match &gateway.spool {
        None => json!({ "backend": "sled", "reachable": reachable, "error": error }),
        Some(spool) => json!({
            "backend": "postgres",
            "reachable": reachable,
            "error": error,
            "spool": spool.status(),
        }),
    }
}

pub async fn readyz(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    state.ops.check(&req, &state)?;
    // Answered within the load balancer's check timeout whatever the store does: the recorder
    // is judged by its queue (a stuck or dead recorder lets it grow), not by waiting for a
    // write under way, and the store's probe has a short deadline of its own.
    let recorder = &state.gateway.recorder;
    let queued = recorder.queued();
    let recorder_ok = recorder.addr.connected() && queued < READY_MAX_QUEUED_RUNS;
    let (providers, usable) = providers_json(&state);
    let storage = storage_json(&state).await;
    // An unreachable PostgreSQL alone does not take the instance out: runs wait in the spool.
    // A full spool does (runs could not be kept).
    let storage_ok = storage["spool"]["full"] != json!(true);
    let ready = recorder_ok && usable > 0 && storage_ok;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "recorder": if recorder_ok { "ok" } else { "behind" },
        "recorder_queued_runs": queued,
        "storage": storage,
        "providers": providers,
    });
    Ok(if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    })
}

pub async fn metrics(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    state.ops.check(&req, &state)?;
    let gateway = &state.gateway;
    // Gauges of state other actors own, read when scraped rather than kept up to date on
    // every request.
    let queued = i64::try_from(gateway.recorder.queued()).unwrap_or(i64::MAX);
    gateway.metrics.recorder_queue_depth.set(queued);
    match gateway.runs.size_on_disk().await {
        Ok(bytes) => gateway
            .metrics
            .storage_size_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX)),
        Err(e) => tracing::warn!(error = %e, "cannot read the store's size on disk"),
    }
    let keys = flowgate_actors::keys::metrics::render(state.auth.registry()).await;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(gateway.metrics.render() + &keys))
}
