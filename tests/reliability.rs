//! Reliability under faults: circuit breakers open, skip and close; timeouts and dead
//! providers fall back; `/api/providers` and the metrics show it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn config(dir: &std::path::Path, upstream: &MockUpstream) -> String {
    // A closed port: bind, read the port, drop the listener.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    base_config(&dir.join("data"), Some(upstream))
        + &format!(
            r#"
[providers.flaky]
type = "openai"
base_url = "{url}"
api_key = "flaky-secret"
breaker = {{ failure_threshold = 2, cooldown = 1.0, error_rate_threshold = 1.1 }}

[providers.slow]
type = "openai"
base_url = "{url}"
api_key = "slow-secret"
timeouts = {{ first_byte_seconds = 0.3, idle_seconds = 0.3 }}

[providers.dead]
type = "openai"
base_url = "http://127.0.0.1:{dead_port}/v1"
api_key = "dead-secret"

[retries]
max_retries = 0

[hedging]
agents = ["hedged"]
after_ms = 100

[models."rel-hedge"]
providers = [
  {{ provider = "upstream", model = "gpt-4o-mini;delay_ms=1500", input_per_mtok = 1.0, output_per_mtok = 1.0 }},
  {{ provider = "backup", model = "gpt-4o-mini", input_per_mtok = 2.0, output_per_mtok = 2.0 }},
]

[models."rel-breaker"]
providers = [
  {{ provider = "flaky", model = "gpt-4o-mini;status=500;fail_first=2", input_per_mtok = 1.0, output_per_mtok = 1.0 }},
  {{ provider = "backup", model = "gpt-4o-mini", input_per_mtok = 1.0, output_per_mtok = 1.0 }},
]

[models."rel-hang"]
providers = [
  {{ provider = "slow", model = "gpt-4o-mini;hang", input_per_mtok = 1.0, output_per_mtok = 1.0 }},
  {{ provider = "backup", model = "gpt-4o-mini", input_per_mtok = 1.0, output_per_mtok = 1.0 }},
]

[models."rel-forever"]
providers = [
  {{ provider = "upstream", model = "gpt-4o-mini;hang", input_per_mtok = 1.0, output_per_mtok = 1.0 }},
]

[models."rel-slow-first-byte"]
providers = [
  {{ provider = "slow", model = "gpt-4o-mini;ttfb_ms=3000", input_per_mtok = 1.0, output_per_mtok = 1.0 }},
  {{ provider = "backup", model = "gpt-4o-mini", input_per_mtok = 1.0, output_per_mtok = 1.0 }},
]

[models."rel-dead"]
providers = [
  {{ provider = "dead", model = "gpt-4o-mini", input_per_mtok = 1.0, output_per_mtok = 1.0 }},
  {{ provider = "backup", model = "gpt-4o-mini", input_per_mtok = 1.0, output_per_mtok = 1.0 }},
]
"#,
            url = upstream.base_url()
        )
}

fn flaky_calls(upstream: &MockUpstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| {
            r.headers.get("authorization").map(String::as_str) == Some("Bearer flaky-secret")
        })
        .count()
}

async fn provider_state(gw: &Flowgate, name: &str) -> Value {
    let (status, body) = get_json(gw, "/api/providers").await;
    assert_eq!(status, 200, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no provider {name}: {body}"))
}

#[tokio::test]
async fn the_breaker_opens_skips_the_provider_then_probes_and_closes() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = MockUpstream::start();
    let gw = Flowgate::start(dir.path(), &config(dir.path(), &upstream));

    for _ in 0..2 {
        let (status, headers, _) =
            chat(&gw, json!({"model": "rel-breaker", "messages": user("hi")})).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-flowgate-provider"], "backup");
    }
    assert_eq!(flaky_calls(&upstream), 2);
    // Outcomes reach the provider actor without blocking requests; wait until it published.
    let mut flaky = provider_state(&gw, "flaky").await;
    for _ in 0..50 {
        if flaky["health"]["state"] == "open" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        flaky = provider_state(&gw, "flaky").await;
    }
    assert_eq!(flaky["health"]["state"], "open", "{flaky}");
    assert_eq!(flaky["health"]["failures_total"], 2);
    assert!(flaky["health"]["retry_in_seconds"].as_f64().unwrap() <= 1.0);

    // Open: the provider is not called at all.
    for _ in 0..3 {
        let (status, headers, _) =
            chat(&gw, json!({"model": "rel-breaker", "messages": user("hi")})).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-flowgate-provider"], "backup");
    }
    assert_eq!(
        flaky_calls(&upstream),
        2,
        "no call while the circuit is open"
    );
    let (_, metrics) = get_json(&gw, "/metrics").await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("flowgate_circuit_state{provider=\"flaky\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flowgate_circuit_transitions_total{provider=\"flaky\",to=\"open\"} 1"),
        "{metrics}"
    );

    // After the cool-down one probe goes through; it succeeds (fail_first=2), so it closes.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        provider_state(&gw, "flaky").await["health"]["state"],
        "half_open"
    );
    let (status, headers, _) =
        chat(&gw, json!({"model": "rel-breaker", "messages": user("hi")})).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-flowgate-provider"], "flaky");
    let mut state = Value::Null;
    for _ in 0..50 {
        state = provider_state(&gw, "flaky").await["health"]["state"].clone();
        if state == "closed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state, "closed");
}

