//! `GET /v1/models`: the catalog in the OpenAI list shape, plus display name, pricing, context
//! window, capabilities and whether an enabled provider serves each model.

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::catalog::ModelEntry;
use flowgate_actors::error::GatewayError;
use flowgate_actors::router::ProviderRegistry;
use serde_json::{json, Value};

use super::AppState;

fn created(entry: &ModelEntry) -> u64 {
    // Release date as unix seconds, so clients can sort by it; 0 when unknown.
    entry
        .release_date
        .as_deref()
        .and_then(|d| humantime::parse_rfc3339(&format!("{d}T00:00:00Z")).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

fn model_json(entry: &ModelEntry, providers: &ProviderRegistry) -> Value {
    let offers: Vec<Value> = entry
        .providers
        .iter()
        .map(|o| {
            let enabled = providers
                .get(&o.provider)
                .is_some_and(|p| p.settings.enabled);
            json!({
                "provider": o.provider,
                "model": o.model,
                "enabled": enabled,
                "pricing": o.prices,
            })
        })
        .collect();
    let available = offers.iter().any(|o| o["enabled"] == json!(true));
    json!({
        "id": entry.id,
        "object": "model",
        "created": created(entry),
        "owned_by": entry.providers.first().map_or("flowgate", |o| o.provider.as_str()),
        "display_name": entry.display_name,
        "aliases": entry.aliases,
        "release_date": entry.release_date,
        "context_window": entry.context_window,
        "max_output_tokens": entry.max_output_tokens,
        "pricing": entry.providers.first().map(|o| o.prices),
        "supports": entry.supports,
        // An embedding model answers `/v1/embeddings`: its vectors' length, and whether
        // `dimensions` may shorten them.
        "embedding": entry.embedding,
        "providers": offers,
        "available": available,
    })
}

pub async fn list_models(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    state.auth.tenant(&req)?;
    let catalog = state.gateway.catalog.load();
    let data: Vec<Value> = catalog
        .models()
        .iter()
        .map(|m| model_json(m, &state.gateway.providers))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "object": "list", "data": data })))
}

pub async fn get_model(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    state.auth.tenant(&req)?;
    let catalog = state.gateway.catalog.load();
    let resolved = catalog.resolve(&path.into_inner())?;
    Ok(HttpResponse::Ok().json(model_json(&resolved.entry, &state.gateway.providers)))
}
