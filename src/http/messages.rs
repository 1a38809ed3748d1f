//! `POST /v1/messages`: the Anthropic Messages API, streaming and not, answered by any catalog
//! model through the same engine as Chat Completions. The key comes in `x-api-key` (as the
//! Anthropic SDKs send it) or as a bearer token; `anthropic-version` is accepted and needs no
//! particular value. Errors take Anthropic's shape.

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::engine::Run;
use flowgate_actors::error::GatewayError;
use flowgate_actors::recorder::run::Door;
use tracing::Instrument;

use super::chat::{event_stream_headers, run_headers};
use super::completion::run_url;
use super::doors::messages::{error_body, render, MessageStream, MessagesRequest};
use super::doors::{self, Outcome};
use super::AppState;

pub async fn messages(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let caller = match state.auth.anthropic_caller(&req) {
        Ok(caller) => caller,
        Err(e) => return error_response(&e),
    };
    let (run, rate_headers) = match doors::start(&state, &caller, Door::Messages).await {
        Ok(started) => started,
        Err(e) => return error_response(&e),
    };
    let span = tracing::debug_span!(
        "request",
        door = "messages",
        tenant = %caller.tenant,
        run_id = %run.id(),
    );
    let mut response = answer(req, payload, state, run, caller)
        .instrument(span)
        .await;
    super::chat::add_rate_headers(&mut response, rate_headers);
    response
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
    let request: MessagesRequest = match doors::parse(&raw, &state, run.context_mut()) {
        Ok(request) => request,
        Err(e) => return failed(run, e),
    };
    let stream = request.is_stream();
    let chat = match request.into_chat() {
        Ok(chat) => chat,
        Err(e) => {
            run.context_mut().stream = stream;
            super::chat::file_unread(run.context_mut(), raw, &state);
            return failed(run, e);
        }
    };
    drop(raw);
    match doors::execute(&req, &state, run, &caller, chat, reservation).await {
        Outcome::Answer(run, answer) => {
            let ctx = run.context();
            let id = doors::object_id("msg", &ctx.run_id);
            let url = run_url(&state.gateway.public_url, &ctx.run_id);
            let body = render(&run, &answer, id, url);
            let mut response = HttpResponse::Ok();
            run_headers(&mut response, &run);
            run.succeed(answer);
            response.json(body)
        }
        Outcome::Stream(run, live) => {
            let mut response = HttpResponse::Ok();
            run_headers(&mut response, &run);
            let relay = MessageStream::new(doors::object_id("msg", &run.id()), live.model.clone());
            event_stream_headers(&mut response).streaming(doors::relay(run, live, relay).await)
        }
        Outcome::Failed(run, e) => failed(run, e),
        Outcome::Gone => doors::gone(),
    }
}

/// Records a failed run and answers with its error in Anthropic's shape.
fn failed(run: Run, error: GatewayError) -> HttpResponse {
    let run_id = run.id();
    let error = run.fail(error);
    let mut response = error_response(&error);
    if let Ok(value) = HeaderValue::from_str(&run_id.to_string()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-flowgate-run-id"), value);
    }
    response
}

/// An error in Anthropic's shape, with the status and headers (`Retry-After`) of the
/// gateway's error.
fn error_response(error: &GatewayError) -> HttpResponse {
    use actix_web::ResponseError;
    let mut response = HttpResponse::build(error.status_code());
    // The headers the gateway's own response would carry (`retry-after`, limits).
    let openai = error.error_response();
    for (name, value) in openai.headers() {
        if name != actix_web::http::header::CONTENT_TYPE
            && name != actix_web::http::header::CONTENT_LENGTH
        {
            response.insert_header((name.clone(), value.clone()));
        }
    }
    response.json(error_body(error))
}
