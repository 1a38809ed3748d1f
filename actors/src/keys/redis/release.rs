//! The end of a request in Redis: its lease given back and what it used and cost charged, from
//! a task of its own (off the request's path); charges Redis did not acknowledge, kept and sent
//! again; the leases of requests still running, renewed every third of the lease time.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ::redis::Value;

use super::{lock, number, subject_keys, CallError, Shared, MAX_PENDING};
use crate::keys::admission::Release;
use crate::keys::limiter::{period_end, period_start, Subject};
use crate::keys::Period;

/// A finished run's charge to send (again).
pub(super) struct Charge {
    subjects: Vec<Arc<Subject>>,
    lease: String,
    now: u64,
    usd: f64,
    tokens: u64,
}

impl Shared {
    /// Sends a finished run's charge; kept for later when Redis does not acknowledge it.
    async fn release(&self, charge: Charge) {
        if self.quiet() {
            self.keep(charge);
            return;
        }
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .arg(charge.now)
            .arg(&charge.lease)
            .arg(format!("{:.12}", charge.usd.max(0.0)))
            .arg(charge.tokens)
            .arg(charge.subjects.len());
        let mut budgets_of = Vec::with_capacity(charge.subjects.len());
        for subject in &charge.subjects {
            let budgets = subject.limits().budgets;
            let periods: Vec<Period> = budgets.iter().map(|b| b.period).collect();
            for key in subject_keys(&self.settings.key_prefix, subject, &periods, charge.now) {
                invocation.key(key);
            }
            invocation.arg(budgets.len());
            for budget in &budgets {
                let start = period_start(budget.period, charge.now);
                invocation
                    .arg(budget.soft_usd.unwrap_or(0.0))
                    .arg(period_end(budget.period, start));
            }
            budgets_of.push(budgets);
        }
        let reply: Vec<Value> = match self.call("release", &invocation).await {
            Ok(reply) => reply,
            Err(e) => {
                self.failed("release", &e);
                self.keep(charge);
                return;
            }
        };
        let mut values = reply.iter().map(number);
        for (subject, budgets) in charge.subjects.iter().zip(budgets_of) {
            for budget in budgets {
                let (Some(Some(total)), Some(Some(first))) = (values.next(), values.next()) else {
                    return;
                };
                let start = period_start(budget.period, charge.now);
                subject.observe_spend(budget.period, start, total);
                if first == 1.0 {
                    subject
                        .soft_alerts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        subject = %subject.label,
                        period = budget.period.as_str(),
                        spent_usd = total,
                        soft_usd = budget.soft_usd.unwrap_or_default(),
                        budget_usd = budget.usd,
                        "budget soft threshold passed"
                    );
                }
            }
        }
    }

    fn keep(&self, mut charge: Charge) {
        // The lease expires by itself; only what the run used is worth sending again.
        charge.lease.clear();
        if charge.usd <= 0.0 && charge.tokens == 0 {
            return;
        }
        let mut pending = lock(&self.pending);
        if pending.len() >= MAX_PENDING {
            pending.pop_front();
            tracing::warn!("too many charges wait for Redis: the oldest is dropped");
        }
        pending.push_back(charge);
        self.metrics.pending.set(pending.len() as i64);
    }

    /// Sends the charges Redis did not acknowledge, oldest first, while it answers.
    pub(super) async fn send_pending(&self) {
        loop {
            if self.quiet() {
                return;
            }
            let Some(charge) = lock(&self.pending).pop_front() else {
                break;
            };
            let before = lock(&self.pending).len();
            self.release(charge).await;
            // Kept again: Redis still does not take it.
            if lock(&self.pending).len() > before {
                break;
            }
        }
        self.metrics.pending.set(lock(&self.pending).len() as i64);
    }

    /// Asks Redis whether it is back when the last call failed, so `flowgate_redis_up` (and
    /// the log) say so without waiting for a request.
    pub(super) async fn probe(&self) {
        if self.up.load(Ordering::Relaxed) || self.quiet() {
            return;
        }
        let mut connection = self.connection.clone();
        let command = ::redis::cmd("PING");
        let ping = command.query_async::<String>(&mut connection);
        let outcome = match tokio::time::timeout(self.settings.timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(CallError::Redis(e)),
            Err(_) => Err(CallError::Timeout),
        };
        match outcome {
            Ok(()) => {
                self.metrics.up.set(1);
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::warn!("Redis answers again: limits hold across instances again");
                }
            }
            Err(e) => self.failed("ping", &e),
        }
    }

    /// Moves the deadlines of this instance's leases.
    pub(super) async fn renew(&self) {
        let held: Vec<(String, Vec<String>)> = lock(&self.leases)
            .iter()
            .map(|(lease, sets)| (lease.clone(), sets.clone()))
            .collect();
        if held.is_empty() || self.quiet() {
            return;
        }
        let lease_ms = self.settings.lease.as_millis() as u64;
        let mut invocation = self.scripts.renew.prepare_invoke();
        invocation
            .arg(self.clock.now_ms() + lease_ms)
            .arg(lease_ms + 60_000);
        for (lease, sets) in &held {
            for set in sets {
                invocation.key(set).arg(lease);
            }
        }
        if let Err(e) = self.call::<i64>("renew", &invocation).await {
            self.failed("renew", &e);
        }
    }
}

/// Every third of the lease time while the limiter lives: renewals, then pending charges.
pub(super) async fn renew_leases(shared: Weak<Shared>, every: Duration) {
    let every = every.max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.probe().await;
        shared.renew().await;
        shared.send_pending().await;
    }
}

/// A request's lease in Redis.
pub(super) struct RedisHold {
    pub(super) shared: Arc<Shared>,
    pub(super) subjects: Vec<Arc<Subject>>,
    pub(super) lease: String,
}

impl Release for RedisHold {
    fn release(self: Box<Self>, usd: f64, tokens: u64) {
        let RedisHold {
            shared,
            subjects,
            lease,
        } = *self;
        // Not renewed from now on: if the call below is lost, the lease expires.
        lock(&shared.leases).remove(&lease);
        let charge = Charge {
            subjects,
            lease,
            now: shared.clock.now_ms(),
            usd,
            tokens,
        };
        send_later(shared, charge);
    }
}

/// What a run admitted while Redis was unreachable cost, sent to Redis when it is back (the
/// local counters had it already).
pub(super) struct LateCharge {
    pub(super) shared: Arc<Shared>,
    pub(super) subjects: Vec<Arc<Subject>>,
    pub(super) now: u64,
}

impl Release for LateCharge {
    fn release(self: Box<Self>, usd: f64, tokens: u64) {
        if usd <= 0.0 && tokens == 0 {
            return;
        }
        let charge = Charge {
            subjects: self.subjects,
            lease: String::new(),
            now: self.now,
            usd,
            tokens,
        };
        self.shared.keep(charge);
    }
}

/// Off the request's path: a task of its own on the current runtime (none: kept for the
/// renewal task to send).
fn send_later(shared: Arc<Shared>, charge: Charge) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            shared.releasing.fetch_add(1, Ordering::Relaxed);
            runtime.spawn(async move {
                shared.release(charge).await;
                shared.releasing.fetch_sub(1, Ordering::Relaxed);
            });
        }
        Err(_) => shared.keep(charge),
    }
}
