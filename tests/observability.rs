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

/// The value of the series of `name` whose labels include every one of `labels`
/// (`key="value"`), if `/metrics` has it.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest),
            None => (series, ""),
        };
        (series_name == name && labels.iter().all(|l| rest.contains(l)))
            .then(|| value.parse().ok())?
    })
}

/// A gateway with `slow`, a built-in mock provider that takes 400 ms to answer (and to open
/// a stream), behind the model `slow-echo`; and `slower`, one that takes 1.5 s and streams a
/// chunk every 300 ms, behind `slower-echo`.
fn slow_gateway(dir: &std::path::Path) -> Flowgate {
    let config = base_config(&dir.join("data"), None)
        + r#"
[providers.slow]
type = "mock"
latency_ms = 400

[providers.slower]
type = "mock"
latency_ms = 1500
chunk_delay_ms = 300
"# + &model_table("slow-echo", &[offer("slow", "mock-echo", 1.0, 2.0)], "")
        + &model_table("slower-echo", &[offer("slower", "mock-echo", 1.0, 2.0)], "");
    Flowgate::start(dir, &config)
}

#[tokio::test]
async fn gateway_overhead_leaves_out_the_providers_time_and_streams_time_their_first_token() {
    let dir = tempfile::tempdir().unwrap();
    let gw = slow_gateway(dir.path());
    let (status, _, body) = ask(&gw, "obs-agent/slow-echo", "whole").await;
    assert_eq!(status, 200, "{body}");
    let (status, _, events) = chat_stream(
        &gw,
        json!({"model": "obs-agent/slow-echo", "messages": user("streamed"), "stream": true}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(events.last().is_some_and(|e| e == "[DONE]"), "{events:?}");

    let text = poll_until(
        100,
        || metrics(&gw),
        |text| {
            // And the recorder has written both runs: on a busy machine its queue may still
            // hold one when the metrics first count both requests.
            ["stream=\"false\"", "stream=\"true\""]
                .iter()
                .all(|stream| {
                    sample(text, "flowgate_gateway_overhead_seconds_count", &[stream]) == Some(1.0)
                })
                && sample(text, "flowgate_recorder_queue_depth", &[]) == Some(0.0)
        },
    )
    .await;
    for stream in ["stream=\"false\"", "stream=\"true\""] {
        let duration = sample(&text, "flowgate_request_duration_seconds_sum", &[stream]).unwrap();
        let overhead = sample(&text, "flowgate_gateway_overhead_seconds_sum", &[stream]).unwrap();
        let count = sample(&text, "flowgate_gateway_overhead_seconds_count", &[stream]);
        assert_eq!(count, Some(1.0), "{stream}\n{text}");
        // The provider took 400 ms of the request; flowgate's own part is a few ms.
        assert!(duration >= 0.4, "{stream}: duration {duration}\n{text}");
        assert!(overhead < 0.2, "{stream}: overhead {overhead}\n{text}");
    }
    // The stream's first token came after the provider's 400 ms; only streams are timed.
    let ttft = ["provider=\"slow\"", "model=\"slow-echo\""];
    assert_eq!(
        sample(&text, "flowgate_time_to_first_token_seconds_count", &ttft),
        Some(1.0),
        "{text}"
    );
    let first = sample(&text, "flowgate_time_to_first_token_seconds_sum", &ttft).unwrap();
    assert!((0.4..5.0).contains(&first), "{first}");
    // Cost and tokens by tenant, agent and model; upstream latency by provider and model.
    let who = [
        "tenant=\"default\"",
        "agent=\"obs-agent\"",
        "model=\"slow-echo\"",
        "provider=\"slow\"",
    ];
    assert!(
        sample(&text, "flowgate_cost_usd_total", &who).is_some_and(|c| c > 0.0),
        "{text}"
    );
    let prompt = [&who[..], &["kind=\"prompt\""]].concat();
    assert!(
        sample(&text, "flowgate_tokens_total", &prompt).is_some_and(|t| t > 0.0),
        "{text}"
    );
    let upstream = ["provider=\"slow\"", "model=\"mock-echo\""];
    assert_eq!(
        sample(&text, "flowgate_upstream_duration_seconds_count", &upstream),
        Some(2.0),
        "{text}"
    );
    assert!(sample(&text, "flowgate_storage_size_bytes", &[]).is_some_and(|b| b > 0.0));
    assert_eq!(
        sample(&text, "flowgate_recorder_queue_depth", &[]),
        Some(0.0)
    );
    gw.stop();
}

#[tokio::test]
async fn requests_in_flight_are_counted_until_answered_or_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    let gw = slow_gateway(dir.path());
    let in_flight = |text: &String| sample(text, "flowgate_requests_in_flight", &[]);
    assert_eq!(in_flight(&metrics(&gw).await), Some(0.0));

    // A whole answer: counted while the provider works, not after.
    let url = gw.chat_url();
    let request = tokio::spawn(async move {
        client()
            .post(url)
            .bearer_auth("any")
            .json(&json!({"model": "slower-echo", "messages": user("wait")}))
            .send()
            .await
            .unwrap()
            .status()
    });
    let during = poll_until(50, || metrics(&gw), |t| in_flight(t) == Some(1.0)).await;
    assert_eq!(in_flight(&during), Some(1.0), "{during}");
    assert_eq!(request.await.unwrap(), 200);
    let after = poll_until(50, || metrics(&gw), |t| in_flight(t) == Some(0.0)).await;
    assert_eq!(in_flight(&after), Some(0.0), "{after}");

    // A stream the client walks away from after its first chunk.
    let mut response = client()
        .post(gw.chat_url())
        .bearer_auth("any")
        .json(
            &json!({"model": "slower-echo", "messages": user("one two three four five six"),
                      "stream": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.chunk().await.unwrap().is_some());
    assert_eq!(in_flight(&metrics(&gw).await), Some(1.0));
    drop(response);
    let after = poll_until(100, || metrics(&gw), |t| in_flight(t) == Some(0.0)).await;
    assert_eq!(in_flight(&after), Some(0.0), "{after}");
    // The abandoned stream is a 499 `cancelled` request.
    let cancelled = ["status=\"499\"", "code=\"cancelled\"", "stream=\"true\""];
    let counted = poll_until(
        100,
        || metrics(&gw),
        |t| sample(t, "flowgate_requests_total", &cancelled).is_some(),
    )
    .await;
    assert_eq!(
        sample(&counted, "flowgate_requests_total", &cancelled),
        Some(1.0),
        "{counted}"
    );
    gw.stop();
}
