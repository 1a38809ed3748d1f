//! `POST /v1/chat/completions`: the OpenAI Chat Completions endpoint, streaming and not.
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder, ResponseError};
use flowgate_actors::agents::resolve::target_of;
use flowgate_actors::engine::{Run, RunContext, RunOutput, RunRequest};
use flowgate_actors::error::{excerpt, ErrorKind, GatewayError};
use flowgate_actors::model_ref::{ModelRef, Target};
use flowgate_actors::wire::{ChatRequest, UseFallback};
use serde_json::value::RawValue;
use serde_json::Value;

use super::body::{read_body, Reservation};
use super::completion::completion_body;
use super::{connection, sse, AppState};
use crate::config::RequestLimits;

pub async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    // Boxed here: actix-web awaits a handler's future inline in its per-request block, which
    // actix-service boxes when the route is called; the block is sized for this future (14.7
    // KB: the whole request), so it was copied whole into that box, and this future moved
    // again into its slot. Boxed here, the block stays small and this future moves once.
    Box::pin(chat(req, payload, state)).await
}

async fn chat(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    use tracing::Instrument;
    let caller = state.auth.caller(&req)?;
    // Past the key's and tenant's limits: refused before anything is read or recorded.
    let admission = state.auth.registry().admit(&caller).await?;
    let rate_headers = admission.as_ref().map(|a| a.headers()).unwrap_or_default();
    let tenant = caller.tenant.as_str();
    // From here on, every outcome is recorded as exactly one run.
    let ctx = RunContext::new(tenant, "default", "", false);
    // Debug level: free unless asked for (`FLOWGATE_LOG=debug`); `agent` and `model` are
    // recorded once the body is read.
    let span = tracing::debug_span!(
        "request",
        tenant = %tenant,
        run_id = %ctx.run_id,
        agent = tracing::field::Empty,
        model = tracing::field::Empty,
    );
    let mut run = state.gateway.start(ctx);
    if let Some(admission) = admission {
        run.hold(admission);
    }
    let mut response = answer(req, payload, state, run, caller)
        .instrument(span)
        .await;
    add_rate_headers(&mut response, rate_headers);
    Ok(response)
}

