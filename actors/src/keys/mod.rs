//! Virtual API keys: created, changed and revoked through the admin API without a restart,
//! each with a tenant, allowlists of models and agents, request and token rates, a cap on
//! requests at once and budgets in USD per day, week or month. Only a key's SHA-256 digest is
//! stored; its secret is shown once, when it is created.
//!
//! * `admission.rs` — what the request path sees: the [`Limiter`] trait and the [`Admission`]
//!   a run holds.
//! * `limiter.rs` — the counters a request must pass (key and tenant), and the embedded
//!   limiter, in this process's memory.
//! * `redis/` — the implementation for several instances: every counter in Redis, checked
//!   and counted by one Lua script per request.
//! * `registry.rs` — the keys by digest for the request path, and what is persisted.
//! * `metrics.rs` — refusals, alerts, spend and remaining budget, made at each scrape.

mod admission;
mod limiter;
pub mod metrics;
pub mod redis;
mod registry;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::GatewayError;

pub use admission::{Admission, Limiter, Release, Remaining, Usage};
pub use limiter::{
    period_end, period_start, Limits, LocalLimiter, ManualClock, Refusal, Spend, Subject,
    SystemWallClock, WallClock,
};
pub use registry::{Caller, KeyEntry, KeyRegistry};

/// The tenant of callers without a key of their own (and of every key made without one).
pub const DEFAULT_TENANT: &str = "default";

/// A budget's period: calendar day, ISO week (from Monday) or month, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

/// A cap on spend per period; past `soft_usd` a warning is logged and counted once a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub period: Period,
    pub usd: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_usd: Option<f64>,
}

/// A stored key (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub tenant: String,
    /// SHA-256 of the secret, hex.
    pub digest: String,
    /// The secret's first characters, to tell keys apart in a list.
    pub prefix: String,
    pub created_ms: u64,
    #[serde(default)]
    pub expires_ms: Option<u64>,
    #[serde(default)]
    pub revoked_ms: Option<u64>,
    /// Model ids or glob patterns (`gpt-4o*`); empty: any model.
    #[serde(default)]
    pub models: Vec<String>,
    /// Agent names or glob patterns; empty: any agent.
    #[serde(default)]
    pub agents: Vec<String>,
    #[serde(flatten)]
    pub limits: Limits,
}

/// Bounds on what a key may carry.
pub const MAX_NAME: usize = 100;
pub const MAX_PATTERNS: usize = 100;
pub const MAX_PATTERN_BYTES: usize = 200;
pub const MAX_BUDGETS: usize = 6;
/// Keys per tenant at most.
pub const MAX_KEYS: usize = 10_000;

/// `POST /api/admin/keys` and `PATCH …/{id}`: every field optional on a patch.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub name: Option<String>,
    /// The tenant the key belongs to (default: `default`); fixed once created.
    pub tenant: Option<String>,
    /// RFC 3339 time, or `null` on a patch to remove it.
    #[serde(default, deserialize_with = "patch_field")]
    pub expires_at: Option<Option<String>>,
    pub models: Option<Vec<String>>,
    pub agents: Option<Vec<String>>,
    #[serde(default, deserialize_with = "patch_field")]
    pub rpm: Option<Option<u32>>,
    #[serde(default, deserialize_with = "patch_field")]
    pub tpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "patch_field")]
    pub max_parallel: Option<Option<u32>>,
    pub budgets: Option<Vec<Budget>>,
}

/// Tells an absent field (`None`) from a `null` one (`Some(None)`).
fn patch_field<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn invalid(message: impl Into<String>) -> GatewayError {
    GatewayError::invalid(message)
}

/// Checks a key's budgets: positive, finite, a soft threshold below the cap, one per period.
pub fn check_budgets(budgets: &[Budget]) -> Result<(), GatewayError> {
    if budgets.len() > MAX_BUDGETS {
        return Err(invalid(format!("at most {MAX_BUDGETS} budgets")));
    }
    for (i, b) in budgets.iter().enumerate() {
        if !b.usd.is_finite() || b.usd <= 0.0 {
            return Err(invalid(format!(
                "`budgets[{i}].usd` must be a positive number of USD"
            )));
        }
        if let Some(soft) = b.soft_usd {
            if !soft.is_finite() || soft <= 0.0 || soft > b.usd {
                return Err(invalid(format!(
                    "`budgets[{i}].soft_usd` must be positive and at most `usd`"
                )));
            }
        }
        if budgets[..i].iter().any(|o| o.period == b.period) {
            return Err(invalid(format!(
                "two budgets per {}: give one",
                b.period.as_str()
            )));
        }
    }
    Ok(())
}

/// Checks an allowlist: bounded, non-empty patterns of the characters ids use.
pub fn check_patterns(field: &str, patterns: &[String]) -> Result<(), GatewayError> {
    if patterns.len() > MAX_PATTERNS {
        return Err(invalid(format!(
            "`{field}` takes at most {MAX_PATTERNS} entries"
        )));
    }
    for p in patterns {
        let ok = !p.is_empty()
            && p.len() <= MAX_PATTERN_BYTES
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@*?#".contains(&b));
        if !ok {
            return Err(invalid(format!(
                "`{field}` entry `{}` is not a model or agent id or a glob of one",
                crate::error::excerpt(p, 60)
            )));
        }
    }
    Ok(())
}

/// Whether `value` matches the glob `pattern` (`*` any run of characters, `?` one).
pub fn glob(pattern: &str, value: &str) -> bool {
    let (p, v) = (pattern.as_bytes(), value.as_bytes());
    let (mut pi, mut vi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while vi < v.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = vi;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            vi = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether an allowlist lets `value` through (empty: everything).
pub fn allowed(patterns: &[String], value: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| glob(p, value))
}

/// The hex SHA-256 of a secret.
pub fn digest_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new secret: `fg-` and 256 random bits, URL-safe.
pub fn new_secret() -> Result<String, GatewayError> {
    Ok(format!("fg-{}", crate::share::new_token()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob("gpt-4o*", "gpt-4o-mini-latest"));
        assert!(glob("*", ""));
        assert!(glob("claude-?-haiku", "claude-3-haiku"));
        assert!(!glob("gpt-4o*", "o3-mini"));
        assert!(glob("*mini*", "o3-mini-latest"));
        assert!(!glob("a*b", "acbd"));
        assert!(allowed(&[], "anything"));
        assert!(!allowed(&["x".into()], "y"));
    }

    #[test]
    fn budgets_and_patterns_are_checked() {
        let b = |usd: f64, soft: Option<f64>| Budget {
            period: Period::Day,
            usd,
            soft_usd: soft,
        };
        assert!(check_budgets(&[b(1.0, Some(0.5))]).is_ok());
        assert!(check_budgets(&[b(-1.0, None)]).is_err());
        assert!(check_budgets(&[b(f64::NAN, None)]).is_err());
        assert!(check_budgets(&[b(1.0, Some(2.0))]).is_err());
        assert!(check_budgets(&[b(1.0, None), b(2.0, None)]).is_err());
        assert!(check_patterns("models", &["gpt-4o*".into()]).is_ok());
        assert!(check_patterns("models", &["".into()]).is_err());
        assert!(check_patterns("models", &["a b".into()]).is_err());
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("m{i}")).collect();
        assert!(check_patterns("models", &many).is_err());
    }
}
