//! Run stats over HTTP on the real binary: `GET /api/agents` and `GET
//! /api/agents/{agent}/stats` agree with the runs the requests made (successes, an error,
//! agents and tenants apart), survive a restart, and refuse bad parameters with a 400 that
//! names them.

mod common;

use common::*;
use serde_json::{json, Value};

const KEYS: &str = "\n[auth]\napi_keys = [\"default-key\"]\n[auth.tenants.acme]\napi_keys = [\"acme-key\"]\n[admin]\napi_keys = [\"admin-key\"]\n";

fn start() -> (tempfile::TempDir, Flowgate) {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(&dir.path().join("data"), None)
        + &model_table("mock-two", &[offer("mock", "mock-two", 1.0, 2.0)], "")
        + KEYS;
    let gw = Flowgate::start(dir.path(), &config);
    (dir, gw)
}

async fn get(gw: &Flowgate, key: &str, path: &str) -> (u16, Value) {
    let response = client()
        .get(format!("{}{path}", gw.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Sends one request; answers its status.
async fn send(gw: &Flowgate, key: &str, model: &str, text: &str) -> u16 {
    let (status, _, answer) =
        chat_as(gw, key, json!({"model": model, "messages": user(text)})).await;
    assert!(status == 200 || status == 404, "{answer}");
    status.as_u16()
}

/// What the stored runs of an agent add up to, read one by one: the figures to compare with.
struct Expected {
    runs: u64,
    errors: u64,
    cost: f64,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// Of the successful runs, sorted.
    durations: Vec<f64>,
}

async fn expected(gw: &Flowgate, key: &str, agent: &str) -> Expected {
    let (status, page) = get(gw, key, &format!("/api/agents/{agent}/runs?limit=200")).await;
    assert_eq!(status, 200, "{page}");
    let mut e = Expected {
        runs: 0,
        errors: 0,
        cost: 0.0,
        prompt_tokens: 0,
        completion_tokens: 0,
        durations: vec![],
    };
    for item in page["items"].as_array().unwrap() {
        let (_, run) = get(
            gw,
            key,
            &format!("/api/runs/{}", item["id"].as_str().unwrap()),
        )
        .await;
        e.runs += 1;
        e.cost += run["cost_usd"].as_f64().unwrap();
        e.prompt_tokens += run["usage"]["prompt_tokens"].as_u64().unwrap();
        e.completion_tokens += run["usage"]["completion_tokens"].as_u64().unwrap();
        match run["status"].as_str().unwrap() {
            "success" => e.durations.push(run["duration_seconds"].as_f64().unwrap()),
            "error" => e.errors += 1,
            other => panic!("{other}"),
        }
    }
    e.durations.sort_by(f64::total_cmp);
    e
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 + 1e-9 * b.abs()
}

/// The nearest-rank percentile, and whether `estimate` is within 2% of it.
fn within_two_percent(estimate: &Value, sorted: &[f64], q: f64) -> bool {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    let exact = sorted[rank - 1];
    (estimate.as_f64().unwrap() - exact).abs() <= 0.02 * exact
}

fn agent<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == name)
}

fn assert_totals(stats: &Value, e: &Expected) {
    let totals = &stats["totals"];
    assert_eq!(totals["runs"], e.runs, "{stats}");
    assert_eq!(totals["errors"], e.errors, "{stats}");
    assert!(
        close(totals["cost_usd"].as_f64().unwrap(), e.cost),
        "{stats}"
    );
    assert_eq!(totals["prompt_tokens"], e.prompt_tokens);
    assert_eq!(totals["completion_tokens"], e.completion_tokens);
    assert_eq!(
        totals["total_tokens"],
        e.prompt_tokens + e.completion_tokens
    );
    for (q, name) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
        let estimate = &totals["latency_seconds"][name];
        assert!(
            within_two_percent(estimate, &e.durations, q),
            "{name}: {estimate} vs {:?}",
            e.durations
        );
    }
    // The sum over buckets is the totals.
    let buckets = stats["buckets"].as_array().unwrap();
    let runs: u64 = buckets.iter().map(|b| b["runs"].as_u64().unwrap()).sum();
    assert_eq!(runs, e.runs);
}

async fn make_traffic(gw: &Flowgate) {
    for i in 0..4 {
        send(
            gw,
            "default-key",
            "shop/mock-two",
            &format!("order {i} please, with a longer text"),
        )
        .await;
    }
    send(gw, "default-key", "shop/mock-echo", "hi").await;
    assert_eq!(
        send(gw, "default-key", "shop/no-such-model", "hi").await,
        404
    );
    for i in 0..2 {
        send(gw, "default-key", "support/mock-two", &format!("help {i}")).await;
    }
    for i in 0..3 {
        send(gw, "acme-key", "shop/mock-two", &format!("acme {i}")).await;
    }
}

