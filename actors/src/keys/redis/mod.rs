//! Limits that hold across instances: every counter of a key and of its tenant lives in Redis,
//! and each request is admitted by one Lua script (`admit.lua`, sent as EVALSHA, loaded again
//! when the server answers NOSCRIPT) that checks every counter the request touches and counts
//! it on all of them in the same atomic step. So three instances in front of a key with
//! `rpm = 10` admit 10 requests a minute between them, not 30.
//!
//! What a request holds is a lease in a sorted set per subject (its deadline as score). The
//! instance renews the leases of its requests in flight every third of the lease time; an
//! instance that dies stops renewing, and its leases fall out at their deadline, so requests
//! at once never leak. The end of a run (`release.lua`: lease back, tokens and cost charged)
//! is sent from a task of its own, off the request's path; a charge Redis did not acknowledge
//! is kept and sent again.
//!
//! Every key gets an expiry: a rate window two minutes, a lease set the lease time and a
//! minute, a budget's spend a day past its period (the period's start is in the key's name,
//! so a new period starts from nothing).
//!
//! When Redis cannot be reached (an error or no answer within `timeout`), the admission is
//! decided as [`OnUnavailable`] says: by this instance's own counters (limits then hold per
//! instance), or refused with a 503. Either way a warning is logged when Redis goes away and
//! when it is back, the errors and fallbacks are counted, and Redis is not asked again for a
//! second, so an outage adds no latency to requests.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{FromRedisValue, Script, ScriptInvocation, Value};
use futures::future::BoxFuture;
use uuid::Uuid;

use super::admission::{Admission, Limiter, Remaining, Usage};
use super::limiter::{period_end, period_start, LocalLimiter, Refusal, Subject, WallClock, DAY_MS};
use super::Period;
use crate::error::{ErrorKind, GatewayError};

mod metrics;
mod release;
mod settings;
#[cfg(test)]
mod tests;

pub use settings::{OnUnavailable, RedisSettings};

use metrics::RedisMetrics;
use release::{renew_leases, Charge, LateCharge, RedisHold};

/// How long Redis is left alone after it failed: requests meanwhile do not wait for it.
const QUIET_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Subjects read per call of `usage.lua`.
const USAGE_BATCH: usize = 200;
/// Charges kept while Redis is unreachable, at most (the oldest go first).
const MAX_PENDING: usize = 10_000;

/// The Lua scripts, loaded at start and sent as EVALSHA (on NOSCRIPT — Redis restarted or
/// flushed its scripts — the `redis` crate loads the script and sends it again).
struct Scripts {
    admit: Script,
    release: Script,
    usage: Script,
    renew: Script,
    restore: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            admit: Script::new(include_str!("admit.lua")),
            release: Script::new(include_str!("release.lua")),
            usage: Script::new(include_str!("usage.lua")),
            renew: Script::new(include_str!("renew.lua")),
            restore: Script::new(include_str!("restore.lua")),
        }
    }
}

struct Shared {
    connection: ConnectionManager,
    settings: RedisSettings,
    clock: Arc<dyn WallClock>,
    local: LocalLimiter,
    scripts: Scripts,
    metrics: RedisMetrics,
    /// The leases this instance holds (lease id → the lease sets it is in), renewed until
    /// given back.
    leases: Mutex<HashMap<String, Vec<String>>>,
    /// Charges Redis did not acknowledge, sent again with the renewals.
    pending: Mutex<VecDeque<Charge>>,
    /// Until when Redis is left alone after a failure.
    quiet_until: Mutex<Option<Instant>>,
    up: AtomicBool,
    /// Releases sent and not yet answered (waited for at shutdown).
    releasing: AtomicUsize,
}

/// Why a call to Redis gave nothing.
#[derive(Debug)]
enum CallError {
    Timeout,
    Redis(::redis::RedisError),
    /// The answer did not have the script's shape.
    Shape(&'static str),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout => write!(f, "no answer in time"),
            CallError::Redis(e) => write!(f, "{e}"),
            CallError::Shape(what) => write!(f, "unexpected answer to {what}"),
        }
    }
}

