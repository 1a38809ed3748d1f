//! Evaluations through the real binary against the mock upstream: candidates that really
//! differ (one right, one wrong on an item, one slower, one dearer) judged by a scripted AI
//! reviewer; a benchmark that survives a restart with every item done once; datasets from
//! runs, JSON Lines in and out; people's reviews; refusals before anything runs.

mod common;

use common::*;
use serde_json::{json, Value};

const TENANT_KEY: &str = "evals-tenant-key";
const ADMIN_KEY: &str = "evals-admin-key";
const OTHER_KEY: &str = "evals-other-key";

fn config(data_dir: &std::path::Path, upstream: &MockUpstream) -> String {
    let plain = "supports = { structured_output = true, json_mode = true }";
    let model = |id: &str, upstream_model: &str, input: f64, output: f64| {
        model_table(
            id,
            &[offer("upstream", upstream_model, input, output)],
            plain,
        )
    };
    base_config(data_dir, Some(upstream))
        + &format!(
            "\n[auth]\napi_keys = [\"{TENANT_KEY}\"]\n[auth.tenants.other]\napi_keys = [\"{OTHER_KEY}\"]\n\
             [admin]\napi_keys = [{{ key = \"{ADMIN_KEY}\", label = \"release-bot\" }}]\n"
        )
        + &model("good", "gpt-4o-mini", 1.0, 2.0)
        + &model("sloppy", "gpt-4o-mini;forget=Paris", 1.0, 2.0)
        + &model("slow", "gpt-4o-mini;delay_ms=150", 1.0, 2.0)
        + &model("dear", "gpt-4o-mini", 100.0, 200.0)
        + &model("snail", "gpt-4o-mini;delay_ms=400", 1.0, 2.0)
        + &model("judge", "gpt-4o-mini;judge", 1.0, 1.0)
}

async fn call(
    gw: &Flowgate,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    key: &str,
) -> (u16, Value) {
    let mut request = client()
        .request(method, format!("{}{path}", gw.url))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn post(gw: &Flowgate, path: &str, body: Value) -> (u16, Value) {
    call(gw, reqwest::Method::POST, path, Some(body), TENANT_KEY).await
}

async fn get(gw: &Flowgate, path: &str) -> (u16, Value) {
    call(gw, reqwest::Method::GET, path, None, TENANT_KEY).await
}

const CAPITALS: [(&str, &str); 5] = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Peru", "Lima"),
    ("Kenya", "Nairobi"),
    ("Chile", "Santiago"),
];

