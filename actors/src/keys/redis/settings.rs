//! `[redis]` of the config, once checked: where the shared counters are and what admissions
//! do without them.

use std::time::Duration;

/// What admissions do while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Counted by this instance alone: each instance lets the full limit through (N instances,
    /// up to N times the limit), budgets start from the last spend Redis reported.
    Local,
    /// Refused: 503 `limiter_unavailable` with `Retry-After: 1`.
    Refuse,
}

/// `[redis]` of the config, checked.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` or `unix:///path`.
    pub url: String,
    /// Put before every key flowgate writes (instances that share limits share it).
    pub key_prefix: String,
    /// How long a call to Redis may take, connecting included.
    pub timeout: Duration,
    /// How long a request's place counts without being renewed (an instance that dies frees
    /// its places after this long).
    pub lease: Duration,
    pub on_unavailable: OnUnavailable,
}

impl RedisSettings {
    /// Checks the URL (the error never repeats it: it may hold a password).
    pub fn check_url(url: &str) -> Result<(), String> {
        let scheme = url.split("://").next().unwrap_or_default();
        if !matches!(scheme, "redis" | "unix" | "redis+unix") {
            return Err(
                "must start with redis:// or unix:// (TLS, rediss://, is not built in)".into(),
            );
        }
        ::redis::Client::open(url)
            .map(drop)
            .map_err(|e| format!("not a Redis URL ({})", e.category()))
    }
}