/// What is left of the key's and tenant's rates, as OpenAI tells it (`x-ratelimit-*`).
pub(super) fn add_rate_headers(response: &mut HttpResponse, headers: Vec<(&'static str, String)>) {
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
}

/// Records a failed run and answers with its error, naming the run in a header.
pub(super) fn failed(run: Run, error: GatewayError) -> HttpResponse {
    let run_id = run.id();
    let error = run.fail(error);
    let mut response = error.error_response();
    if let Ok(value) = HeaderValue::from_str(&run_id.to_string()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-flowgate-run-id"), value);
    }
    response
}

async fn answer(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    mut run: Run,
    caller: flowgate_actors::keys::Caller,
) -> HttpResponse {
    let mut request = match prepare(&req, payload, &state, run.context_mut()).await {
        Ok(request) => request,
        Err(e) => return failed(run, e),
    };
    if let Err(e) = keep_to_allowlist(&state, &caller, run.context().agent.as_str(), &mut request) {
        return failed(run, e);
    }
    respond(&req, &state, run, request).await
}

/// A virtual key's allowlists: the model (as the catalog names it: an alias or a suffix allows
/// nothing more) and the agent, and the fallbacks too — models the request names in
/// `use_fallback` must each be allowed, and the catalog's automatic fallbacks, which could be
/// any model, are off for a key limited to some models.
pub(super) fn keep_to_allowlist(
    state: &AppState,
    caller: &flowgate_actors::keys::Caller,
    agent: &str,
    request: &mut Prepared,
) -> Result<(), GatewayError> {
    use flowgate_actors::wire::{FallbackMode, UseFallback};
    let Some(key) = &caller.key else {
        return Ok(());
    };
    let catalog = state.gateway.catalog.load();
    let id_of = |name: &str| match catalog.resolve(name) {
        Ok(resolved) => resolved.entry.id.clone(),
        Err(_) => name.to_string(),
    };
    caller.check_allowed(&id_of(&request.target_model), agent)?;
    if key.record.models.is_empty() {
        return Ok(());
    }
    match &request.chat.use_fallback {
        Some(UseFallback::Models(models)) => {
            for model in models {
                caller
                    .check_allowed(&id_of(model), agent)
                    .map_err(|e| e.with_param("use_fallback"))?;
            }
        }
        Some(UseFallback::Mode(FallbackMode::Never)) => {}
        None | Some(UseFallback::Mode(FallbackMode::Auto)) => {
            request.chat.use_fallback = Some(UseFallback::Mode(FallbackMode::Never));
        }
    }
    Ok(())
}

/// Runs a prepared request through the engine and answers with what it produced: a
/// `chat.completion`, an SSE stream, or the error (the run is recorded either way).
pub(super) async fn respond(
    req: &HttpRequest,
    state: &AppState,
    mut run: Run,
    request: Prepared,
) -> HttpResponse {
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("agent", run.context().agent.as_str());
        span.record("model", request.target_model.as_str());
    }
    let engine = state.gateway.run(
        &mut run,
        RunRequest {
            chat: &request.chat,
            model: &request.target_model,
        },
    );
    // A client that goes away cancels the upstream call; the run is recorded as cancelled
    // when it is dropped.
    let output = tokio::select! {
        output = engine => output,
        () = connection::client_gone(req) => {
            return HttpResponse::build(ErrorKind::Cancelled.status_code()).finish();
        }
    };
    match output {
        Ok(RunOutput::Stream(live)) => {
            let mut response = HttpResponse::Ok();
            run_headers(&mut response, &run);
            event_stream_headers(&mut response);
            let valid_json_chunks = request
                .chat
                .stream_options
                .as_ref()
                .and_then(|o| o.valid_json_chunks)
                .unwrap_or(false);
            // Boxed: the relay's future (5.7 KB) would otherwise size this one, and so every
            // future that holds it, for the non-streamed requests too (see `chat_completions`).
            response.streaming(Box::pin(sse::body(run, live, valid_json_chunks)).await)
        }
        Ok(RunOutput::Answer(answer)) => {
            // Written out before the run takes the answer (without a copy when it can).
            let body = completion_body(&run, &answer, &state.gateway.public_url);
            let mut response = HttpResponse::Ok();
            run_headers(&mut response, &run);
            run.succeed(answer);
            response.content_type("application/json").body(body)
        }
        Err(e) => failed(run, e),
    }
}

/// A validated request.
pub(super) struct Prepared {
    pub(super) chat: ChatRequest,
    /// The catalog name to resolve.
    pub(super) target_model: String,
    /// The body's bytes, held against the in-flight budget while the request runs (`None` for
    /// a request the gateway wrote itself: a replay, a playground model).
    _body: Option<Reservation>,
}

/// Reads, parses and validates the body, then resolves it against its agent (the deployment it
/// targets, its templates rendered with `input`, its version, schema and conversation), filling
/// in the run's context as facts become known.
async fn prepare(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    ctx: &mut RunContext,
) -> Result<Prepared, GatewayError> {
    let (raw, reservation) = read_object(req, payload, state, ctx).await?;
    prepare_raw(raw, Some(reservation), state, ctx).await
}

/// Reads the body within its bounds and checks that it is a JSON object, kept as received.
pub(super) async fn read_object(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    ctx: &mut RunContext,
) -> Result<(Box<RawValue>, Reservation), GatewayError> {
    // The client's upload pace is not the gateway's overhead.
    let reading = std::time::Instant::now();
    let read = read_body(
        req,
        payload,
        state.max_body_bytes,
        state.limits.body_timeout,
        &state.body_budget,
    )
    .await;
    ctx.waited += reading.elapsed();
    let (body, reservation) = read?;
    // Checked whole first (syntax errors name their position), then kept as received: the
    // run records this text, and no tree of the body is built.
    let raw: Box<RawValue> = serde_json::from_slice(&body).map_err(|e| {
        GatewayError::invalid(format!(
            "the body is not valid JSON (line {}, column {}): {e}",
            e.line(),
            e.column()
        ))
        .with_code("invalid_json")
    })?;
    if !raw.get().starts_with('{') {
        return Err(GatewayError::invalid("the body must be a JSON object"));
    }
    Ok((raw, reservation))
}

