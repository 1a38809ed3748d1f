//! The counters a request must pass, per key and per tenant: requests and tokens per minute,
//! requests at once, and spend per day, week or month, counted in this process
//! ([`LocalLimiter`], the embedded mode). A request is admitted only if every subject it
//! belongs to has room, and then counted on all of them in the same step (each subject's lock
//! held across the check and the count), so N requests at once against a limit of 10 admit
//! exactly 10. Spend and tokens are charged when the run ends, with what it cost.
//!
//! The request path sees only [`Limiter`] and [`Admission`]: `keys/redis/` is the other
//! implementation, whose counters hold across instances.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::admission::{Admission, Limiter, Release, Remaining, Usage};
use super::{Budget, Period};
use crate::error::{ErrorKind, GatewayError};

/// Wall time in milliseconds (budgets follow the calendar); injectable for tests.
pub trait WallClock: Send + Sync + std::fmt::Debug + 'static {
    fn now_ms(&self) -> u64;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemWallClock;

impl WallClock for SystemWallClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(pub AtomicU64);

impl ManualClock {
    pub fn at(ms: u64) -> ManualClock {
        ManualClock(AtomicU64::new(ms))
    }

    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::Relaxed);
    }
}

impl WallClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a key or a tenant may use; every field unset: unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<Budget>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.rpm.is_none()
            && self.tpm.is_none()
            && self.max_parallel.is_none()
            && self.budgets.is_empty()
    }
}

pub(super) const MINUTE_MS: u64 = 60_000;
pub(super) const DAY_MS: u64 = 86_400_000;

/// The first millisecond of the period that holds `now_ms` (UTC).
pub fn period_start(period: Period, now_ms: u64) -> u64 {
    let days = now_ms / DAY_MS;
    match period {
        Period::Day => days * DAY_MS,
        // 1970-01-01 was a Thursday: Monday is 3 days before.
        Period::Week => (days - (days + 3) % 7) * DAY_MS,
        Period::Month => {
            let (y, m, _) = civil_from_days(days as i64);
            days_from_civil(y, m, 1) as u64 * DAY_MS
        }
    }
}

/// The first millisecond of the next period.
pub fn period_end(period: Period, start_ms: u64) -> u64 {
    match period {
        Period::Day => start_ms + DAY_MS,
        Period::Week => start_ms + 7 * DAY_MS,
        Period::Month => {
            let (y, m, _) = civil_from_days((start_ms / DAY_MS) as i64);
            let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            days_from_civil(y, m, 1) as u64 * DAY_MS
        }
    }
}

/// Days since 1970-01-01 → (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One budget's spend in its current period.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    pub period: Period,
    pub start_ms: u64,
    pub usd: f64,
    /// The soft threshold was passed (and said) in this period.
    #[serde(default)]
    pub warned: bool,
}

#[derive(Debug, Default)]
struct State {
    limits: Limits,
    window_start_ms: u64,
    requests: u32,
    tokens: u64,
    parallel: u32,
    spends: Vec<Spend>,
    /// Spend changed since it was last persisted.
    dirty: bool,
}

impl State {
    /// Moves the minute window and the budgets' periods up to `now`.
    fn roll(&mut self, now: u64) {
        if now >= self.window_start_ms + MINUTE_MS || now < self.window_start_ms {
            self.window_start_ms = now;
            self.requests = 0;
            self.tokens = 0;
        }
        for budget in &self.limits.budgets {
            let start = period_start(budget.period, now);
            match self.spends.iter_mut().find(|s| s.period == budget.period) {
                Some(spend) if spend.start_ms == start => {}
                Some(spend) => {
                    *spend = Spend {
                        period: budget.period,
                        start_ms: start,
                        usd: 0.0,
                        warned: false,
                    };
                    self.dirty = true;
                }
                None => self.spends.push(Spend {
                    period: budget.period,
                    start_ms: start,
                    usd: 0.0,
                    warned: false,
                }),
            }
        }
    }

    fn spent(&self, period: Period) -> f64 {
        self.spends
            .iter()
            .find(|s| s.period == period)
            .map_or(0.0, |s| s.usd)
    }
}

