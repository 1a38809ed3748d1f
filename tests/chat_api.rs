//! `POST /v1/chat/completions` through the real binary: the mock provider, the `openai` adapter
//! against the mock upstream, streaming, fallback, and the errors a client can cause.

mod common;

use common::*;
use serde_json::{json, Value};

const STRUCTURED: &str = "supports = { structured_output = true, json_mode = true, tools = true }";

fn upstream_models(_: &MockUpstream) -> String {
    let upstream =
        |directives: &str| offer("upstream", &format!("gpt-4o-mini;{directives}"), 1.0, 1.0);
    let mini = Prices::new(0.15, 0.60).cached(0.075);
    let backup = backup_offer(1.0, 1.0);
    [
        model_table(
            "up-model",
            &[priced_offer("upstream", "gpt-4o-mini", mini)],
            &format!("aliases = [\"up-alias\"]\n{STRUCTURED}"),
        ),
        model_table(
            "up-failover",
            &[upstream("status=500"), backup_offer(2.0, 4.0)],
            "",
        ),
        model_table(
            "up-ratelimited",
            &[upstream("status=429;retry_after=7")],
            "",
        ),
        model_table(
            "up-badrequest",
            &[upstream("status=400"), backup.clone()],
            "",
        ),
        model_table(
            "up-cut-early",
            &[upstream("cut_after=0"), backup.clone()],
            "",
        ),
        model_table(
            "up-cut-late",
            &[upstream("cut_after=2;chunk_chars=3"), backup],
            "",
        ),
        model_table("up-malformed", &[upstream("malformed")], ""),
        model_table(
            "up-down",
            &[upstream("status=503")],
            "fallback = { unavailable = [\"up-model\"], rate_limit = [\"mock-echo\"] }",
        ),
        model_table(
            "up-text-only",
            &[offer("upstream", "gpt-4o-mini", 1.0, 1.0)],
            "supports = { json_mode = true }",
        ),
        model_table("up-flaky", &[upstream("status=500;fail_first=2")], ""),
        model_table(
            "up-flaky-stream",
            &[upstream("status=503;fail_first=1")],
            "",
        ),
        model_table(
            "up-retry-after",
            &[upstream("status=429;retry_after=1;fail_first=1")],
            "",
        ),
        model_table("up-slow", &[upstream("delay_ms=300")], ""),
    ]
    .concat()
}

fn setup() -> Setup {
    Setup::with_models(upstream_models)
}

#[tokio::test]
async fn mock_echo_answers_with_cost_latency_and_run_headers() {
    let s = setup();
    let (status, headers, body) = ask(&s.gw, "my-agent/mock-echo", "Hello, flowgate").await;
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
    let expected = expected_cost(&body["usage"], 0.15, 0.60);
    assert!(expected > 0.0);
    assert_cost(&body, expected);
    assert_cost(&body["choices"][0], expected);
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
    // The OpenAI shape and flowgate's additions, no more and no less.
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let sorted = |k: Vec<&str>| {
        let mut k: Vec<String> = k.into_iter().map(String::from).collect();
        k.sort_unstable();
        k
    };
    assert_eq!(
        keys(&body),
        sorted(vec![
            "id",
            "object",
            "created",
            "model",
            "choices",
            "usage",
            "cost_usd",
            "duration_seconds",
            "version_id",
            "metadata",
        ])
    );
    assert!(body["metadata"].is_null());
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    let choice = &body["choices"][0];
    assert_eq!(
        keys(choice),
        sorted(vec![
            "index",
            "message",
            "logprobs",
            "finish_reason",
            "cost_usd",
            "duration_seconds",
            "feedback_token",
            "url",
        ])
    );
    assert_eq!(choice["index"], 0);
    assert!(choice["logprobs"].is_null());
    assert_eq!(
        keys(&choice["message"]),
        sorted(vec!["role", "content", "refusal"])
    );
    assert!(choice["message"]["refusal"].is_null());
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(usage["prompt_tokens_details"], json!({"cached_tokens": 0}));
    assert_eq!(
        usage["completion_tokens_details"],
        json!({"reasoning_tokens": 0})
    );
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
    let (call, args) = answered_tool_call(&body);
    assert_eq!(call["function"]["name"], "User");
    assert!(args["name"].is_string() && args["age"].is_i64(), "{args}");
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

    assert_cost(&body, expected_cost(&body["usage"], 0.15, 0.60));
    assert!(!body.to_string().contains("upstream-secret"));
}