/// [`prepare`] from a body already read and checked to be a JSON object: parses and validates
/// it, then resolves it against its agent.
pub(super) async fn prepare_raw(
    raw: Box<RawValue>,
    reservation: Option<Reservation>,
    state: &AppState,
    ctx: &mut RunContext,
) -> Result<Prepared, GatewayError> {
    // Parsed without tracking the path of each field (a few % of the request's CPU); a body
    // that fails is parsed again with it, for an error that names the field.
    let chat = match serde_json::from_str::<ChatRequest>(raw.get()) {
        Ok(chat) => chat,
        Err(plain) => {
            let tracked: Result<ChatRequest, _> = serde_path_to_error::deserialize(
                &mut serde_json::Deserializer::from_str(raw.get()),
            );
            let error = match tracked {
                Err(e) => field_error(e),
                // Both parse the same text with the same types: never reached.
                Ok(_) => GatewayError::invalid(plain.to_string()).with_code("invalid_request"),
            };
            file_unread(ctx, raw, state);
            return Err(error);
        }
    };
    // Before anything looks at the name (parsing, catalog suggestions): bounded, and never
    // echoed whole.
    if chat.model.len() > state.limits.max_model_bytes {
        ctx.requested_model = excerpt(&chat.model, 64).into_owned();
        ctx.request = Some(raw);
        return Err(model_too_long(&chat.model, state.limits.max_model_bytes));
    }
    ctx.requested_model.clone_from(&chat.model);
    if let Ok(parsed) = ModelRef::parse(&chat.model, None) {
        ctx.agent = parsed.agent;
    }
    ctx.stream = chat.is_stream();
    ctx.request = Some(raw);
    ctx.input = chat.input.clone().map(Value::Object);
    ctx.metadata = chat.metadata.clone();

    let model_ref = ModelRef::parse(&chat.model, agent_override(&chat).as_deref());
    // A deployment supplies the messages: its request is validated once resolved.
    let deployment = chat.environment.is_some()
        || chat.schema_id.is_some()
        || matches!(&model_ref, Ok(r) if matches!(r.target, Target::Deployment { .. }));
    if !deployment {
        validate(&chat, &state.limits)?;
    }
    let model_ref = model_ref?;
    ctx.agent = model_ref.agent.clone();
    let target = target_of(
        model_ref.target,
        chat.environment.as_deref(),
        chat.schema_id,
    )?;

    let catalog = state.gateway.catalog.load_full();
    let (tenant, run_id) = (&ctx.tenant, ctx.run_id);
    // Templates are rendered off the worker thread (rendering waits for a render worker).
    // Boxed: the resolution's future (4.2 KB) would otherwise be part of this one and of
    // every future above it, each copied whole when it is made (see `chat_completions`).
    let resolution = Box::pin(state.gateway.agents.resolve(
        &catalog,
        tenant,
        &model_ref.agent,
        run_id,
        target,
        chat,
        &state.renderer,
    ))
    .await?;
    if deployment {
        validate(&resolution.request, &state.limits)?;
    }
    ctx.version_id = resolution.version_id;
    ctx.schema_id = Some(resolution.schema_id);
    ctx.conversation_id = Some(resolution.conversation_id);
    ctx.messages_hash = Some(resolution.messages_hash);
    ctx.rendered_messages = resolution.rendered_messages;
    Ok(Prepared {
        chat: resolution.request,
        target_model: resolution.target_model,
        _body: reservation,
    })
}

/// The agent a request names besides its `model` string: `agent_id`, else `metadata.agent_id`.
pub(super) fn agent_override(chat: &ChatRequest) -> Option<String> {
    chat.agent_id.clone().or_else(|| {
        chat.metadata
            .as_ref()
            .and_then(|m| m.get("agent_id"))
            .and_then(Value::as_str)
            .map(str::to_string)
    })
}

/// The `model` string is longer than allowed.
pub(super) fn model_too_long(model: &str, max: usize) -> GatewayError {
    GatewayError::invalid(format!(
        "`model` is {} bytes long, more than the limit of {max}: `{}`",
        model.len(),
        excerpt(model, 64)
    ))
    .with_param("model")
    .with_code("model_too_long")
}

