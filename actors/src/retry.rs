//! Retries of transient failures: jittered exponential backoff that honours `Retry-After`,
//! within the request's deadline. The engine retries the same provider only when the plan has
//! nothing else to try: another provider or model answers sooner than a backoff.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Retries of one provider after its first failure.
    pub max_retries: u32,
    /// First backoff; doubled each retry, with jitter.
    pub base_delay_ms: u64,
    /// Longest wait, backoff or `Retry-After`; a provider asking for longer is not retried.
    pub max_delay_ms: u64,
    /// The whole request, every attempt and wait included.
    pub request_timeout_seconds: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            base_delay_ms: 100,
            max_delay_ms: 2_000,
            request_timeout_seconds: 600.0,
        }
    }
}

impl RetryPolicy {
    /// Transient failures worth another try.
    pub fn is_retryable(kind: ErrorKind) -> bool {
        matches!(
            kind,
            ErrorKind::RateLimited
                | ErrorKind::UpstreamServer
                | ErrorKind::Overloaded
                | ErrorKind::Timeout
                | ErrorKind::UpstreamConnection
        )
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.request_timeout_seconds)
            .unwrap_or(Duration::from_secs(600))
    }

    /// The wait before retry number `retry` (0-based), or `None` when the provider asks for
    /// longer than `max_delay_ms`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let max = Duration::from_millis(self.max_delay_ms);
        if let Some(asked) = retry_after {
            return (asked <= max).then_some(asked);
        }
        let exponential = Duration::from_millis(self.base_delay_ms)
            .saturating_mul(2u32.saturating_pow(retry))
            .min(max);
        // Equal jitter: half fixed, half random, so retries of many clients spread out.
        let half = exponential / 2;
        Some(half + half.mul_f64(fastrand::f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_respects_retry_after() {
        let policy = RetryPolicy::default();
        for retry in 0..4 {
            let d = policy.delay(retry, None).unwrap();
            let full = Duration::from_millis(100 * 2u64.pow(retry)).min(Duration::from_secs(2));
            assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?}");
        }
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(1))),
            Some(Duration::from_secs(1))
        );
        assert_eq!(policy.delay(0, Some(Duration::from_secs(7))), None);
        assert!(RetryPolicy::is_retryable(ErrorKind::RateLimited));
        assert!(!RetryPolicy::is_retryable(ErrorKind::UpstreamBadRequest));
        assert!(!RetryPolicy::is_retryable(ErrorKind::UpstreamAuth));
    }
}