/// The agent's version: a template whose echo holds the answer.
async fn version(gw: &Flowgate) -> String {
    let (status, _, body) = chat_as(
        gw,
        TENANT_KEY,
        json!({"model": "geo/good",
               "messages": [{"role": "user", "content": "Capital of {{ country }}? It is {{ answer }}."}],
               "input": {"country": "Spain", "answer": "Madrid"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["version_id"].as_str().unwrap().to_string()
}

async fn dataset(gw: &Flowgate, name: &str, count: usize) {
    let items: Vec<Value> = CAPITALS
        .iter()
        .cycle()
        .take(count)
        .enumerate()
        .map(|(i, (country, city))| {
            json!({"input": {"country": country, "answer": city, "n": i}, "expected": city})
        })
        .collect();
    let (status, body) = post(
        gw,
        "/api/agents/geo/datasets",
        json!({"name": name, "items": items}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["items"], count);
}

async fn until_done(gw: &Flowgate, path: &str) -> Value {
    for _ in 0..400 {
        let (status, body) = get(gw, path).await;
        assert_eq!(status, 200, "{body}");
        if body["benchmark"]["status"] != "running" {
            return body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the benchmark did not finish");
}

#[actix_rt::test]
async fn a_benchmark_table_shows_what_each_candidate_really_did() {
    let setup = Setup::start(config);
    let gw = &setup.gw;
    let version = version(gw).await;
    dataset(gw, "capitals", 5).await;
    let (status, _) = call(
        gw,
        reqwest::Method::PUT,
        "/api/agents/geo/reviewer",
        Some(json!({"instructions": "Right when it names the expected city.", "model": "judge"})),
        TENANT_KEY,
    )
    .await;
    assert_eq!(status, 200);
    let (status, created) = post(
        gw,
        "/api/agents/geo/benchmarks",
        json!({"dataset": "capitals", "concurrency": 4, "candidates": [
            {"version_id": version},
            {"version_id": version, "model": "sloppy"},
            {"version_id": version, "model": "slow"},
            {"version_id": version, "model": "dear"}]}),
    )
    .await;
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["benchmark"]["total"], 20);
    let id = created["benchmark"]["id"].as_str().unwrap().to_string();
    let done = until_done(gw, &format!("/api/agents/geo/benchmarks/{id}")).await;
    assert_eq!(done["benchmark"]["status"], "done", "{done}");
    assert_eq!(done["done"], 20);
    let rows = done["table"].as_array().unwrap();
    let row = |label: &str| {
        rows.iter()
            .find(|r| r["label"] == label)
            .unwrap_or_else(|| panic!("no row {label}: {rows:?}"))
    };
    let good = row(&format!("{version} on good"));
    let sloppy = row(&format!("{version} on sloppy"));
    let slow = row(&format!("{version} on slow"));
    let dear = row(&format!("{version} on dear"));
    // Accuracy: the sloppy model forgets Paris, 1 item in 5.
    assert_eq!(good["accuracy"], 1.0, "{good}");
    assert_eq!(sloppy["accuracy"], 0.8, "{sloppy}");
    assert_eq!(
        (sloppy["positive"].as_u64(), sloppy["negative"].as_u64()),
        (Some(4), Some(1))
    );
    let best = |r: &Value, column: &str| r["best"].as_array().unwrap().iter().any(|c| c == column);
    assert!(best(good, "accuracy") && best(slow, "accuracy") && best(dear, "accuracy"));
    assert!(!best(sloppy, "accuracy"));
    // Latency: the slow one waits 150 ms a call.
    let latency = |r: &Value| r["avg_latency_seconds"].as_f64().unwrap();
    assert!(latency(slow) >= 0.15, "{slow}");
    assert!(latency(good) < latency(slow) && latency(dear) < latency(slow));
    assert!(!best(slow, "avg_latency_seconds"));
    // Cost: the dear one costs 100 times as much per token.
    let cost = |r: &Value| r["avg_cost_usd"].as_f64().unwrap();
    assert!(cost(dear) > 50.0 * cost(good), "{dear} vs {good}");
    assert!(!best(dear, "avg_cost_usd"));
    assert_eq!(good["errors"], 0);

    // Side by side: the item the sloppy model got wrong, with both reviews.
    let (status, side) = get(
        gw,
        &format!("/api/agents/geo/benchmarks/{id}/compare?a=0&b=1"),
    )
    .await;
    assert_eq!(status, 200);
    let paris = &side["items"][0];
    assert_eq!(paris["expected"], "Paris");
    assert_eq!(paris["a"]["verdict"], "positive");
    assert_eq!(paris["b"]["verdict"], "negative");
    assert!(!paris["b"]["output"].as_str().unwrap().contains("Paris"));

    // The reviewer's runs are recorded under its own agent, with their cost.
    let (status, runs) = get(gw, "/api/agents/flowgate-reviewer/runs").await;
    assert_eq!(status, 200);
    let reviewed = runs["items"].as_array().unwrap();
    assert!(!reviewed.is_empty() && reviewed.len() <= 20, "{runs}");
    assert!(reviewed
        .iter()
        .all(|r| r["cost_usd"].as_f64().unwrap() > 0.0));

    // Another tenant sees none of it.
    let (status, _) = call(
        gw,
        reqwest::Method::GET,
        &format!("/api/agents/geo/benchmarks/{id}"),
        None,
        OTHER_KEY,
    )
    .await;
    assert_eq!(status, 404);
}

#[actix_rt::test]
async fn a_benchmark_survives_a_restart_with_every_item_done_once() {
    let setup = Setup::start(config);
    let version = version(&setup.gw).await;
    dataset(&setup.gw, "many", 8).await;
    let (status, created) = post(
        &setup.gw,
        "/api/agents/geo/benchmarks",
        json!({"dataset": "many", "concurrency": 1,
               "candidates": [{"version_id": version, "model": "snail"}]}),
    )
    .await;
    assert_eq!(status, 202, "{created}");
    let id = created["benchmark"]["id"].as_str().unwrap().to_string();
    let path = format!("/api/agents/geo/benchmarks/{id}");
    // Stop it halfway: some items done, one in flight.
    loop {
        let (_, state) = get(&setup.gw, &path).await;
        if state["done"].as_u64().unwrap() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let Setup { dir, upstream, gw } = setup;
    gw.stop();
    let gw = Flowgate::start_with(&dir.path().join("flowgate.toml"));
    let (_, middle) = get(&gw, &path).await;
    let after_restart = middle["done"].as_u64().unwrap();
    assert!(after_restart < 8, "it was not stopped halfway: {middle}");
    let done = until_done(&gw, &path).await;
    assert_eq!(done["benchmark"]["status"], "done");
    assert_eq!(done["done"], 8);
    // Every item ran once: one run each, none twice.
    let (status, runs) = post(
        &gw,
        "/api/agents/geo/runs/search",
        json!({"field_queries": [{"field": "metadata.benchmark_id", "operator": "is", "values": [id]}],
               "limit": 100}),
    )
    .await;
    assert_eq!(status, 200, "{runs}");
    assert_eq!(runs["items"].as_array().unwrap().len(), 8, "{runs}");
    drop(upstream);
}

/// Asks `geo/good` the capital template with `country` and `city` as its input.
async fn ask_capital(
    gw: &Flowgate,
    country: &str,
    city: &str,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Value) {
    chat_as(
        gw,
        TENANT_KEY,
        json!({"model": "geo/good",
               "messages": [{"role": "user", "content": "Capital of {{ c }}: {{ a }}"}],
               "input": {"c": country, "a": city}}),
    )
    .await
}

/// Makes dataset `name` of `geo` from the runs whose `field` is `value`.
async fn dataset_from_search(gw: &Flowgate, name: &str, field: &str, value: &str) -> (u16, Value) {
    post(
        gw,
        "/api/agents/geo/datasets",
        json!({"name": name,
               "search": {"field_queries": [{"field": field, "operator": "is", "values": [value]}]}}),
    )
    .await
}

#[actix_rt::test]
async fn datasets_from_runs_and_json_lines_and_reviews_by_people() {
    let setup = Setup::start(config);
    let gw = &setup.gw;
    let mut ids = Vec::new();
    for (country, city) in &CAPITALS[..3] {
        let (status, headers, _) = ask_capital(gw, country, city).await;
        assert_eq!(status, 200);
        ids.push(run_id(&headers));
    }
    // From a search, at once: the search waits for the recorder to write the runs just sent.
    let (status, made) = dataset_from_search(gw, "from-search", "status", "success").await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["items"], 3, "{made}");
    // By environment, as the search API reads it: the version deployed to production when the
    // run ran (the three above ran before it was deployed).
    let (status, _, answer) = ask_capital(gw, "Chile", "Santiago").await;
    assert_eq!(status, 200, "{answer}");
    let version = answer["version_id"].as_str().unwrap();
    let (status, deployed) = call(
        gw,
        reqwest::Method::POST,
        &format!("/api/agents/geo/versions/{version}/deploy"),
        Some(json!({"environment": "production"})),
        ADMIN_KEY,
    )
    .await;
    assert_eq!(status, 200, "{deployed}");
    let (status, headers, _) = ask_capital(gw, "Kenya", "Nairobi").await;
    assert_eq!(status, 200);
    let (status, made) = dataset_from_search(gw, "from-production", "version", "production").await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["items"], 1, "{made}");
    let exported = client()
        .get(format!(
            "{}/api/agents/geo/datasets/from-production/export",
            gw.url
        ))
        .bearer_auth(TENANT_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let item: Value = serde_json::from_str(exported.trim()).unwrap();
    assert_eq!(item["source_run"], run_id(&headers).as_str(), "{exported}");
    // Runs are written within the recorder's flush interval.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, made) = post(
        gw,
        "/api/agents/geo/datasets",
        json!({"name": "from-runs", "run_ids": [ids[0], ids[1], ids[0]]}),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    // The same input twice is one item.
    assert_eq!(made["items"], 2);
    // JSON Lines in, the same out.
    let lines = "{\"input\": {\"c\": \"Peru\", \"a\": \"Lima\"}, \"expected\": \"Lima\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n";
    let response = client()
        .post(format!(
            "{}/api/agents/geo/datasets/from-runs/items",
            gw.url
        ))
        .bearer_auth(TENANT_KEY)
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let added: Value = response.json().await.unwrap();
    assert_eq!(added["added"], 2);
    let exported = client()
        .get(format!(
            "{}/api/agents/geo/datasets/from-runs/export",
            gw.url
        ))
        .bearer_auth(TENANT_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported.len(), 4);
    assert_eq!(exported[0]["source_run"], ids[0].as_str());
    assert_eq!(exported[2]["expected"], "Lima");
    // A bad line names its number.
    let response = client()
        .post(format!(
            "{}/api/agents/geo/datasets/from-runs/items",
            gw.url
        ))
        .bearer_auth(TENANT_KEY)
        .header("content-type", "application/x-ndjson")
        .body("{\"input\": 1}\n{\"colour\": 2}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("line 2"));

    // A person's review of a run, on its input and output.
    let (status, review) = post(
        gw,
        "/api/agents/geo/reviews",
        json!({"run_id": ids[2], "verdict": "negative", "comment": "too terse"}),
    )
    .await;
    assert_eq!(status, 200, "{review}");
    assert_eq!(review["reviewer"]["kind"], "user");
    let (_, reviews) = get(gw, "/api/agents/geo/reviews").await;
    assert_eq!(reviews["data"].as_array().unwrap().len(), 1);
    let (status, _) = post(
        gw,
        "/api/agents/geo/reviews",
        json!({"run_id": ids[2], "verdict": "great"}),
    )
    .await;
    assert_eq!(status, 400);
}

#[actix_rt::test]
async fn bad_benchmarks_are_refused_before_anything_runs() {
    let setup = Setup::start(config);
    let gw = &setup.gw;
    let version = version(gw).await;
    dataset(gw, "capitals", 2).await;
    let (status, _) = post(gw, "/api/agents/geo/datasets", json!({"name": "empty"})).await;
    assert_eq!(status, 201);
    let before = setup.upstream.requests().len();
    let cases = [
        (
            json!({"dataset": "capitals", "candidates": [{"version_id": "nope"}]}),
            404,
        ),
        (
            json!({"dataset": "empty", "candidates": [{"version_id": version}]}),
            400,
        ),
        (
            json!({"dataset": "missing", "candidates": [{"version_id": version}]}),
            404,
        ),
        (
            json!({"dataset": "capitals", "candidates": [{"model": "no-such-model"}]}),
            400,
        ),
        (json!({"dataset": "capitals", "candidates": []}), 400),
        (json!({"dataset": "capitals", "candidates": [{}]}), 400),
        (
            json!({"dataset": "capitals", "candidates": [{"model": "good"}], "concurrency": 0}),
            400,
        ),
        (
            json!({"dataset": "capitals", "candidates": [{"model": "good"}], "colour": 1}),
            400,
        ),
        (
            json!({"dataset": "capitals", "candidates": [{"model": "good"}, {"model": "good"}]}),
            400,
        ),
    ];
    for (body, status) in cases {
        let (got, answer) = post(gw, "/api/agents/geo/benchmarks", body.clone()).await;
        assert_eq!(got, status, "{body} → {answer}");
    }
    assert_eq!(setup.upstream.requests().len(), before, "something ran");
    let (_, list) = get(gw, "/api/agents/geo/benchmarks").await;
    assert_eq!(list["data"], json!([]));
    // Datasets: a bad name, an item without input, a name taken.
    for (body, status) in [
        (json!({"name": "Not A Slug"}), 400),
        (json!({"name": "x", "items": [{"expected": "y"}]}), 400),
        (json!({"name": "capitals"}), 400),
        (
            json!({"name": "long", "description": "x".repeat(5000)}),
            400,
        ),
    ] {
        let (got, answer) = post(gw, "/api/agents/geo/datasets", body.clone()).await;
        assert_eq!(got, status, "{body} → {answer}");
    }
}
