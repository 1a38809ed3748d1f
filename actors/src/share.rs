//! Shared runs: a run made readable to anyone holding its link, `…/share/<token>`, without an
//! API key. The token is the only secret (256 random bits, URL-safe); a run has at most one, and
//! revoking it makes the link a 404. What the link shows is [`SharedRunView`]: the run's
//! messages, answer, cost and timing, never its tenant, metadata, feedback token or attempts.

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::completion::{Completion, Usage};
use crate::error::GatewayError;
use crate::recorder::run::{RunRecord, RunSource, RunStatus};

/// Random bytes in a token: 256 bits, far past guessing.
const TOKEN_BYTES: usize = 32;
/// Characters of a token: unpadded URL-safe base64 of [`TOKEN_BYTES`].
pub const TOKEN_CHARS: usize = 43;

/// A new share token from the system's secure random source.
pub fn new_token() -> Result<String, GatewayError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| GatewayError::internal("no secure random source for a share token"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `token` could be a share token: checked before any lookup, so a malformed or
/// oversized one costs nothing.
pub fn is_well_formed(token: &str) -> bool {
    token.len() == TOKEN_CHARS
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A share, as stored: whose run the token opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub token: String,
    pub tenant: String,
    pub run_id: Uuid,
    /// RFC 3339, UTC.
    pub created_at: String,
}

/// What a share link shows of a run.
#[derive(Debug, Clone, Serialize)]
pub struct SharedRunView {
    pub id: Uuid,
    pub agent: String,
    pub created_at: String,
    pub status: RunStatus,
    pub model: Option<String>,
    pub source: RunSource,
    /// The messages as sent upstream (templates rendered).
    pub messages: Value,
    pub input: Option<Value>,
    pub output: Option<Completion>,
    pub usage: Usage,
    pub cost_usd: f64,
    pub duration_seconds: f64,
    /// The error's message, for a failed run.
    pub error: Option<String>,
}

impl SharedRunView {
    pub fn of(run: RunRecord) -> SharedRunView {
        let messages = match &run.rendered_messages {
            Some(rendered) => serde_json::to_value(rendered).unwrap_or(Value::Null),
            None => run
                .request
                .as_ref()
                .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
                .and_then(|mut request| request.get_mut("messages").map(Value::take))
                .unwrap_or(Value::Null),
        };
        let error = run.error.as_ref().map(|body| {
            body.pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("the run failed")
                .to_string()
        });
        SharedRunView {
            id: run.id,
            agent: run.agent,
            created_at: run.created_at,
            status: run.status,
            model: run.model,
            source: run.source,
            messages,
            input: run.input,
            output: run.output,
            usage: run.usage,
            cost_usd: run.cost_usd,
            duration_seconds: run.duration_seconds,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance;

    #[test]
    fn tokens_are_long_random_and_url_safe() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(is_well_formed(&a), "{a}");
        assert!(!is_well_formed(&a[1..]));
        assert!(!is_well_formed(&format!("{}+", &a[1..])));
        assert!(!is_well_formed(""));
    }

    #[test]
    fn the_view_keeps_the_tenant_metadata_and_feedback_token_out() {
        let mut run = conformance::run("acme-internal", "a");
        run.metadata = Some(serde_json::Map::from_iter([(
            "customer".to_string(),
            Value::from("c-42"),
        )]));
        run.request = Some(
            serde_json::value::RawValue::from_string(
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#.into(),
            )
            .unwrap(),
        );
        let view = serde_json::to_string(&SharedRunView::of(run)).unwrap();
        for hidden in [
            "acme-internal",
            "c-42",
            "secret",
            "feedback_token",
            "tenant",
        ] {
            assert!(!view.contains(hidden), "{hidden} in {view}");
        }
        let view: Value = serde_json::from_str(&view).unwrap();
        assert_eq!(
            view["messages"],
            serde_json::json!([{"role": "user", "content": "hi"}])
        );
    }
}
