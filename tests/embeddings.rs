//! `POST /v1/embeddings` through the real binary: a failing provider is replaced by the next
//! (every attempt kept on the run), a pinned provider is kept to, and the run's cost reaches
//! the metrics as chat's does.

mod common;

use common::*;
use serde_json::{json, Value};

fn config(data_dir: &std::path::Path, upstream: &MockUpstream) -> String {
    let embedding = "embedding = { dimensions = 1536, shortens = true }";
    base_config(data_dir, Some(upstream))
        + "\n[providers.mock.models.\"mock-embed-down\"]\nfailure_rate = 1.0\nfailure_status = 503\n"
        + &model_table(
            "emb-failover",
            &[
                offer("mock", "mock-embed-down", 1.0, 0.0),
                offer("upstream", "text-embedding-3-small", 2.0, 0.0),
            ],
            embedding,
        )
}

async fn embed(gw: &Flowgate, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = client()
        .post(format!("{}/v1/embeddings", gw.url))
        .bearer_auth("any")
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.json().await.expect("JSON"))
}

#[tokio::test]
async fn a_failing_provider_is_replaced_and_every_attempt_is_recorded() {
    let s = Setup::start(config);
    let (status, headers, body) = embed(
        &s.gw,
        json!({"model": "emb-failover", "input": ["one", "two"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][1]["embedding"].as_array().unwrap().len(), 1536);
    assert_eq!(headers["x-flowgate-provider"], "upstream");
    // Priced at the provider that answered: 2 tokens at $2 per million.
    assert_eq!(body["usage"]["prompt_tokens"], 2);
    assert!(
        (body["cost_usd"].as_f64().unwrap() - 2.0 * 2.0 / 1e6).abs() < 1e-15,
        "{body}"
    );

    let run = run_of(&s.gw, &headers).await;
    assert_eq!(run["door"], "embeddings");
    assert_eq!(run["provider"], "upstream");
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{run}");
    assert_eq!(attempts[0]["provider"], "mock");
    assert_eq!(attempts[0]["error"], "upstream_server_error");
    assert_eq!(attempts[1]["provider"], "upstream");
    assert_eq!(attempts[1]["status"], 200);
    assert_eq!(run["output"], Value::Null);
    // Run listings show the door and the first input.
    let (status, list) = get_json(&s.gw, "/api/agents/default/runs").await;
    assert_eq!(status, 200, "{list}");
    let listed = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == run["id"])
        .cloned()
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(listed["door"], "embeddings");
    assert_eq!(listed["input_preview"], "one");

    let text = metrics(&s.gw).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("flowgate_cost_usd_total{")
                && l.contains("provider=\"upstream\"")
                && l.contains("model=\"emb-failover\"")),
        "{text}"
    );

    // Pinned to the failing provider: no other is tried, the error is the provider's.
    let (status, headers, body) = embed(
        &s.gw,
        json!({"model": "emb-failover", "input": "x", "provider": "mock"}),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    let run = run_of(&s.gw, &headers).await;
    assert_eq!(run["status"], "error");
    assert_eq!(run["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(run["cost_usd"], 0.0);
}
