//! `POST /v1/embeddings`: the OpenAI embeddings endpoint for the catalog's embedding models.
//! `input` is a string, an array of strings, a token array or an array of token arrays;
//! `encoding_format` is `float` or `base64`; `dimensions` shortens the vectors of the models
//! that can. The number and size of inputs are bounded (`limits.max_embedding_inputs`, 400;
//! `limits.max_embedding_input_bytes`, 413). Each request is one recorded run with its
//! tokens and cost; the vectors are not stored.

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::embeddings::{base64_of, Embedded, EmbeddingInput};
use flowgate_actors::engine::{EmbedRequest, Run};
use flowgate_actors::error::{excerpt, ErrorKind, GatewayError};
use flowgate_actors::keys::Caller;
use flowgate_actors::model_ref::{ModelRef, Target};
use flowgate_actors::recorder::run::Door;
use flowgate_actors::wire::{FallbackMode, UseFallback};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tracing::Instrument;

use super::chat::{failed, model_too_long, run_headers};
use super::doors;
use super::{connection, AppState};
use crate::config::RequestLimits;

#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    model: String,
    /// Read by hand, so an input of the wrong shape is named precisely.
    input: Value,
    #[serde(default)]
    encoding_format: Option<EncodingFormat>,
    #[serde(default)]
    dimensions: Option<u32>,
    // ---- flowgate's extra body fields ----
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    use_fallback: Option<UseFallback>,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum EncodingFormat {
    Float,
    Base64,
}

pub async fn embeddings(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let caller = state.auth.caller(&req)?;
    let (run, rate_headers) = doors::start(&state, &caller, Door::Embeddings).await?;
    let span = tracing::debug_span!(
        "request",
        door = "embeddings",
        tenant = %caller.tenant,
        run_id = %run.id(),
    );
    let mut response = answer(req, payload, state, run, caller)
        .instrument(span)
        .await;
    super::chat::add_rate_headers(&mut response, rate_headers);
    Ok(response)
}

async fn answer(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    mut run: Run,
    caller: Caller,
) -> HttpResponse {
    let (raw, _reservation) = match doors::read(&req, payload, &state, &mut run).await {
        Ok(read) => read,
        Err(e) => return failed(run, e),
    };
    let request: EmbeddingsRequest = match doors::parse(&raw, &state, run.context_mut()) {
        Ok(request) => request,
        Err(e) => return failed(run, e),
    };
    // The request (its texts) is kept on the run as received; the vectors never are.
    run.context_mut().request = Some(raw);
    let checked = check(&request, &state.limits).and_then(|input| {
        let ctx = run.context_mut();
        ctx.requested_model.clone_from(&request.model);
        ctx.metadata.clone_from(&request.metadata);
        let model_ref = ModelRef::parse(&request.model, request.agent_id.as_deref())?;
        ctx.agent.clone_from(&model_ref.agent);
        let Target::Model(model) = model_ref.target else {
            return Err(
                GatewayError::invalid("`/v1/embeddings` takes a model, not a deployment")
                    .with_param("model"),
            );
        };
        let catalog = state.gateway.catalog.load();
        let id = catalog
            .resolve(&model)
            .map_or_else(|_| model.clone(), |r| r.entry.id.clone());
        caller.check_allowed(&id, &model_ref.agent)?;
        let use_fallback = allowed_fallback(&caller, &model_ref.agent, &request, |name| {
            catalog
                .resolve(name)
                .map_or_else(|_| name.to_string(), |r| r.entry.id.clone())
        })?;
        Ok((input, model, use_fallback))
    });
    let (input, model, use_fallback) = match checked {
        Ok(checked) => checked,
        Err(e) => return failed(run, e),
    };
    let engine = state.gateway.embed(
        &mut run,
        EmbedRequest {
            model: &model,
            input: &input,
            dimensions: request.dimensions,
            provider: request.provider.as_deref(),
            use_fallback: use_fallback.as_ref(),
        },
    );
    let embedded = tokio::select! {
        embedded = engine => embedded,
        () = connection::client_gone(&req) => return doors::gone(),
    };
    match embedded {
        Ok(embedded) => {
            let format = request.encoding_format.unwrap_or(EncodingFormat::Float);
            let body = render(&run, &embedded, format);
            let mut response = HttpResponse::Ok();
            run_headers(&mut response, &run);
            run.succeed_embeddings(embedded.prompt_tokens);
            response.content_type("application/json").body(body)
        }
        Err(e) => failed(run, e),
    }
}

/// A virtual key's model allowlist holds for fallbacks too, as on Chat Completions: models
/// named in `use_fallback` must each be allowed, and the catalog's automatic fallbacks are off
/// for a key limited to some models.
fn allowed_fallback(
    caller: &Caller,
    agent: &str,
    request: &EmbeddingsRequest,
    id_of: impl Fn(&str) -> String,
) -> Result<Option<UseFallback>, GatewayError> {
    let limited = caller
        .key
        .as_ref()
        .is_some_and(|key| !key.record.models.is_empty());
    match &request.use_fallback {
        Some(UseFallback::Models(models)) if limited => {
            for model in models {
                caller
                    .check_allowed(&id_of(model), agent)
                    .map_err(|e| e.with_param("use_fallback"))?;
            }
            Ok(request.use_fallback.clone())
        }
        None | Some(UseFallback::Mode(FallbackMode::Auto)) if limited => {
            Ok(Some(UseFallback::Mode(FallbackMode::Never)))
        }
        _ => Ok(request.use_fallback.clone()),
    }
}

