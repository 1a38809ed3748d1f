//! Keys' limits across instances, the real binary: three flowgate processes on one
//! PostgreSQL (keys shared) and one Redis (counters shared) behind no balancer — the test
//! spreads requests over them itself. A key with `rpm = 10` admits 10 requests between the
//! three, a budget holds within the cost of the requests in flight, requests at once are
//! capped across instances (and an instance that dies frees its places), and a key revoked
//! through one instance is refused by the others within a second.
//!
//! PostgreSQL is `FLOWGATE_TEST_DATABASE_URL` (a schema per test, dropped at the end) and Redis
//! `FLOWGATE_TEST_REDIS_URL` (a key prefix per test); `tests/run.sh` makes sure both answer.
//! Either unreachable fails the tests.

mod common;

use std::time::{Duration, Instant};

use common::postgres::{database_url, DropSchema};
use common::*;
use serde_json::{json, Value};

const ADMIN_KEY: &str = "multi-admin-key";
const TENANT_KEY: &str = "multi-tenant-key";

fn redis_url() -> String {
    std::env::var("FLOWGATE_TEST_REDIS_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into())
}

fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{test}_{}_{nanos}", std::process::id())
}

/// Three instances on one database and one Redis, next to one mock upstream.
struct Cluster {
    instances: Vec<Flowgate>,
    _dirs: Vec<tempfile::TempDir>,
    _upstream: MockUpstream,
    _schema: DropSchema,
}

impl Cluster {
    fn start(test: &str) -> Cluster {
        let name = unique(test);
        let schema = format!("flowgate_multi_{name}");
        let upstream = MockUpstream::start();
        let shared = format!(
            "\n[storage]\nbackend = \"postgres\"\nurl = \"{}\"\npool_size = 4\nschema = \"{schema}\"\n\
             [redis]\nurl = \"{}\"\nkey_prefix = \"flowgate-it:{name}:\"\ntimeout_ms = 2000\nlease_seconds = 3\n\
             [auth]\napi_keys = [\"{TENANT_KEY}\"]\n[admin]\napi_keys = [\"{ADMIN_KEY}\"]\n",
            database_url(),
            redis_url(),
        ) + &model_table(
            "priced",
            &[offer("upstream", "gpt-4o-mini", 100.0, 200.0)],
            "",
        ) + &model_table(
            "slow",
            &[offer("upstream", "gpt-4o-mini;delay_ms=1500", 1.0, 1.0)],
            "",
        ) + &model_table(
            "trickle",
            &[offer("upstream", "gpt-4o-mini;chunk_delay_ms=400;chunk_chars=4", 100.0, 200.0)],
            "",
        ) + &model_table(
            "very-slow",
            &[offer("upstream", "gpt-4o-mini;delay_ms=20000", 1.0, 1.0)],
            "",
        );
        let mut dirs = Vec::new();
        let mut instances = Vec::new();
        // One after the other: the first applies the migrations.
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let config = base_config(&dir.path().join("data"), Some(&upstream)) + &shared;
            instances.push(Flowgate::start(dir.path(), &config));
            dirs.push(dir);
        }
        Cluster {
            instances,
            _dirs: dirs,
            _upstream: upstream,
            _schema: DropSchema(schema),
        }
    }

    /// Makes a key through instance 0, and waits until every instance knows it.
    async fn create_key(&self, body: Value) -> (String, String) {
        let response = client()
            .post(format!("{}/api/admin/keys", self.instances[0].url))
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let key: Value = response.json().await.unwrap();
        let id = key["id"].as_str().unwrap().to_string();
        let secret = key["secret"].as_str().unwrap().to_string();
        for gw in &self.instances {
            let (status, _, own) = poll_until(
                100,
                || {
                    send(
                        client()
                            .get(format!("{}/api/keys/self", gw.url))
                            .bearer_auth(&secret),
                    )
                },
                |(status, _, _)| *status == 200,
            )
            .await;
            assert_eq!(status, 200, "{own}");
        }
        (id, secret)
    }

    /// Metric samples summed over the three instances.
    async fn sum_of(&self, series: &str) -> f64 {
        let mut total = 0.0;
        for gw in &self.instances {
            let text = metrics(gw).await;
            total += text
                .lines()
                .filter_map(|l| l.strip_prefix(series))
                .filter_map(|v| v.trim().parse::<f64>().ok())
                .sum::<f64>();
        }
        total
    }
}

