//! The other front doors into the engine: `POST /v1/responses` (the OpenAI Responses API) and
//! `POST /v1/messages` (the Anthropic Messages API). Each door translates its own wire format
//! into the Chat Completions request the engine runs (the run keeps which door it came
//! through), and translates the answer, its stream and its errors back. Authentication, key
//! and tenant limits, body bounds, templates, cache, fallbacks, structured outputs, cost and
//! recording are those of `/v1/chat/completions`: the doors reuse its path.
//!
//! Each door's wire types stay private to its module (`responses/`, `messages/`); this module
//! holds what both need: the request path up to the engine's output, and the stream relay.

pub(super) mod messages;
pub(super) mod responses;
mod stream;

use std::sync::Arc;

use actix_web::{web, HttpRequest};
use flowgate_actors::answer::{Answer, LiveStream};
use flowgate_actors::engine::{Run, RunContext, RunOutput, RunRequest};
use flowgate_actors::error::{ErrorKind, GatewayError};
use flowgate_actors::keys::Caller;
use flowgate_actors::recorder::run::Door;
use flowgate_actors::wire::ChatRequest;
use serde_json::value::RawValue;

use super::body::Reservation;
use super::chat::{self, Prepared};
use super::{connection, AppState};

pub(super) use stream::relay;

/// What a door's request came to.
pub(super) enum Outcome {
    /// A whole answer; finish the run with [`Run::succeed`] once the body is written.
    Answer(Run, Arc<Answer>),
    /// A live stream; the relay finishes the run.
    Stream(Run, LiveStream),
    /// The request failed; the run is not recorded yet ([`Run::fail`] records it).
    Failed(Run, GatewayError),
    /// The client went away: the run is recorded as cancelled.
    Gone,
}

/// The `x-ratelimit-*` headers of an admitted request's answer.
pub(super) type RateHeaders = Vec<(&'static str, String)>;

/// Starts the run of a door's request: the caller is authenticated and admitted first, as on
/// Chat Completions; from here on every outcome is recorded as exactly one run. With the run,
/// what is left of the caller's rates, for its answer's headers.
pub(super) async fn start(
    state: &AppState,
    caller: &Caller,
    door: Door,
) -> Result<(Run, RateHeaders), GatewayError> {
    let admission = state.auth.registry().admit(caller).await?;
    let rate_headers = admission.as_ref().map(|a| a.headers()).unwrap_or_default();
    let mut ctx = RunContext::new(caller.tenant.as_str(), "default", "", false);
    ctx.door = door;
    let mut run = state.gateway.start(ctx);
    if let Some(admission) = admission {
        run.hold(admission);
    }
    Ok((run, rate_headers))
}

/// Reads the door's body within its bounds: a JSON object, kept as received.
pub(super) async fn read(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    run: &mut Run,
) -> Result<(Box<RawValue>, Reservation), GatewayError> {
    chat::read_object(req, payload, state, run.context_mut()).await
}

/// Parses a door's body into its wire type; a body that does not parse is filed under its
/// model (when it names one) and answered with a 400 that names the field.
pub(super) fn parse<T: serde::de::DeserializeOwned>(
    raw: &RawValue,
    state: &AppState,
    ctx: &mut RunContext,
) -> Result<T, GatewayError> {
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(raw.get())).map_err(
        |e| {
            chat::file_unread(ctx, raw.to_owned(), state);
            chat::field_error(e)
        },
    )
}

/// Runs a translated request through the Chat Completions path: validated and resolved against
/// its agent (the run records the request in the Chat Completions shape the engine ran), kept
/// to the key's allowlists, then answered by the engine.
pub(super) async fn execute(
    req: &HttpRequest,
    state: &AppState,
    mut run: Run,
    caller: &Caller,
    request: ChatRequest,
    reservation: Reservation,
) -> Outcome {
    let raw = match serde_json::value::to_raw_value(&request) {
        Ok(raw) => raw,
        Err(e) => {
            let e = GatewayError::internal(format!("cannot write the translated request: {e}"));
            return Outcome::Failed(run, e);
        }
    };
    let mut prepared: Prepared =
        match chat::prepare_raw(raw, Some(reservation), state, run.context_mut()).await {
            Ok(prepared) => prepared,
            Err(e) => return Outcome::Failed(run, e),
        };
    let agent = run.context().agent.clone();
    if let Err(e) = chat::keep_to_allowlist(state, caller, &agent, &mut prepared) {
        return Outcome::Failed(run, e);
    }
    let engine = state.gateway.run(
        &mut run,
        RunRequest {
            chat: &prepared.chat,
            model: &prepared.target_model,
        },
    );
    // A client that goes away cancels the upstream call; the run is recorded as cancelled
    // when it is dropped.
    let output = tokio::select! {
        output = engine => output,
        () = connection::client_gone(req) => return Outcome::Gone,
    };
    match output {
        Ok(RunOutput::Answer(answer)) => Outcome::Answer(run, answer),
        Ok(RunOutput::Stream(live)) => Outcome::Stream(run, live),
        Err(e) => Outcome::Failed(run, e),
    }
}

/// The response for a client that went away (it never reads it).
pub(super) fn gone() -> actix_web::HttpResponse {
    actix_web::HttpResponse::build(ErrorKind::Cancelled.status_code()).finish()
}

/// A request's text past `limit` bytes once translated (a conversation carried over from
/// earlier responses included): the same bound as a Chat Completions body.
pub(super) fn check_size(request: &ChatRequest, limit: usize) -> Result<(), GatewayError> {
    let size = serde_json::to_vec(request).map_or(usize::MAX, |v| v.len());
    if size > limit {
        return Err(GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "the conversation is {size} bytes once its earlier turns are included, more \
                 than the limit of {limit} bytes"
            ),
        )
        .with_code("conversation_too_large"));
    }
    Ok(())
}

/// The run id in a door's object id (`resp_<hex>`, `msg_<hex>`): the id is the run's.
pub(super) fn object_id(prefix: &str, run_id: &uuid::Uuid) -> String {
    format!("{prefix}_{}", run_id.simple())
}