#[tokio::test]
async fn streaming_through_the_upstream_ends_with_usage_cost_and_done() {
    let s = setup();
    let text = "The quick brown fox jumps over the lazy dog";
    let (headers, chunks) =
        stream_text(&s.gw, json!({"model": "up-model"}), text, "upstream").await;
    let run_id = run_id(&headers);
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], format!("default/{run_id}"));
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let usage = &last["usage"];
    assert!(usage["total_tokens"].as_u64().unwrap() > 0);
    assert_cost(last, expected_cost(usage, 0.15, 0.60));
    assert!(last["duration_seconds"].is_number());
    // The upstream was asked for usage in its stream.
    assert_eq!(
        s.upstream.requests()[0].body["stream_options"]["include_usage"],
        true
    );

    // The run holds the whole streamed answer.
    let run = run_of(&s.gw, &headers).await;
    assert_eq!(run["status"], "success");
    assert_eq!(run["stream"], true);
    assert_eq!(run["output"]["choices"][0]["message"]["content"], text);
}

#[tokio::test]
async fn streamed_tool_calls_are_reassembled() {
    let s = setup();
    let (_, chunks) = stream_ok(
        &s.gw,
        json!({"model": "up-model", "messages": user("Jason is 25"),
            "tools": [user_name_tool()], "tool_choice": "required"}),
    )
    .await;
    let call = streamed_tool_call(&chunks);
    assert!(call.id.starts_with("call_"), "{call:?}");
    assert_eq!(call.name, "User");
    let args: Value = serde_json::from_str(&call.arguments).unwrap();
    assert!(args["name"].is_string());
}

#[tokio::test]
async fn failing_provider_falls_back_invisibly_and_attempts_are_recorded() {
    let s = setup();
    let (body, run) = answered_by_backup(
        &s.gw,
        "up-failover",
        "upstream",
        500,
        "upstream_server_error",
    )
    .await;
    // Priced at the provider that answered.
    assert_cost(&body, expected_cost(&body["usage"], 2.0, 4.0));

    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts[1]["status"], 200);
    assert_eq!(
        attempts[1]["reason"],
        "other_provider after upstream_server_error"
    );
    assert_sample(
        &metrics(&s.gw).await,
        "flowgate_fallbacks_total{error=\"upstream_server_error\",reason=\"other_provider\"} 1",
    );

    // Streaming too: the failure happens before any content, so the client never sees it.
    stream_from(&s.gw, "up-failover", "hello there", "backup").await;
}

#[tokio::test]
async fn stream_cut_before_content_falls_back_and_after_content_ends_with_an_error_event() {
    let s = setup();
    stream_from(&s.gw, "up-cut-early", "abcdefghijkl", "backup").await;

    let (headers, chunks, last) =
        stream_cut(&s.gw, "up-cut-late", "abcdefghijkl", "upstream").await;
    assert_eq!(last["error"]["code"], "upstream_connection", "{last}");
    assert_eq!(streamed_content(&chunks), "abcdef");

    // The partial run is recorded as an error with what had been streamed.
    let run = run_of(&s.gw, &headers).await;
    assert_eq!(run["status"], "error");
    assert_eq!(run["output"]["choices"][0]["message"]["content"], "abcdef");
}

#[tokio::test]
async fn upstream_errors_map_to_openai_statuses() {
    let s = setup();
    assert_rate_limited(&s.gw, "up-ratelimited", "7").await;

    // A 400 is the client's fault: no fallback, the provider's message passed on.
    assert_bad_request(&s.gw, "up-badrequest").await;

    let (status, _, body) = ask(&s.gw, "up-malformed", "hi").await;
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

    let (status, _, body) = ask(&s.gw, "gpt-4o-mni", "x").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(
        body["error"]["details"]["suggestions"][0],
        "gpt-4o-mini-latest"
    );

    let (status, _, body) = ask(&s.gw, "Bad Agent/mock-echo", "x").await;
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
    let (status, _, body) = ask(&s.gw, "gpt-4o-mini", "x").await;
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
    let big = json!({"model": "mock-echo", "messages": user(&"x".repeat(4096))});
    let (status, _, body) = chat_as(&gw, "secret-key", big).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large");

    let small = json!({"model": "mock-echo", "messages": user("hi")});
    let r = client()
        .post(gw.chat_url())
        .json(&small)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, _, body) = chat_as(&gw, "wrong", small.clone()).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "authentication_error");
    let (status, _, _) = chat_as(&gw, "secret-key", small).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn identical_concurrent_requests_reach_the_provider_once() {
    let s = setup();
    let body = json!({"model": "up-slow", "temperature": 0, "messages": user("same question")});
    let results = chat_at_once(&s.gw, &body, 50).await;
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
    let results = chat_at_once(&s.gw, &never, 3).await;
    assert!(results.iter().all(|(status, _, _)| *status == 200));
    assert_eq!(s.upstream.requests().len(), 3);
}

