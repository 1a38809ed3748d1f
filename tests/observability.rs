//! Tracing: with debug logging asked for, each request and each provider attempt is a span
//! with its fields (`tenant`, `run_id`, `agent`, `model`; `provider`, `model`, `attempt`,
//! `outcome`), so an operator can follow one run through its fallbacks in the log.

mod common;

use std::process::Stdio;

use common::*;
use serde_json::json;

#[tokio::test]
async fn requests_and_attempts_are_spans_with_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = MockUpstream::start();
    let config = base_config(&dir.path().join("data"), Some(&upstream))
        + &model_table(
            "span-failover",
            &[
                offer("upstream", "gpt-4o-mini;status=500", 1.0, 1.0),
                backup_offer(1.0, 1.0),
            ],
            "",
        );
    let config_path = dir.path().join("flowgate.toml");
    std::fs::write(&config_path, config).unwrap();
    let log_path = dir.path().join("flowgate.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = flowgate_command();
    command.env("FLOWGATE_LOG", "warn,flowgate=debug,flowgate_actors=debug");
    let gw = Flowgate::spawn_logging_to(command, &config_path, Stdio::from(log));

    let (status, headers, body) = chat(
        &gw,
        json!({"model": "traced-agent/span-failover", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let run_id = run_id(&headers);
    gw.stop();

    let log = std::fs::read_to_string(&log_path).unwrap();
    let closed: Vec<&str> = log.lines().filter(|l| l.contains("close")).collect();
    let request = closed
        .iter()
        .find(|l| l.contains(&format!("run_id={run_id}")))
        .unwrap_or_else(|| panic!("no request span for {run_id} in:\n{log}"));
    assert!(request.contains("request{"), "{request}");
    assert!(request.contains("tenant=default"), "{request}");
    assert!(request.contains("agent=\"traced-agent\""), "{request}");
    assert!(request.contains("model=\"span-failover\""), "{request}");
    // Both attempts, inside the request's span, each with its outcome.
    let attempts: Vec<&&str> = closed
        .iter()
        .filter(|l| l.contains(&format!("run_id={run_id}")) && l.contains("attempt{"))
        .collect();
    assert_eq!(attempts.len(), 2, "{log}");
    assert!(
        attempts[0].contains("provider=\"upstream\"")
            && attempts[0].contains("attempt=1")
            && attempts[0].contains("outcome=\"upstream_server_error\""),
        "{}",
        attempts[0]
    );
    assert!(
        attempts[1].contains("provider=\"backup\"")
            && attempts[1].contains("attempt=2")
            && attempts[1].contains("outcome=\"ok\""),
        "{}",
        attempts[1]
    );
}

#[tokio::test]
async fn spans_cost_nothing_unless_asked_for() {
    // The default filter (info) logs no span lines for a served request.
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(&dir.path().join("data"), None);
    let config_path = dir.path().join("flowgate.toml");
    std::fs::write(&config_path, config).unwrap();
    let log_path = dir.path().join("flowgate.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = flowgate_command();
    command.env_remove("FLOWGATE_LOG").env_remove("RUST_LOG");
    let gw = Flowgate::spawn_logging_to(command, &config_path, Stdio::from(log));
    let (status, _, _) = ask(&gw, "mock-echo", "hi").await;
    assert_eq!(status, 200);
    gw.stop();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("flowgate listening"), "{log}");
    assert!(!log.contains("request{"), "{log}");
}
