//! Embeddings through the engine: planned on the same published catalog and routing snapshots
//! as chat (the model's providers in order, then fallback models that embed too), each call
//! admitted by its provider's circuit breaker and reported back to it, every attempt kept on
//! the run, which is recorded with its tokens and cost (not its vectors).

use std::time::Instant;

use super::{Gateway, Run};
use crate::capabilities::Needs;
use crate::completion::Usage;
use crate::embeddings::{EmbedCall, Embedded, EmbeddingInput};
use crate::error::{AttemptSummary, ErrorKind, GatewayError};
use crate::provider::actor::Admission;
use crate::recorder::run::RunStatus;
use crate::router::PlanRoute;
use crate::wire::UseFallback;

/// An embeddings request for the engine.
#[derive(Debug, Clone, Copy)]
pub struct EmbedRequest<'a> {
    /// The catalog name to resolve.
    pub model: &'a str,
    pub input: &'a EmbeddingInput,
    pub dimensions: Option<u32>,
    /// Pin one provider.
    pub provider: Option<&'a str>,
    pub use_fallback: Option<&'a UseFallback>,
}

impl Gateway {
    /// Embeds `request.input` with the first provider of the plan that answers; the run
    /// learns which model and provider answered, and every attempt. Finish it with
    /// [`Run::succeed_embeddings`] or [`Run::fail`].
    pub async fn embed(
        &self,
        run: &mut Run,
        request: EmbedRequest<'_>,
    ) -> Result<Embedded, GatewayError> {
        let plan = self.plan(&PlanRoute {
            model: request.model.to_string(),
            use_fallback: request.use_fallback.cloned(),
            provider: request.provider.map(str::to_string),
            needs: Needs::default(),
        })?;
        let Some(spec) = plan.model.embedding else {
            return Err(GatewayError::invalid(format!(
                "`{}` is a chat model: `/v1/embeddings` needs an embedding model",
                plan.model.id
            ))
            .with_param("model")
            .with_code("not_an_embedding_model"));
        };
        if let Some(asked) = request.dimensions {
            let allowed = asked > 0
                && (asked == spec.dimensions || (spec.shortens && asked < spec.dimensions));
            if !allowed {
                let message = match spec.shortens {
                    true => format!(
                        "`dimensions` must be between 1 and {} for `{}`, got {asked}",
                        spec.dimensions, plan.model.id
                    ),
                    false => format!(
                        "`{}` makes vectors of {} dimensions only, got {asked}",
                        plan.model.id, spec.dimensions
                    ),
                };
                return Err(GatewayError::invalid(message).with_param("dimensions"));
            }
        }
        run.model = Some(plan.model.id.clone());
        let mut last: Option<GatewayError> = None;
        // Fallback models that do not embed are left out of the plan.
        for planned in plan.attempts.iter().filter(|a| a.model.embedding.is_some()) {
            let admission = planned.provider.health.admit_model(&planned.offer.model);
            if admission == Admission::Refused {
                continue;
            }
            run.provider = Some(planned.provider.name().to_string());
            run.provider_model = Some(planned.offer.model.clone());
            let started = Instant::now();
            let result = planned
                .provider
                .client
                .embed(EmbedCall {
                    model: &planned.offer.model,
                    input: request.input,
                    // The model's own length needs no parameter (some APIs refuse it).
                    dimensions: request
                        .dimensions
                        .filter(|d| Some(*d) != planned.model.embedding.map(|s| s.dimensions)),
                })
                .await;
            let elapsed = started.elapsed();
            run.ctx.waited += elapsed;
            let result = result.and_then(|embedded| {
                check_shape(planned.provider.name(), &embedded, request.input.len())
                    .map(|()| embedded)
            });
            planned.report(admission, result.as_ref().err().map(|e| e.kind), elapsed);
            run.attempts.push(AttemptSummary {
                provider: planned.provider.name().to_string(),
                model: planned.offer.model.clone(),
                status: match &result {
                    Ok(_) => Some(200),
                    Err(e) => e.upstream_status,
                },
                error: result
                    .as_ref()
                    .err()
                    .map(|e| e.kind.metric_label().to_string()),
                duration_seconds: elapsed.as_secs_f64(),
                reason: planned.reason.map(str::to_string),
            });
            match result {
                Ok(embedded) => {
                    run.model = Some(planned.model.id.clone());
                    run.prices = planned.offer.prices;
                    return Ok(embedded);
                }
                Err(e) if e.should_fallback() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            GatewayError::new(
                ErrorKind::NoProviderAvailable,
                format!(
                    "no provider can embed with `{}` right now (circuits open)",
                    plan.model.id
                ),
            )
        }))
    }
}

/// One vector per input, all of one length.
fn check_shape(provider: &str, embedded: &Embedded, inputs: usize) -> Result<(), GatewayError> {
    let lengths_agree = embedded
        .vectors
        .windows(2)
        .all(|pair| pair[0].len() == pair[1].len());
    if embedded.vectors.len() != inputs || !lengths_agree {
        return Err(crate::provider::adapter::malformed(
            provider,
            format_args!(
                "{} vectors of unequal or wrong number for {inputs} inputs",
                embedded.vectors.len()
            ),
        ));
    }
    Ok(())
}

impl Run {
    /// Records a successful embeddings run: its tokens and their cost, not its vectors.
    pub fn succeed_embeddings(mut self, prompt_tokens: u64) {
        let usage = Usage {
            prompt_tokens,
            ..Usage::default()
        };
        let cost = usage.cost_usd(&self.prices);
        self.paid_usage = usage;
        self.record(RunStatus::Success, None, cost, None);
    }

    /// What the embeddings of this run cost.
    pub fn embeddings_cost(&self, prompt_tokens: u64) -> f64 {
        Usage {
            prompt_tokens,
            ..Usage::default()
        }
        .cost_usd(&self.prices)
    }
}
