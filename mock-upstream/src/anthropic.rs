//! The Anthropic Messages API wire format. (Being written.)

use actix_web::{HttpRequest, HttpResponse};
use serde_json::Value;

use crate::server::State;

/// `POST /v1/messages`.
pub(crate) async fn messages(_req: &HttpRequest, _body: Value, _state: &State) -> HttpResponse {
    HttpResponse::NotImplemented().finish()
}
