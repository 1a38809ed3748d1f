//! The one gateway error type. Every failure a client can see is a [`GatewayError`]; its
//! [`ErrorKind`] decides the HTTP status, whether another provider should be tried, and the
//! metric label.

use std::time::Duration;

use actix_web::{http::StatusCode, HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};

/// What went wrong, in the terms the fallback policy and the OpenAI SDKs care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The client's request is wrong (bad JSON, bad field, bad template).
    InvalidRequest,
    /// Missing or wrong flowgate API key.
    Unauthorized,
    /// The caller may not do this (a foreign `Origin` or `Host` in the no-key mode).
    Forbidden,
    /// The request body is not sent as `application/json`.
    UnsupportedMediaType,
    /// The client did not send its request body in time.
    RequestTimeout,
    /// The `model` string names no model of the catalog.
    ModelNotFound,
    /// An object (run, agent, route) does not exist.
    NotFound,
    /// The request body is larger than the configured limit.
    PayloadTooLarge,
    /// An upstream provider rate-limited us.
    RateLimited,
    /// The caller's key or tenant is past its request or token rate, or its requests at once.
    LimitExceeded,
    /// The caller's key or tenant has spent its budget for the period.
    QuotaExceeded,
    /// An upstream provider answered with a server error or is overloaded.
    UpstreamServer,
    /// An upstream provider rejected the request as invalid (the client's fault).
    UpstreamBadRequest,
    /// An upstream provider rejected our credentials.
    UpstreamAuth,
    /// The provider is overloaded (Anthropic 529, Gemini 503 UNAVAILABLE): try elsewhere.
    Overloaded,
    /// The prompt does not fit the model's context window.
    ContextTooLong,
    /// The provider refused the content (moderation, safety filters).
    ContentFiltered,
    /// The chosen model cannot honour a part of the request (e.g. a PDF to a text model).
    UnsupportedByModel,
    /// The model's answer did not match the requested schema, even after a repair attempt.
    InvalidStructuredOutput,
    /// The upstream connection could not be made or broke.
    UpstreamConnection,
    /// The upstream answered something we could not parse.
    UpstreamMalformed,
    /// The upstream did not answer in time.
    Timeout,
    /// No provider can serve the model right now (disabled or circuit open).
    NoProviderAvailable,
    /// The client went away before the answer was complete.
    Cancelled,
    /// A bug or an internal failure (an actor did not answer).
    Internal,
}

impl ErrorKind {
    /// The HTTP status the OpenAI SDKs map to the right exception.
    pub fn status_code(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::UpstreamBadRequest
            | ErrorKind::ContextTooLong
            | ErrorKind::ContentFiltered
            | ErrorKind::UnsupportedByModel => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::ModelNotFound | ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RateLimited | ErrorKind::LimitExceeded | ErrorKind::QuotaExceeded => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ErrorKind::UpstreamServer
            | ErrorKind::UpstreamAuth
            | ErrorKind::UpstreamConnection
            | ErrorKind::UpstreamMalformed
            | ErrorKind::InvalidStructuredOutput => StatusCode::BAD_GATEWAY,
            ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::NoProviderAvailable => StatusCode::SERVICE_UNAVAILABLE,
            // 499 is nginx's "client closed request"; the client never reads it.
            ErrorKind::Cancelled => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the next provider or model of the plan should be tried after this error.
    pub fn should_fallback(self) -> bool {
        match self {
            ErrorKind::RateLimited
            | ErrorKind::UpstreamServer
            | ErrorKind::UpstreamAuth
            | ErrorKind::UpstreamConnection
            | ErrorKind::UpstreamMalformed
            | ErrorKind::Overloaded
            | ErrorKind::Timeout
            | ErrorKind::NoProviderAvailable
            // Another model may have a larger window, another provider other filters.
            | ErrorKind::ContextTooLong
            | ErrorKind::ContentFiltered
            | ErrorKind::UnsupportedByModel
            | ErrorKind::InvalidStructuredOutput => true,
            ErrorKind::InvalidRequest
            | ErrorKind::Unauthorized
            | ErrorKind::Forbidden
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::RequestTimeout
            | ErrorKind::ModelNotFound
            | ErrorKind::NotFound
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UpstreamBadRequest
            | ErrorKind::LimitExceeded
            | ErrorKind::QuotaExceeded
            | ErrorKind::Cancelled
            | ErrorKind::Internal => false,
        }
    }

    /// Whether this error counts against the provider's health (circuit breaker).
    pub fn is_provider_failure(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited
                | ErrorKind::UpstreamServer
                | ErrorKind::UpstreamAuth
                | ErrorKind::UpstreamConnection
                | ErrorKind::UpstreamMalformed
                | ErrorKind::Overloaded
                | ErrorKind::Timeout
        )
    }

