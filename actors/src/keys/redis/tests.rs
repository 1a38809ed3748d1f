//! The Lua limiter against a real Redis: `FLOWGATE_TEST_REDIS_URL` (else
//! `redis://127.0.0.1:6379`, which `tests/run.sh` makes sure of). A Redis that does not answer
//! fails these tests; they never skip. Each test writes under a prefix of its own, so tests
//! run in parallel on one server. "Instances" are limiters with subjects of their own that
//! share the prefix; the clock is a [`ManualClock`] passed into the scripts as `now`.

use std::sync::atomic::Ordering;

use ::redis::AsyncCommands;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::keys::{Budget, Limits, ManualClock};

/// 2026-12-05 10:00:00 UTC, a Saturday.
/// The tests' clock: 10:00 UTC of the day the tests started. Redis expires the spend keys by
/// its own clock at an absolute time (a day after their period ends), so the tests' day must be
/// the real one: a fixed date saw its keys expire at once two days later.
fn now() -> u64 {
    static NOW: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NOW.get_or_init(|| {
        const DAY: u64 = 86_400_000;
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is past 1970")
            .as_millis() as u64;
        real / DAY * DAY + 10 * 3_600_000
    })
}

fn redis_url() -> String {
    std::env::var("FLOWGATE_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into())
}

fn prefix(test: &str) -> String {
    format!("flowgate-test:{test}:{}:", Uuid::now_v7().simple())
}

fn settings(url: &str, prefix: &str) -> RedisSettings {
    RedisSettings {
        url: url.to_string(),
        key_prefix: prefix.to_string(),
        timeout: Duration::from_secs(2),
        lease: Duration::from_secs(30),
        on_unavailable: OnUnavailable::Local,
    }
}

async fn limiter(settings: RedisSettings, clock: &Arc<ManualClock>) -> RedisLimiter {
    RedisLimiter::connect(settings, clock.clone())
        .await
        .unwrap_or_else(|e| panic!("no Redis for the tests at {}: {e}", redis_url()))
}

fn subject(id: &str, limits: Limits) -> Arc<Subject> {
    Arc::new(Subject::new(id.into(), format!("key `{id}`"), limits))
}

fn rpm(n: u32) -> Limits {
    Limits {
        rpm: Some(n),
        ..Limits::default()
    }
}

async fn connection() -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers")
}

/// Every key under `prefix`, with its time to live in ms (-1: none).
async fn keys_under(prefix: &str) -> Vec<(String, i64)> {
    let mut c = connection().await;
    let keys: Vec<String> = c.keys(format!("{prefix}*")).await.unwrap();
    let mut out = Vec::new();
    for key in keys {
        let ttl: i64 = c.pttl(&key).await.unwrap();
        out.push((key, ttl));
    }
    out
}

#[tokio::test]
async fn requests_per_minute_admit_exactly_the_limit_across_instances_then_reset() {
    let clock = Arc::new(ManualClock::at(now()));
    let p = prefix("rpm");
    let a = limiter(settings(&redis_url(), &p), &clock).await;
    let b = limiter(settings(&redis_url(), &p), &clock).await;
    // The same key, as each instance knows it.
    let (on_a, on_b) = (subject("key:k1", rpm(10)), subject("key:k1", rpm(10)));
    let tries = (0..30).map(|i| {
        let (limiter, subject) = if i % 2 == 0 { (&a, &on_a) } else { (&b, &on_b) };
        limiter.admit(vec![subject.clone()])
    });
    let results = futures::future::join_all(tries).await;
    let admitted: Vec<&Admission> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(admitted.len(), 10);
    let lefts: Vec<String> = admitted
        .iter()
        .map(|a| {
            a.headers()
                .into_iter()
                .find(|(n, _)| *n == "x-ratelimit-remaining-requests")
                .unwrap()
                .1
        })
        .collect();
    // Each admission saw its own place: 9, 8, …, 0 remaining, each once.
    let mut lefts: Vec<u32> = lefts.iter().map(|l| l.parse().unwrap()).collect();
    lefts.sort_unstable();
    assert_eq!(lefts, (0..10).collect::<Vec<u32>>());
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(refused.kind, ErrorKind::LimitExceeded);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(60)));
    }
    assert_eq!(
        on_a.refused_rate.load(Ordering::Relaxed) + on_b.refused_rate.load(Ordering::Relaxed),
        20
    );
    drop(results);
    // 40 s later the window still holds; it renews a minute after its first request.
    clock.set(now() + 40_000);
    let refused = a.admit(vec![on_a.clone()]).await.unwrap_err();
    assert_eq!(refused.retry_after, Some(Duration::from_secs(20)));
    assert!(refused
        .headers
        .contains(&("x-ratelimit-reset-requests", "20s".into())));
    clock.set(now() + 60_000);
    assert!(b.admit(vec![on_b.clone()]).await.is_ok());
    let usage = a
        .usage_at(std::slice::from_ref(&on_a), now() + 60_001)
        .await;
    assert_eq!(usage[0].requests, 1);
}

