//! HTTP plumbing every adapter shares: the client, status → error kind, `Retry-After`,
//! transport errors with secrets scrubbed.

use std::time::Duration;

use crate::error::{ErrorKind, GatewayError};

use super::transport::{ClientSettings, Proxy};
use super::Timeouts;

pub use super::transport::{parse_uri, Client, Error, RequestBuilder, Response};
pub use hyper::header::{self, HeaderMap};
pub use hyper::Uri;

/// An HTTP client for one provider: its connect timeout, pooled keep-alive connections, no
/// redirects (a provider API does not redirect; following one would send the key elsewhere).
pub fn client(name: &str, timeouts: &Timeouts) -> Result<Client, String> {
    Client::new(ClientSettings {
        connect_timeout: timeouts.connect(),
        pool_idle_timeout: Duration::from_secs(90),
        pool_max_idle_per_host: 1024,
        proxy: Proxy::FromEnv,
    })
    .map_err(|e| format!("provider `{name}`: cannot build its HTTP client: {e}"))
}

/// Maps an upstream HTTP status to the gateway's error kind.
pub fn kind_for_status(status: u16) -> ErrorKind {
    match status {
        401 | 403 => ErrorKind::UpstreamAuth,
        408 => ErrorKind::Timeout,
        429 => ErrorKind::RateLimited,
        529 => ErrorKind::Overloaded,
        413 => ErrorKind::ContextTooLong,
        400 | 404 | 409 | 422 => ErrorKind::UpstreamBadRequest,
        _ => ErrorKind::UpstreamServer,
    }
}

/// `retry-after-ms` or `retry-after` (seconds).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
}

/// Replaces each secret in `text` with `***`.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(secret, "***");
    }
    out
}

/// A connection-level failure (no HTTP status), with secrets scrubbed.
pub fn transport_error(name: &str, error: Error, secrets: &[&str]) -> GatewayError {
    let kind = if error.is_timeout() {
        ErrorKind::Timeout
    } else if error.is_too_large() {
        ErrorKind::UpstreamMalformed
    } else {
        ErrorKind::UpstreamConnection
    };
    let detail = if error.is_connect() {
        "could not connect".to_string()
    } else {
        scrub(&error.to_string(), secrets)
    };
    GatewayError::new(kind, format!("provider `{name}`: {detail}"))
}

/// A timeout while waiting for `what`.
pub fn timeout_error(name: &str, what: &str, limit: Duration) -> GatewayError {
    GatewayError::new(
        ErrorKind::Timeout,
        format!(
            "provider `{name}` did not answer {what} within {:.1}s",
            limit.as_secs_f64()
        ),
    )
}

/// A streamed response body, as every adapter reads it.
pub type Body = futures::stream::BoxStream<'static, Result<bytes::Bytes, Error>>;

/// One read of a streamed body.
pub enum BodyRead {
    Bytes(bytes::Bytes),
    /// The body ended; whether that is clean is the adapter's to say.
    End,
    /// Stalled past the idle gap or the deadline, or the connection broke.
    Failed(GatewayError),
}

/// The next chunk of a streamed body, within the idle gap and the call's deadline.
pub async fn read_body(
    name: &str,
    body: &mut Body,
    idle: Duration,
    deadline: tokio::time::Instant,
) -> BodyRead {
    use futures::StreamExt;

    let wait = idle.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
    match tokio::time::timeout(wait, body.next()).await {
        Err(_) => BodyRead::Failed(GatewayError::new(
            ErrorKind::Timeout,
            format!(
                "provider `{name}` stream stalled for {:.1}s",
                wait.as_secs_f64()
            ),
        )),
        Ok(None) => BodyRead::End,
        Ok(Some(Err(e))) => BodyRead::Failed(GatewayError::new(
            ErrorKind::UpstreamConnection,
            format!("provider `{name}` stream broke: {e}"),
        )),
        Ok(Some(Ok(bytes))) => BodyRead::Bytes(bytes),
    }
}

// ---- URLs ----

/// Percent-encodes one path segment (keeps RFC 3986 `pchar`s such as `;`, `=` and `:`).
pub(super) fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'_'
            | b'~'
            | b'!'
            | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b';'
            | b'='
            | b':'
            | b'@' => out.push(char::from(byte)),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// `base` with the API version appended unless it already ends with one.
pub(super) fn versioned_base(base: &str, default_version: &str) -> String {
    let base = base.trim_end_matches('/');
    let after_scheme = base.split_once("://").map_or(base, |(_, rest)| rest);
    // The last path segment (not the host) looks like `v1`, `v1beta`, `v1beta1`.
    let has_version = after_scheme
        .split_once('/')
        .and_then(|(_, path)| path.rsplit('/').next())
        .and_then(|last| last.strip_prefix('v'))
        .is_some_and(|rest| {
            rest.starts_with(|c: char| c.is_ascii_digit())
                && rest.chars().all(|c| c.is_ascii_alphanumeric())
        });
    if has_version {
        base.to_string()
    } else {
        format!("{base}/{default_version}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kinds() {
        assert_eq!(kind_for_status(429), ErrorKind::RateLimited);
        assert_eq!(kind_for_status(401), ErrorKind::UpstreamAuth);
        assert_eq!(kind_for_status(400), ErrorKind::UpstreamBadRequest);
        assert_eq!(kind_for_status(503), ErrorKind::UpstreamServer);
        assert_eq!(kind_for_status(529), ErrorKind::Overloaded);
    }

    #[test]
    fn secrets_are_scrubbed() {
        assert_eq!(scrub("bad key sk-123456", &["sk-123456"]), "bad key ***");
    }
}
