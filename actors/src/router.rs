//! The router: turns a requested model into an ordered attempt plan across providers and
//! fallback models. One router actor runs per HTTP worker, on that worker's arbiter, so planning
//! never queues requests of other workers; it reads the catalog from a published snapshot.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use arc_swap::ArcSwap;

use crate::capabilities::Needs;
use crate::catalog::{Catalog, ModelEntry, ProviderOffer, ResolvedModel};
use crate::error::{ErrorKind, GatewayError};
use crate::provider::ProviderHandle;
use crate::wire::{FallbackMode, UseFallback};

/// Configured providers by name.
pub type ProviderRegistry = HashMap<String, ProviderHandle>;

/// Why an attempt is in the plan after the first.
pub const REASON_OTHER_PROVIDER: &str = "other_provider";
pub const REASON_FALLBACK_MODEL: &str = "fallback_model";
pub const REASON_AUTO_FALLBACK: &str = "auto_fallback";

/// One step of a plan: a provider serving a model.
#[derive(Debug, Clone)]
pub struct PlannedAttempt {
    pub provider: ProviderHandle,
    pub model: Arc<ModelEntry>,
    pub offer: ProviderOffer,
    pub reasoning_effort: Option<String>,
    /// `None` for the first attempt of the plan.
    pub reason: Option<&'static str>,
}

/// The ordered attempts for one request.
#[derive(Debug, Clone)]
pub struct FallbackPlan {
    /// The model the client asked for.
    pub model: Arc<ModelEntry>,
    pub attempts: Vec<PlannedAttempt>,
    /// `use_fallback: auto`: once the attempts fail, the catalog's fallback models for the
    /// error class are tried.
    pub auto_fallback: bool,
    /// What the request needs of a model.
    pub needs: Needs,
}

/// Plan the attempts for a model.
#[derive(Debug, Message)]
#[rtype(result = "Result<FallbackPlan, GatewayError>")]
pub struct PlanRoute {
    pub model: String,
    pub use_fallback: Option<UseFallback>,
    /// Pin one provider: no other provider and no fallback model.
    pub provider: Option<String>,
    pub needs: Needs,
}

pub struct Router {
    catalog: Arc<ArcSwap<Catalog>>,
    providers: Arc<ProviderRegistry>,
}

impl Router {
    pub fn new(catalog: Arc<ArcSwap<Catalog>>, providers: Arc<ProviderRegistry>) -> Self {
        Router { catalog, providers }
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16 * 1024);
    }
}

impl Handler<PlanRoute> for Router {
    type Result = Result<FallbackPlan, GatewayError>;

    fn handle(&mut self, msg: PlanRoute, _: &mut Self::Context) -> Self::Result {
        plan(&self.catalog.load(), &self.providers, &msg)
    }
}

fn offers(
    resolved: &ResolvedModel,
    providers: &ProviderRegistry,
    pin: Option<&str>,
    first_reason: Option<&'static str>,
    needs: &Needs,
    out: &mut Vec<PlannedAttempt>,
) {
    if needs.missing(&resolved.entry.supports).is_some() {
        return;
    }
    for offer in &resolved.entry.providers {
        if pin.is_some_and(|p| p != offer.provider) {
            continue;
        }
        let Some(provider) = providers.get(&offer.provider) else {
            continue;
        };
        if !provider.settings.enabled {
            continue;
        }
        let reason = if out.is_empty() {
            None
        } else if out.iter().any(|a| a.model.id == resolved.entry.id) {
            Some(REASON_OTHER_PROVIDER)
        } else {
            first_reason
        };
        out.push(PlannedAttempt {
            provider: provider.clone(),
            model: resolved.entry.clone(),
            offer: offer.clone(),
            reasoning_effort: resolved.reasoning_effort.clone(),
            reason,
        });
    }
}