/// The requested model and `stream` of a body that is not a valid request, for its run.
pub(super) fn note_model(ctx: &mut RunContext, body: &str, max_model_bytes: usize) {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(default)]
        model: Value,
        #[serde(default)]
        stream: Value,
    }
    let Ok(head) = serde_json::from_str::<Head>(body) else {
        return;
    };
    if let Some(model) = head.model.as_str() {
        if model.len() > max_model_bytes {
            ctx.requested_model = excerpt(model, 64).into_owned();
            return;
        }
        ctx.requested_model = model.to_string();
        if let Ok(parsed) = ModelRef::parse(model, None) {
            ctx.agent = parsed.agent;
        }
    }
    ctx.stream = head.stream.as_bool().unwrap_or(false);
}

/// A serde error as a 400 that names the field.
pub(super) fn field_error(e: serde_path_to_error::Error<serde_json::Error>) -> GatewayError {
    let path = excerpt(&e.path().to_string(), 200).into_owned();
    // The position in the body is not news to the client: the path names the field.
    let inner = match e.inner().to_string() {
        text if e.inner().line() > 0 => match text.rsplit_once(" at line ") {
            Some((message, _)) => message.to_string(),
            None => text,
        },
        text => text,
    };
    // serde quotes the offending value ("unknown variant `…`"): never echo all of it.
    let inner = excerpt(&inner, 300).into_owned();
    // "missing field `messages`" has the parent as its path: name the field itself.
    let param = match inner
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        Some(field) if path == "." => field.to_string(),
        Some(field) => format!("{path}.{field}"),
        None => path.clone(),
    };
    let code = if inner.starts_with("missing field") {
        "missing_field"
    } else {
        "invalid_type"
    };
    let message = if path == "." {
        inner
    } else {
        format!("`{path}`: {inner}")
    };
    GatewayError::invalid(message)
        .with_param(param)
        .with_code(code)
}

/// Longest `provider` name.
pub(super) const MAX_NAME_BYTES: usize = 128;
/// Most models in a `use_fallback` list: each one is planned and may be called.
pub(super) const MAX_FALLBACK_MODELS: usize = 16;

pub(super) fn validate(chat: &ChatRequest, limits: &RequestLimits) -> Result<(), GatewayError> {
    if chat.messages.is_empty() {
        return Err(
            GatewayError::invalid("`messages` must contain at least one message")
                .with_param("messages"),
        );
    }
    if let Some(t) = chat.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(GatewayError::invalid(format!(
                "`temperature` must be between 0 and 2, got {t}"
            ))
            .with_param("temperature"));
        }
    }
    if let Some(p) = chat.top_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(
                GatewayError::invalid(format!("`top_p` must be between 0 and 1, got {p}"))
                    .with_param("top_p"),
            );
        }
    }
    check_routing(chat.provider.as_deref(), chat.use_fallback.as_ref(), limits)?;
    match chat.n {
        Some(0) => return Err(GatewayError::invalid("`n` must be at least 1").with_param("n")),
        Some(n) if n > limits.max_n => {
            return Err(GatewayError::invalid(format!(
                "`n` is {n}, more than the limit of {} choices per request",
                limits.max_n
            ))
            .with_param("n")
            .with_code("n_too_large"))
        }
        _ => {}
    }
    Ok(())
}

/// The bounds of the routing fields every door shares: a pinned `provider`'s name and the
/// `use_fallback` list (its length and each model's).
/// A request that could not be read or translated is recorded all the same: filed under its
/// agent when the model can be read, with the body as received.
pub(super) fn file_unread(ctx: &mut RunContext, raw: Box<RawValue>, state: &AppState) {
    note_model(ctx, raw.get(), state.limits.max_model_bytes);
    ctx.request = Some(raw);
}

pub(super) fn check_routing(
    provider: Option<&str>,
    use_fallback: Option<&UseFallback>,
    limits: &RequestLimits,
) -> Result<(), GatewayError> {
    if let Some(provider) = provider {
        if provider.len() > MAX_NAME_BYTES {
            return Err(GatewayError::invalid(format!(
                "`provider` is longer than {MAX_NAME_BYTES} bytes: `{}`",
                excerpt(provider, 64)
            ))
            .with_param("provider"));
        }
    }
    if let Some(UseFallback::Models(models)) = use_fallback {
        if models.len() > MAX_FALLBACK_MODELS {
            return Err(GatewayError::invalid(format!(
                "`use_fallback` lists {} models, more than the limit of {MAX_FALLBACK_MODELS}",
                models.len()
            ))
            .with_param("use_fallback"));
        }
        if let Some(long) = models.iter().find(|m| m.len() > limits.max_model_bytes) {
            return Err(model_too_long(long, limits.max_model_bytes).with_param("use_fallback"));
        }
    }
    Ok(())
}

