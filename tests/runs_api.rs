//! Runs are recorded once per request, listed newest first, and survive restarts and `kill -9`;
//! the catalog and operations endpoints.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn list_all(gw: &Flowgate, agent: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/agents/{agent}/runs?limit={limit}&cursor={c}"),
            None => format!("/api/agents/{agent}/runs?limit={limit}"),
        };
        let (status, page) = get_json(gw, &path).await;
        assert_eq!(status, 200, "{page}");
        let got = page["items"].as_array().unwrap();
        assert!(got.len() <= limit);
        items.extend(got.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    items
}

#[tokio::test]
async fn every_request_is_one_run_listed_newest_first_and_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(&dir.path().join("data"), None);
    let gw = Flowgate::start(dir.path(), &config);
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, headers, _) = ask(&gw, "ledger/mock-echo", &format!("message {i}")).await;
        assert_eq!(status, 200);
        ids.push(run_id(&headers));
    }
    // Failed requests are runs too, under the agent they named.
    let (status, headers, _) = ask(&gw, "ledger/no-such-model", "x").await;
    assert_eq!(status, 404);
    // The error names its run, so a client can look it up.
    let error_run_id = run_id(&headers);
    let (status, _, _) = chat(
        &gw,
        json!({"model": "ledger/mock-echo", "messages": "not a list"}),
    )
    .await;
    assert_eq!(status, 400);
    let (_, _, events) = chat_stream(
        &gw,
        json!({"model": "ledger/mock-echo", "stream": true, "messages": user("streamed")}),
    )
    .await;
    assert_eq!(events.last().unwrap(), "[DONE]");

    let runs = list_all(&gw, "ledger", 3).await;
    assert_eq!(runs.len(), 8, "{runs:?}");
    let statuses: Vec<&str> = runs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == "error").count(), 2);
    // Newest first: the five successes come last, in reverse order of sending.
    let tail: Vec<String> = runs[3..]
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(tail, expected);

    let error_run = get_run(&gw, runs[1]["id"].as_str().unwrap()).await;
    assert_eq!(error_run["status"], "error");
    assert_eq!(error_run["error"]["error"]["param"], "messages");
    let not_found_run = get_run(&gw, &error_run_id).await;
    assert_eq!(not_found_run["error"]["error"]["code"], "model_not_found");

    // Graceful restart keeps everything.
    gw.stop();
    let gw = Flowgate::start_with(&dir.path().join("flowgate.toml"));
    assert_eq!(list_all(&gw, "ledger", 50).await.len(), 8);
    let run = get_run(&gw, &ids[0]).await;
    assert_eq!(
        run["output"]["choices"][0]["message"]["content"],
        "message 0"
    );
    assert_eq!(run["agent"], "ledger");
    assert!(run.get("feedback_token").is_none());

    // kill -9 after the flush interval (50 ms here) loses nothing.
    let (status, headers, _) = ask(&gw, "ledger/mock-echo", "last").await;
    assert_eq!(status, 200);
    let last_id = run_id(&headers);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    gw.kill9();
    let gw = Flowgate::start_with(&dir.path().join("flowgate.toml"));
    let run = get_run(&gw, &last_id).await;
    assert_eq!(run["output"]["choices"][0]["message"]["content"], "last");
    assert_eq!(list_all(&gw, "ledger", 50).await.len(), 9);

    let (status, body) = get_json(&gw, "/api/runs/01890000-0000-7000-8000-000000000000").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = get_json(&gw, "/api/runs/not-a-uuid").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn models_health_readiness_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = MockUpstream::start();
    let config = base_config(&dir.path().join("data"), Some(&upstream))
        + "\n[providers.openai]\ntype = \"openai\"\napi_key = \"${FLOWGATE_TEST_SURELY_UNSET}\"\n";
    let gw = Flowgate::start(dir.path(), &config);

    let (status, models) = get_json(&gw, "/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    let data = models["data"].as_array().unwrap();
    let echo = data.iter().find(|m| m["id"] == "mock-echo").unwrap();
    assert_eq!(echo["object"], "model");
    assert_eq!(echo["available"], true);
    assert_eq!(echo["pricing"]["input_per_mtok"], 0.15);
    assert!(echo["context_window"].is_number());
    assert_eq!(echo["supports"]["structured_output"], true);
    let mini = data
        .iter()
        .find(|m| m["id"] == "gpt-4o-mini-latest")
        .unwrap();
    assert_eq!(mini["available"], false, "openai has no key here");
    assert_eq!(mini["aliases"][0], "gpt-4o-mini");
    let (status, one) = get_json(&gw, "/v1/models/gpt-4o-mini").await;
    assert_eq!(status, 200);
    assert_eq!(one["id"], "gpt-4o-mini-latest");

    let (status, health) = get_json(&gw, "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    let (status, ready) = get_json(&gw, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["providers"]["openai"]["enabled"], false);
    assert_eq!(
        ready["providers"]["openai"]["disabled_reason"],
        "FLOWGATE_TEST_SURELY_UNSET is not set"
    );
    assert_eq!(ready["providers"]["mock"]["health"]["state"], "closed");

    let (status, _, _) = ask(&gw, "mock-echo", "count me").await;
    assert_eq!(status, 200);
    // The recorder has written the run once the runs API answers for it.
    let _ = get_json(&gw, "/api/agents/default/runs").await;
    let text = metrics(&gw).await;
    for sample in [
        "flowgate_requests_total{code=\"ok\",status=\"200\",stream=\"false\"} 1",
        "flowgate_runs_recorded_total 1",
        "flowgate_upstream_attempts_total{outcome=\"ok\",provider=\"mock\"} 1",
        "flowgate_circuit_state{provider=\"mock\"} 0",
    ] {
        assert_sample(&text, sample);
    }
}

/// Runs `flowgate <command> --config <config>` to its end.
fn run_flowgate(command: &str, config: impl AsRef<std::ffi::OsStr>) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args([command, "--config"])
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn check_config_accepts_the_shipped_config_and_rejects_bad_ones() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = run_flowgate("check-config", format!("{root}/config/flowgate.toml"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[providers.openai]\ntype = \"openai\"\nbase_ur = \"x\"\n",
    )
    .unwrap();
    let out = run_flowgate("check-config", &bad);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("providers.openai") && stderr.contains("base_ur"),
        "{stderr}"
    );

    // No API key and a public address: refuse to start.
    std::fs::write(&bad, "[server]\nlisten = \"0.0.0.0:0\"\n").unwrap();
    let out = run_flowgate("serve", &bad);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing"));
}