/// The limiter whose counters every instance shares. Cheap to clone.
#[derive(Clone)]
pub struct RedisLimiter {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A subject's keys, in the scripts' layout: window, leases, a spend key per budget, a warned
/// key per budget (budgets of the period that holds `now`).
fn subject_keys(prefix: &str, subject: &Subject, periods: &[Period], now: u64) -> Vec<String> {
    let base = format!("{prefix}{}", subject.id);
    let mut keys = vec![format!("{base}:window"), format!("{base}:leases")];
    for kind in ["spend", "warned"] {
        for period in periods {
            let start = period_start(*period, now);
            keys.push(format!("{base}:{kind}:{}:{start}", period.as_str()));
        }
    }
    keys
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Int(i) => Some(*i as f64),
        Value::Double(d) => Some(*d),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl RedisLimiter {
    /// Connects, loads the scripts and starts renewing leases (on the current runtime, which
    /// must outlive the limiter). Fails when Redis does not answer within the timeout: a
    /// wrong address is found at start, not at the first request.
    pub async fn connect(
        settings: RedisSettings,
        clock: Arc<dyn WallClock>,
    ) -> Result<RedisLimiter, String> {
        let client = ::redis::Client::open(settings.url.as_str())
            .map_err(|e| format!("invalid Redis URL ({})", e.category()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("cannot set up the Redis connection: {e}"))?;
        let metrics = RedisMetrics::new().map_err(|e| format!("Redis metrics: {e}"))?;
        let limiter = RedisLimiter {
            shared: Arc::new(Shared {
                connection,
                local: LocalLimiter::new(clock.clone()),
                clock,
                scripts: Scripts::new(),
                metrics,
                leases: Mutex::default(),
                pending: Mutex::default(),
                quiet_until: Mutex::new(None),
                up: AtomicBool::new(true),
                releasing: AtomicUsize::new(0),
                settings,
            }),
        };
        limiter
            .check()
            .await
            .map_err(|e| format!("Redis does not answer: {e}"))?;
        limiter.shared.metrics.up.set(1);
        let weak = Arc::downgrade(&limiter.shared);
        let every = limiter.shared.settings.lease / 3;
        tokio::spawn(renew_leases(weak, every));
        Ok(limiter)
    }

    /// Pings Redis and loads the scripts (so the first requests find them).
    async fn check(&self) -> Result<(), CallError> {
        let shared = &self.shared;
        let mut connection = shared.connection.clone();
        let ping = async {
            ::redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await?;
            for script in [
                &shared.scripts.admit,
                &shared.scripts.release,
                &shared.scripts.usage,
                &shared.scripts.renew,
                &shared.scripts.restore,
            ] {
                script.prepare_invoke().load_async(&mut connection).await?;
            }
            Ok::<(), ::redis::RedisError>(())
        };
        match tokio::time::timeout(shared.settings.timeout, ping).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CallError::Redis(e)),
            Err(_) => Err(CallError::Timeout),
        }
    }

    /// The leases this instance holds now (for tests).
    pub fn leases_held(&self) -> usize {
        lock(&self.shared.leases).len()
    }

    /// Charges waiting for Redis (for tests).
    pub fn pending_charges(&self) -> usize {
        lock(&self.shared.pending).len()
    }

    /// Sends the renewals and the pending charges now (the background task does it every
    /// third of the lease time).
    pub async fn tick(&self) {
        self.shared.probe().await;
        self.shared.renew().await;
        self.shared.send_pending().await;
    }

    async fn admit_at(
        &self,
        subjects: Vec<Arc<Subject>>,
        now: u64,
    ) -> Result<Admission, GatewayError> {
        let shared = &self.shared;
        if shared.quiet() {
            return shared.fallback(subjects);
        }
        let lease = Uuid::now_v7().simple().to_string();
        let deadline = now + shared.settings.lease.as_millis() as u64;
        let mut invocation = shared.scripts.admit.prepare_invoke();
        invocation
            .arg(now)
            .arg(&lease)
            .arg(deadline)
            .arg(subjects.len());
        let mut lease_sets = Vec::with_capacity(subjects.len());
        for subject in &subjects {
            let limits = subject.limits();
            let periods: Vec<Period> = limits.budgets.iter().map(|b| b.period).collect();
            let keys = subject_keys(&shared.settings.key_prefix, subject, &periods, now);
            lease_sets.push(keys[1].clone());
            for key in keys {
                invocation.key(key);
            }
            invocation
                .arg(limits.rpm.unwrap_or(0))
                .arg(limits.tpm.unwrap_or(0))
                .arg(limits.max_parallel.unwrap_or(0))
                .arg(limits.budgets.len());
            for budget in &limits.budgets {
                let start = period_start(budget.period, now);
                invocation
                    .arg(budget.usd)
                    .arg(budget.soft_usd.unwrap_or(0.0))
                    .arg(period_end(budget.period, start));
            }
        }
        // Held before the answer, so a renewal never misses a lease Redis has.
        lock(&shared.leases).insert(lease.clone(), lease_sets);
        let reply: Vec<Value> = match shared.call("admit", &invocation).await {
            Ok(reply) => reply,
            Err(e) => {
                lock(&shared.leases).remove(&lease);
                shared.failed("admit", &e);
                return shared.fallback(subjects);
            }
        };
        let field = |i: usize| reply.get(i).and_then(number);
        if field(0) == Some(1.0) {
            let mut remaining = Remaining::default();
            let read = |i: usize| field(i).filter(|v| *v >= 0.0).map(|v| v as u64);
            if let (Some(limit), Some(left), Some(reset)) = (read(1), read(2), read(3)) {
                remaining.requests = Some((limit, left, reset));
            }
            if let (Some(limit), Some(left), Some(reset)) = (read(4), read(5), read(6)) {
                remaining.tokens = Some((limit, left, reset));
            }
            return Ok(Admission::new(
                Box::new(RedisHold {
                    shared: shared.clone(),
                    subjects,
                    lease,
                }),
                remaining,
            ));
        }
        lock(&shared.leases).remove(&lease);
        let refusal = (|| {
            let subject = subjects.get((field(1)? as usize).checked_sub(1)?)?;
            let reason = reply.get(2).and_then(text)?;
            let limit = field(3)?;
            let used = field(4)?;
            let reset_ms = field(5)?.max(0.0) as u64;
            let refusal = match reason.as_str() {
                "requests" => Refusal::Requests {
                    limit: limit as u32,
                    reset_ms,
                },
                "tokens" => Refusal::Tokens {
                    limit: limit as u64,
                    used: used as u64,
                    reset_ms,
                },
                "parallel" => Refusal::Parallel {
                    limit: limit as u32,
                },
                "budget" => {
                    let index = (limit as usize).checked_sub(1)?;
                    let budget = subject.limits().budgets.get(index)?.clone();
                    let start = period_start(budget.period, now);
                    // What every instance spent: the fallback starts from it too.
                    subject.observe_spend(budget.period, start, used);
                    Refusal::Budget {
                        period: budget.period,
                        usd: budget.usd,
                        spent: used,
                        reset_ms: period_end(budget.period, start) - now,
                    }
                }
                _ => return None,
            };
            Some((subject.clone(), refusal))
        })();
        match refusal {
            Some((subject, refusal)) => {
                subject.count_refusal(&refusal);
                Err(refusal.into_error(&subject.label))
            }
            None => {
                shared.failed("admit", &CallError::Shape("admit"));
                shared.fallback(subjects)
            }
        }
    }

    /// [`Limiter::usage`] at `now` (tests pass their own clock). Read in batches, so a scrape
    /// of many keys never holds Redis (and the admissions behind it) for long; a batch Redis
    /// does not answer shows what this instance saw. Reads are not the request path: their
    /// failures do not switch admissions to the fallback.
    async fn usage_at(&self, subjects: &[Arc<Subject>], now: u64) -> Vec<Usage> {
        let mut usages = Vec::with_capacity(subjects.len());
        for batch in subjects.chunks(USAGE_BATCH) {
            let read = if self.shared.quiet() {
                None
            } else {
                self.usage_batch(batch, now).await
            };
            match read {
                Some(read) => usages.extend(read),
                None => usages.extend(batch.iter().map(|s| s.local_usage(now))),
            }
        }
        usages
    }

    async fn usage_batch(&self, subjects: &[Arc<Subject>], now: u64) -> Option<Vec<Usage>> {
        let shared = &self.shared;
        let mut invocation = shared.scripts.usage.prepare_invoke();
        invocation.arg(now).arg(subjects.len());
        let mut periods_of = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let periods: Vec<Period> = subject.limits().budgets.iter().map(|b| b.period).collect();
            for key in subject_keys(&shared.settings.key_prefix, subject, &periods, now) {
                invocation.key(key);
            }
            invocation.arg(periods.len());
            periods_of.push(periods);
        }
        let reply: Vec<Value> = match shared.call("usage", &invocation).await {
            Ok(reply) => reply,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the keys' use from Redis");
                return None;
            }
        };
        let mut values = reply.iter().map(number);
        let mut usages = Vec::with_capacity(subjects.len());
        for periods in periods_of {
            let mut next = || values.next().flatten().unwrap_or(0.0);
            let (requests, tokens, in_flight) = (next(), next(), next());
            usages.push(Usage {
                requests: requests as u64,
                tokens: tokens as u64,
                in_flight: in_flight as u64,
                spends: periods.into_iter().map(|p| (p, next())).collect(),
            });
        }
        Some(usages)
    }
}

