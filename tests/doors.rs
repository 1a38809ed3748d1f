//! The Responses and Messages doors through the real binary: what each door's request becomes
//! upstream (in another provider's wire format), how the answer comes back, and that keys,
//! limits, body bounds and tenants hold as on Chat Completions, with each door's error shape.

mod common;

use common::*;
use serde_json::{json, Value};

const TENANT_KEY: &str = "tenant-key";
const ACME_KEY: &str = "acme-key";

fn config(data_dir: &std::path::Path, upstream: &MockUpstream) -> String {
    let supports = "supports = { structured_output = true, json_mode = true, tools = true }";
    base_config(data_dir, Some(upstream)).replace("[server]\n", "[server]\nmax_body_bytes = 4096\n")
        + &format!(
            "\n[providers.claude]\ntype = \"anthropic\"\nbase_url = \"{}\"\napi_key = \"anthropic-secret\"\n",
            upstream.url()
        )
        + &format!(
            "\n[auth]\napi_keys = [\"{TENANT_KEY}\"]\n[auth.tenants.acme]\napi_keys = [\"{ACME_KEY}\"]\n\
             [auth.tenants.acme.limits]\nrpm = 2\n"
        )
        + &model_table(
            "door-gpt",
            &[offer("upstream", "gpt-4o-mini", 1.0, 2.0)],
            supports,
        )
        + &model_table(
            "door-claude",
            &[offer("claude", "claude-3-5-haiku-20241022", 1.0, 2.0)],
            supports,
        )
}