#[tokio::test]
async fn a_refusal_on_the_tenant_counts_nothing_on_the_key() {
    let clock = Arc::new(ManualClock::at(now()));
    let p = prefix("tenant");
    let l = limiter(settings(&redis_url(), &p), &clock).await;
    let key = subject("key:k1", rpm(10));
    let tenant = subject("tenant:acme", rpm(1));
    let _first = l.admit(vec![key.clone(), tenant.clone()]).await.unwrap();
    let refused = l
        .admit(vec![key.clone(), tenant.clone()])
        .await
        .unwrap_err();
    assert!(refused.message.contains("acme"), "{}", refused.message);
    let usage = l.usage_at(&[key.clone(), tenant.clone()], now()).await;
    assert_eq!((usage[0].requests, usage[1].requests), (1, 1));
    assert_eq!((usage[0].in_flight, usage[1].in_flight), (1, 1));
    assert_eq!(tenant.refused_rate.load(Ordering::Relaxed), 1);
    assert_eq!(key.refused_rate.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn tokens_per_minute_count_what_runs_used_on_every_instance() {
    let clock = Arc::new(ManualClock::at(now()));
    let p = prefix("tpm");
    let a = limiter(settings(&redis_url(), &p), &clock).await;
    let b = limiter(settings(&redis_url(), &p), &clock).await;
    let limits = Limits {
        tpm: Some(100),
        ..Limits::default()
    };
    let (on_a, on_b) = (subject("key:k", limits.clone()), subject("key:k", limits));
    let first = a.admit(vec![on_a.clone()]).await.unwrap();
    assert!(first
        .headers()
        .contains(&("x-ratelimit-remaining-tokens", "100".into())));
    first.charge(0.0, 60);
    a.drain(Duration::from_secs(5)).await;
    let second = b.admit(vec![on_b.clone()]).await.unwrap();
    assert!(second
        .headers()
        .contains(&("x-ratelimit-remaining-tokens", "40".into())));
    second.charge(0.0, 60);
    b.drain(Duration::from_secs(5)).await;
    let refused = a.admit(vec![on_a.clone()]).await.unwrap_err();
    assert!(refused.message.contains("TPM"), "{}", refused.message);
    assert!(refused.message.contains("used 120"), "{}", refused.message);
    clock.set(now() + 61_000);
    assert!(a.admit(vec![on_a.clone()]).await.is_ok());
}

#[tokio::test]
async fn budgets_stop_spend_across_instances_and_renew_at_the_period_boundary() {
    let clock = Arc::new(ManualClock::at(now()));
    let p = prefix("budget");
    let a = limiter(settings(&redis_url(), &p), &clock).await;
    let b = limiter(settings(&redis_url(), &p), &clock).await;
    let limits = Limits {
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
    };
    let (on_a, on_b) = (subject("key:k", limits.clone()), subject("key:k", limits));
    for (limiter, subject) in [(&a, &on_a), (&b, &on_b), (&a, &on_a)] {
        limiter
            .admit(vec![subject.clone()])
            .await
            .unwrap()
            .charge(0.004, 0);
        limiter.drain(Duration::from_secs(5)).await;
    }
    // The soft threshold is said once, by the instance whose charge passed it.
    let alerts =
        on_a.soft_alerts.load(Ordering::Relaxed) + on_b.soft_alerts.load(Ordering::Relaxed);
    assert_eq!(alerts, 1);
    let refused = b.admit(vec![on_b.clone()]).await.unwrap_err();
    assert_eq!(refused.kind, ErrorKind::QuotaExceeded);
    assert!(refused.message.contains("0.012"), "{}", refused.message);
    // 14 hours to the next UTC day.
    assert_eq!(refused.retry_after, Some(Duration::from_secs(14 * 3600)));
    assert_eq!(on_b.refused_quota.load(Ordering::Relaxed), 1);
    // Each instance keeps the shared spend it saw (persisted, and its fallback's start).
    // `a` charged last: it saw both budgets at 0.012; `b` saw the day's in its refusal.
    let day = period_start(Period::Day, now());
    let seen = |s: &Subject, period: Period| {
        s.spends()
            .into_iter()
            .find(|x| x.period == period)
            .map(|x| x.usd)
            .unwrap()
    };
    assert!((seen(&on_a, Period::Month) - 0.012).abs() < 1e-9);
    assert!((seen(&on_a, Period::Day) - 0.012).abs() < 1e-9);
    assert!((seen(&on_b, Period::Day) - 0.012).abs() < 1e-9);
    assert!(on_a.spends().iter().any(|s| s.start_ms == day));

    // One millisecond before midnight: still refused; at midnight the day renews, the month
    // does not.
    let midnight = period_end(Period::Day, day);
    clock.set(midnight - 1);
    assert!(a.admit(vec![on_a.clone()]).await.is_err());
    clock.set(midnight);
    a.admit(vec![on_a.clone()]).await.unwrap().charge(0.001, 0);
    a.drain(Duration::from_secs(5)).await;
    let usage = b.usage_at(std::slice::from_ref(&on_b), midnight).await;
    assert_eq!(usage[0].spends[0], (Period::Day, 0.001));
    assert_eq!(usage[0].spends[1].0, Period::Month);
    assert!((usage[0].spends[1].1 - 0.013).abs() < 1e-9, "{usage:?}");

    // Every key expires: the day's spend a day after its period, the month's likewise.
    let keys = keys_under(&p).await;
    assert!(keys.len() >= 5, "{keys:?}");
    for (key, ttl) in &keys {
        assert!(*ttl > 0, "{key} never expires");
    }
}

#[tokio::test]
async fn a_week_budget_renews_on_monday_utc() {
    // The last millisecond of this week's Sunday, UTC, then Monday 00:00.
    let monday = period_end(Period::Week, period_start(Period::Week, now()));
    let clock = Arc::new(ManualClock::at(monday - 1));
    let l = limiter(settings(&redis_url(), &prefix("week")), &clock).await;
    let s = subject(
        "tenant:t",
        Limits {
            budgets: vec![Budget {
                period: Period::Week,
                usd: 1.0,
                soft_usd: None,
            }],
            ..Limits::default()
        },
    );
    l.admit(vec![s.clone()]).await.unwrap().charge(1.5, 0);
    l.drain(Duration::from_secs(5)).await;
    let refused = l.admit(vec![s.clone()]).await.unwrap_err();
    assert_eq!(refused.kind, ErrorKind::QuotaExceeded);
    clock.set(monday);
    assert!(l.admit(vec![s.clone()]).await.is_ok());
}

#[tokio::test]
async fn requests_at_once_hold_across_instances_and_a_dead_instances_places_expire() {
    let clock = Arc::new(ManualClock::at(now()));
    let p = prefix("parallel");
    let mut short = settings(&redis_url(), &p);
    short.lease = Duration::from_secs(3);
    let a = limiter(short.clone(), &clock).await;
    let b = limiter(short, &clock).await;
    let limits = Limits {
        max_parallel: Some(2),
        ..Limits::default()
    };
    let (on_a, on_b) = (subject("key:k", limits.clone()), subject("key:k", limits));
    let first = a.admit(vec![on_a.clone()]).await.unwrap();
    let second = b.admit(vec![on_b.clone()]).await.unwrap();
    let refused = a.admit(vec![on_a.clone()]).await.unwrap_err();
    assert!(
        refused.message.contains("2 requests at once"),
        "{}",
        refused.message
    );
    // A place given back (charged or not) is free again on the other instance.
    drop(second);
    b.drain(Duration::from_secs(5)).await;
    let third = a.admit(vec![on_a.clone()]).await.unwrap();
    assert_eq!(a.leases_held(), 2);
    assert!(b.admit(vec![on_b.clone()]).await.is_err());

    // Instance `a` dies with its two places held: they are never given back nor renewed...
    std::mem::forget(first);
    std::mem::forget(third);
    lock(&a.shared.leases).clear();
    drop(a);
    // ...and lapse at their deadline (3 s), not before.
    clock.set(now() + 2_999);
    assert!(b.admit(vec![on_b.clone()]).await.is_err());
    clock.set(now() + 3_001);
    let fourth = b.admit(vec![on_b.clone()]).await.unwrap();

    // A live instance renews its places: past the first deadline they still count.
    clock.set(now() + 5_000);
    b.tick().await;
    clock.set(now() + 3_001 + 4_000);
    let _fifth = b.admit(vec![on_b.clone()]).await.unwrap();
    assert!(b.admit(vec![on_b.clone()]).await.is_err(), "renewed");
    assert_eq!(
        b.usage_at(std::slice::from_ref(&on_b), now() + 7_001).await[0].in_flight,
        2
    );
    drop(fourth);
}

#[tokio::test]
async fn a_flushed_script_cache_is_loaded_again() {
    let clock = Arc::new(ManualClock::at(now()));
    let l = limiter(settings(&redis_url(), &prefix("noscript")), &clock).await;
    let s = subject("key:k", rpm(2));
    assert!(l.admit(vec![s.clone()]).await.is_ok());
    // Redis forgets every script (a restart, a failover): EVALSHA answers NOSCRIPT.
    let _: () = ::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut connection().await)
        .await
        .unwrap();
    assert!(l.admit(vec![s.clone()]).await.is_ok());
    assert!(l.admit(vec![s.clone()]).await.is_err());
}

#[tokio::test]
async fn spend_the_store_kept_is_restored_when_redis_lost_it() {
    let clock = Arc::new(ManualClock::at(now()));
    let p = prefix("restore");
    let l = limiter(settings(&redis_url(), &p), &clock).await;
    let limits = Limits {
        budgets: vec![Budget {
            period: Period::Day,
            usd: 1.0,
            soft_usd: None,
        }],
        ..Limits::default()
    };
    let s = subject("key:k", limits);
    let day = period_start(Period::Day, now());
    s.restore(vec![crate::keys::Spend {
        period: Period::Day,
        start_ms: day,
        usd: 0.75,
        warned: false,
    }]);
    l.restore(std::slice::from_ref(&s)).await;
    assert_eq!(
        l.usage_at(std::slice::from_ref(&s), now()).await[0].spends[0].1,
        0.75
    );
    // Redis holding more keeps it (another instance charged since).
    l.admit(vec![s.clone()]).await.unwrap().charge(0.5, 0);
    l.drain(Duration::from_secs(5)).await;
    l.restore(std::slice::from_ref(&s)).await;
    let spent = l.usage_at(std::slice::from_ref(&s), now()).await[0].spends[0].1;
    assert!((spent - 1.25).abs() < 1e-9, "{spent}");
    assert!(l.admit(vec![s.clone()]).await.is_err());
}

/// A TCP relay to Redis that can be cut and restored, on a port of its own.
struct Relay {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(addr: Option<std::net::SocketAddr>) -> Relay {
        let listener = TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let target = redis_url();
        let target = target
            .trim_start_matches("redis://")
            .rsplit('@')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let task = tokio::spawn(async move {
            let mut relays = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                relays.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Relay { addr, task }
    }

    fn url(&self) -> String {
        let url = redis_url();
        // The same credentials and database, through the relay.
        let (scheme_auth, rest) = match url.rsplit_once('@') {
            Some((auth, rest)) => (format!("{auth}@"), rest.to_string()),
            None => (
                "redis://".to_string(),
                url.trim_start_matches("redis://").into(),
            ),
        };
        let db = rest.split_once('/').map(|(_, db)| db).unwrap_or("");
        format!("{scheme_auth}{}/{db}", self.addr)
    }

    /// Cuts every connection and stops listening.
    fn cut(self) -> std::net::SocketAddr {
        self.task.abort();
        self.addr
    }
}

#[tokio::test]
async fn without_redis_admissions_count_locally_and_their_charges_reach_redis_later() {
    let clock = Arc::new(ManualClock::at(now()));
    let p = prefix("outage");
    let relay = Relay::start(None).await;
    let mut through = settings(&relay.url(), &p);
    through.timeout = Duration::from_millis(300);
    let l = limiter(through, &clock).await;
    let direct = limiter(settings(&redis_url(), &p), &clock).await;
    let limits = Limits {
        rpm: Some(100),
        budgets: vec![Budget {
            period: Period::Day,
            usd: 10.0,
            soft_usd: None,
        }],
        ..Limits::default()
    };
    let s = subject("key:k", limits);
    assert_eq!(l.shared.metrics.up.get(), 1, "up from the start");
    l.admit(vec![s.clone()]).await.unwrap().charge(1.0, 0);
    l.drain(Duration::from_secs(5)).await;

    let addr = relay.cut();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let admitted = l.admit(vec![s.clone()]).await;
    assert!(admitted.is_ok(), "counted locally: {admitted:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Meanwhile Redis is not asked: no request waits for the timeout again.
    let started = Instant::now();
    let again = l.admit(vec![s.clone()]).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(100));
    admitted.unwrap().charge(2.0, 0);
    again.charge(0.5, 0);
    assert_eq!(l.pending_charges(), 2);
    let metrics = prometheus::Registry::new();
    l.register_metrics(&metrics).unwrap();
    let text = {
        use prometheus::Encoder;
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&metrics.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    };
    assert!(
        text.contains("flowgate_redis_fallbacks_total{decision=\"local\"} 2"),
        "{text}"
    );
    assert!(text.contains("flowgate_redis_up 0"), "{text}");
    assert!(
        text.contains("flowgate_redis_calls_total{op=\"admit\",outcome=\"error\"} 1")
            || text.contains("flowgate_redis_calls_total{op=\"admit\",outcome=\"timeout\"} 1"),
        "{text}"
    );

    // Redis is back: the charges made meanwhile are sent with the next renewal.
    let _relay = Relay::start(Some(addr)).await;
    tokio::time::sleep(QUIET_AFTER_FAILURE + Duration::from_millis(100)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while l.pending_charges() > 0 && Instant::now() < deadline {
        l.tick().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(l.pending_charges(), 0);
    assert_eq!(l.shared.metrics.up.get(), 1);
    let spent = direct.usage_at(std::slice::from_ref(&s), now()).await[0].spends[0].1;
    assert!((spent - 3.5).abs() < 1e-9, "{spent}");
    assert!(l.admit(vec![s.clone()]).await.is_ok());
}

#[tokio::test]
async fn without_redis_a_refusing_limiter_answers_503_at_once() {
    let clock = Arc::new(ManualClock::at(now()));
    let relay = Relay::start(None).await;
    let mut through = settings(&relay.url(), &prefix("refuse"));
    through.timeout = Duration::from_millis(300);
    through.on_unavailable = OnUnavailable::Refuse;
    let l = limiter(through, &clock).await;
    let s = subject("key:k", rpm(5));
    assert!(l.admit(vec![s.clone()]).await.is_ok());
    relay.cut();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = l.admit(vec![s.clone()]).await.unwrap_err();
    assert_eq!(refused.status_code().as_u16(), 503);
    assert_eq!(refused.code.as_deref(), Some("limiter_unavailable"));
    assert_eq!(refused.retry_after, Some(Duration::from_secs(1)));
}

#[tokio::test]
async fn a_redis_that_does_not_answer_fails_at_start() {
    // A port nothing listens on.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut s = settings(&format!("redis://{addr}"), "x:");
    s.timeout = Duration::from_millis(300);
    let clock = Arc::new(ManualClock::at(now()));
    let err = match RedisLimiter::connect(s, clock).await {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e,
    };
    assert!(err.contains("Redis does not answer"), "{err}");
    assert!(RedisSettings::check_url("rediss://h:1").is_err());
    assert!(RedisSettings::check_url("redis://:pw@h:1/2").is_ok());
}

#[tokio::test]
async fn many_subjects_are_read_in_batches_in_their_order() {
    let clock = Arc::new(ManualClock::at(now()));
    let l = limiter(settings(&redis_url(), &prefix("batches")), &clock).await;
    let subjects: Vec<Arc<Subject>> = (0..(2 * USAGE_BATCH + 50))
        .map(|i| subject(&format!("key:k{i}"), rpm(100)))
        .collect();
    let picked = [3, USAGE_BATCH, 2 * USAGE_BATCH + 49];
    for (n, i) in picked.iter().enumerate() {
        for _ in 0..=n {
            l.admit(vec![subjects[*i].clone()]).await.unwrap();
        }
    }
    let usage = l.usage_at(&subjects, now()).await;
    assert_eq!(usage.len(), subjects.len());
    for (i, u) in usage.iter().enumerate() {
        let expected = picked
            .iter()
            .position(|p| *p == i)
            .map_or(0, |n| n as u64 + 1);
        assert_eq!(u.requests, expected, "subject {i}");
    }
}