impl Shared {
    /// Runs a script under the timeout, counting and timing the call.
    async fn call<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, CallError> {
        let mut connection = self.connection.clone();
        let started = Instant::now();
        let result = tokio::time::timeout(
            self.settings.timeout,
            invocation.invoke_async::<T>(&mut connection),
        )
        .await;
        self.metrics
            .seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        let (outcome, result) = match result {
            Ok(Ok(value)) => ("ok", Ok(value)),
            Ok(Err(e)) => ("error", Err(CallError::Redis(e))),
            Err(_) => ("timeout", Err(CallError::Timeout)),
        };
        self.metrics.calls.with_label_values(&[op, outcome]).inc();
        if result.is_ok() {
            self.metrics.up.set(1);
            if !self.up.swap(true, Ordering::Relaxed) {
                tracing::warn!("Redis answers again: limits hold across instances again");
            }
        }
        result
    }

    /// Whether Redis failed less than [`QUIET_AFTER_FAILURE`] ago.
    fn quiet(&self) -> bool {
        let mut quiet = lock(&self.quiet_until);
        match *quiet {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                *quiet = None;
                false
            }
            None => false,
        }
    }

    fn failed(&self, op: &'static str, error: &CallError) {
        self.metrics.up.set(0);
        *lock(&self.quiet_until) = Some(Instant::now() + QUIET_AFTER_FAILURE);
        if self.up.swap(false, Ordering::Relaxed) {
            let meanwhile = match self.settings.on_unavailable {
                OnUnavailable::Local => "limits are counted by each instance alone",
                OnUnavailable::Refuse => "limited requests are refused (503)",
            };
            tracing::warn!(op, error = %error, "Redis cannot be reached: {meanwhile} until it answers");
        } else {
            tracing::debug!(op, error = %error, "Redis call failed");
        }
    }

    /// An admission while Redis cannot be reached.
    fn fallback(self: &Arc<Self>, subjects: Vec<Arc<Subject>>) -> Result<Admission, GatewayError> {
        match self.settings.on_unavailable {
            OnUnavailable::Local => {
                self.metrics.fallbacks.with_label_values(&["local"]).inc();
                let admission = self.local.admit_now(subjects.clone())?;
                // What it costs reaches Redis too once it answers again.
                Ok(admission.chain(Box::new(LateCharge {
                    shared: self.clone(),
                    subjects,
                    now: self.clock.now_ms(),
                })))
            }
            OnUnavailable::Refuse => {
                self.metrics.fallbacks.with_label_values(&["refused"]).inc();
                Err(GatewayError::new(
                    ErrorKind::Overloaded,
                    "the limits of this key cannot be checked right now (the rate limiter's \
                     Redis does not answer); try again shortly",
                )
                .with_code("limiter_unavailable")
                .with_retry_after(Some(Duration::from_secs(1))))
            }
        }
    }
}

