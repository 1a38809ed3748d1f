//! Reliability under faults: circuit breakers open, skip and close; timeouts and dead
//! providers fall back; `/api/providers` and the metrics show it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn config(data_dir: &std::path::Path, upstream: &MockUpstream) -> String {
    // A closed port: bind, read the port, drop the listener.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mini = |provider: &str, directives: &str| {
        offer(provider, &format!("gpt-4o-mini;{directives}"), 1.0, 1.0)
    };
    let backup = backup_offer(1.0, 1.0);
    base_config(data_dir, Some(upstream))
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
"#,
            url = upstream.base_url()
        )
        + &[
            model_table(
                "rel-hedge",
                &[mini("upstream", "delay_ms=1500"), backup_offer(2.0, 2.0)],
                "",
            ),
            model_table(
                "rel-breaker",
                &[mini("flaky", "status=500;fail_first=2"), backup.clone()],
                "",
            ),
            model_table("rel-hang", &[mini("slow", "hang"), backup.clone()], ""),
            model_table("rel-forever", &[mini("upstream", "hang")], ""),
            model_table(
                "rel-slow-first-byte",
                &[mini("slow", "ttfb_ms=3000"), backup.clone()],
                "",
            ),
            model_table(
                "rel-dead",
                &[offer("dead", "gpt-4o-mini", 1.0, 1.0), backup],
                "",
            ),
        ]
        .concat()
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
    let s = Setup::start(config);

    for _ in 0..2 {
        assert_eq!(
            answering_provider(&s.gw, "rel-breaker", "hi").await,
            "backup"
        );
    }
    assert_eq!(flaky_calls(&s.upstream), 2);
    // Outcomes reach the provider actor without blocking requests; wait until it published.
    let flaky = poll_until(
        51,
        || provider_state(&s.gw, "flaky"),
        |p| p["health"]["state"] == "open",
    )
    .await;
    assert_eq!(flaky["health"]["state"], "open", "{flaky}");
    assert_eq!(flaky["health"]["failures_total"], 2);
    assert!(flaky["health"]["retry_in_seconds"].as_f64().unwrap() <= 1.0);

    // Open: the provider is not called at all.
    for _ in 0..3 {
        assert_eq!(
            answering_provider(&s.gw, "rel-breaker", "hi").await,
            "backup"
        );
    }
    assert_eq!(
        flaky_calls(&s.upstream),
        2,
        "no call while the circuit is open"
    );
    let metrics = metrics(&s.gw).await;
    assert_sample(&metrics, "flowgate_circuit_state{provider=\"flaky\"} 1");
    assert_sample(
        &metrics,
        "flowgate_circuit_transitions_total{provider=\"flaky\",to=\"open\"} 1",
    );

    // After the cool-down one probe goes through; it succeeds (fail_first=2), so it closes.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        provider_state(&s.gw, "flaky").await["health"]["state"],
        "half_open"
    );
    assert_eq!(
        answering_provider(&s.gw, "rel-breaker", "hi").await,
        "flaky"
    );
    let state = poll_until(
        50,
        || async { provider_state(&s.gw, "flaky").await["health"]["state"].clone() },
        |state| state == "closed",
    )
    .await;
    assert_eq!(state, "closed");
}

#[tokio::test]
async fn hangs_slow_first_bytes_and_dead_providers_fall_back_with_the_reason_recorded() {
    let s = Setup::start(config);

    for (model, stream, error) in [
        ("rel-hang", false, "timeout"),
        ("rel-hang", true, "timeout"),
        ("rel-slow-first-byte", true, "timeout"),
        ("rel-dead", false, "upstream_connection"),
        ("rel-dead", true, "upstream_connection"),
    ] {
        let body = json!({"model": model, "stream": stream, "messages": user("still answered")});
        let headers = if stream {
            let (status, headers, events) = chat_stream(&s.gw, body).await;
            assert_eq!(status, 200, "{model}");
            assert_eq!(events.last().unwrap(), "[DONE]", "{model}");
            headers
        } else {
            let (status, headers, body) = chat(&s.gw, body).await;
            assert_eq!(status, 200, "{model}: {body}");
            assert_eq!(body["choices"][0]["message"]["content"], "still answered");
            headers
        };
        assert_eq!(
            headers["x-flowgate-provider"], "backup",
            "{model} stream={stream}"
        );
        let run = run_of(&s.gw, &headers).await;
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
    let s = Setup::start(config);

    let (status, headers, body) = ask(&s.gw, "hedged/rel-hedge", "race").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-provider"], "backup");
    // Priced at the provider that answered.
    assert_cost(&body, expected_cost(&body["usage"], 2.0, 2.0));
    let run = run_of(&s.gw, &headers).await;
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{run}");
    assert_eq!(attempts[0]["provider"], "upstream");
    assert_eq!(attempts[0]["error"], "cancelled");
    assert_eq!(attempts[1]["provider"], "backup");
    assert_eq!(attempts[1]["reason"], "hedge");
    assert_eq!(attempts[1]["status"], 200);

    // An agent that did not opt in waits for the first provider.
    let (status, headers, _) = ask(&s.gw, "plain/rel-hedge", "no race").await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-flowgate-provider"], "upstream");
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_call_and_the_run_says_so() {
    let s = Setup::start(config);
    // The provider never answers (and has the default, minutes-long timeouts); the client
    // gives up after 300 ms.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let result = impatient
        .post(s.gw.chat_url())
        .json(
            &json!({"model": "gone/rel-forever", "use_fallback": "never",
            "messages": user("are you there?")}),
        )
        .send()
        .await;
    assert!(result.is_err(), "the client timed out");
    // The run is recorded as cancelled long before the provider's own timeouts would end it.
    let runs = poll_until(
        100,
        || async { get_json(&s.gw, "/api/agents/gone/runs").await.1 },
        |page| page["items"].as_array().is_some_and(|i| !i.is_empty()),
    )
    .await;
    assert_eq!(runs["items"][0]["status"], "cancelled", "{runs}");
    let run = get_run(&s.gw, runs["items"][0]["id"].as_str().unwrap()).await;
    assert_eq!(run["error"]["error"]["code"], "cancelled");
    assert_eq!(run["attempts"].as_array().map(Vec::len), Some(0), "{run}");
}
