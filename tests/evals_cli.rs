//! `flowgate bench` against a running flowgate and the mock upstream: it starts the
//! benchmark, shows progress on stderr, and prints the table with the best of each column
//! marked (or the final JSON); bad candidates and unknown versions fail with the API's message
//! and a non-zero exit.

mod common;

use common::*;
use serde_json::{json, Value};

const TENANT_KEY: &str = "bench-cli-key";

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
        + &format!("\n[auth]\napi_keys = [\"{TENANT_KEY}\"]\n")
        + &model("good", "gpt-4o-mini", 1.0, 2.0)
        + &model("sloppy", "gpt-4o-mini;forget=Paris", 1.0, 2.0)
        + &model("dear", "gpt-4o-mini", 100.0, 200.0)
        + &model("judge", "gpt-4o-mini;judge", 1.0, 1.0)
}

async fn send(gw: &Flowgate, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let response = client()
        .request(method, format!("{}{path}", gw.url))
        .bearer_auth(TENANT_KEY)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A version of the agent `geo` (its echo holds the answer), a dataset of 5 capitals and the
/// AI reviewer on the judging model.
async fn prepare(gw: &Flowgate) -> String {
    let (status, _, body) = chat_as(
        gw,
        TENANT_KEY,
        json!({"model": "geo/good",
               "messages": [{"role": "user", "content": "Capital of {{ country }}? It is {{ answer }}."}],
               "input": {"country": "Spain", "answer": "Madrid"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let version = body["version_id"].as_str().unwrap().to_string();
    let items: Vec<Value> = [
        ("France", "Paris"),
        ("Japan", "Tokyo"),
        ("Peru", "Lima"),
        ("Kenya", "Nairobi"),
        ("Chile", "Santiago"),
    ]
    .iter()
    .map(|(country, city)| json!({"input": {"country": country, "answer": city}, "expected": city}))
    .collect();
    let (status, body) = send(
        gw,
        reqwest::Method::POST,
        "/api/agents/geo/datasets",
        json!({"name": "capitals", "items": items}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // Items of messages: what a model alone (no version's templates) can answer.
    let items: Vec<Value> = ["Paris", "Tokyo"]
        .iter()
        .map(|city| json!({"messages": [{"role": "user", "content": format!("Say {city}")}], "expected": city}))
        .collect();
    let (status, body) = send(
        gw,
        reqwest::Method::POST,
        "/api/agents/geo/datasets",
        json!({"name": "greetings", "items": items}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = send(
        gw,
        reqwest::Method::PUT,
        "/api/agents/geo/reviewer",
        json!({"instructions": "Right when it names the expected city.", "model": "judge"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    version
}

/// `flowgate bench …` against `gw`: its exit success, stdout and stderr.
async fn bench(gw: &Flowgate, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .arg("bench")
        .args(args)
        .env("FLOWGATE_URL", &gw.url)
        .env("FLOWGATE_API_KEY", TENANT_KEY)
        .env_remove("FLOWGATE_LOG")
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("flowgate bench runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The table line of a candidate, split into its cells.
fn cells<'a>(table: &'a str, label: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("{label}  ")))
        .unwrap_or_else(|| panic!("no line for {label}:\n{table}"));
    line[label.len()..].split_whitespace().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_prints_the_table_with_the_best_marked_and_json_on_demand() {
    let setup = Setup::start(config);
    let gw = &setup.gw;
    let version = prepare(gw).await;

    let candidates = format!("{version},{version}@sloppy,{version}@dear");
    let (ok, table, progress) = bench(
        gw,
        &[
            "--agent",
            "geo",
            "--dataset",
            "capitals",
            "--candidates",
            &candidates,
            "--concurrency",
            "3",
        ],
    )
    .await;
    assert!(ok, "stdout:\n{table}\nstderr:\n{progress}");
    // Progress on stderr, up to the end.
    assert!(progress.contains("15/15 done"), "{progress}");
    assert!(
        progress.contains("[##############################] 15/15"),
        "{progress}"
    );
    assert!(table.contains("capitals: done (15/15)"), "{table}");
    let header = table.lines().find(|l| l.starts_with("candidate")).unwrap();
    for column in [
        "accuracy",
        "avg latency",
        "p90 latency",
        "avg cost",
        "total cost",
        "errors",
    ] {
        assert!(header.contains(column), "{header}");
    }
    // Cells: accuracy, +/-/?, avg latency (2 words), p90 latency (2), avg and total cost, errors.
    // On its own model (good, named by the server): every answer right, no errors.
    let good = cells(&table, &format!("{version} on good"));
    assert_eq!(good[0], "100.0%*", "{table}");
    assert_eq!(good[1], "5/0/0", "{table}");
    assert_eq!(good[8], "0*", "{table}");
    // The sloppy model forgets Paris: 4 of 5, not the best.
    let sloppy = cells(&table, &format!("{version} on sloppy"));
    assert_eq!(sloppy[0], "80.0%", "{table}");
    assert_eq!(sloppy[1], "4/1/0", "{table}");
    // The cheapest is one of the two cheap models, marked on both cost columns.
    assert!(
        (good[6].ends_with('*') && good[7].ends_with('*'))
            || (sloppy[6].ends_with('*') && sloppy[7].ends_with('*')),
        "{table}"
    );
    // The dear one is right and costs 100 times as much: best accuracy, never the cheapest.
    let dear = cells(&table, &format!("{version} on dear"));
    assert_eq!(dear[0], "100.0%*", "{table}");
    assert!(
        !dear[6].ends_with('*') && !dear[7].ends_with('*'),
        "{table}"
    );
    // The columns line up: each row is as wide as the header or ends at the same column.
    let widths: Vec<usize> = table
        .lines()
        .filter(|l| l.starts_with("candidate") || l.starts_with(version.as_str()))
        .map(str::len)
        .collect();
    assert!(widths.iter().all(|w| *w == widths[0]), "{table}");

    // `--json`: the API's final answer; models alone on a dataset of messages.
    let (ok, out, err) = bench(
        gw,
        &[
            "--agent",
            "geo",
            "--dataset",
            "greetings",
            "--candidates",
            "model:good,model:sloppy",
            "--json",
        ],
    )
    .await;
    assert!(ok, "{out}\n{err}");
    let answer: Value = serde_json::from_str(&out).expect("JSON on stdout");
    assert_eq!(answer["benchmark"]["status"], "done");
    assert_eq!(answer["done"], 4);
    let rows = answer["table"].as_array().unwrap();
    assert_eq!(rows[0]["label"], "good");
    assert_eq!(rows[0]["accuracy"], 1.0, "{answer}");
    assert_eq!(rows[1]["label"], "sloppy");
    assert_eq!(rows[1]["accuracy"], 0.5, "{answer}");
}

#[tokio::test]
async fn bench_refuses_bad_candidates_with_the_reason() {
    let setup = Setup::start(config);
    let gw = &setup.gw;
    prepare(gw).await;
    let before = setup.upstream.requests().len();
    for (candidates, says) in [
        ("no-such-version", "version"),
        ("model:no-such-model", "no-such-model"),
        ("v1@", "is not a candidate"),
    ] {
        let (ok, out, err) = bench(
            gw,
            &[
                "--agent",
                "geo",
                "--dataset",
                "capitals",
                "--candidates",
                candidates,
            ],
        )
        .await;
        assert!(!ok, "{candidates}: {out}");
        assert!(err.contains(says), "{candidates}: {err}");
    }
    let (ok, _, err) = bench(
        gw,
        &[
            "--agent",
            "geo",
            "--dataset",
            "nope",
            "--candidates",
            "model:good",
        ],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("404") && err.contains("nope"), "{err}");
    assert_eq!(setup.upstream.requests().len(), before, "something ran");
}