    /// Low-cardinality label for metrics and the `code` of the error body.
    pub fn metric_label(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Unauthorized => "invalid_api_key",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::LimitExceeded => "rate_limit_exceeded",
            ErrorKind::QuotaExceeded => "insufficient_quota",
            ErrorKind::UpstreamServer => "upstream_server_error",
            ErrorKind::UpstreamBadRequest => "upstream_bad_request",
            ErrorKind::UpstreamAuth => "upstream_auth",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::ContextTooLong => "context_length_exceeded",
            ErrorKind::ContentFiltered => "content_filter",
            ErrorKind::UnsupportedByModel => "unsupported_by_model",
            ErrorKind::InvalidStructuredOutput => "invalid_structured_output",
            ErrorKind::UpstreamConnection => "upstream_connection",
            ErrorKind::UpstreamMalformed => "upstream_malformed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::NoProviderAvailable => "no_provider_available",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal_error",
        }
    }

    /// The OpenAI error `type` string.
    fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::ModelNotFound
            | ErrorKind::NotFound
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::UpstreamBadRequest
            | ErrorKind::ContextTooLong
            | ErrorKind::ContentFiltered
            | ErrorKind::UnsupportedByModel => "invalid_request_error",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::Forbidden => "permission_error",
            ErrorKind::RequestTimeout => "timeout_error",
            ErrorKind::RateLimited => "rate_limit_error",
            // As OpenAI spells them.
            ErrorKind::LimitExceeded => "requests",
            ErrorKind::QuotaExceeded => "insufficient_quota",
            ErrorKind::Timeout => "timeout_error",
            ErrorKind::UpstreamServer
            | ErrorKind::UpstreamAuth
            | ErrorKind::UpstreamConnection
            | ErrorKind::UpstreamMalformed
            | ErrorKind::Overloaded
            | ErrorKind::InvalidStructuredOutput
            | ErrorKind::NoProviderAvailable => "upstream_error",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "server_error",
        }
    }
}

/// At most `max` characters of client input, for an error message: an error never echoes
/// unbounded input back (a 1 MB model name makes a 1 MB error).
pub fn excerpt(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(text),
        Some((cut, _)) => {
            std::borrow::Cow::Owned(format!("{}… ({} bytes)", &text[..cut], text.len()))
        }
    }
}

/// One upstream attempt of a run, as shown in error `details` and stored on the run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttemptSummary {
    pub provider: String,
    pub model: String,
    /// HTTP status the upstream answered, if it answered.
    pub status: Option<u16>,
    /// `metric_label()` of the error, `None` on success.
    pub error: Option<String>,
    pub duration_seconds: f64,
    /// Why this attempt was made instead of the previous one (`None` for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A failure a client can see. Boxed, so `Result<_, GatewayError>` stays one pointer wide on
/// the happy path.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.message)]
pub struct GatewayError(Box<ErrorDetail>);

