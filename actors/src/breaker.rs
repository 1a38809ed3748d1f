//! The circuit breaker state machine: closed → open after consecutive failures → half-open after
//! a cool-down, where a limited number of probes decide between closed and open again.
//!
//! Pure and clock-free: every call takes `now`, so the provider actor owns the transitions with
//! an injectable clock and the tests drive time by hand.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit refuses traffic before probing.
    #[serde(with = "secs_f64")]
    pub cooldown: Duration,
    /// Concurrent probes allowed while half-open.
    pub half_open_probes: u32,
    /// Share of failures among recent calls that opens the circuit (1.0: never by rate).
    pub error_rate_threshold: f64,
    /// Recent calls needed before the error rate counts.
    pub min_calls: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failure_threshold: 5,
            cooldown: Duration::from_secs(30),
            half_open_probes: 1,
            error_rate_threshold: 0.5,
            min_calls: 20,
        }
    }
}

mod secs_f64 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

/// The state readers see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    state: CircuitState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probes_in_flight: u32,
}

impl CircuitBreaker {
    pub fn new(settings: BreakerSettings) -> Self {
        CircuitBreaker {
            settings,
            state: CircuitState::Closed,
            consecutive_failures: 0,
            opened_at: None,
            probes_in_flight: 0,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// When an open circuit will let a probe through.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.state {
            CircuitState::Open => self.opened_at.map(|t| t + self.settings.cooldown),
            _ => None,
        }
    }

    /// Moves an open circuit to half-open once its cool-down has passed. Returns the new state
    /// if it changed.
    pub fn tick(&mut self, now: Instant) -> Option<CircuitState> {
        if self.state == CircuitState::Open && self.retry_at().is_some_and(|at| now >= at) {
            self.state = CircuitState::HalfOpen;
            self.probes_in_flight = 0;
            return Some(CircuitState::HalfOpen);
        }
        None
    }

    /// Asks to send a request. Closed: yes. Open: no (until the cool-down passes). Half-open:
    /// yes while probe slots remain.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        self.tick(now);
        match self.state {
            CircuitState::Closed => true,
            CircuitState::Open => false,
            CircuitState::HalfOpen => {
                if self.probes_in_flight < self.settings.half_open_probes {
                    self.probes_in_flight += 1;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Records a success. Returns the new state if it changed.
    pub fn on_success(&mut self, now: Instant) -> Option<CircuitState> {
        self.tick(now);
        self.consecutive_failures = 0;
        match self.state {
            CircuitState::Closed => None,
            CircuitState::HalfOpen | CircuitState::Open => {
                self.state = CircuitState::Closed;
                self.opened_at = None;
                self.probes_in_flight = 0;
                Some(CircuitState::Closed)
            }
        }
    }

    /// Records a provider failure, with the error rate over the recent window of `calls`.
    /// Returns the new state if it changed.
    pub fn on_failure(
        &mut self,
        now: Instant,
        error_rate: f64,
        calls: u32,
    ) -> Option<CircuitState> {
        self.tick(now);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let rate_trips =
            calls >= self.settings.min_calls && error_rate >= self.settings.error_rate_threshold;
        match self.state {
            CircuitState::Closed
                if self.consecutive_failures >= self.settings.failure_threshold || rate_trips =>
            {
                self.open(now)
            }
            CircuitState::HalfOpen => self.open(now),
            _ => None,
        }
    }

    fn open(&mut self, now: Instant) -> Option<CircuitState> {
        self.state = CircuitState::Open;
        self.opened_at = Some(now);
        self.probes_in_flight = 0;
        Some(CircuitState::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failure_threshold: 3,
            cooldown: Duration::from_secs(10),
            half_open_probes: 1,
            error_rate_threshold: 0.5,
            min_calls: 10,
        }
    }

    #[test]
    fn opens_after_threshold_then_half_opens_then_closes() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(settings());
        assert_eq!(b.on_failure(t0, 0.0, 0), None);
        assert_eq!(b.on_failure(t0, 0.0, 0), None);
        assert_eq!(b.on_failure(t0, 0.0, 0), Some(CircuitState::Open));
        assert!(!b.try_acquire(t0 + Duration::from_secs(9)));
        // Cool-down over: one probe only.
        assert!(b.try_acquire(t0 + Duration::from_secs(10)));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(!b.try_acquire(t0 + Duration::from_secs(10)));
        assert_eq!(
            b.on_success(t0 + Duration::from_secs(11)),
            Some(CircuitState::Closed)
        );
        assert!(b.try_acquire(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn failed_probe_reopens_for_a_new_cooldown() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(settings());
        for _ in 0..3 {
            b.on_failure(t0, 0.0, 0);
        }
        let t1 = t0 + Duration::from_secs(12);
        assert!(b.try_acquire(t1));
        assert_eq!(b.on_failure(t1, 0.0, 0), Some(CircuitState::Open));
        assert!(!b.try_acquire(t1 + Duration::from_secs(9)));
        assert!(b.try_acquire(t1 + Duration::from_secs(10)));
    }

    #[test]
    fn a_high_error_rate_opens_without_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(settings());
        // Below the minimum number of calls the rate does not count.
        assert_eq!(b.on_failure(t0, 0.9, 5), None);
        b.on_success(t0);
        assert_eq!(b.on_failure(t0, 0.6, 12), Some(CircuitState::Open));
    }

    #[test]
    fn success_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(settings());
        b.on_failure(t0, 0.0, 0);
        b.on_failure(t0, 0.0, 0);
        b.on_success(t0);
        b.on_failure(t0, 0.0, 0);
        b.on_failure(t0, 0.0, 0);
        assert_eq!(b.state(), CircuitState::Closed);
    }
}