/// The OpenAI `list` of embeddings, with flowgate's `cost_usd` and `duration_seconds`.
fn render(run: &Run, embedded: &Embedded, format: EncodingFormat) -> String {
    let data: Vec<Value> = embedded
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = match format {
                EncodingFormat::Float => json!(vector),
                EncodingFormat::Base64 => json!(base64_of(vector)),
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": run.model().unwrap_or_default(),
        "usage": {"prompt_tokens": embedded.prompt_tokens, "total_tokens": embedded.prompt_tokens},
        "cost_usd": run.embeddings_cost(embedded.prompt_tokens),
        "duration_seconds": run.duration_seconds(),
    })
    .to_string()
}

/// The inputs, within the configured bounds.
fn check(
    request: &EmbeddingsRequest,
    limits: &RequestLimits,
) -> Result<EmbeddingInput, GatewayError> {
    if request.model.len() > limits.max_model_bytes {
        return Err(model_too_long(&request.model, limits.max_model_bytes));
    }
    super::chat::check_routing(
        request.provider.as_deref(),
        request.use_fallback.as_ref(),
        limits,
    )?;
    let input = input_of(&request.input)?;
    if input.is_empty() {
        return Err(
            GatewayError::invalid("`input` must contain at least one input").with_param("input"),
        );
    }
    if input.len() > limits.max_embedding_inputs {
        return Err(GatewayError::invalid(format!(
            "`input` has {} inputs, more than the limit of {}",
            input.len(),
            limits.max_embedding_inputs
        ))
        .with_param("input")
        .with_code("too_many_inputs"));
    }
    let sizes: Vec<usize> = match &input {
        EmbeddingInput::Texts(texts) => texts.iter().map(String::len).collect(),
        EmbeddingInput::Tokens(tokens) => tokens.iter().map(|t| t.len() * 4).collect(),
    };
    for (i, size) in sizes.into_iter().enumerate() {
        if size == 0 {
            return Err(GatewayError::invalid(format!("`input[{i}]` is empty"))
                .with_param(format!("input[{i}]")));
        }
        if size > limits.max_embedding_input_bytes {
            return Err(GatewayError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "`input[{i}]` is {size} bytes, more than the limit of {} bytes per input",
                    limits.max_embedding_input_bytes
                ),
            )
            .with_param(format!("input[{i}]"))
            .with_code("input_too_large"));
        }
    }
    Ok(input)
}

/// `input` in any of its four shapes.
fn input_of(input: &Value) -> Result<EmbeddingInput, GatewayError> {
    let bad = |at: String, what: &str| {
        GatewayError::invalid(format!(
            "`{at}` must be {what}: `input` is a string, an array of strings, an array of \
             token ids or an array of token id arrays"
        ))
        .with_param(at)
    };
    let token = |value: &Value, at: String| {
        value
            .as_u64()
            .and_then(|t| u32::try_from(t).ok())
            .ok_or_else(|| bad(at, "a token id (a non-negative integer)"))
    };
    match input {
        Value::String(text) => Ok(EmbeddingInput::Texts(vec![text.clone()])),
        Value::Array(items) => match items.first() {
            None => Ok(EmbeddingInput::Texts(Vec::new())),
            Some(Value::String(_)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("input[{i}]"), "a string like the others"))
                })
                .collect::<Result<_, _>>()
                .map(EmbeddingInput::Texts),
            Some(Value::Number(_)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| token(v, format!("input[{i}]")))
                .collect::<Result<Vec<u32>, _>>()
                .map(|tokens| EmbeddingInput::Tokens(vec![tokens])),
            Some(Value::Array(_)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Array(ids) => ids
                        .iter()
                        .enumerate()
                        .map(|(j, t)| token(t, format!("input[{i}][{j}]")))
                        .collect(),
                    _ => Err(bad(format!("input[{i}]"), "an array of token ids")),
                })
                .collect::<Result<_, _>>()
                .map(EmbeddingInput::Tokens),
            Some(other) => Err(bad(
                "input[0]".into(),
                &format!(
                    "a string or a token id, not `{}`",
                    excerpt(&other.to_string(), 40)
                ),
            )),
        },
        _ => Err(bad("input".into(), "a string or an array")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_shape_is_read_and_bad_ones_are_named() {
        assert_eq!(
            input_of(&json!("a")).unwrap(),
            EmbeddingInput::Texts(vec!["a".into()])
        );
        assert_eq!(
            input_of(&json!(["a", "b"])).unwrap(),
            EmbeddingInput::Texts(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            input_of(&json!([1, 2])).unwrap(),
            EmbeddingInput::Tokens(vec![vec![1, 2]])
        );
        assert_eq!(
            input_of(&json!([[1], [2, 3]])).unwrap(),
            EmbeddingInput::Tokens(vec![vec![1], vec![2, 3]])
        );
        assert_eq!(
            input_of(&json!(["a", 1])).unwrap_err().param.as_deref(),
            Some("input[1]")
        );
        assert_eq!(
            input_of(&json!([[1, -1]])).unwrap_err().param.as_deref(),
            Some("input[0][1]")
        );
        assert_eq!(
            input_of(&json!({"a": 1})).unwrap_err().param.as_deref(),
            Some("input")
        );
        assert_eq!(
            input_of(&json!([null])).unwrap_err().param.as_deref(),
            Some("input[0]")
        );
    }
}
