//! `POST /v1/chat/completions` through the real binary: the mock provider, the `openai` adapter
//! against the mock upstream, streaming, fallback, and the errors a client can cause.

mod common;

use common::*;
use serde_json::{json, Value};

fn upstream_models() -> &'static str {
    r#"
[models."up-model"]
aliases = ["up-alias"]
providers = [{ provider = "upstream", model = "gpt-4o-mini", input_per_mtok = 0.15, output_per_mtok = 0.60, cached_input_per_mtok = 0.075 }]
supports = { structured_output = true, json_mode = true, tools = true }

[models."up-failover"]
providers = [
  { provider = "upstream", model = "gpt-4o-mini;status=500", input_per_mtok = 1.0, output_per_mtok = 1.0 },
  { provider = "backup", model = "gpt-4o-mini", input_per_mtok = 2.0, output_per_mtok = 4.0 },
]

[models."up-ratelimited"]
providers = [
  { provider = "upstream", model = "gpt-4o-mini;status=429;retry_after=7", input_per_mtok = 1.0, output_per_mtok = 1.0 },
]

[models."up-badrequest"]
providers = [
  { provider = "upstream", model = "gpt-4o-mini;status=400", input_per_mtok = 1.0, output_per_mtok = 1.0 },
  { provider = "backup", model = "gpt-4o-mini", input_per_mtok = 1.0, output_per_mtok = 1.0 },
]

[models."up-cut-early"]
providers = [
  { provider = "upstream", model = "gpt-4o-mini;cut_after=0", input_per_mtok = 1.0, output_per_mtok = 1.0 },
  { provider = "backup", model = "gpt-4o-mini", input_per_mtok = 1.0, output_per_mtok = 1.0 },
]

[models."up-cut-late"]
providers = [
  { provider = "upstream", model = "gpt-4o-mini;cut_after=2;chunk_chars=3", input_per_mtok = 1.0, output_per_mtok = 1.0 },
  { provider = "backup", model = "gpt-4o-mini", input_per_mtok = 1.0, output_per_mtok = 1.0 },
]

[models."up-malformed"]
providers = [
  { provider = "upstream", model = "gpt-4o-mini;malformed", input_per_mtok = 1.0, output_per_mtok = 1.0 },
]

[models."up-down"]
providers = [{ provider = "upstream", model = "gpt-4o-mini;status=503", input_per_mtok = 1.0, output_per_mtok = 1.0 }]
fallback = { unavailable = ["up-model"], rate_limit = ["mock-echo"] }

[models."up-text-only"]
providers = [{ provider = "upstream", model = "gpt-4o-mini", input_per_mtok = 1.0, output_per_mtok = 1.0 }]
supports = { json_mode = true }

[models."up-flaky"]
providers = [{ provider = "upstream", model = "gpt-4o-mini;status=500;fail_first=2", input_per_mtok = 1.0, output_per_mtok = 1.0 }]

[models."up-flaky-stream"]
providers = [{ provider = "upstream", model = "gpt-4o-mini;status=503;fail_first=1", input_per_mtok = 1.0, output_per_mtok = 1.0 }]

[models."up-retry-after"]
providers = [{ provider = "upstream", model = "gpt-4o-mini;status=429;retry_after=1;fail_first=1", input_per_mtok = 1.0, output_per_mtok = 1.0 }]

[models."up-slow"]
providers = [
  { provider = "upstream", model = "gpt-4o-mini;delay_ms=300", input_per_mtok = 1.0, output_per_mtok = 1.0 },
]
"#
}

struct Setup {
    _dir: tempfile::TempDir,
    upstream: MockUpstream,
    gw: Flowgate,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let upstream = MockUpstream::start();
    let config = base_config(&dir.path().join("data"), Some(&upstream)) + upstream_models();
    let gw = Flowgate::start(dir.path(), &config);
    Setup {
        _dir: dir,
        upstream,
        gw,
    }
}

