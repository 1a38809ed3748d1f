//! The Amazon Bedrock Converse API wire format (JSON and AWS event stream). (Being written.)

use actix_web::{HttpRequest, HttpResponse};
use bytes::Bytes;

use crate::server::State;

/// `POST /model/{modelId}/converse` and `/converse-stream`.
pub(crate) async fn converse(_req: &HttpRequest, _body: &Bytes, _state: &State) -> HttpResponse {
    HttpResponse::NotImplemented().finish()
}