pub(super) fn run_headers(response: &mut HttpResponseBuilder, run: &Run) {
    // Names made once, not parsed (and copied) for every response.
    static RUN_ID: HeaderName = HeaderName::from_static("x-flowgate-run-id");
    static PROVIDER: HeaderName = HeaderName::from_static("x-flowgate-provider");
    static MODEL: HeaderName = HeaderName::from_static("x-flowgate-model");
    static CACHE: HeaderName = HeaderName::from_static("x-flowgate-cache");
    let mut id = uuid::Uuid::encode_buffer();
    let id = run.id().as_hyphenated().encode_lower(&mut id);
    response.insert_header((RUN_ID.clone(), &*id));
    if let Some(provider) = run.provider() {
        response.insert_header((PROVIDER.clone(), provider));
    }
    if let Some(model) = run.model() {
        response.insert_header((MODEL.clone(), model));
    }
    response.insert_header((
        CACHE.clone(),
        HeaderValue::from_static(run.cache().header()),
    ));
}

/// The headers of a server-sent events response, after [`run_headers`].
pub(super) fn event_stream_headers(response: &mut HttpResponseBuilder) -> &mut HttpResponseBuilder {
    static ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
    response
        .content_type("text/event-stream")
        .insert_header((
            actix_web::http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        ))
        .insert_header((ACCEL_BUFFERING.clone(), HeaderValue::from_static("no")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error_for(body: Value) -> GatewayError {
        field_error(serde_path_to_error::deserialize::<_, ChatRequest>(&body).unwrap_err())
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let e = error_for(json!({"model": "m"}));
        assert_eq!(e.param.as_deref(), Some("messages"));
        assert_eq!(e.code.as_deref(), Some("missing_field"));

        let e = error_for(json!({"messages": []}));
        assert_eq!(e.param.as_deref(), Some("model"));

        let e = error_for(json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}));
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));

        let e = error_for(json!({"model": "m", "messages": [], "temperature": "hot"}));
        assert_eq!(e.param.as_deref(), Some("temperature"));
        assert_eq!(e.code.as_deref(), Some("invalid_type"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(
                    |f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                ),
                prop_oneof![
                    Just("user".to_string()),
                    Just("system".to_string()),
                    Just("text".to_string()),
                    Just("image_url".to_string()),
                    ".{0,12}"
                ]
                .prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 64, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
                    proptest::collection::btree_map(
                        prop_oneof![
                            Just("role".to_string()),
                            Just("content".to_string()),
                            Just("type".to_string()),
                            Just("text".to_string()),
                            Just("tools".to_string()),
                            Just("function".to_string()),
                            Just("response_format".to_string()),
                            Just("n".to_string()),
                            "[a-z_]{1,8}",
                        ],
                        inner,
                        0..5,
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: ProptestConfig::default().cases.max(512), ..ProptestConfig::default() })]

            // Any body shaped like a request: it parses, or the error names a field, and the
            // message stays short whatever the body holds.
            #[test]
            fn any_body_parses_or_names_the_field(
                messages in arb_json(),
                extra in proptest::collection::btree_map("[a-z_]{1,12}", arb_json(), 0..4),
                model in prop_oneof![Just(Value::from("mock-echo")), arb_json()],
            ) {
                let mut body = serde_json::Map::new();
                body.insert("model".into(), model);
                body.insert("messages".into(), messages);
                body.extend(extra);
                let text = Value::Object(body).to_string();
                let parsed: Result<ChatRequest, _> = serde_path_to_error::deserialize(
                    &mut serde_json::Deserializer::from_str(&text),
                );
                if let Err(e) = parsed {
                    let error = field_error(e);
                    prop_assert_eq!(error.kind, ErrorKind::InvalidRequest);
                    prop_assert!(error.message.len() < 1_000, "{}", error.message);
                }
            }

            // Any bytes at all: the JSON syntax check answers, without panicking.
            #[test]
            fn any_bytes_are_refused_or_parsed(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = serde_json::from_slice::<Box<RawValue>>(&bytes);
            }
        }
    }
}
