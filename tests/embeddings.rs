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
        + &format!(
            "\n[providers.aws]\ntype = \"bedrock\"\nregion = \"us-east-1\"\n\
             access_key_id = \"AKIDEXAMPLE\"\nsecret_access_key = \"bedrock-secret\"\n\
             base_url = \"{}\"\n",
            upstream.url()
        )
        + &model_table(
            "emb-titan",
            &[offer("aws", "amazon.titan-embed-text-v2:0", 0.02, 0.0)],
            "embedding = { dimensions = 1024, shortens = true }",
        )
        + &model_table(
            "emb-cohere",
            &[offer("aws", "cohere.embed-english-v3", 0.10, 0.0)],
            "embedding = { dimensions = 1024 }",
        )
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

#[tokio::test]
async fn bedrock_titan_and_cohere_embed_through_invoke_model() {
    let s = Setup::start(config);
    let texts = ["alpha one", "beta two", "gamma three"];
    let (status, headers, body) = embed(
        &s.gw,
        json!({"model": "emb-titan", "input": texts, "dimensions": 256}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert!(data
        .iter()
        .all(|d| d["embedding"].as_array().unwrap().len() == 256));
    assert_eq!(data[2]["index"], 2);
    // Titan counts each text's tokens: ceil(chars / 4) in the mock.
    assert_eq!(body["usage"]["prompt_tokens"], 3 + 2 + 3);
    let calls: Vec<_> = s
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.path == "/model/amazon.titan-embed-text-v2%3A0/invoke")
        .collect();
    assert_eq!(calls.len(), 3);
    assert!(calls
        .iter()
        .all(|c| c.body["dimensions"] == 256 && c.body["normalize"] == true));
    assert!(
        calls[0].headers["authorization"].starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    );
    assert!(!serde_json::to_string(&body)
        .unwrap()
        .contains("bedrock-secret"));
    assert_eq!(run_of(&s.gw, &headers).await["provider"], "aws");

    // Cohere takes 96 texts a call: 100 inputs are two calls, answered in order.
    let many: Vec<String> = (0..100).map(|i| format!("text {i}")).collect();
    let (status, _, body) = embed(&s.gw, json!({"model": "emb-cohere", "input": many})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 100);
    let batches: Vec<usize> = s
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.path == "/model/cohere.embed-english-v3/invoke")
        .map(|r| r.body["texts"].as_array().unwrap().len())
        .collect();
    assert_eq!(batches, [96, 4]);
    // The same text gets the same vector, wherever it sits in the batches.
    let (_, _, single) = embed(&s.gw, json!({"model": "emb-cohere", "input": "text 97"})).await;
    assert_eq!(
        single["data"][0]["embedding"],
        body["data"][97]["embedding"]
    );
}

#[tokio::test]
async fn a_virtual_keys_model_allowlist_holds_for_embeddings_and_their_fallbacks() {
    let s = Setup::start(|data, upstream| {
        config(data, upstream)
            + "\n[auth]\napi_keys = [\"tenant-key\"]\n[admin]\napi_keys = [\"admin-key\"]\n"
    });
    let created = client()
        .post(format!("{}/api/admin/keys", s.gw.url))
        .bearer_auth("admin-key")
        .json(&json!({"name": "embed-only", "models": ["emb-titan"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let secret = created["secret"].as_str().unwrap().to_string();
    let call = |body: Value| {
        let request = client()
            .post(format!("{}/v1/embeddings", s.gw.url))
            .bearer_auth(&secret)
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = call(json!({"model": "emb-titan", "input": "x"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(json!({"model": "emb-cohere", "input": "x"})).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) =
        call(json!({"model": "emb-titan", "input": "x", "use_fallback": ["emb-cohere"]})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["param"], "use_fallback");
    let (status, body) = call(json!({"model": "emb-titan", "input": "x",
                                     "use_fallback": vec!["m"; 17]}))
    .await;
    assert_eq!(status, 400, "{body}");
}