async fn post(
    gw: &Flowgate,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = client().post(format!("{}{path}", gw.url)).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

const ANTHROPIC: &[(&str, &str)] = &[
    ("x-api-key", TENANT_KEY),
    ("anthropic-version", "2023-06-01"),
];
const BEARER: &[(&str, &str)] = &[("authorization", "Bearer tenant-key")];

/// The run named by a response's `x-flowgate-run-id`, read with the tenant's key.
async fn run_for(gw: &Flowgate, headers: &reqwest::header::HeaderMap) -> Value {
    let id = run_id(headers);
    let response = client()
        .get(format!("{}/api/runs/{id}", gw.url))
        .bearer_auth(TENANT_KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    response.json().await.expect("run")
}

/// The one upstream request whose body mentions `marker`.
fn sent_with(upstream: &MockUpstream, marker: &str) -> Value {
    let found: Vec<Value> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.body.to_string().contains(marker))
        .map(|r| json!({"path": r.path, "body": r.body}))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap()
}

#[tokio::test]
async fn a_messages_request_reaches_an_openai_upstream_as_chat_completions() {
    let s = Setup::start(config);
    let body = json!({
        "model": "door-gpt", "max_tokens": 77, "stop_sequences": ["STOP"],
        "system": [{"type": "text", "text": "Be brief m-sys"}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object",
                   "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
        "tool_choice": {"type": "any"},
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {"type": "text", "text": "And Lyon?"}]}
        ]
    });
    let (status, headers, answer) = post(&s.gw, "/v1/messages", ANTHROPIC, &body).await;
    assert_eq!(status, 200, "{answer}");

    let sent = sent_with(&s.upstream, "m-sys");
    assert_eq!(sent["path"], "/v1/chat/completions");
    let sent = &sent["body"];
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["stop"], json!(["STOP"]));
    assert_eq!(sent["tool_choice"], "required");
    assert!(
        sent["max_tokens"] == 77 || sent["max_completion_tokens"] == 77,
        "{sent}"
    );
    let messages = &sent["messages"];
    let roles: Vec<&str> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
    assert_eq!(messages[0]["content"], "Be brief m-sys");
    assert_eq!(
        messages[2]["tool_calls"],
        json!([{"id": "toolu_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])
    );
    assert_eq!(messages[3]["tool_call_id"], "toolu_1");
    assert_eq!(messages[3]["content"], "18C");
    assert_eq!(messages[4]["content"], "And Lyon?");
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");

    // The forced call comes back as a `tool_use` block with its input as an object.
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["stop_reason"], "tool_use");
    let block = &answer["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["name"], "get_weather");
    assert!(block["input"]["city"].is_string(), "{answer}");
    let run = run_for(&s.gw, &headers).await;
    assert_eq!(run["door"], "messages");
    // The run keeps the request the engine ran, in the Chat Completions shape.
    assert_eq!(run["request"]["messages"][3]["role"], "tool");
}

#[tokio::test]
async fn a_responses_request_reaches_an_anthropic_upstream_as_messages() {
    let s = Setup::start(config);
    let body = json!({
        "model": "door-claude", "instructions": "Be brief m-instr", "max_output_tokens": 99,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Who is Jason?"}]}],
        "text": {"format": {"type": "json_schema", "name": "User", "strict": true,
            "schema": {"type": "object", "properties": {"name": {"type": "string"}},
                       "required": ["name"], "additionalProperties": false}}}
    });
    let (status, headers, answer) = post(&s.gw, "/v1/responses", BEARER, &body).await;
    assert_eq!(status, 200, "{answer}");

    let sent = sent_with(&s.upstream, "m-instr");
    assert_eq!(sent["path"], "/v1/messages");
    let sent = &sent["body"];
    assert_eq!(sent["model"], "claude-3-5-haiku-20241022");
    assert_eq!(sent["max_tokens"], 99);
    assert!(
        sent["system"].to_string().contains("Be brief m-instr"),
        "{sent}"
    );
    assert_eq!(sent["messages"][0]["role"], "user");
    assert!(sent["messages"][0].to_string().contains("Who is Jason?"));

    assert_eq!(answer["object"], "response");
    assert_eq!(answer["status"], "completed");
    assert_eq!(answer["model"], "door-claude");
    let text = answer["output"][0]["content"][0]["text"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(text).unwrap();
    assert!(parsed["name"].is_string(), "{parsed}");
    let usage = &answer["usage"];
    let cost = (usage["input_tokens"].as_f64().unwrap() * 1.0
        + usage["output_tokens"].as_f64().unwrap() * 2.0)
        / 1e6;
    assert!(
        (answer["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12,
        "{answer}"
    );

    let run = run_for(&s.gw, &headers).await;
    assert_eq!(run["door"], "responses");
    assert_eq!(run["model"], "door-claude");
    assert!((run["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12);
}

#[tokio::test]
async fn previous_responses_are_the_callers_tenants_only() {
    let s = Setup::start(config);
    let body = json!({"model": "door-gpt", "input": "first turn m-prev"});
    let (status, _, first) = post(&s.gw, "/v1/responses", BEARER, &body).await;
    assert_eq!(status, 200, "{first}");
    let id = first["id"].as_str().unwrap();

    let next = json!({"model": "door-gpt", "previous_response_id": id, "input": "second turn"});
    let acme = [("authorization", "Bearer acme-key")];
    let (status, _, body) = post(&s.gw, "/v1/responses", &acme, &next).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["param"], "previous_response_id");

    let (status, _, body) = post(&s.gw, "/v1/responses", BEARER, &next).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["previous_response_id"], id);
    let sent = sent_with(&s.upstream, "second turn");
    let roles: Vec<&str> = sent["body"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert_eq!(sent["body"]["messages"][1]["content"], "first turn m-prev");
}

#[tokio::test]
async fn keys_limits_and_bounds_hold_at_every_door_in_its_own_shape() {
    let s = Setup::start(config);
    let ask_messages = json!({"model": "door-gpt", "max_tokens": 5,
                              "messages": [{"role": "user", "content": "hi"}]});
    let ask_responses = json!({"model": "door-gpt", "input": "hi"});

    // No key, a wrong key.
    let (status, _, body) = post(&s.gw, "/v1/messages", &[], &ask_messages).await;
    assert_eq!(status, 401);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");
    let (status, _, body) = post(
        &s.gw,
        "/v1/responses",
        &[("authorization", "Bearer no")],
        &ask_responses,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "authentication_error");

    // The body bound.
    let big = json!({"model": "door-gpt", "max_tokens": 5,
                     "messages": [{"role": "user", "content": "x".repeat(8192)}]});
    let (status, _, body) = post(&s.gw, "/v1/messages", ANTHROPIC, &big).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["type"], "request_too_large");
    let big = json!({"model": "door-gpt", "input": "x".repeat(8192)});
    let (status, _, body) = post(&s.gw, "/v1/responses", BEARER, &big).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large");

    // An overlong `previous_response_id` is a 400 that names it (the id is never looked up).
    let long =
        json!({"model": "door-gpt", "input": "hi", "previous_response_id": "r".repeat(4000)});
    let (status, _, body) = post(&s.gw, "/v1/responses", BEARER, &long).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "previous_response_id");
    assert!(
        body["error"]["message"].as_str().unwrap().len() < 400,
        "{body}"
    );

    // A tenant's rate limit counts every door: 2 per minute, the third is refused.
    let acme_anthropic = [("x-api-key", ACME_KEY)];
    let acme_bearer = [("authorization", "Bearer acme-key")];
    let (status, headers, body) = post(&s.gw, "/v1/messages", &acme_anthropic, &ask_messages).await;
    assert_eq!(status, 200, "{body}");
    // What is left of the rate, as on Chat Completions.
    assert_eq!(headers["x-ratelimit-limit-requests"], "2");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "1");
    let (status, headers, body) = post(&s.gw, "/v1/responses", &acme_bearer, &ask_responses).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    let (status, headers, body) = post(&s.gw, "/v1/messages", &acme_anthropic, &ask_messages).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(headers.contains_key("retry-after"));

    // Unknown paths: a 404 only after the key check.
    let r = client()
        .get(format!("{}/v1/nope", s.gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(format!("{}/v1/nope", s.gw.url))
        .bearer_auth(TENANT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn streams_end_with_usage_and_cost_and_are_recorded_with_their_door() {
    let s = Setup::start(config);
    let body = json!({"model": "door-claude", "max_tokens": 50, "stream": true,
                      "messages": [{"role": "user", "content": "stream me m-stream"}]});
    let response = client()
        .post(format!("{}/v1/messages", s.gw.url))
        .header("x-api-key", TENANT_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = response.text().await.unwrap();
    let names: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.lines().next()?.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
    let delta: Value = serde_json::from_str(
        text.split("\n\n")
            .find(|e| e.starts_with("event: message_delta"))
            .and_then(|e| e.lines().nth(1))
            .and_then(|l| l.strip_prefix("data: "))
            .unwrap(),
    )
    .unwrap();
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
    let run = run_for(&s.gw, &headers).await;
    assert_eq!(run["door"], "messages");
    assert_eq!(run["status"], "success");
    assert!(
        (run["cost_usd"].as_f64().unwrap() - delta["cost_usd"].as_f64().unwrap()).abs() < 1e-12
    );
}