#[tokio::test]
async fn hangs_slow_first_bytes_and_dead_providers_fall_back_with_the_reason_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = MockUpstream::start();
    let gw = Flowgate::start(dir.path(), &config(dir.path(), &upstream));

    for (model, stream, error) in [
        ("rel-hang", false, "timeout"),
        ("rel-hang", true, "timeout"),
        ("rel-slow-first-byte", true, "timeout"),
        ("rel-dead", false, "upstream_connection"),
        ("rel-dead", true, "upstream_connection"),
    ] {
        let body = json!({"model": model, "stream": stream, "messages": user("still answered")});
        let headers = if stream {
            let (status, headers, events) = chat_stream(&gw, body).await;
            assert_eq!(status, 200, "{model}");
            assert_eq!(events.last().unwrap(), "[DONE]", "{model}");
            headers
        } else {
            let (status, headers, body) = chat(&gw, body).await;
            assert_eq!(status, 200, "{model}: {body}");
            assert_eq!(body["choices"][0]["message"]["content"], "still answered");
            headers
        };
        assert_eq!(
            headers["x-flowgate-provider"], "backup",
            "{model} stream={stream}"
        );
        let run_id = headers["x-flowgate-run-id"].to_str().unwrap();
        let (_, run) = get_json(&gw, &format!("/api/runs/{run_id}")).await;
        assert_eq!(
            run["attempts"][0]["error"], error,
            "{model} stream={stream}: {run}"
        );
        assert_eq!(run["attempts"][1]["provider"], "backup");
        assert!(!run.to_string().contains("dead-secret"));
    }
}

#[tokio::test]
async fn hedged_agents_get_the_faster_provider_and_others_wait() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = MockUpstream::start();
    let gw = Flowgate::start(dir.path(), &config(dir.path(), &upstream));

    let (status, headers, body) = chat(
        &gw,
        json!({"model": "hedged/rel-hedge", "messages": user("race")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-provider"], "backup");
    // Priced at the provider that answered.
    let usage = &body["usage"];
    let expected = (usage["prompt_tokens"].as_f64().unwrap()
        + usage["completion_tokens"].as_f64().unwrap())
        * 2.0
        / 1e6;
    assert!((body["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-15);
    let run_id = headers["x-flowgate-run-id"].to_str().unwrap();
    let (_, run) = get_json(&gw, &format!("/api/runs/{run_id}")).await;
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{run}");
    assert_eq!(attempts[0]["provider"], "upstream");
    assert_eq!(attempts[0]["error"], "cancelled");
    assert_eq!(attempts[1]["provider"], "backup");
    assert_eq!(attempts[1]["reason"], "hedge");
    assert_eq!(attempts[1]["status"], 200);

    // An agent that did not opt in waits for the first provider.
    let (status, headers, _) = chat(
        &gw,
        json!({"model": "plain/rel-hedge", "messages": user("no race")}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-flowgate-provider"], "upstream");
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_call_and_the_run_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = MockUpstream::start();
    let gw = Flowgate::start(dir.path(), &config(dir.path(), &upstream));
    // The provider never answers (and has the default, minutes-long timeouts); the client
    // gives up after 300 ms.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let result = impatient
        .post(gw.chat_url())
        .json(
            &json!({"model": "gone/rel-forever", "use_fallback": "never",
            "messages": user("are you there?")}),
        )
        .send()
        .await;
    assert!(result.is_err(), "the client timed out");
    // The run is recorded as cancelled long before the provider's own timeouts would end it.
    let mut runs = Value::Null;
    for _ in 0..100 {
        let (_, page) = get_json(&gw, "/api/agents/gone/runs").await;
        if page["items"].as_array().is_some_and(|i| !i.is_empty()) {
            runs = page;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(runs["items"][0]["status"], "cancelled", "{runs}");
    let (_, run) = get_json(
        &gw,
        &format!("/api/runs/{}", runs["items"][0]["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(run["error"]["error"]["code"], "cancelled");
    assert_eq!(run["attempts"].as_array().map(Vec::len), Some(0), "{run}");
}