impl Limiter for RedisLimiter {
    fn admit(&self, subjects: Vec<Arc<Subject>>) -> BoxFuture<'_, Result<Admission, GatewayError>> {
        let now = self.shared.clock.now_ms();
        Box::pin(self.admit_at(subjects, now))
    }

    fn usage<'a>(&'a self, subjects: &'a [Arc<Subject>]) -> BoxFuture<'a, Vec<Usage>> {
        let now = self.shared.clock.now_ms();
        Box::pin(self.usage_at(subjects, now))
    }

    fn restore<'a>(&'a self, subjects: &'a [Arc<Subject>]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let shared = &self.shared;
            let now = shared.clock.now_ms();
            let mut invocation = shared.scripts.restore.prepare_invoke();
            let mut any = false;
            for subject in subjects {
                for spend in subject.spends() {
                    let start = period_start(spend.period, now);
                    if spend.start_ms != start || spend.usd <= 0.0 {
                        continue;
                    }
                    let keys =
                        subject_keys(&shared.settings.key_prefix, subject, &[spend.period], now);
                    invocation
                        .key(&keys[2])
                        .arg(format!("{:.12}", spend.usd))
                        .arg(period_end(spend.period, start) + DAY_MS);
                    any = true;
                }
            }
            if !any {
                return;
            }
            match shared.call::<i64>("restore", &invocation).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    counters = n,
                    "budgets' spend restored into Redis from the store"
                ),
                Err(e) => shared.failed("restore", &e),
            }
        })
    }

    fn drain(&self, within: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let deadline = Instant::now() + within;
            while self.shared.releasing.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if Instant::now() < deadline {
                let left = deadline - Instant::now();
                let _ = tokio::time::timeout(left, self.shared.send_pending()).await;
            }
            let lost = self.shared.releasing.load(Ordering::Relaxed) + self.pending_charges();
            if lost > 0 {
                tracing::warn!(
                    charges = lost,
                    "runs' charges not acknowledged by Redis at shutdown"
                );
            }
        })
    }

    fn register_metrics(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        let m = &self.shared.metrics;
        registry.register(Box::new(m.calls.clone()))?;
        registry.register(Box::new(m.seconds.clone()))?;
        registry.register(Box::new(m.fallbacks.clone()))?;
        registry.register(Box::new(m.pending.clone()))?;
        registry.register(Box::new(m.up.clone()))?;
        Ok(())
    }
}
