//! Virtual API keys: the admin API that makes, lists, changes and revokes them
//! (`/api/admin/keys…`, admin key; `x-flowgate-tenant` names the tenant acted for), and
//! `GET /api/keys/self`, where a key reads its own limits, spend and remaining budget.

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::error::{ErrorKind, GatewayError};
use flowgate_actors::keys::{KeyEntry, KeyRegistry, KeySpec};
use std::sync::Arc;

use super::agents::{admin_tenant, read_small_json};
use super::AppState;

/// The admin's name, or 401 without a key and 403 with a key that is not an admin's.
fn require_admin(req: &HttpRequest, state: &AppState) -> Result<String, GatewayError> {
    match state.admin.require(req) {
        Ok(who) => Ok(who),
        Err(e) => {
            let holds_a_client_key = super::agents::bearer(req).is_some()
                && !state.auth.is_open()
                && state.auth.caller(req).is_ok();
            if holds_a_client_key {
                Err(GatewayError::new(
                    ErrorKind::Forbidden,
                    "keys are managed with an admin key; this key is not one",
                ))
            } else {
                Err(e)
            }
        }
    }
}

/// The key `id` of the tenant acted for (another tenant's: 404, as if it did not exist).
fn key_of_tenant(
    registry: &KeyRegistry,
    tenant: &str,
    id: &str,
) -> Result<Arc<KeyEntry>, GatewayError> {
    registry
        .get(id)
        .filter(|k| k.record.tenant == tenant)
        .ok_or_else(|| {
            GatewayError::not_found(format!(
                "no key `{}` in the tenant `{tenant}`",
                flowgate_actors::error::excerpt(id, 80)
            ))
        })
}

pub async fn create_key(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let who = require_admin(&req, &state)?;
    let tenant = admin_tenant(&req)?;
    let mut spec: KeySpec = read_small_json(&req, payload, &state).await?;
    match &spec.tenant {
        Some(named) if *named != tenant && req.headers().contains_key("x-flowgate-tenant") => {
            return Err(GatewayError::invalid(
                "the body's `tenant` and the `x-flowgate-tenant` header disagree",
            )
            .with_param("tenant"))
        }
        Some(_) => {}
        None => spec.tenant = Some(tenant),
    }
    let registry = state.auth.registry();
    let (entry, secret) = registry.create(spec).await?;
    let models: Vec<String> = state
        .gateway
        .catalog
        .load()
        .models()
        .iter()
        .map(|m| m.id.clone())
        .collect();
    let warnings = KeyRegistry::unmatched_patterns(&entry.record, &models);
    tracing::info!(key = %entry.record.id, name = %entry.record.name, tenant = %entry.record.tenant, by = %who, "key created");
    let mut view = registry.view(&entry).await;
    view["secret"] = secret.into();
    view["warnings"] = warnings.into();
    Ok(HttpResponse::Created().json(view))
}

pub async fn list_keys(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    require_admin(&req, &state)?;
    let tenant = admin_tenant(&req)?;
    let registry = state.auth.registry();
    let mut data = Vec::new();
    for key in registry.list(Some(&tenant)) {
        data.push(registry.view(&key).await);
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"object": "list", "data": data})))
}

pub async fn get_key(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    require_admin(&req, &state)?;
    let tenant = admin_tenant(&req)?;
    let registry = state.auth.registry();
    let key = key_of_tenant(registry, &tenant, &id)?;
    Ok(HttpResponse::Ok().json(registry.view(&key).await))
}

pub async fn update_key(
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let who = require_admin(&req, &state)?;
    let tenant = admin_tenant(&req)?;
    let registry = state.auth.registry();
    key_of_tenant(registry, &tenant, &id)?;
    let spec: KeySpec = read_small_json(&req, payload, &state).await?;
    let key = registry.update(&id, spec).await?;
    tracing::info!(key = %key.record.id, by = %who, "key updated");
    Ok(HttpResponse::Ok().json(registry.view(&key).await))
}

pub async fn revoke_key(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let who = require_admin(&req, &state)?;
    let tenant = admin_tenant(&req)?;
    let registry = state.auth.registry();
    key_of_tenant(registry, &tenant, &id)?;
    let key = registry.revoke(&id).await?;
    tracing::info!(key = %key.record.id, by = %who, "key revoked");
    // Its web UI sessions end now, on every instance (each would also end at its next use).
    if let Err(e) = state.sessions.end_for_key(&key.record.digest).await {
        tracing::warn!(error = %e, "cannot end the revoked key's web UI sessions now");
    }
    Ok(HttpResponse::Ok().json(registry.view(&key).await))
}

/// `GET /api/keys/self`: the calling key's limits, this minute's use and each budget's spend,
/// and its tenant's.
pub async fn own_key(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let caller = state.auth.caller(&req)?;
    Ok(HttpResponse::Ok().json(state.auth.registry().own_view(&caller).await))
}
