//! `POST /v1/responses`: the OpenAI Responses API (stateless: `previous_response_id` continues
//! a recorded run), streaming and not, answered by any catalog model through the same engine
//! as Chat Completions. Errors take the OpenAI shape, as on Chat Completions.

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::engine::Run;
use flowgate_actors::error::{ErrorKind, GatewayError};
use flowgate_actors::recorder::run::Door;
use tracing::Instrument;

use super::chat::{event_stream_headers, failed, run_headers};
use super::completion::run_url;
use super::doors::responses::{
    conversation, echo, render, run_id_of, ResponseStream, ResponsesRequest,
};
use super::doors::{self, Outcome};
use super::AppState;

pub async fn responses(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let caller = state.auth.caller(&req)?;
    let (run, rate_headers) = doors::start(&state, &caller, Door::Responses).await?;
    let span = tracing::debug_span!(
        "request",
        door = "responses",
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
    caller: flowgate_actors::keys::Caller,
) -> HttpResponse {
    let (raw, reservation) = match doors::read(&req, payload, &state, &mut run).await {
        Ok(read) => read,
        Err(e) => return failed(run, e),
    };
    let request: ResponsesRequest = match doors::parse(&raw, &state, run.context_mut()) {
        Ok(request) => request,
        Err(e) => return failed(run, e),
    };
    let translated = match translate(&state, &caller, &request).await {
        Ok(chat) => chat,
        Err(e) => {
            super::chat::file_unread(run.context_mut(), raw, &state);
            return failed(run, e);
        }
    };
    drop(raw);
    let echo = echo(&request);
    drop(request);
    match doors::execute(&req, &state, run, &caller, translated, reservation).await {
        Outcome::Answer(run, answer) => {
            let ctx = run.context();
            let id = doors::object_id("resp", &ctx.run_id);
            let url = run_url(&state.gateway.public_url, &ctx.run_id);
            let body = render(&run, &answer, &echo, &id, url);
            let mut response = HttpResponse::Ok();
            run_headers(&mut response, &run);
            run.succeed(answer);
            response.json(body)
        }
        Outcome::Stream(run, live) => {
            let mut response = HttpResponse::Ok();
            run_headers(&mut response, &run);
            let ctx = run.context();
            let relay = ResponseStream::new(
                echo,
                doors::object_id("resp", &ctx.run_id),
                ctx.run_id.simple().to_string(),
                ctx.created_unix(),
                live.model.clone(),
            );
            event_stream_headers(&mut response).streaming(doors::relay(run, live, relay).await)
        }
        Outcome::Failed(run, e) => failed(run, e),
        Outcome::Gone => doors::gone(),
    }
}

/// The Chat Completions request, after the conversation of `previous_response_id` (the
/// caller's tenant's run) when it continues one.
async fn translate(
    state: &AppState,
    caller: &flowgate_actors::keys::Caller,
    request: &ResponsesRequest,
) -> Result<flowgate_actors::wire::ChatRequest, GatewayError> {
    let earlier = match &request.previous_response_id {
        None => Vec::new(),
        Some(id) => {
            let run_id = run_id_of(id)?;
            let run = super::runs::find_run(state, &caller.tenant, run_id)
                .await
                .map_err(|e| match e.kind {
                    ErrorKind::NotFound => GatewayError::not_found(format!(
                        "no previous response `{}`",
                        flowgate_actors::error::excerpt(id, 64)
                    ))
                    .with_param("previous_response_id")
                    .with_code("previous_response_not_found"),
                    _ => e,
                })?;
            conversation(&run)?
        }
    };
    let chat = request.to_chat(earlier)?;
    doors::check_size(&chat, state.max_body_bytes)?;
    Ok(chat)
}