#[tokio::test]
async fn auto_fallback_uses_the_catalog_fallback_for_the_error_class() {
    let s = setup();
    let (status, headers, body) = ask(&s.gw, "up-down", "still here").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-flowgate-model"], "up-model");
    assert_eq!(body["model"], "up-model");
    let run = run_of(&s.gw, &headers).await;
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
    let (call, args) = answered_tool_call(&body);
    assert_eq!(call["function"]["name"], "User");
    assert!(args["age"].is_i64() && args["tags"].is_array(), "{args}");
    // In the OpenAI shape: the message keeps its content and refusal (null) beside the calls,
    // and each call is `{id, type, function: {name, arguments}}`.
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort_unstable();
        k
    };
    let message = &body["choices"][0]["message"];
    assert_eq!(
        keys(message),
        ["content", "refusal", "role", "tool_calls"],
        "{message}"
    );
    assert!(message["refusal"].is_null(), "{message}");
    assert_eq!(
        message["tool_calls"].as_array().unwrap().len(),
        1,
        "{message}"
    );
    assert_eq!(keys(&call), ["function", "id", "type"], "{call}");
    assert!(
        call["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{call}"
    );
    assert_eq!(keys(&call["function"]), ["arguments", "name"], "{call}");
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
    let run = run_of(&s.gw, &headers).await;
    assert_eq!(run["structured"]["layer"], "json_mode", "{run}");
    assert_eq!(run["structured"]["repairs"], 0);
}

#[tokio::test]
async fn structured_streams_arrive_as_tool_deltas_and_as_whole_valid_json_chunks() {
    let s = setup();
    let (headers, chunks) = stream_ok(
        &s.gw,
        json!({"model": "up-text-only", "messages": user("Jason is 25"),
            "tools": user_tool(), "tool_choice": {"type": "function", "function": {"name": "User"}}}),
    )
    .await;
    for c in &chunks {
        assert!(
            c["choices"][0]["delta"]["content"].is_null(),
            "no content deltas: {c}"
        );
    }
    let call = streamed_tool_call(&chunks);
    assert_eq!(call.name, "User");
    assert_eq!(finish_reasons(&chunks).last().unwrap(), "tool_calls");
    let args: Value = serde_json::from_str(&call.arguments).unwrap();
    assert!(args["age"].is_i64(), "{args}");
    let run = run_of(&s.gw, &headers).await;
    assert_eq!(run["structured"]["layer"], "json_mode", "{run}");
    assert_eq!(run["structured"]["validation_errors"], json!([]));

    // valid_json_chunks: each content chunk is the whole JSON so far, and parses.
    let schema = json!({"type": "object", "properties": {
        "title": {"type": "string", "examples": ["A fairly long title that spans several chunks"]},
        "count": {"type": "integer"}}, "required": ["title", "count"]});
    let (_, chunks) = stream_ok(
        &s.gw,
        json!({"model": "up-model", "messages": user("go"),
            "stream_options": {"valid_json_chunks": true},
            "response_format": {"type": "json_schema", "json_schema": {"name": "T", "schema": schema}}}),
    )
    .await;
    let contents: Vec<Value> = content_deltas(&chunks)
        .iter()
        .map(|text| serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}")))
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
    let (status, headers, body) = ask(&s.gw, "up-flaky", "again").await;
    assert_eq!(status, 200, "{body}");
    let run = run_of(&s.gw, &headers).await;
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{run}");
    assert_eq!(attempts[0]["status"], 500);
    assert_eq!(attempts[1]["reason"], "retry after upstream_server_error");
    assert_eq!(attempts[2]["status"], 200);
    assert_eq!(s.upstream.count(), 3);
    assert_sample(
        &metrics(&s.gw).await,
        "flowgate_retries_total{error=\"upstream_server_error\",provider=\"upstream\"} 2",
    );

    // Streams are retried before their first byte too.
    stream_from(&s.gw, "up-flaky-stream", "again", "upstream").await;

    // A 429 asking to wait one second is waited for, then retried.
    let started = std::time::Instant::now();
    let (status, headers, _) = ask(&s.gw, "up-retry-after", "x").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    let run = run_of(&s.gw, &headers).await;
    assert_eq!(
        run["attempts"][1]["reason"], "retry after rate_limited",
        "{run}"
    );
}