/// The fields of a [`GatewayError`], reached through `Deref`.
#[derive(Debug, Clone)]
pub struct ErrorDetail {
    pub kind: ErrorKind,
    /// Safe to show: never contains a provider key.
    pub message: String,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// A more precise code than the kind's label (e.g. `missing_field`).
    pub code: Option<String>,
    /// Upstream attempts that led to this error.
    pub attempts: Vec<AttemptSummary>,
    /// Extra structured detail (e.g. suggested model ids).
    pub extra: Option<serde_json::Value>,
    /// Honoured by clients on 429 and 503.
    pub retry_after: Option<Duration>,
    /// Status the upstream answered with, when the error came from one.
    pub upstream_status: Option<u16>,
    /// Headers the answer carries besides `retry-after` (e.g. `x-ratelimit-*`).
    pub headers: Vec<(&'static str, String)>,
}

impl std::ops::Deref for GatewayError {
    type Target = ErrorDetail;

    fn deref(&self) -> &ErrorDetail {
        &self.0
    }
}

impl std::ops::DerefMut for GatewayError {
    fn deref_mut(&mut self) -> &mut ErrorDetail {
        &mut self.0
    }
}

impl GatewayError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        GatewayError(Box::new(ErrorDetail {
            kind,
            message: message.into(),
            param: None,
            code: None,
            attempts: Vec::new(),
            extra: None,
            retry_after: None,
            upstream_status: None,
            headers: Vec::new(),
        }))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn with_extra(mut self, extra: serde_json::Value) -> Self {
        self.extra = Some(extra);
        self
    }

    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn with_upstream_status(mut self, status: u16) -> Self {
        self.upstream_status = Some(status);
        self
    }

    pub fn status_code(&self) -> StatusCode {
        self.kind.status_code()
    }

    pub fn should_fallback(&self) -> bool {
        self.kind.should_fallback()
    }

    /// The OpenAI-shaped error body: `{"error": {message, type, param, code, details}}`.
    pub fn body(&self) -> serde_json::Value {
        let mut details = serde_json::Map::new();
        if !self.attempts.is_empty() {
            details.insert(
                "attempts".into(),
                serde_json::to_value(&self.attempts).unwrap_or_default(),
            );
        }
        if let Some(serde_json::Value::Object(extra)) = &self.extra {
            details.extend(extra.clone());
        }
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind.openai_type(),
                "param": self.param,
                "code": self.code.as_deref().unwrap_or(self.kind.metric_label()),
                "details": if details.is_empty() { serde_json::Value::Null } else { details.into() },
            }
        })
    }
}

impl ResponseError for GatewayError {
    fn status_code(&self) -> StatusCode {
        self.kind.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.kind.status_code());
        if let Some(retry_after) = self.retry_after {
            response.insert_header(("retry-after", retry_after.as_secs().max(1).to_string()));
        }
        for (name, value) in &self.headers {
            response.insert_header((*name, value.as_str()));
        }
        response.json(self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape_and_details() {
        let mut err = GatewayError::new(ErrorKind::UpstreamServer, "boom").with_param("model");
        err.attempts.push(AttemptSummary {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            status: Some(500),
            error: Some("upstream_server_error".into()),
            duration_seconds: 0.5,
            reason: None,
        });
        let body = err.body();
        assert_eq!(body["error"]["message"], "boom");
        assert_eq!(body["error"]["type"], "upstream_error");
        assert_eq!(body["error"]["param"], "model");
        assert_eq!(body["error"]["code"], "upstream_server_error");
        assert_eq!(body["error"]["details"]["attempts"][0]["status"], 500);
        assert_eq!(err.status_code(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn fallback_follows_kind() {
        assert!(ErrorKind::RateLimited.should_fallback());
        assert!(ErrorKind::Timeout.should_fallback());
        assert!(!ErrorKind::UpstreamBadRequest.should_fallback());
        assert!(!ErrorKind::InvalidRequest.should_fallback());
    }
}