/// The plan: the model's enabled providers in catalog order, then the fallback models'.
pub fn plan(
    catalog: &Catalog,
    providers: &ProviderRegistry,
    msg: &PlanRoute,
) -> Result<FallbackPlan, GatewayError> {
    let resolved = catalog.resolve(&msg.model)?;
    let pin = msg.provider.as_deref();
    if let Some(pin) = pin {
        if !resolved.entry.providers.iter().any(|o| o.provider == pin) {
            let served_by: Vec<&str> = resolved
                .entry
                .providers
                .iter()
                .map(|o| o.provider.as_str())
                .collect();
            return Err(GatewayError::invalid(format!(
                "provider `{pin}` does not serve `{}`; it is served by: {}",
                resolved.entry.id,
                served_by.join(", ")
            ))
            .with_param("provider"));
        }
    }
    let mut attempts = Vec::new();
    offers(&resolved, providers, pin, None, &msg.needs, &mut attempts);

    if pin.is_none() {
        if let Some(UseFallback::Models(models)) = &msg.use_fallback {
            for name in models {
                let fallback = catalog.resolve(name).map_err(|e| {
                    GatewayError::invalid(format!("use_fallback: {}", e.message))
                        .with_param("use_fallback")
                })?;
                offers(
                    &fallback,
                    providers,
                    None,
                    Some(REASON_FALLBACK_MODEL),
                    &msg.needs,
                    &mut attempts,
                );
            }
        }
    }
    let auto_fallback = pin.is_none()
        && matches!(
            msg.use_fallback,
            None | Some(UseFallback::Mode(FallbackMode::Auto))
        );

    if attempts.is_empty() {
        if let Some(missing) = msg.needs.missing(&resolved.entry.supports) {
            return Err(GatewayError::new(
                ErrorKind::UnsupportedByModel,
                format!(
                    "`{}` does not support {missing}; choose a model whose `supports` lists it (GET /v1/models)",
                    resolved.entry.id
                ),
            )
            .with_param("messages"));
        }
        let why: Vec<String> = resolved
            .entry
            .providers
            .iter()
            .filter(|o| pin.is_none_or(|p| p == o.provider))
            .map(|o| match providers.get(&o.provider) {
                None => format!("`{}` is not configured", o.provider),
                Some(p) => format!(
                    "`{}` is disabled ({})",
                    o.provider,
                    p.settings
                        .disabled_reason
                        .as_deref()
                        .unwrap_or("no reason given")
                ),
            })
            .collect();
        return Err(GatewayError::new(
            ErrorKind::NoProviderAvailable,
            format!(
                "no provider can serve `{}`: {}",
                resolved.entry.id,
                why.join("; ")
            ),
        ));
    }
    Ok(FallbackPlan {
        model: resolved.entry,
        attempts,
        auto_fallback,
        needs: msg.needs,
    })
}

/// The catalog's fallback models for the class of `error`, as attempts, skipping models the
/// plan already tried.
pub fn auto_fallback_attempts(
    catalog: &Catalog,
    providers: &ProviderRegistry,
    plan: &FallbackPlan,
    error: ErrorKind,
) -> Vec<PlannedAttempt> {
    let fallbacks = &plan.model.fallbacks;
    let class = match error {
        ErrorKind::RateLimited => &fallbacks.rate_limit,
        ErrorKind::ContextTooLong => &fallbacks.context_exceeded,
        ErrorKind::ContentFiltered => &fallbacks.content_moderation,
        ErrorKind::InvalidStructuredOutput => &fallbacks.structured_output,
        ErrorKind::UpstreamServer
        | ErrorKind::UpstreamAuth
        | ErrorKind::UpstreamConnection
        | ErrorKind::UpstreamMalformed
        | ErrorKind::Overloaded
        | ErrorKind::Timeout
        | ErrorKind::NoProviderAvailable => &fallbacks.unavailable,
        _ => return Vec::new(),
    };
    let mut out: Vec<PlannedAttempt> = Vec::new();
    for name in class {
        let Ok(resolved) = catalog.resolve(name) else {
            continue;
        };
        if plan
            .attempts
            .iter()
            .any(|a| a.model.id == resolved.entry.id)
        {
            continue;
        }
        let before = out.len();
        offers(&resolved, providers, None, None, &plan.needs, &mut out);
        for attempt in &mut out[before..] {
            attempt.reason = Some(REASON_AUTO_FALLBACK);
        }
    }
    out
}