#[tokio::test]
async fn agents_and_their_stats_add_up_to_the_recorded_runs() {
    let (_dir, gw) = start();
    make_traffic(&gw).await;
    let shop = expected(&gw, "default-key", "shop").await;
    assert_eq!((shop.runs, shop.errors), (6, 1));
    assert!(shop.cost > 0.0);
    let support = expected(&gw, "default-key", "support").await;

    // The list: both agents, with their week, day by day, and their last run.
    let (status, list) = get(&gw, "default-key", "/api/agents").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["source"], "api");
    assert_eq!(list["agents"].as_array().unwrap().len(), 2, "{list}");
    for (name, e) in [("shop", &shop), ("support", &support)] {
        let a = agent(&list, name).unwrap();
        assert_eq!(a["runs"], e.runs, "{a}");
        assert_eq!(a["errors"], e.errors, "{a}");
        assert!(close(a["cost_usd"].as_f64().unwrap(), e.cost), "{a}");
        let daily = a["daily"].as_array().unwrap();
        assert_eq!(daily.len(), 7);
        let runs: u64 = daily.iter().map(|d| d["runs"].as_u64().unwrap()).sum();
        assert_eq!(runs, e.runs);
        assert!(a["last_run_at"].as_str().unwrap().starts_with("20"));
    }
    // Most recently run first: support ran after shop.
    assert_eq!(list["agents"][0]["agent"], "support");

    // One agent's stats: day buckets over the last 7 days by default.
    let (status, stats) = get(&gw, "default-key", "/api/agents/shop/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["bucket"], "day");
    assert_eq!(stats["agent"], "shop");
    assert_eq!(stats["buckets"].as_array().unwrap().len(), 7);
    assert_totals(&stats, &shop);
    let rate = stats["totals"]["cache_hit_rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&rate));

    // Hours, from Unix seconds and RFC 3339 alike.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let from = now - 3 * 3600;
    let (status, hours) = get(
        &gw,
        "default-key",
        &format!(
            "/api/agents/shop/stats?bucket=hour&from={from}&to={}",
            now + 60
        ),
    )
    .await;
    assert_eq!(status, 200, "{hours}");
    assert!(hours["buckets"].as_array().unwrap().len() >= 4);
    assert_totals(&hours, &shop);
    let (status, none) = get(
        &gw,
        "default-key",
        "/api/agents/shop/stats?from=2020-01-01T00:00:00Z&to=2020-01-03T00:00:00Z",
    )
    .await;
    assert_eq!(status, 200, "{none}");
    assert_eq!(none["buckets"].as_array().unwrap().len(), 2);
    assert_eq!(none["totals"]["runs"], 0);
    assert_eq!(none["totals"]["latency_seconds"]["p50"], Value::Null);

    // App traffic only unless asked: no playground run was made.
    let (_, played) = get(&gw, "default-key", "/api/agents?source=playground").await;
    assert!(played["agents"].as_array().unwrap().is_empty(), "{played}");
    let (_, all) = get(&gw, "default-key", "/api/agents/shop/stats?source=all").await;
    assert_eq!(all["totals"]["runs"], shop.runs);
}

#[tokio::test]
async fn tenants_see_only_their_own_agents() {
    let (_dir, gw) = start();
    make_traffic(&gw).await;
    let theirs = expected(&gw, "acme-key", "shop").await;
    assert_eq!(theirs.runs, 3);

    let (_, list) = get(&gw, "acme-key", "/api/agents").await;
    let names: Vec<&str> = strings_at(&list["agents"], "agent");
    assert_eq!(names, ["shop"]);
    assert_eq!(agent(&list, "shop").unwrap()["runs"], 3);
    let (_, stats) = get(&gw, "acme-key", "/api/agents/shop/stats").await;
    assert_totals(&stats, &theirs);
    // The default tenant's other agent shows nothing to acme.
    let (status, support) = get(&gw, "acme-key", "/api/agents/support/stats").await;
    assert_eq!(status, 200);
    assert_eq!(support["totals"]["runs"], 0);
    // An admin reads the tenant it names.
    let response = client()
        .get(format!("{}/api/agents", gw.url))
        .bearer_auth("admin-key")
        .header("x-flowgate-tenant", "acme")
        .send()
        .await
        .unwrap();
    let list: Value = response.json().await.unwrap();
    assert_eq!(strings_at(&list["agents"], "agent"), ["shop"]);
}

#[tokio::test]
async fn stats_survive_a_restart_and_a_kill() {
    let (dir, gw) = start();
    make_traffic(&gw).await;
    let shop = expected(&gw, "default-key", "shop").await;
    let config_path = gw.config_path.clone();
    gw.stop();

    let gw = Flowgate::start_with(&config_path);
    let (_, stats) = get(&gw, "default-key", "/api/agents/shop/stats").await;
    assert_totals(&stats, &shop);

    // Written within the flush interval: a kill after it loses nothing.
    send(&gw, "default-key", "shop/mock-two", "one more").await;
    let shop = expected(&gw, "default-key", "shop").await;
    assert_eq!(shop.runs, 7);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    gw.kill9();
    let gw = Flowgate::start_with(&config_path);
    let (_, stats) = get(&gw, "default-key", "/api/agents/shop/stats").await;
    assert_totals(&stats, &shop);
    let (_, list) = get(&gw, "default-key", "/api/agents").await;
    assert_eq!(agent(&list, "shop").unwrap()["runs"], 7);
    drop(dir);
}

#[tokio::test]
async fn bad_parameters_are_refused_with_the_param_named() {
    let (_dir, gw) = start();
    for (path, param, says) in [
        (
            "/api/agents/shop/stats?bucket=week",
            "bucket",
            "`hour` or `day`",
        ),
        ("/api/agents/shop/stats?source=app", "source", "`all`"),
        ("/api/agents?source=app", "source", "`all`"),
        ("/api/agents/shop/stats?from=yesterday", "from", "RFC 3339"),
        ("/api/agents/shop/stats?to=-5", "to", "Unix seconds"),
        (
            "/api/agents/shop/stats?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            "from",
            "before",
        ),
        (
            "/api/agents/shop/stats?bucket=hour&from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z",
            "from",
            "at most 1000",
        ),
        ("/api/agents/shop/stats?limit=3", "limit", "`bucket`"),
        ("/api/agents/sh%20op/stats", "agent", "agent name"),
    ] {
        let (status, body) = get(&gw, "default-key", path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(
            body["error"]["type"], "invalid_request_error",
            "{path}: {body}"
        );
        assert_eq!(body["error"]["param"], param, "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{path}: {message}");
    }
    // 40 days of hours is within the bound.
    let (status, body) = get(
        &gw,
        "default-key",
        "/api/agents/shop/stats?bucket=hour&from=2026-01-01T00:00:00Z&to=2026-02-10T00:00:00Z",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["buckets"].as_array().unwrap().len(), 960);
    // Without a key: no stats.
    let response = client()
        .get(format!("{}/api/agents", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
}

/// `GET /api/cost`: runs and cost per day of each agent and each model over the range, as the
/// cost page draws them; the tenant's own only; bad days refused.
#[tokio::test]
async fn cost_per_agent_and_model_adds_up_to_the_runs() {
    let (_dir, gw) = start();
    for (key, model) in [
        ("default-key", "shop/mock-echo"),
        ("default-key", "shop/mock-two"),
        ("default-key", "desk/mock-two"),
        ("acme-key", "shop/mock-echo"),
    ] {
        assert_eq!(send(&gw, key, model, "hello").await, 200);
    }
    let (status, body) = get(&gw, "default-key", "/api/cost?days=3").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["days"].as_array().unwrap().len(), 3);
    let runs_of = |list: &str, name: &str, key: &str| -> Vec<u64> {
        let found = body[list]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s[name] == key)
            .unwrap_or_else(|| panic!("no {key} in {body}"));
        let daily: Vec<u64> = found["daily"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["runs"].as_u64().unwrap())
            .collect();
        assert_eq!(found["runs"].as_u64().unwrap(), daily.iter().sum::<u64>());
        daily
    };
    // Today is the last day.
    assert_eq!(runs_of("agents", "agent", "shop"), [0, 0, 2]);
    assert_eq!(runs_of("agents", "agent", "desk"), [0, 0, 1]);
    assert_eq!(runs_of("models", "model", "mock-two"), [0, 0, 2]);
    assert_eq!(runs_of("models", "model", "mock-echo"), [0, 0, 1]);
    let two = &body["models"].as_array().unwrap()[1];
    assert_eq!(two["model"], "mock-two");
    assert!(two["cost_usd"].as_f64().unwrap() > 0.0, "{body}");

    let (_, theirs) = get(&gw, "acme-key", "/api/cost").await;
    assert_eq!(theirs["days"].as_array().unwrap().len(), 7);
    assert_eq!(theirs["models"].as_array().unwrap().len(), 1, "{theirs}");
    for bad in [
        "/api/cost?days=0",
        "/api/cost?days=41",
        "/api/cost?days=x",
        "/api/cost?day=3",
    ] {
        let (status, body) = get(&gw, "default-key", bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}
