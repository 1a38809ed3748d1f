//! The Gemini API / Vertex AI wire format, and Google's OAuth token endpoints. (Being written.)

use actix_web::{HttpRequest, HttpResponse};
use bytes::Bytes;
use serde_json::Value;

use crate::server::State;

/// `POST …/models/{model}:generateContent` and `:streamGenerateContent`.
pub(crate) async fn generate(_req: &HttpRequest, _body: Value, _state: &State) -> HttpResponse {
    HttpResponse::NotImplemented().finish()
}

/// `POST /token`: the OAuth token exchange for a service-account JWT.
pub(crate) fn token(_req: &HttpRequest, _body: &Bytes) -> HttpResponse {
    HttpResponse::NotImplemented().finish()
}

/// `GET /computeMetadata/v1/instance/service-accounts/default/token`.
pub(crate) fn metadata_token(_req: &HttpRequest) -> HttpResponse {
    HttpResponse::NotImplemented().finish()
}
