//! The router: turns a requested model into an ordered attempt plan across providers and
//! fallback models. Planning is a plain function the request path calls on published
//! snapshots (the catalog, and what routing learned); the router actor ([`learning`]) owns the
//! learning: per provider and model, latency and failures, which the `fastest` strategy orders
//! a model's providers by. No request waits on an actor's mailbox to be planned.

pub mod learning;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use learning::{Router, RouterHandle, Scores, Strategy};

use crate::capabilities::Needs;
use crate::catalog::{Catalog, ModelEntry, ProviderOffer, ResolvedModel};
use crate::error::{ErrorKind, GatewayError};
use crate::provider::actor::{Admission, AttemptOutcome};
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

impl PlannedAttempt {
    /// Tells the provider actor how a call went, without waiting (it hands the outcome on to
    /// the router, which learns from it).
    pub fn report(&self, admission: Admission, error: Option<ErrorKind>, latency: Duration) {
        self.provider.report(AttemptOutcome {
            model: self.offer.model.clone(),
            error,
            latency,
            probe: admission == Admission::Probe,
        });
    }
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

/// What to plan for.
#[derive(Debug)]
pub struct PlanRoute {
    pub model: String,
    pub use_fallback: Option<UseFallback>,
    /// Pin one provider: no other provider and no fallback model.
    pub provider: Option<String>,
    pub needs: Needs,
}

/// The enabled offers of a model, in the order the strategy gives: the catalog's, or, with
/// `scores` (the `fastest` strategy), offers not measured yet first (in catalog order), then
/// the lowest learned cost first.
fn ordered_offers<'a>(
    resolved: &'a ResolvedModel,
    providers: &'a ProviderRegistry,
    pin: Option<&str>,
    scores: Option<&Scores>,
) -> Vec<(&'a ProviderOffer, &'a ProviderHandle)> {
    let mut offers: Vec<(&ProviderOffer, &ProviderHandle)> = resolved
        .entry
        .providers
        .iter()
        .filter(|offer| pin.is_none_or(|p| p == offer.provider))
        .filter_map(|offer| Some((offer, providers.get(&offer.provider)?)))
        .filter(|(_, provider)| provider.settings.enabled)
        .collect();
    if let Some(scores) = scores {
        // Stable: equal keys keep the catalog's order.
        offers.sort_by(|(a, _), (b, _)| {
            let cost = |o: &ProviderOffer| scores.get(&o.provider, &o.model).map(|s| s.cost());
            match (cost(a), cost(b)) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Less,
                (Some(_), None) => std::cmp::Ordering::Greater,
                (Some(x), Some(y)) => x.total_cmp(&y),
            }
        });
    }
    offers
}

fn offers(
    resolved: &ResolvedModel,
    providers: &ProviderRegistry,
    pin: Option<&str>,
    first_reason: Option<&'static str>,
    needs: &Needs,
    scores: Option<&Scores>,
    out: &mut Vec<PlannedAttempt>,
) {
    if needs.missing(&resolved.entry.supports).is_some() {
        return;
    }
    for (offer, provider) in ordered_offers(resolved, providers, pin, scores) {
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
///
/// `scores`: what routing learned, for the `fastest` strategy (`None`: the catalog's order).
pub fn plan(
    catalog: &Catalog,
    providers: &ProviderRegistry,
    scores: Option<&Scores>,
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
    offers(
        &resolved,
        providers,
        pin,
        None,
        &msg.needs,
        scores,
        &mut attempts,
    );

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
                    scores,
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
    scores: Option<&Scores>,
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
        offers(
            &resolved,
            providers,
            None,
            None,
            &plan.needs,
            scores,
            &mut out,
        );
        for attempt in &mut out[before..] {
            attempt.reason = Some(REASON_AUTO_FALLBACK);
        }
    }
    out
}