#[tokio::test]
async fn mock_echo_answers_with_cost_latency_and_run_headers() {
    let s = setup();
    let (status, headers, body) = chat(
        &s.gw,
        json!({"model": "my-agent/mock-echo", "messages": user("Hello, flowgate")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "mock-echo");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello, flowgate");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let run_id = headers["x-flowgate-run-id"].to_str().unwrap();
    assert_eq!(body["id"], format!("my-agent/{run_id}"));
    assert_eq!(headers["x-flowgate-provider"], "mock");
    assert_eq!(headers["x-flowgate-model"], "mock-echo");
    assert_eq!(headers["x-flowgate-cache"], "miss");
    // mock-echo's catalog prices: 0.15 and 0.60 per 1M tokens.
    let usage = &body["usage"];
    let expected = (usage["prompt_tokens"].as_f64().unwrap() * 0.15
        + usage["completion_tokens"].as_f64().unwrap() * 0.60)
        / 1e6;
    assert!(expected > 0.0);
    assert!((body["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-15);
    assert!((body["choices"][0]["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-15);
    assert!(body["duration_seconds"].as_f64().unwrap() >= 0.0);
    assert!(body["choices"][0]["duration_seconds"].is_number());
    assert!(body["choices"][0]["feedback_token"]
        .as_str()
        .unwrap()
        .starts_with(run_id));
    assert_eq!(
        body["choices"][0]["url"],
        format!("{}/runs/{run_id}", s.gw.url)
    );
    assert_eq!(body["version_id"].as_str().unwrap().len(), 32);
}

#[tokio::test]
async fn openai_adapter_translates_the_request_and_prices_the_answer() {
    let s = setup();
    let tools = json!([{"type": "function", "function": {"name": "User", "description": "a user",
        "parameters": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                       "required": ["name", "age"]}}}]);
    let (status, headers, body) = chat(
        &s.gw,
        json!({
            "model": "extract/up-alias",
            "messages": [{"role": "system", "content": "Extract."}, {"role": "user", "content": "Jason is 25"}],
            "tools": tools,
            "tool_choice": {"type": "function", "function": {"name": "User"}},
            "temperature": 0.3,
            "max_tokens": 50,
            "seed": 7,
            "metadata": {"customer": "acme"},
            "use_fallback": "never",
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-provider"], "upstream");
    assert_eq!(headers["x-flowgate-model"], "up-model");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "User");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["name"].is_string() && args["age"].is_i64(), "{args}");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(body["metadata"]["customer"], "acme");

    // What reached the provider: its model id, its key, the OpenAI fields; no flowgate extras.
    let requests = s.upstream.requests();
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.headers["authorization"], "Bearer upstream-secret");
    assert_eq!(sent.body["model"], "gpt-4o-mini");
    assert_eq!(sent.body["tools"], tools);
    assert_eq!(sent.body["tool_choice"]["function"]["name"], "User");
    assert_eq!(sent.body["temperature"], 0.3);
    assert_eq!(sent.body["max_tokens"], 50);
    assert_eq!(sent.body["seed"], 7);
    assert_eq!(sent.body["messages"][1]["content"], "Jason is 25");
    for extra in ["metadata", "use_fallback", "stream"] {
        assert!(sent.body.get(extra).is_none(), "{extra} leaked upstream");
    }

    let usage = &body["usage"];
    let expected = (usage["prompt_tokens"].as_f64().unwrap() * 0.15
        + usage["completion_tokens"].as_f64().unwrap() * 0.60)
        / 1e6;
    assert!((body["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-15);
    assert!(!body.to_string().contains("upstream-secret"));
}

#[tokio::test]
async fn streaming_through_the_upstream_ends_with_usage_cost_and_done() {
    let s = setup();
    let text = "The quick brown fox jumps over the lazy dog";
    let (status, headers, events) = chat_stream(
        &s.gw,
        json!({"model": "up-model", "stream": true, "messages": user(text)}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["x-flowgate-provider"], "upstream");
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.len() > 3, "content arrives in several chunks");
    let run_id = headers["x-flowgate-run-id"].to_str().unwrap();
    let mut content = String::new();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], format!("default/{run_id}"));
        if let Some(c) = chunk["choices"][0]["delta"]["content"].as_str() {
            content.push_str(c);
        }
    }
    assert_eq!(content, text);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let usage = &last["usage"];
    assert!(usage["total_tokens"].as_u64().unwrap() > 0);
    let expected = (usage["prompt_tokens"].as_f64().unwrap() * 0.15
        + usage["completion_tokens"].as_f64().unwrap() * 0.60)
        / 1e6;
    assert!((last["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-15);
    assert!(last["duration_seconds"].is_number());
    // The upstream was asked for usage in its stream.
    assert_eq!(
        s.upstream.requests()[0].body["stream_options"]["include_usage"],
        true
    );

    // The run holds the whole streamed answer.
    let (status, run) = get_json(&s.gw, &format!("/api/runs/{run_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(run["status"], "success");
    assert_eq!(run["stream"], true);
    assert_eq!(run["output"]["choices"][0]["message"]["content"], text);
}

#[tokio::test]
async fn streamed_tool_calls_are_reassembled() {
    let s = setup();
    let (status, _, events) = chat_stream(
        &s.gw,
        json!({"model": "up-model", "stream": true, "messages": user("Jason is 25"),
            "tools": [{"type": "function", "function": {"name": "User", "parameters": {"type": "object",
                "properties": {"name": {"type": "string"}}, "required": ["name"]}}}],
            "tool_choice": "required"}),
    )
    .await;
    assert_eq!(status, 200);
    let mut arguments = String::new();
    let mut name = None;
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(e).unwrap();
        if let Some(call) = chunk["choices"][0]["delta"]["tool_calls"].get(0) {
            if let Some(n) = call["function"]["name"].as_str() {
                name = Some(n.to_string());
                assert!(call["id"].as_str().unwrap().starts_with("call_"));
            }
            arguments.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(name.as_deref(), Some("User"));
    let args: Value = serde_json::from_str(&arguments).unwrap();
    assert!(args["name"].is_string());
}

#[tokio::test]
async fn failing_provider_falls_back_invisibly_and_attempts_are_recorded() {
    let s = setup();
    let (status, headers, body) = chat(
        &s.gw,
        json!({"model": "up-failover", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-provider"], "backup");
    assert_eq!(body["choices"][0]["message"]["content"], "hi");
    // Priced at the provider that answered.
    let usage = &body["usage"];
    let expected = (usage["prompt_tokens"].as_f64().unwrap() * 2.0
        + usage["completion_tokens"].as_f64().unwrap() * 4.0)
        / 1e6;
    assert!((body["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-15);

    let run_id = headers["x-flowgate-run-id"].to_str().unwrap();
    let (_, run) = get_json(&s.gw, &format!("/api/runs/{run_id}")).await;
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{run}");
    assert_eq!(attempts[0]["provider"], "upstream");
    assert_eq!(attempts[0]["status"], 500);
    assert_eq!(attempts[0]["error"], "upstream_server_error");
    assert_eq!(attempts[1]["provider"], "backup");
    assert_eq!(attempts[1]["status"], 200);
    assert_eq!(
        attempts[1]["reason"],
        "other_provider after upstream_server_error"
    );
    let (_, metrics) = get_json(&s.gw, "/metrics").await;
    assert!(
        metrics.as_str().unwrap().contains(
            "flowgate_fallbacks_total{error=\"upstream_server_error\",reason=\"other_provider\"} 1"
        ),
        "{metrics}"
    );

    // Streaming too: the failure happens before any content, so the client never sees it.
    let (status, headers, events) = chat_stream(
        &s.gw,
        json!({"model": "up-failover", "stream": true, "messages": user("hello there")}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-flowgate-provider"], "backup");
    assert_eq!(events.last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn stream_cut_before_content_falls_back_and_after_content_ends_with_an_error_event() {
    let s = setup();
    let (status, headers, events) = chat_stream(
        &s.gw,
        json!({"model": "up-cut-early", "stream": true, "messages": user("abcdefghijkl")}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-flowgate-provider"], "backup");
    assert_eq!(events.last().unwrap(), "[DONE]");

    let (status, headers, events) = chat_stream(
        &s.gw,
        json!({"model": "up-cut-late", "stream": true, "messages": user("abcdefghijkl")}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-flowgate-provider"], "upstream");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_connection", "{last}");
    assert!(!events.contains(&"[DONE]".to_string()));
    let content: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(content, "abcdef");

    // The partial run is recorded as an error with what had been streamed.
    let run_id = headers["x-flowgate-run-id"].to_str().unwrap();
    let (_, run) = get_json(&s.gw, &format!("/api/runs/{run_id}")).await;
    assert_eq!(run["status"], "error");
    assert_eq!(run["output"]["choices"][0]["message"]["content"], "abcdef");
}

#[tokio::test]
async fn upstream_errors_map_to_openai_statuses() {
    let s = setup();
    let (status, headers, body) = chat(
        &s.gw,
        json!({"model": "up-ratelimited", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(headers["retry-after"], "7");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["details"]["attempts"][0]["status"], 429);

    // A 400 is the client's fault: no fallback, the provider's message passed on.
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "up-badrequest", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["details"]["attempts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "up-malformed", "messages": user("hi")}),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_malformed");
    assert!(!body.to_string().contains("upstream-secret"));
}

#[tokio::test]
async fn bad_requests_get_clear_openai_errors() {
    let s = setup();
    let client = client();
    let post = |body: &'static str| {
        client
            .post(s.gw.chat_url())
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = post("{\"model\": \"mock-echo\",\n \"messages\": [}")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 2"),
        "{body}"
    );

    let r = post("{\"model\": \"mock-echo\"}").await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["param"], "messages");
    assert_eq!(body["error"]["code"], "missing_field");

    let r = post("{\"messages\": []}").await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["param"], "model");

    let r =
        post("{\"model\": \"mock-echo\", \"messages\": [{\"role\": \"user\", \"content\": 5}]}")
            .await
            .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["param"], "messages[0].content");

    let r = post("{\"model\": \"mock-echo\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"temperature\": 9}")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["param"], "temperature");

    let (status, _, body) =
        chat(&s.gw, json!({"model": "gpt-4o-mni", "messages": user("x")})).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(
        body["error"]["details"]["suggestions"][0],
        "gpt-4o-mini-latest"
    );

    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "Bad Agent/mock-echo", "messages": user("x")}),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    let r = client
        .get(format!("{}/v1/nothing-here", s.gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    // A catalog model whose only provider is disabled (no OPENAI_API_KEY in this config).
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "gpt-4o-mini", "messages": user("x")}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "no_provider_available");
}

#[tokio::test]
async fn body_over_the_limit_is_413_and_keys_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(&dir.path().join("data"), None)
        .replace("[server]\n", "[server]\nmax_body_bytes = 2048\n")
        + "\n[auth]\napi_keys = [\"secret-key\"]\n";
    let gw = Flowgate::start(dir.path(), &config);
    let client = client();
    let big = json!({"model": "mock-echo", "messages": user(&"x".repeat(4096))});
    let r = client
        .post(gw.chat_url())
        .bearer_auth("secret-key")
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");

    let small = json!({"model": "mock-echo", "messages": user("hi")});
    let r = client
        .post(gw.chat_url())
        .json(&small)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(gw.chat_url())
        .bearer_auth("wrong")
        .json(&small)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    let r = client
        .post(gw.chat_url())
        .bearer_auth("secret-key")
        .json(&small)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn identical_concurrent_requests_reach_the_provider_once() {
    let s = setup();
    let body = json!({"model": "up-slow", "temperature": 0, "messages": user("same question")});
    let requests = (0..50).map(|_| chat(&s.gw, body.clone()));
    let results = futures::future::join_all(requests).await;
    for (status, _, body) in &results {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], "same question");
    }
    assert_eq!(
        s.upstream.count(),
        1,
        "one upstream call for 50 identical requests"
    );
    let hits = results
        .iter()
        .filter(|(_, h, _)| h["x-flowgate-cache"] == "hit")
        .count();
    assert_eq!(hits, 49);
    // Followers cost nothing; the leader paid.
    let paid: f64 = results
        .iter()
        .map(|(_, _, b)| b["cost_usd"].as_f64().unwrap())
        .sum();
    let leader = results
        .iter()
        .find(|(_, h, _)| h["x-flowgate-cache"] == "miss")
        .unwrap();
    assert!((paid - leader.2["cost_usd"].as_f64().unwrap()).abs() < 1e-15);

    // `use_cache: never` always calls.
    let never =
        json!({"model": "up-model", "temperature": 0, "use_cache": "never", "messages": user("q")});
    s.upstream.clear();
    let results = futures::future::join_all((0..3).map(|_| chat(&s.gw, never.clone()))).await;
    assert!(results.iter().all(|(status, _, _)| *status == 200));
    assert_eq!(s.upstream.requests().len(), 3);
}

#[tokio::test]
async fn auto_fallback_uses_the_catalog_fallback_for_the_error_class() {
    let s = setup();
    let (status, headers, body) = chat(
        &s.gw,
        json!({"model": "up-down", "messages": user("still here")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-model"], "up-model");
    assert_eq!(body["model"], "up-model");
    let run_id = headers["x-flowgate-run-id"].to_str().unwrap();
    let (_, run) = get_json(&s.gw, &format!("/api/runs/{run_id}")).await;
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{run}");
    assert_eq!(attempts[0]["status"], 503);
    assert_eq!(
        attempts[1]["reason"],
        "auto_fallback after upstream_server_error"
    );

    // `never` turns it off: the error comes back.
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "up-down", "use_fallback": "never", "messages": user("x")}),
    )
    .await;
    assert_eq!(status, 502, "{body}");

    // An explicit list replaces the catalog's.
    let (status, headers, _) = chat(
        &s.gw,
        json!({"model": "up-down", "use_fallback": ["mock-echo"], "messages": user("x")}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-flowgate-provider"], "mock");
}

#[tokio::test]
async fn input_the_model_cannot_take_is_a_400_that_names_it() {
    let s = setup();
    let image = json!([{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    ]}]);
    let (status, _, body) = chat(&s.gw, json!({"model": "up-text-only", "messages": image})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_by_model");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("image input"));
    assert_eq!(s.upstream.count(), 0, "no provider was called");

    // A fallback model that can take it is used instead.
    let (status, headers, _) = chat(
        &s.gw,
        json!({"model": "up-text-only", "use_fallback": ["mock-echo"], "messages": image}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-flowgate-model"], "mock-echo");
}

fn user_tool() -> Value {
    json!([{"type": "function", "function": {"name": "User", "parameters": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                       "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["name", "age", "tags"]}}}])
}

#[tokio::test]
async fn a_forced_tool_on_a_json_mode_model_is_answered_in_json_mode_and_validated() {
    let s = setup();
    let (status, headers, body) = chat(
        &s.gw,
        json!({"model": "up-text-only", "messages": user("Jason is 25"),
            "tools": user_tool(), "tool_choice": {"type": "function", "function": {"name": "User"}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The client gets the tool call it asked for…
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "User");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["age"].is_i64() && args["tags"].is_array(), "{args}");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    // …while the provider, which has no tools, got JSON mode and the schema in the system
    // message.
    let sent = &s.upstream.requests()[0].body;
    assert!(sent.get("tools").is_none(), "{sent}");
    assert_eq!(sent["response_format"]["type"], "json_object");
    assert_eq!(sent["messages"][0]["role"], "system");
    assert!(sent["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("\"tags\""));
    let run_id = headers["x-flowgate-run-id"].to_str().unwrap();
    let (_, run) = get_json(&s.gw, &format!("/api/runs/{run_id}")).await;
    assert_eq!(run["structured"]["layer"], "json_mode", "{run}");
    assert_eq!(run["structured"]["repairs"], 0);
}

#[tokio::test]
async fn structured_streams_arrive_as_tool_deltas_and_as_whole_valid_json_chunks() {
    let s = setup();
    let (status, headers, events) = chat_stream(
        &s.gw,
        json!({"model": "up-text-only", "stream": true, "messages": user("Jason is 25"),
            "tools": user_tool(), "tool_choice": {"type": "function", "function": {"name": "User"}}}),
    )
    .await;
    assert_eq!(status, 200);
    let mut arguments = String::new();
    let mut names = 0;
    let mut finish = String::new();
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        if let Some(call) = c["choices"][0]["delta"]["tool_calls"].get(0) {
            if call["function"]["name"] == "User" {
                names += 1;
            }
            arguments.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
        assert!(
            c["choices"][0]["delta"]["content"].is_null(),
            "no content deltas: {c}"
        );
        if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    assert_eq!(names, 1);
    assert_eq!(finish, "tool_calls");
    let args: Value = serde_json::from_str(&arguments).unwrap();
    assert!(args["age"].is_i64(), "{args}");
    let run_id = headers["x-flowgate-run-id"].to_str().unwrap();
    let (_, run) = get_json(&s.gw, &format!("/api/runs/{run_id}")).await;
    assert_eq!(run["structured"]["layer"], "json_mode", "{run}");
    assert_eq!(run["structured"]["validation_errors"], json!([]));

    // valid_json_chunks: each content chunk is the whole JSON so far, and parses.
    let schema = json!({"type": "object", "properties": {
        "title": {"type": "string", "examples": ["A fairly long title that spans several chunks"]},
        "count": {"type": "integer"}}, "required": ["title", "count"]});
    let (status, _, events) = chat_stream(
        &s.gw,
        json!({"model": "up-model", "stream": true, "messages": user("go"),
            "stream_options": {"valid_json_chunks": true},
            "response_format": {"type": "json_schema", "json_schema": {"name": "T", "schema": schema}}}),
    )
    .await;
    assert_eq!(status, 200);
    let contents: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .map(|text| serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
        .collect();
    assert!(contents.len() > 2, "several growing chunks: {contents:?}");
    let last = contents.last().unwrap();
    assert!(
        last["title"].is_string() && last["count"].is_i64(),
        "{last}"
    );
    assert!(contents[0].to_string().len() < last.to_string().len());
}

#[tokio::test]
async fn the_last_provider_is_retried_with_backoff_and_retry_after_is_honoured() {
    let s = setup();
    let (status, headers, body) = chat(
        &s.gw,
        json!({"model": "up-flaky", "messages": user("again")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let run_id = headers["x-flowgate-run-id"].to_str().unwrap();
    let (_, run) = get_json(&s.gw, &format!("/api/runs/{run_id}")).await;
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{run}");
    assert_eq!(attempts[0]["status"], 500);
    assert_eq!(attempts[1]["reason"], "retry after upstream_server_error");
    assert_eq!(attempts[2]["status"], 200);
    assert_eq!(s.upstream.count(), 3);
    let (_, metrics) = get_json(&s.gw, "/metrics").await;
    assert!(
        metrics.as_str().unwrap().contains(
            "flowgate_retries_total{error=\"upstream_server_error\",provider=\"upstream\"} 2"
        ),
        "{metrics}"
    );

    // Streams are retried before their first byte too.
    let (status, _, events) = chat_stream(
        &s.gw,
        json!({"model": "up-flaky-stream", "stream": true, "messages": user("again")}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(events.last().unwrap(), "[DONE]");

    // A 429 asking to wait one second is waited for, then retried.
    let started = std::time::Instant::now();
    let (status, headers, _) = chat(
        &s.gw,
        json!({"model": "up-retry-after", "messages": user("x")}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    let run_id = headers["x-flowgate-run-id"].to_str().unwrap();
    let (_, run) = get_json(&s.gw, &format!("/api/runs/{run_id}")).await;
    assert_eq!(
        run["attempts"][1]["reason"], "retry after rate_limited",
        "{run}"
    );
}