async fn send(request: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn ask(gw: &Flowgate, secret: &str, model: &str) -> reqwest::RequestBuilder {
    client()
        .post(gw.chat_url())
        .bearer_auth(secret)
        .json(&json!({"model": model, "messages": user("hello")}))
}

#[tokio::test]
async fn a_key_with_rpm_10_admits_exactly_10_of_30_spread_over_three_instances() {
    let cluster = Cluster::start("rpm");
    let (_, secret) = cluster.create_key(json!({"name": "ten", "rpm": 10})).await;
    let answers = futures::future::join_all(
        (0..30).map(|i| send(ask(&cluster.instances[i % 3], &secret, "priced"))),
    )
    .await;
    let ok: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 200).collect();
    assert_eq!(
        ok.len(),
        10,
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    // Each admitted answer says how many are left: 9 down to 0, once each.
    let mut left: Vec<u32> = ok
        .iter()
        .map(|(_, h, _)| {
            h["x-ratelimit-remaining-requests"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    left.sort_unstable();
    assert_eq!(left, (0..10).collect::<Vec<u32>>());
    for (status, headers, body) in answers.iter().filter(|(s, _, _)| *s != 200) {
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(headers["x-ratelimit-limit-requests"], "10");
    }
    // Any instance reads the minute's use of all three.
    for gw in &cluster.instances {
        let (status, _, own) = send(
            client()
                .get(format!("{}/api/keys/self", gw.url))
                .bearer_auth(&secret),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(own["key"]["usage"]["requests_this_minute"], 10, "{own}");
    }
    assert_eq!(
        cluster
            .sum_of("flowgate_key_requests_refused_total{reason=\"rate\",subject=\"key ten\"}")
            .await,
        20.0
    );
    // Every admission was Redis's: none fell back to an instance's own counters.
    assert_eq!(cluster.sum_of("flowgate_redis_fallbacks_total").await, 0.0);
    assert!(
        cluster
            .sum_of("flowgate_redis_calls_total{op=\"admit\",outcome=\"ok\"}")
            .await
            >= 30.0
    );
}

#[tokio::test]
async fn a_budget_holds_across_instances_within_the_cost_of_the_requests_in_flight() {
    let cluster = Cluster::start("budget");
    const BUDGET: f64 = 0.05;
    const AT_ONCE: usize = 6;
    let (id, secret) = cluster
        .create_key(json!({"name": "cents", "budgets": [{"period": "day", "usd": BUDGET, "soft_usd": 0.02}]}))
        .await;
    let mut paid = Vec::new();
    let mut rounds = 0;
    loop {
        let answers = futures::future::join_all(
            (0..AT_ONCE).map(|i| send(ask(&cluster.instances[i % 3], &secret, "priced"))),
        )
        .await;
        let mut refused = 0;
        for (status, _, body) in &answers {
            match status {
                200 => paid.push(body["cost_usd"].as_f64().unwrap()),
                429 => {
                    assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
                    refused += 1;
                }
                other => panic!("{other}: {body}"),
            }
        }
        if refused == AT_ONCE {
            break;
        }
        rounds += 1;
        assert!(rounds < 200, "the budget never stopped the key");
    }
    let spent: f64 = paid.iter().sum();
    let most = paid.iter().cloned().fold(0.0, f64::max);
    // Each instance alone would have let up to the whole budget through (3x); shared, the
    // spend passes it by at most the requests that were in flight when it was reached.
    assert!(
        most * AT_ONCE as f64 * 2.0 < BUDGET,
        "requests too dear for the test: {most}"
    );
    assert!(
        spent >= BUDGET && spent <= BUDGET + AT_ONCE as f64 * most + 1e-9,
        "spent {spent} of {BUDGET}, {} requests of at most {most}",
        paid.len()
    );
    // What Redis recorded is what the answers cost, read through any instance.
    for gw in &cluster.instances {
        let (_, _, view) = poll_until(
            100,
            || {
                send(
                    client()
                        .get(format!("{}/api/admin/keys/{id}", gw.url))
                        .bearer_auth(ADMIN_KEY),
                )
            },
            |(_, _, v)| {
                (v["usage"]["budgets"][0]["spent_usd"]
                    .as_f64()
                    .unwrap_or(0.0)
                    - spent)
                    .abs()
                    < 1e-9
            },
        )
        .await;
        let recorded = view["usage"]["budgets"][0]["spent_usd"].as_f64().unwrap();
        assert!((recorded - spent).abs() < 1e-9, "{recorded} vs {spent}");
        assert_eq!(view["usage"]["budgets"][0]["remaining_usd"], 0.0);
    }
    // Every instance refuses the key now.
    for gw in &cluster.instances {
        let (status, _, body) = send(ask(gw, &secret, "priced")).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["error"]["code"], "insufficient_quota");
    }
    // The soft threshold was said once, by one instance.
    assert_eq!(
        cluster
            .sum_of("flowgate_key_budget_alerts_total{subject=\"key cents\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_key_revoked_through_one_instance_is_refused_by_the_others_within_a_second() {
    let cluster = Cluster::start("revoke");
    let (id, secret) = cluster.create_key(json!({"name": "short-lived"})).await;
    for gw in &cluster.instances {
        assert_eq!(send(ask(gw, &secret, "priced")).await.0, 200);
    }
    let (status, _, _) = send(
        client()
            .delete(format!("{}/api/admin/keys/{id}", cluster.instances[0].url))
            .bearer_auth(ADMIN_KEY),
    )
    .await;
    assert_eq!(status, 200);
    let revoked = Instant::now();
    let (status, _, body) = send(ask(&cluster.instances[0], &secret, "priced")).await;
    assert_eq!(status, 401, "{body}");
    for gw in &cluster.instances[1..] {
        loop {
            let (status, _, body) = send(ask(gw, &secret, "priced")).await;
            if status == 401 {
                assert!(body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("revoked"));
                break;
            }
            assert_eq!(status, 200, "{body}");
            assert!(
                revoked.elapsed() < Duration::from_secs(1),
                "{} still takes the revoked key after {:?}",
                gw.url,
                revoked.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    assert!(
        revoked.elapsed() < Duration::from_secs(1),
        "{:?}",
        revoked.elapsed()
    );
}

#[tokio::test]
async fn requests_at_once_are_capped_across_instances_and_a_dead_instance_frees_its_places() {
    let mut cluster = Cluster::start("parallel");
    let (_, secret) = cluster
        .create_key(json!({"name": "pair", "max_parallel": 2}))
        .await;
    // Six at once, two per instance, each taking 1.5 s: two are served, four wait no time.
    let started = Instant::now();
    let answers = futures::future::join_all(
        (0..6).map(|i| send(ask(&cluster.instances[i % 3], &secret, "slow"))),
    )
    .await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    for (status, headers, body) in answers.iter().filter(|a| a.0 != 200) {
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 requests at once"));
        assert!(headers.contains_key("retry-after"));
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
    // Finished, they give their places back: two at once again, on any instance.
    let (_, _, own) = poll_until(
        100,
        || {
            send(
                client()
                    .get(format!("{}/api/keys/self", cluster.instances[2].url))
                    .bearer_auth(&secret),
            )
        },
        |(_, _, own)| own["key"]["usage"]["in_flight"] == 0,
    )
    .await;
    assert_eq!(own["key"]["usage"]["in_flight"], 0, "{own}");
    let again = futures::future::join_all(
        (0..2).map(|i| send(ask(&cluster.instances[i + 1], &secret, "priced"))),
    )
    .await;
    assert_eq!(
        again.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![200, 200]
    );

    // Their places come back from a task of their own, a moment after the answers.
    let own_url = format!("{}/api/keys/self", cluster.instances[2].url);
    let in_flight_is = |n: u64| {
        let url = own_url.clone();
        let secret = secret.clone();
        async move {
            let (_, _, own) = poll_until(
                200,
                || send(client().get(&url).bearer_auth(&secret)),
                |(_, _, own)| own["key"]["usage"]["in_flight"] == n,
            )
            .await;
            assert_eq!(own["key"]["usage"]["in_flight"], n, "{own}");
        }
    };
    in_flight_is(0).await;

    // Instance 0 takes both places with long requests, then dies (SIGKILL: no goodbye).
    let first = cluster.instances.remove(0);
    let url = first.url.clone();
    let long = (0..2)
        .map(|_| {
            let request = client()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(&secret)
                .json(&json!({"model": "very-slow", "messages": user("hello")}));
            tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
        })
        .collect::<Vec<_>>();
    in_flight_is(2).await;
    assert!(
        long.iter().all(|task| !task.is_finished()),
        "both long requests run"
    );
    assert_eq!(
        send(ask(&cluster.instances[0], &secret, "priced")).await.0,
        429
    );
    first.kill9();
    let died = Instant::now();
    for task in long {
        assert!(task.await.unwrap().is_err(), "the dead instance answered");
    }
    // Its places lapse with their lease (3 s), not before its last renewal's deadline.
    let (status, _, body) = poll_until(
        400,
        || send(ask(&cluster.instances[1], &secret, "priced")),
        |(status, _, _)| *status == 200,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        died.elapsed() < Duration::from_secs(8),
        "{:?}",
        died.elapsed()
    );
}

#[tokio::test]
async fn streamed_and_cancelled_runs_are_charged_and_give_their_place_back_across_instances() {
    let cluster = Cluster::start("stream");
    let (id, secret) = cluster
        .create_key(json!({"name": "streamer", "max_parallel": 1,
                           "budgets": [{"period": "day", "usd": 10.0}]}))
        .await;
    let spent_seen_by = |gw: &Flowgate| {
        send(
            client()
                .get(format!("{}/api/admin/keys/{id}", gw.url))
                .bearer_auth(ADMIN_KEY),
        )
    };
    // A stream through instance 0: its cost is in its last chunk, and in the shared budget.
    let (status, _, body) = send(
        client()
            .post(cluster.instances[0].chat_url())
            .bearer_auth(&secret)
            .json(&json!({"model": "priced", "messages": user("hello stream"), "stream": true})),
    )
    .await;
    assert_eq!(status, 200);
    let events = sse_events(body.as_str().unwrap());
    let cost = stream_chunks(&events)
        .iter()
        .find_map(|c| c["cost_usd"].as_f64())
        .expect("the last chunk carries cost_usd");
    assert!(cost > 0.0);
    let (_, _, view) = poll_until(
        100,
        || spent_seen_by(&cluster.instances[2]),
        |(_, _, v)| {
            (v["usage"]["budgets"][0]["spent_usd"]
                .as_f64()
                .unwrap_or(0.0)
                - cost)
                .abs()
                < 1e-9
        },
    )
    .await;
    let recorded = view["usage"]["budgets"][0]["spent_usd"].as_f64().unwrap();
    assert!((recorded - cost).abs() < 1e-9, "{recorded} vs {cost}");

    // A slow stream through instance 1, left by its client after the first bytes: the run
    // ends and its place comes back at once, not when its lease would lapse.
    let long_text = "one two three four five six seven eight nine ten ".repeat(8);
    let mut response = client()
        .post(cluster.instances[1].chat_url())
        .bearer_auth(&secret)
        .json(&json!({"model": "trickle", "messages": user(&long_text), "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.chunk().await.unwrap().is_some());
    // Its one place is taken on every instance.
    let (status, _, body) = send(ask(&cluster.instances[2], &secret, "priced")).await;
    assert_eq!(status, 429, "{body}");
    drop(response);
    let left = Instant::now();
    let (status, _, body) = poll_until(
        100,
        || send(ask(&cluster.instances[2], &secret, "priced")),
        |(status, _, _)| *status == 200,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The lease would have lasted 3 s from its last renewal.
    assert!(
        left.elapsed() < Duration::from_millis(1500),
        "{:?}",
        left.elapsed()
    );
}

#[test]
fn an_instance_whose_redis_does_not_answer_does_not_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = base_config(&dir.path().join("data"), None)
        + &format!("\n[redis]\nurl = \"redis://:hunter2@127.0.0.1:{port}\"\ntimeout_ms = 300\n");
    let path = dir.path().join("flowgate.toml");
    std::fs::write(&path, &config).unwrap();
    let started = Instant::now();
    let out = flowgate_command()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(20));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("listening on"), "{stdout}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("redis.url") && err.contains("Redis does not answer"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the password leaked: {err}");

    // A bad value is found by `check-config`, with its path.
    std::fs::write(
        &path,
        base_config(&dir.path().join("data"), None)
            + "\n[redis]\nurl = \"redis://h\"\nlease_seconds = 0\n",
    )
    .unwrap();
    let out = flowgate_command()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("redis.lease_seconds"), "{err}");
}

/// A TCP relay to the test Redis that can be cut and put back on the same port.
struct Relay {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(addr: Option<std::net::SocketAddr>) -> Relay {
        let listener =
            tokio::net::TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
                .await
                .unwrap();
        let addr = listener.local_addr().unwrap();
        let url = redis_url();
        let target = url
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
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Relay { addr, task }
    }

    /// The test Redis's URL (credentials and database kept), through the relay.
    fn url(&self) -> String {
        let url = redis_url();
        let (auth, rest) = match url.rsplit_once('@') {
            Some((auth, rest)) => (format!("{auth}@"), rest.to_string()),
            None => ("redis://".into(), url.trim_start_matches("redis://").into()),
        };
        let db = rest.split_once('/').map(|(_, db)| db).unwrap_or("");
        format!("{auth}{}/{db}", self.addr)
    }

    /// Cuts every connection and stops listening.
    fn cut(self) -> std::net::SocketAddr {
        self.task.abort();
        self.addr
    }
}

// The relay runs on the test's runtime while the instances start (a blocking wait): on threads
// of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_an_instance_counts_alone_or_refuses_as_configured() {
    const ACME_KEY: &str = "acme-multi-key";
    let relay = Relay::start(None).await;
    let name = unique("outage");
    let instance = |on_unavailable: &str| {
        let dir = tempfile::tempdir().unwrap();
        let config = base_config(&dir.path().join("data"), None)
            + &format!(
                "\n[redis]\nurl = \"{}\"\nkey_prefix = \"flowgate-it:{name}:\"\ntimeout_ms = 500\n\
                 on_unavailable = \"{on_unavailable}\"\n\
                 [auth]\napi_keys = [\"{TENANT_KEY}\"]\n[auth.tenants.acme]\napi_keys = [\"{ACME_KEY}\"]\n\
                 [auth.tenants.acme.limits]\nrpm = 100\n",
                relay.url()
            );
        let gw = Flowgate::start(dir.path(), &config);
        (gw, dir)
    };
    let (local, _local_dir) = instance("local");
    let (refusing, _refusing_dir) = instance("refuse");
    for gw in [&local, &refusing] {
        assert_eq!(send(ask(gw, ACME_KEY, "mock-echo")).await.0, 200);
    }

    let addr = relay.cut();
    // Counted by the instance alone: still served.
    let (status, _, body) = send(ask(&local, ACME_KEY, "mock-echo")).await;
    assert_eq!(status, 200, "{body}");
    // Refused while Redis is away, with a retry hint; a caller no limit applies to is served.
    let (status, headers, body) = send(ask(&refusing, ACME_KEY, "mock-echo")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "limiter_unavailable");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(send(ask(&refusing, TENANT_KEY, "mock-echo")).await.0, 200);
    let text = metrics(&local).await;
    assert_sample(
        &text,
        "flowgate_redis_fallbacks_total{decision=\"local\"} 1",
    );
    assert_sample(&text, "flowgate_redis_up 0");
    let text = metrics(&refusing).await;
    assert_sample(
        &text,
        "flowgate_redis_fallbacks_total{decision=\"refused\"} 1",
    );

    // Redis is back: both count in it again, and say so without a request.
    let _relay = Relay::start(Some(addr)).await;
    let (status, _, body) = poll_until(
        250,
        || send(ask(&refusing, ACME_KEY, "mock-echo")),
        |(status, _, _)| *status == 200,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let text = poll_until(
        250,
        || metrics(&local),
        |text| text.lines().any(|l| l == "flowgate_redis_up 1"),
    )
    .await;
    assert_sample(&text, "flowgate_redis_up 1");
}
