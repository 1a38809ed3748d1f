//! `POST /api/playground`: one request run on several models at once, to compare them.
//!
//! ```json
//! {"models": ["gpt-4o-mini", "claude-3-5-haiku-latest"],
//!  "messages": [...],                      // or "input": {...} with "version_id"
//!  "temperature": 0, "max_tokens": 200,    // any chat parameter
//!  "stream": false}
//! ```
//!
//! * `models`: 1 to 6 catalog models, each once. An empty list, more than 6, a repeated or an
//!   unknown model is a 400 and nothing runs.
//! * `version_id` (of the agent named by `agent_id`/`metadata.agent_id`, else `default`): the
//!   version's templates (rendered with `input`) and parameters; the body's parameters override
//!   them and its `messages` follow the templates.
//! * Not streamed: `{"object": "playground.comparison", "models": [{model, run_id, url,
//!   status, output, completion, usage, cost_usd, duration_seconds, error, cheapest,
//!   fastest}], "cheapest", "fastest"}`. One model failing fails only its own entry.
//! * `stream: true`: one SSE stream of `{"type": "chunk", "index", "model", "run_id", "chunk"}`
//!   (a `chat.completion.chunk` of that model), `{"type": "error", …, "error"}` when a model
//!   fails, then `{"type": "summary", …}` (the non-streamed body) and `[DONE]`.
//!
//! Every model's run is recorded with `source: playground`. The answer cache is bypassed
//! unless the body sets `use_cache`: a comparison of cached answers compares nothing.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use flowgate_actors::engine::{Run, RunContext, RunOutput, RunRequest};
use flowgate_actors::error::{ErrorKind, GatewayError};
use flowgate_actors::model_ref::{is_slug, DEFAULT_AGENT};
use flowgate_actors::recorder::run::RunSource;
use flowgate_actors::wire::{ChatRequest, UseCache};
use futures::future::ready;
use futures::stream::{self, LocalBoxStream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::chat::{agent_override, event_stream_headers, field_error, prepare_raw, validate};
use super::completion::{completion_body, run_url};
use super::replay::{check_model, checked_version_id, load_version};
use super::sse::{self, Frame};
use super::{connection, AppState};

/// Most models one comparison runs.
pub const MAX_MODELS: usize = 6;

#[derive(Deserialize)]
struct PlaygroundBody {
    models: Vec<String>,
    #[serde(default)]
    version_id: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    /// The chat request, without its `model`.
    #[serde(flatten)]
    request: Map<String, Value>,
}

/// One model's outcome.
#[derive(Debug, Serialize)]
struct ModelResult {
    model: String,
    run_id: Uuid,
    url: String,
    status: &'static str,
    /// The first choice's text.
    output: Option<String>,
    /// The `chat.completion` the chat endpoint would have answered (not streamed only).
    completion: Option<Value>,
    /// The OpenAI `usage` object.
    usage: Option<Value>,
    cost_usd: f64,
    duration_seconds: f64,
    /// The OpenAI error object.
    error: Option<Value>,
    cheapest: bool,
    fastest: bool,
}

impl ModelResult {
    fn new(model: &str, run_id: Uuid, public_url: &str) -> ModelResult {
        ModelResult {
            model: model.to_string(),
            run_id,
            url: run_url(public_url, &run_id),
            status: "success",
            output: None,
            completion: None,
            usage: None,
            cost_usd: 0.0,
            duration_seconds: 0.0,
            error: None,
            cheapest: false,
            fastest: false,
        }
    }

    fn failed(model: &str, failure: Failure, public_url: &str) -> ModelResult {
        ModelResult {
            status: "error",
            cost_usd: failure.cost_usd,
            duration_seconds: failure.duration_seconds,
            error: Some(failure.error),
            ..ModelResult::new(model, failure.run_id, public_url)
        }
    }
}

/// A model's run that failed (it is recorded).
struct Failure {
    run_id: Uuid,
    cost_usd: f64,
    duration_seconds: f64,
    /// The OpenAI error object.
    error: Value,
}

fn error_object(body: Value) -> Value {
    match body {
        Value::Object(mut body) => body.remove("error").unwrap_or(Value::Null),
        other => other,
    }
}

fn fail(run: Run, error: GatewayError) -> Failure {
    let (run_id, cost_usd, duration_seconds) = (run.id(), run.paid_usd(), run.duration_seconds());
    let error = run.fail(error);
    Failure {
        run_id,
        cost_usd,
        duration_seconds,
        error: error_object(error.body()),
    }
}

/// The comparison: what each model did, the cheapest and fastest of those that answered.
#[derive(Serialize)]
struct Comparison {
    object: &'static str,
    models: Vec<ModelResult>,
    cheapest: Option<String>,
    fastest: Option<String>,
}

impl Comparison {
    fn of(mut models: Vec<ModelResult>) -> Comparison {
        let best = |key: fn(&ModelResult) -> f64, models: &[ModelResult]| {
            models
                .iter()
                .enumerate()
                .filter(|(_, m)| m.status == "success")
                .min_by(|(_, a), (_, b)| key(a).total_cmp(&key(b)))
                .map(|(i, _)| i)
        };
        let cheapest = best(|m| m.cost_usd, &models);
        let fastest = best(|m| m.duration_seconds, &models);
        if let Some(i) = cheapest {
            models[i].cheapest = true;
        }
        if let Some(i) = fastest {
            models[i].fastest = true;
        }
        Comparison {
            object: "playground.comparison",
            cheapest: cheapest.map(|i| models[i].model.clone()),
            fastest: fastest.map(|i| models[i].model.clone()),
            models,
        }
    }
}

/// What every model runs: the request, checked once.
struct Plan {
    tenant: String,
    agent: String,
    models: Vec<String>,
    chat: ChatRequest,
    /// What the runs are recorded as started by.
    source: RunSource,
}

impl Plan {
    /// The request for one model, as the chat endpoint would receive it.
    fn request_for(&self, model: &str) -> Result<Box<RawValue>, GatewayError> {
        let mut chat = self.chat.clone();
        chat.model = format!("{}/{model}", self.agent);
        serde_json::value::to_raw_value(&chat)
            .map_err(|e| GatewayError::internal(format!("cannot write the request: {e}")))
    }
}

fn refuse(message: String) -> GatewayError {
    GatewayError::invalid(message).with_param("models")
}

fn check_models(state: &AppState, models: &[String]) -> Result<(), GatewayError> {
    if models.is_empty() {
        return Err(refuse("`models` must list at least one model".into()));
    }
    if models.len() > MAX_MODELS {
        return Err(refuse(format!(
            "`models` lists {} models, more than the limit of {MAX_MODELS}",
            models.len()
        ))
        .with_code("too_many_models"));
    }
    for (i, model) in models.iter().enumerate() {
        check_model(state, model, &format!("models[{i}]"))?;
        if models[..i].contains(model) {
            return Err(refuse(format!("`{model}` is listed twice in `models`")));
        }
    }
    Ok(())
}

/// Checks the body and builds the request every model runs; nothing runs on a 400.
async fn plan(
    state: &AppState,
    tenant: String,
    body: PlaygroundBody,
) -> Result<(Plan, bool), GatewayError> {
    check_models(state, &body.models)?;
    let mut request = body.request;
    for key in ["model", "environment", "schema_id"] {
        if request.contains_key(key) {
            return Err(GatewayError::invalid(format!(
                "the playground takes `models` (and `version_id`), not `{key}`"
            ))
            .with_param(key));
        }
    }
    let version_id = body.version_id.map(checked_version_id).transpose()?;
    if version_id.is_some() {
        // The version brings the messages: the body may add some after them.
        request
            .entry("messages")
            .or_insert_with(|| Value::Array(vec![]));
    }
    request.insert("model".into(), Value::from(body.models[0].as_str()));
    let mut chat: ChatRequest =
        serde_path_to_error::deserialize(Value::Object(request)).map_err(field_error)?;
    let agent = agent_override(&chat).unwrap_or_else(|| DEFAULT_AGENT.to_string());
    if !is_slug(&agent) {
        return Err(
            GatewayError::invalid(format!("`{agent}` is not an agent name")).with_param("agent_id"),
        );
    }
    if let Some(version_id) = version_id {
        let version = load_version(state, &tenant, &agent, &version_id).await?;
        version
            .properties
            .overridden_by(&chat)
            .template_onto(&mut chat);
    }
    validate(&chat, &state.limits)?;
    let stream = body.stream.unwrap_or(false);
    chat.stream = Some(stream);
    chat.use_cache.get_or_insert(UseCache::Never);
    if let Some(options) = chat.stream_options.as_mut() {
        options.valid_json_chunks = None;
    }
    Ok((
        Plan {
            tenant,
            agent,
            models: body.models,
            chat,
            source: RunSource::Playground,
        },
        stream,
    ))
}

pub async fn playground(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = state.auth.tenant(&req)?;
    // Messages may be as long as a chat request's.
    let (bytes, reservation) = super::body::read_body(
        &req,
        payload,
        state.max_body_bytes,
        state.limits.body_timeout,
        &state.body_budget,
    )
    .await?;
    let body: PlaygroundBody = super::agents::parse_body(&bytes)?;
    drop(bytes);
    let (plan, stream) = plan(&state, tenant, body).await?;
    if stream {
        return Ok(
            event_stream_headers(&mut HttpResponse::Ok()).streaming(events(
                state,
                plan,
                reservation,
            )),
        );
    }
    let runs = plan
        .models
        .iter()
        .map(|model| answer_of(&state, &plan, model));
    let models = tokio::select! {
        models = futures::future::join_all(runs) => models,
        // Dropping the runs records them as cancelled.
        () = connection::client_gone(&req) => {
            return Ok(HttpResponse::build(ErrorKind::Cancelled.status_code()).finish());
        }
    };
    drop(reservation);
    Ok(HttpResponse::Ok().json(Comparison::of(models)))
}

/// Starts one model's run: prepared as the chat endpoint prepares a request, then through the
/// engine.
async fn start(state: &AppState, plan: &Plan, model: &str) -> Result<(Run, RunOutput), Failure> {
    let mut ctx = RunContext::new(&plan.tenant, &plan.agent, "", plan.chat.is_stream());
    ctx.source = plan.source;
    let mut run = state.gateway.start(ctx);
    let prepared = match plan.request_for(model) {
        Ok(raw) => prepare_raw(raw, None, state, run.context_mut()).await,
        Err(e) => Err(e),
    };
    let prepared = match prepared {
        Ok(prepared) => prepared,
        Err(e) => return Err(fail(run, e)),
    };
    let request = RunRequest {
        chat: &prepared.chat,
        model: &prepared.target_model,
    };
    match state.gateway.run(&mut run, request).await {
        Ok(output) => Ok((run, output)),
        Err(e) => Err(fail(run, e)),
    }
}

fn unexpected(run: Run) -> Failure {
    fail(
        run,
        GatewayError::internal("the engine answered in another shape than asked"),
    )
}

/// One model, not streamed.
async fn answer_of(state: &AppState, plan: &Plan, model: &str) -> ModelResult {
    let public_url = &state.gateway.public_url;
    let (run, answer) = match start(state, plan, model).await {
        Ok((run, RunOutput::Answer(answer))) => (run, answer),
        Ok((run, RunOutput::Stream(_))) => {
            return ModelResult::failed(model, unexpected(run), public_url)
        }
        Err(failure) => return ModelResult::failed(model, failure, public_url),
    };
    // The API's body, as a value beside the playground's own fields.
    let completion: Option<Value> =
        serde_json::from_slice(&completion_body(&run, &answer, public_url)).ok();
    let result = ModelResult {
        output: answer
            .completion
            .choices
            .first()
            .and_then(|c| c.message.content.clone()),
        usage: completion.as_ref().map(|c| c["usage"].clone()),
        completion,
        cost_usd: run.cost_of(&answer),
        duration_seconds: run.duration_seconds(),
        ..ModelResult::new(model, run.id(), public_url)
    };
    run.succeed(answer);
    result
}

/// What one run gave, for the callers that run the playground's way (benchmarks, the AI
/// reviewer).
pub(crate) struct Outcome {
    pub run_id: Uuid,
    pub output: Option<String>,
    pub cost_usd: f64,
    pub duration_seconds: f64,
    /// The OpenAI error object, when the run failed.
    pub error: Option<Value>,
}

/// Runs `request` (a chat request without `model`; with `version_id`, that version's
/// templates and parameters first) once on `model`, recorded with `source`. A 400 when the
/// request cannot run at all; a failed run is an [`Outcome`] with its error.
pub(crate) async fn run_once(
    state: &AppState,
    tenant: &str,
    request: Map<String, Value>,
    version_id: Option<String>,
    model: &str,
    source: RunSource,
) -> Result<Outcome, GatewayError> {
    let body = PlaygroundBody {
        models: vec![model.to_string()],
        version_id,
        stream: Some(false),
        request,
    };
    let (mut plan, _) = plan(state, tenant.to_string(), body).await?;
    plan.source = source;
    let result = answer_of(state, &plan, model).await;
    Ok(Outcome {
        run_id: result.run_id,
        output: result.output,
        cost_usd: result.cost_usd,
        duration_seconds: result.duration_seconds,
        error: result.error,
    })
}

/// The results so far, by model index.
type Results = Rc<RefCell<Vec<Option<ModelResult>>>>;

/// The playground's SSE body: every model's chunks as they come, labelled, then the summary.
fn events(
    state: web::Data<AppState>,
    plan: Plan,
    reservation: super::body::Reservation,
) -> impl futures::Stream<Item = Result<Bytes, actix_web::Error>> {
    let plan = Rc::new(plan);
    let results: Results = Rc::new(RefCell::new(
        std::iter::repeat_with(|| None)
            .take(plan.models.len())
            .collect(),
    ));
    let streams: Vec<_> = (0..plan.models.len())
        .map(|index| model_events(state.clone(), plan.clone(), index, results.clone()))
        .collect();
    let summary = stream::once(async move {
        // The body's bytes count against the in-flight budget until the last model is done.
        drop(reservation);
        let models = results.borrow_mut().drain(..).flatten().collect();
        let mut summary = serde_json::to_value(Comparison::of(models)).unwrap_or_default();
        summary["type"] = json!("summary");
        let mut bytes = sse::event(&summary).to_vec();
        bytes.extend_from_slice(sse::DONE);
        Bytes::from(bytes)
    });
    stream::select_all(streams)
        .chain(summary)
        .map(Ok::<_, actix_web::Error>)
}

/// Records a model's failure; the event that tells the client.
fn failure_event(label: Value, result: ModelResult, results: &Results, index: usize) -> Bytes {
    let mut event = label;
    event["type"] = json!("error");
    event["error"] = result.error.clone().unwrap_or_default();
    results.borrow_mut()[index] = Some(result);
    sse::event(&event)
}

/// The text of the first choice's content delta in a chunk.
fn first_choice_text(chunk: &Value) -> Option<&str> {
    let choice = chunk["choices"].as_array()?.first()?;
    if choice["index"].as_u64() != Some(0) {
        return None;
    }
    choice["delta"]["content"].as_str()
}

/// One model's events: its chunks (or its error), each naming the model.
fn model_events(
    state: web::Data<AppState>,
    plan: Rc<Plan>,
    index: usize,
    results: Results,
) -> LocalBoxStream<'static, Bytes> {
    let model = plan.models[index].clone();
    let begun = Instant::now();
    let started = {
        let model = model.clone();
        async move {
            let started = start(&state, &plan, &model).await;
            (started, state)
        }
    };
    stream::once(started)
        .flat_map(move |(started, state)| {
            let public_url = state.gateway.public_url.clone();
            let name = model.clone();
            let label =
                move |run_id: Uuid| json!({"index": index, "model": name, "run_id": run_id});
            let (run, live) = match started {
                Ok((run, RunOutput::Stream(live))) => (run, live),
                Ok((run, RunOutput::Answer(_))) => {
                    let result = ModelResult::failed(&model, unexpected(run), &public_url);
                    let event = failure_event(label(result.run_id), result, &results, index);
                    return stream::once(ready(event)).boxed_local();
                }
                Err(failure) => {
                    let result = ModelResult::failed(&model, failure, &public_url);
                    let event = failure_event(label(result.run_id), result, &results, index);
                    return stream::once(ready(event)).boxed_local();
                }
            };
            let run_id = run.id();
            let mut output = String::new();
            let results = results.clone();
            let model = model.clone();
            sse::frames(run, live, false)
                .map(move |frame| match frame {
                    Frame::Chunk(chunk) => {
                        if let Some(text) = first_choice_text(&chunk) {
                            output.push_str(text);
                        }
                        chunk_event(label(run_id), chunk)
                    }
                    Frame::Failed(error) => {
                        let failure = Failure {
                            run_id,
                            cost_usd: 0.0,
                            duration_seconds: begun.elapsed().as_secs_f64(),
                            error: error_object(error),
                        };
                        let result = ModelResult::failed(&model, failure, &public_url);
                        failure_event(label(run_id), result, &results, index)
                    }
                    Frame::Last(chunk) => {
                        let result = ModelResult {
                            output: Some(std::mem::take(&mut output)),
                            usage: Some(chunk["usage"].clone()),
                            cost_usd: chunk["cost_usd"].as_f64().unwrap_or(0.0),
                            duration_seconds: chunk["duration_seconds"].as_f64().unwrap_or(0.0),
                            ..ModelResult::new(&model, run_id, &public_url)
                        };
                        results.borrow_mut()[index] = Some(result);
                        chunk_event(label(run_id), chunk)
                    }
                })
                .boxed_local()
        })
        .boxed_local()
}

fn chunk_event(label: Value, chunk: Value) -> Bytes {
    let mut event = label;
    event["type"] = json!("chunk");
    event["chunk"] = chunk;
    sse::event(&event)
}
