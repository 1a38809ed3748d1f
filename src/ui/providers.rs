//! `GET /providers`: each provider's circuit state, error rate, latency and models with an
//! open circuit, as `GET /api/providers` reports them.

use actix_web::{web, HttpRequest, HttpResponse};
use minijinja::context;
use serde::Serialize;
use serde_json::Value;

use super::format;
use super::page;
use crate::http::AppState;

#[derive(Serialize)]
struct ProviderRow {
    name: String,
    kind: String,
    enabled: bool,
    disabled_reason: String,
    state: String,
    error_rate: String,
    latency: String,
    requests: u64,
    failures: u64,
    retry_in: String,
    open_models: String,
}

pub async fn page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let viewer = match page::viewer(&req, &state).await {
        Ok(v) => v,
        Err(redirect) => return *redirect,
    };
    let (providers, usable) = crate::http::ops::providers_json(&state);
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let rows: Vec<ProviderRow> = providers
        .iter()
        .map(|(name, p)| {
            let health = p.get("health").cloned().unwrap_or_default();
            let f = |key: &str| health.get(key).and_then(Value::as_f64);
            let u = |key: &str| health.get(key).and_then(Value::as_u64).unwrap_or(0);
            let open_models = match p.get("open_models") {
                Some(Value::Array(list)) => list
                    .iter()
                    .map(|m| {
                        m.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| m.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                Some(Value::Object(map)) => map.keys().cloned().collect::<Vec<_>>().join(", "),
                _ => String::new(),
            };
            ProviderRow {
                name: name.clone(),
                kind: text(p, "type"),
                enabled: p.get("enabled").and_then(Value::as_bool).unwrap_or(false),
                disabled_reason: text(p, "disabled_reason"),
                state: text(&health, "state"),
                error_rate: f("error_rate")
                    .map(|r| format!("{:.1} %", r * 100.0))
                    .unwrap_or_default(),
                latency: f("latency_seconds")
                    .map(format::seconds)
                    .unwrap_or_default(),
                requests: u("requests_total"),
                failures: u("failures_total"),
                retry_in: f("retry_in_seconds")
                    .map(|s| format!("{s:.0} s"))
                    .unwrap_or_default(),
                open_models,
            }
        })
        .collect();
    page::ok(
        &viewer,
        "providers",
        "providers.html",
        context! { providers => rows, usable => usable },
    )
}