/// A key or a tenant, with its counters.
#[derive(Debug)]
pub struct Subject {
    /// `key:<id>` or `tenant:<name>`: where its usage is stored (and its counters in Redis).
    pub id: String,
    /// `key <name>` or `tenant <name>`: for messages and metrics (never a secret).
    pub label: String,
    state: Mutex<State>,
    /// Requests refused, by reason (rate, quota): for metrics.
    pub refused_rate: AtomicU64,
    pub refused_quota: AtomicU64,
    pub soft_alerts: AtomicU64,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Requests {
        limit: u32,
        reset_ms: u64,
    },
    Tokens {
        limit: u64,
        used: u64,
        reset_ms: u64,
    },
    Parallel {
        limit: u32,
    },
    Budget {
        period: Period,
        usd: f64,
        spent: f64,
        reset_ms: u64,
    },
}

/// OpenAI's spelling of a reset time: `53s`, `1m3s`, `120ms`.
pub(super) fn reset_text(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms.div_ceil(1000);
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

impl Refusal {
    pub fn into_error(self, label: &str) -> GatewayError {
        let retry = |ms: u64| Some(Duration::from_millis(ms.max(1000)));
        match self {
            Refusal::Requests { limit, reset_ms } => GatewayError::new(
                ErrorKind::LimitExceeded,
                format!(
                    "rate limit reached for requests per minute (RPM) of {label}: limit {limit}, \
                     used {limit}; try again in {}",
                    reset_text(reset_ms)
                ),
            )
            .with_retry_after(retry(reset_ms))
            .with_header("x-ratelimit-limit-requests", limit.to_string())
            .with_header("x-ratelimit-remaining-requests", "0".into())
            .with_header("x-ratelimit-reset-requests", reset_text(reset_ms)),
            Refusal::Tokens {
                limit,
                used,
                reset_ms,
            } => GatewayError::new(
                ErrorKind::LimitExceeded,
                format!(
                    "rate limit reached for tokens per minute (TPM) of {label}: limit {limit}, \
                     used {used}; try again in {}",
                    reset_text(reset_ms)
                ),
            )
            .with_retry_after(retry(reset_ms))
            .with_header("x-ratelimit-limit-tokens", limit.to_string())
            .with_header("x-ratelimit-remaining-tokens", "0".into())
            .with_header("x-ratelimit-reset-tokens", reset_text(reset_ms)),
            Refusal::Parallel { limit } => GatewayError::new(
                ErrorKind::LimitExceeded,
                format!("{label} may have {limit} requests at once; wait for one to finish"),
            )
            .with_retry_after(retry(1000)),
            Refusal::Budget {
                period,
                usd,
                spent,
                reset_ms,
            } => GatewayError::new(
                ErrorKind::QuotaExceeded,
                format!(
                    "{label} has spent its {} budget of ${usd} (spent ${spent:.6}); it renews in {}",
                    period.as_str(),
                    reset_text(reset_ms)
                ),
            )
            .with_retry_after(retry(reset_ms)),
        }
    }
}

impl Subject {
    pub fn new(id: String, label: String, limits: Limits) -> Subject {
        Subject {
            id,
            label,
            state: Mutex::new(State {
                limits,
                ..State::default()
            }),
            refused_rate: AtomicU64::new(0),
            refused_quota: AtomicU64::new(0),
            soft_alerts: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_limits(&self, limits: Limits) {
        self.lock().limits = limits;
    }

    pub fn limits(&self) -> Limits {
        self.lock().limits.clone()
    }

    /// Counts a refusal by its reason (rate or quota), for metrics.
    pub fn count_refusal(&self, refusal: &Refusal) {
        let counter = match refusal {
            Refusal::Budget { .. } => &self.refused_quota,
            _ => &self.refused_rate,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A budget's spend as the shared counters said it is (every instance's): kept here to be
    /// persisted and to start from if the shared counters cannot be reached.
    pub fn observe_spend(&self, period: Period, start_ms: u64, usd: f64) {
        let mut state = self.lock();
        match state.spends.iter_mut().find(|s| s.period == period) {
            Some(spend) if spend.start_ms == start_ms && spend.usd >= usd => return,
            Some(spend) if spend.start_ms == start_ms => spend.usd = usd,
            Some(spend) => {
                *spend = Spend {
                    period,
                    start_ms,
                    usd,
                    warned: false,
                }
            }
            None => state.spends.push(Spend {
                period,
                start_ms,
                usd,
                warned: false,
            }),
        }
        state.dirty = true;
    }

    /// Spend read back from the store, for the periods still current.
    pub fn restore(&self, spends: Vec<Spend>) {
        let mut state = self.lock();
        state.spends = spends;
    }

    /// The current periods' spend.
    pub fn spends(&self) -> Vec<Spend> {
        self.lock().spends.clone()
    }

    /// The spend to persist, if it changed since the last call.
    pub fn take_dirty(&self) -> Option<Vec<Spend>> {
        let mut state = self.lock();
        std::mem::take(&mut state.dirty).then(|| state.spends.clone())
    }

    /// What this process counted: this minute's requests and tokens, requests at once, and
    /// the current periods' spend.
    pub fn local_usage(&self, now: u64) -> Usage {
        let mut state = self.lock();
        state.roll(now);
        Usage {
            requests: u64::from(state.requests),
            tokens: state.tokens,
            in_flight: u64::from(state.parallel),
            spends: state
                .limits
                .budgets
                .iter()
                .map(|b| (b.period, state.spent(b.period)))
                .collect(),
        }
    }

    /// What `GET /api/keys/self` shows: the limits, the minute's use, each budget's spend.
    pub fn usage(&self, now: u64) -> serde_json::Value {
        let usage = self.local_usage(now);
        usage.view(&self.limits(), now)
    }

    fn check(&self, state: &mut State, now: u64) -> Result<(), Refusal> {
        state.roll(now);
        let reset_ms = (state.window_start_ms + MINUTE_MS).saturating_sub(now);
        if let Some(limit) = state.limits.rpm {
            if state.requests >= limit {
                return Err(Refusal::Requests { limit, reset_ms });
            }
        }
        if let Some(limit) = state.limits.tpm {
            if state.tokens >= limit {
                return Err(Refusal::Tokens {
                    limit,
                    used: state.tokens,
                    reset_ms,
                });
            }
        }
        if let Some(limit) = state.limits.max_parallel {
            if state.parallel >= limit {
                return Err(Refusal::Parallel { limit });
            }
        }
        for budget in &state.limits.budgets {
            let spent = state.spent(budget.period);
            if spent >= budget.usd {
                let start = period_start(budget.period, now);
                return Err(Refusal::Budget {
                    period: budget.period,
                    usd: budget.usd,
                    spent,
                    reset_ms: period_end(budget.period, start) - now,
                });
            }
        }
        Ok(())
    }

    fn charge(&self, state: &mut State, now: u64, usd: f64, tokens: u64) {
        state.roll(now);
        state.tokens = state.tokens.saturating_add(tokens);
        if usd > 0.0 {
            let budgets = state.limits.budgets.clone();
            for budget in budgets {
                if let Some(spend) = state.spends.iter_mut().find(|s| s.period == budget.period) {
                    spend.usd += usd;
                    if let Some(soft) = budget.soft_usd {
                        if spend.usd >= soft && !spend.warned {
                            spend.warned = true;
                            self.soft_alerts.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                subject = %self.label,
                                period = budget.period.as_str(),
                                spent_usd = spend.usd,
                                soft_usd = soft,
                                budget_usd = budget.usd,
                                "budget soft threshold passed"
                            );
                        }
                    }
                }
            }
            state.dirty = true;
        }
    }
}

/// The counters of this process alone: the embedded mode (one instance), and the Redis
/// limiter's fallback when told to keep serving without Redis.
#[derive(Debug, Clone)]
pub struct LocalLimiter {
    clock: Arc<dyn WallClock>,
}

impl LocalLimiter {
    pub fn new(clock: Arc<dyn WallClock>) -> LocalLimiter {
        LocalLimiter { clock }
    }

    /// [`Limiter::admit`], at once (no I/O).
    pub fn admit_now(&self, subjects: Vec<Arc<Subject>>) -> Result<Admission, GatewayError> {
        let now = self.clock.now_ms();
        let mut remaining = Remaining::default();
        {
            // Locked in the order given (key, then tenant): every request takes them alike.
            let mut states: Vec<MutexGuard<'_, State>> =
                subjects.iter().map(|s| s.lock()).collect();
            for (subject, state) in subjects.iter().zip(states.iter_mut()) {
                if let Err(refusal) = subject.check(state, now) {
                    subject.count_refusal(&refusal);
                    return Err(refusal.into_error(&subject.label));
                }
            }
            for state in states.iter_mut() {
                state.requests += 1;
                state.parallel += 1;
                let reset = (state.window_start_ms + MINUTE_MS).saturating_sub(now);
                if let Some(limit) = state.limits.rpm {
                    let left = limit.saturating_sub(state.requests);
                    Remaining::tighten(&mut remaining.requests, limit.into(), left.into(), reset);
                }
                if let Some(limit) = state.limits.tpm {
                    let left = limit.saturating_sub(state.tokens);
                    Remaining::tighten(&mut remaining.tokens, limit, left, reset);
                }
            }
        }
        Ok(Admission::new(
            Box::new(LocalHold {
                subjects,
                clock: self.clock.clone(),
            }),
            remaining,
        ))
    }
}

impl Limiter for LocalLimiter {
    fn admit(&self, subjects: Vec<Arc<Subject>>) -> BoxFuture<'_, Result<Admission, GatewayError>> {
        let admitted = self.admit_now(subjects);
        Box::pin(async move { admitted })
    }

    fn usage<'a>(&'a self, subjects: &'a [Arc<Subject>]) -> BoxFuture<'a, Vec<Usage>> {
        let now = self.clock.now_ms();
        let usage = subjects.iter().map(|s| s.local_usage(now)).collect();
        Box::pin(async move { usage })
    }
}

/// A place in this process's counters.
struct LocalHold {
    subjects: Vec<Arc<Subject>>,
    clock: Arc<dyn WallClock>,
}

impl Release for LocalHold {
    fn release(self: Box<Self>, usd: f64, tokens: u64) {
        let now = self.clock.now_ms();
        for subject in &self.subjects {
            let mut state = subject.lock();
            if usd > 0.0 || tokens > 0 {
                subject.charge(&mut state, now, usd, tokens);
            }
            state.parallel = state.parallel.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(ms: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock::at(ms))
    }

    fn subject(limits: Limits) -> Arc<Subject> {
        Arc::new(Subject::new("key:test".into(), "key test".into(), limits))
    }

    fn admit(
        subjects: Vec<Arc<Subject>>,
        clock: Arc<ManualClock>,
    ) -> Result<Admission, GatewayError> {
        LocalLimiter::new(clock).admit_now(subjects)
    }

    /// 2026-12-05 10:00:00 UTC, a Saturday.
    const NOW: u64 = 1_796_464_800_000;

    #[test]
    fn periods_follow_the_utc_calendar() {
        let day = period_start(Period::Day, NOW);
        assert_eq!(day, 1_796_428_800_000);
        // Monday 2026-11-30.
        assert_eq!(period_start(Period::Week, NOW), day - 5 * DAY_MS);
        // 2026-12-01 … 2027-01-01.
        let month = period_start(Period::Month, NOW);
        assert_eq!(month, day - 4 * DAY_MS);
        assert_eq!(period_end(Period::Month, month), month + 31 * DAY_MS);
        // February of a leap year.
        let feb = days_from_civil(2028, 2, 1) as u64 * DAY_MS;
        assert_eq!(period_end(Period::Month, feb), feb + 29 * DAY_MS);
        assert_eq!(civil_from_days(days_from_civil(2026, 12, 5)), (2026, 12, 5));
    }

    #[test]
    fn requests_per_minute_admit_exactly_the_limit_then_reset() {
        let c = clock(NOW);
        let s = subject(Limits {
            rpm: Some(3),
            ..Limits::default()
        });
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(admit(vec![s.clone()], c.clone()).unwrap());
        }
        c.set(NOW + 20_000);
        let refused = admit(vec![s.clone()], c.clone()).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::LimitExceeded);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(40)));
        assert!(refused
            .headers
            .contains(&("x-ratelimit-reset-requests", "40s".into())));
        // Finishing does not give a minute's request back; the next minute does.
        held.clear();
        assert!(admit(vec![s.clone()], c.clone()).is_err());
        c.set(NOW + 60_000);
        assert!(admit(vec![s.clone()], c.clone()).is_ok());
    }

    #[test]
    fn requests_at_once_come_back_when_they_end_charged_or_not() {
        let c = clock(NOW);
        let s = subject(Limits {
            max_parallel: Some(2),
            ..Limits::default()
        });
        let a = admit(vec![s.clone()], c.clone()).unwrap();
        let b = admit(vec![s.clone()], c.clone()).unwrap();
        assert!(admit(vec![s.clone()], c.clone()).is_err());
        a.charge(0.0, 10);
        let c2 = admit(vec![s.clone()], c.clone()).unwrap();
        drop(b);
        drop(c2);
        assert!(admit(vec![s.clone()], c.clone()).is_ok());
    }

    #[test]
    fn a_refusal_on_one_subject_counts_nothing_on_the_others() {
        let c = clock(NOW);
        let key = subject(Limits {
            rpm: Some(10),
            ..Limits::default()
        });
        let tenant = subject(Limits {
            rpm: Some(1),
            ..Limits::default()
        });
        let _first = admit(vec![key.clone(), tenant.clone()], c.clone()).unwrap();
        assert!(admit(vec![key.clone(), tenant.clone()], c.clone()).is_err());
        assert_eq!(key.usage(NOW)["requests_this_minute"], 1);
    }

    #[test]
    fn tokens_per_minute_count_what_runs_used() {
        let c = clock(NOW);
        let s = subject(Limits {
            tpm: Some(100),
            ..Limits::default()
        });
        admit(vec![s.clone()], c.clone()).unwrap().charge(0.0, 60);
        admit(vec![s.clone()], c.clone()).unwrap().charge(0.0, 60);
        let refused = admit(vec![s.clone()], c.clone()).unwrap_err();
        assert!(refused.message.contains("TPM"), "{}", refused.message);
        c.set(NOW + 61_000);
        assert!(admit(vec![s.clone()], c.clone()).is_ok());
    }

    #[test]
    fn budgets_refuse_once_spent_and_renew_with_the_period() {
        let c = clock(NOW);
        let s = subject(Limits {
            budgets: vec![
                Budget {
                    period: Period::Day,
                    usd: 0.01,
                    soft_usd: Some(0.005),
                },
                Budget {
                    period: Period::Month,
                    usd: 1.0,
                    soft_usd: None,
                },
            ],
            ..Limits::default()
        });
        for _ in 0..3 {
            admit(vec![s.clone()], c.clone()).unwrap().charge(0.004, 0);
        }
        assert_eq!(s.soft_alerts.load(Ordering::Relaxed), 1);
        let refused = admit(vec![s.clone()], c.clone()).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::QuotaExceeded);
        assert_eq!(refused.body()["error"]["code"], "insufficient_quota");
        // 14 hours to the next UTC day.
        assert_eq!(refused.retry_after, Some(Duration::from_secs(14 * 3600)));
        let dirty = s.take_dirty().unwrap();
        assert!(s.take_dirty().is_none());
        let month = dirty.iter().find(|d| d.period == Period::Month).unwrap();
        assert!((month.usd - 0.012).abs() < 1e-9);
        // The next day: the daily budget renews, the month's spend stays.
        c.set(period_end(Period::Day, period_start(Period::Day, NOW)));
        assert!(admit(vec![s.clone()], c.clone()).is_ok());
        let usage = s.usage(c.now_ms());
        assert_eq!(usage["budgets"][0]["spent_usd"], 0.0);
        assert!((usage["budgets"][1]["spent_usd"].as_f64().unwrap() - 0.012).abs() < 1e-9);
    }
}
