//! The answer cache through the real binary: identical concurrent requests share one upstream
//! call (streams included, failures too), stored answers are served as hits with runs of their
//! own, expire, survive restarts, stay within their byte budget and their tenant.
//!
//! Tests marked `needs engine wiring` exercise the stored cache, which the engine does not call
//! yet; remove the attribute once it does.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn models() -> String {
    let mini = |directives: &str| offer("upstream", &format!("gpt-4o-mini;{directives}"), 1.0, 1.0);
    let structured = "supports = { structured_output = true, json_mode = true, tools = true }";
    [
        model_table(
            "up-model",
            &[offer("upstream", "gpt-4o-mini", 0.15, 0.60)],
            structured,
        ),
        model_table("up-slow", &[mini("delay_ms=300")], ""),
        model_table("up-slow-bad", &[mini("delay_ms=300;status=400")], ""),
        model_table("up-trickle", &[mini("chunk_delay_ms=25;chunk_chars=4")], ""),
        model_table("up-invalid-once", &[mini("invalid_first=1")], structured),
        model_table("up-invalid-twice", &[mini("invalid_first=2")], structured),
    ]
    .concat()
}

/// The gateway with `extra` appended to its config (a `[cache]` section, keys).
fn setup_with(extra: &str) -> Setup {
    Setup::with_models(|_| models() + extra)
}

fn setup() -> Setup {
    setup_with("")
}

fn cache_header(headers: &reqwest::header::HeaderMap) -> &str {
    headers["x-flowgate-cache"].to_str().unwrap()
}

/// A streamed answer: its content, the last chunk (usage and cost) and whether `[DONE]` came.
struct Streamed {
    content: String,
    last: Value,
    done: bool,
    errors: Vec<Value>,
}

fn reassemble(events: &[String]) -> Streamed {
    let mut streamed = Streamed {
        content: String::new(),
        last: Value::Null,
        done: false,
        errors: Vec::new(),
    };
    for event in events {
        if event == "[DONE]" {
            streamed.done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(event).unwrap();
        if chunk.get("error").is_some() {
            streamed.errors.push(chunk);
            continue;
        }
        if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str() {
            streamed.content.push_str(text);
        }
        streamed.last = chunk;
    }
    streamed
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series `{series}` in:\n{text}"))
}

#[tokio::test]
async fn identical_concurrent_requests_make_one_upstream_call() {
    let s = setup();
    let body = json!({"model": "up-slow", "temperature": 0, "messages": user("all at once")});
    let results = chat_at_once(&s.gw, &body, 50).await;
    for (status, _, body) in &results {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], "all at once");
    }
    assert_eq!(s.upstream.count(), 1, "one upstream call for 50 requests");
    let misses: Vec<_> = results
        .iter()
        .filter(|(_, h, _)| cache_header(h) == "miss")
        .collect();
    assert_eq!(misses.len(), 1, "one leader");
    // Only the leader pays.
    let paid: f64 = results
        .iter()
        .map(|(_, _, b)| b["cost_usd"].as_f64().unwrap())
        .sum();
    assert!(paid > 0.0);
    assert!((paid - misses[0].2["cost_usd"].as_f64().unwrap()).abs() < 1e-15);
}

#[tokio::test]
async fn a_failure_is_shared_not_retried_by_each_request() {
    let s = setup();
    let body = json!({"model": "up-slow-bad", "temperature": 0, "use_fallback": "never",
        "messages": user("doomed")});
    let results = chat_at_once(&s.gw, &body, 10).await;
    for (status, _, body) in &results {
        assert_eq!(*status, 400, "{body}");
        assert!(body["error"]["message"].is_string());
    }
    assert_eq!(s.upstream.count(), 1, "one upstream call for 10 requests");
}

#[tokio::test]
async fn use_cache_never_always_calls_the_provider() {
    let s = setup();
    let body = json!({"model": "up-model", "temperature": 0, "use_cache": "never",
        "messages": user("fresh every time")});
    let results = chat_at_once(&s.gw, &body, 3).await;
    for (status, headers, body) in &results {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(cache_header(headers), "miss");
    }
    let (status, headers, _) = chat(&s.gw, body).await;
    assert_eq!(status, 200);
    assert_eq!(cache_header(&headers), "miss");
    assert_eq!(s.upstream.count(), 4);

    // `auto` with a temperature above 0 does not share either.
    s.upstream.clear();
    let warm = json!({"model": "up-model", "temperature": 0.7, "messages": user("creative")});
    for _ in 0..2 {
        let (status, headers, _) = chat(&s.gw, warm.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(cache_header(&headers), "miss");
    }
    assert_eq!(s.upstream.count(), 2);
}

#[tokio::test]
async fn cache_metrics_are_exported_with_units_in_their_names() {
    let s = setup();
    let text = metrics(&s.gw).await;
    for series in [
        "flowgate_cache_hits_total",
        "flowgate_cache_misses_total",
        "flowgate_cache_coalesced_total",
        "flowgate_cache_evictions_total{reason=\"size\"}",
        "flowgate_cache_evictions_total{reason=\"expired\"}",
        "flowgate_cache_stored_bytes",
        "flowgate_cache_entries",
    ] {
        assert_eq!(metric(&text, series), 0.0, "{series}");
    }
}

#[tokio::test]

async fn a_stored_answer_is_a_hit_recorded_as_its_own_free_run() {
    let s = setup();
    let body = json!({"model": "up-model", "temperature": 0, "messages": user("remember me")});
    let (status, headers, first) = chat(&s.gw, body.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(cache_header(&headers), "miss");
    let source = run_id(&headers);
    assert!(first["cost_usd"].as_f64().unwrap() > 0.0);

    // Metadata and `user` do not shape the answer: still a hit.
    let mut again = body.clone();
    again["metadata"] = json!({"customer": "acme"});
    again["user"] = json!("someone");
    let (status, headers, hit) = chat(&s.gw, again).await;
    assert_eq!(status, 200, "{hit}");
    assert_eq!(cache_header(&headers), "hit");
    assert_eq!(s.upstream.count(), 1, "served without calling the provider");
    assert_eq!(
        hit["choices"][0]["message"], first["choices"][0]["message"],
        "the same answer"
    );
    assert_eq!(hit["usage"], first["usage"]);
    assert_eq!(hit["cost_usd"], 0.0);
    assert_eq!(hit["choices"][0]["cost_usd"], 0.0);
    assert_eq!(headers["x-flowgate-provider"], "upstream");
    assert_eq!(headers["x-flowgate-model"], "up-model");

    // Its own run, free, linked to the run that paid.
    assert_ne!(run_id(&headers), source);
    let run = run_of(&s.gw, &headers).await;
    assert_eq!(run["cache"], "hit");
    assert_eq!(run["cost_usd"], 0.0);
    assert_eq!(run["source_run_id"], source);
    assert_eq!(run["status"], "success");
    assert_eq!(run["metadata"]["customer"], "acme");
    let source_run = get_run(&s.gw, &source).await;
    assert_eq!(source_run["cache"], "miss");

    // A different question is a miss.
    let (_, headers, _) = chat(
        &s.gw,
        json!({"model": "up-model", "temperature": 0, "messages": user("something else")}),
    )
    .await;
    assert_eq!(cache_header(&headers), "miss");
    assert_eq!(s.upstream.count(), 2);

    // `never` neither reads nor writes the store.
    let mut never = body;
    never["use_cache"] = json!("never");
    let (_, headers, _) = chat(&s.gw, never).await;
    assert_eq!(cache_header(&headers), "miss");
    assert_eq!(s.upstream.count(), 3);

    let text = metrics(&s.gw).await;
    assert_eq!(metric(&text, "flowgate_cache_hits_total"), 1.0);
    assert!(metric(&text, "flowgate_cache_misses_total") >= 2.0);
    assert_eq!(metric(&text, "flowgate_cache_entries"), 2.0);
    assert!(metric(&text, "flowgate_cache_stored_bytes") > 0.0);
}

#[tokio::test]

async fn stored_answers_expire_after_their_ttl() {
    let s = setup_with("\n[cache]\nttl_seconds = 1\n");
    let body = json!({"model": "up-model", "temperature": 0, "messages": user("short-lived")});
    let (_, headers, _) = chat(&s.gw, body.clone()).await;
    assert_eq!(cache_header(&headers), "miss");
    let (_, headers, _) = chat(&s.gw, body.clone()).await;
    assert_eq!(cache_header(&headers), "hit");
    assert_eq!(s.upstream.count(), 1);

    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (status, headers, _) = chat(&s.gw, body).await;
    assert_eq!(status, 200);
    assert_eq!(cache_header(&headers), "miss", "served past its TTL");
    assert_eq!(s.upstream.count(), 2);
}

#[tokio::test]

async fn stored_answers_survive_a_restart() {
    let s = setup();
    let body = json!({"model": "up-model", "temperature": 0, "messages": user("durable")});
    let (_, headers, first) = chat(&s.gw, body.clone()).await;
    assert_eq!(cache_header(&headers), "miss");
    let source = run_id(&headers);
    let config_path = s.gw.config_path.clone();
    s.gw.stop();

    let gw = Flowgate::start_with(&config_path);
    let (status, headers, hit) = chat(&gw, body).await;
    assert_eq!(status, 200, "{hit}");
    assert_eq!(cache_header(&headers), "hit");
    assert_eq!(hit["choices"][0]["message"], first["choices"][0]["message"]);
    assert_eq!(s.upstream.count(), 1);
    let run = run_of(&gw, &headers).await;
    assert_eq!(run["source_run_id"], source);
    let text = metrics(&gw).await;
    assert_eq!(metric(&text, "flowgate_cache_entries"), 1.0);
    drop(s.dir);
}

#[tokio::test]

async fn the_byte_bound_evicts_the_least_recently_used_answers() {
    // Each answer echoes a 2,000-character question, so about two fit in 5,000 bytes.
    let s = setup_with("\n[cache]\nmax_bytes = 5000\n");
    let ask = |c: char| {
        json!({"model": "up-model", "temperature": 0,
            "messages": user(&c.to_string().repeat(2_000))})
    };
    for c in ['a', 'b'] {
        let (_, headers, _) = chat(&s.gw, ask(c)).await;
        assert_eq!(cache_header(&headers), "miss");
    }
    // `a` is used again, so `b` is the least recently used when `c` needs room. (Hits move an
    // entry at most once a second.)
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (_, headers, _) = chat(&s.gw, ask('a')).await;
    assert_eq!(cache_header(&headers), "hit");
    let (_, headers, _) = chat(&s.gw, ask('c')).await;
    assert_eq!(cache_header(&headers), "miss");
    assert_eq!(s.upstream.count(), 3);

    let (_, headers, _) = chat(&s.gw, ask('a')).await;
    assert_eq!(cache_header(&headers), "hit");
    let (_, headers, _) = chat(&s.gw, ask('c')).await;
    assert_eq!(cache_header(&headers), "hit");
    let (_, headers, _) = chat(&s.gw, ask('b')).await;
    assert_eq!(cache_header(&headers), "miss", "evicted");
    assert_eq!(s.upstream.count(), 4);

    let text = metrics(&s.gw).await;
    assert!(metric(&text, "flowgate_cache_evictions_total{reason=\"size\"}") >= 1.0);
    assert!(metric(&text, "flowgate_cache_stored_bytes") <= 5000.0);
}

fn assert_valid_user(body: &Value) {
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    let user: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content}"));
    assert!(user["name"].is_string(), "{user}");
    assert!(user["age"].is_i64(), "{user}");
    assert_eq!(user.as_object().unwrap().len(), 2, "{user}");
}

#[tokio::test]

async fn only_validated_structured_outputs_are_stored_and_a_hit_still_validates() {
    let s = setup();
    let request = |model: &str| {
        json!({"model": model, "temperature": 0, "use_fallback": "never",
            "messages": [{"role": "user", "content": "Jason is 25"}],
            "response_format": {"type": "json_schema",
                "json_schema": {"name": "User", "schema": user_schema(), "strict": true}}})
    };
    // The first answer violates the schema and is repaired: the repaired one is stored.
    let (status, headers, first) = chat(&s.gw, request("up-invalid-once")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(cache_header(&headers), "miss");
    assert_valid_user(&first);
    assert_eq!(s.upstream.count(), 2, "the answer and its repair");
    let (status, headers, hit) = chat(&s.gw, request("up-invalid-once")).await;
    assert_eq!(status, 200, "{hit}");
    assert_eq!(cache_header(&headers), "hit");
    assert_valid_user(&hit);
    assert_eq!(
        hit["choices"][0]["message"]["content"],
        first["choices"][0]["message"]["content"]
    );
    assert_eq!(s.upstream.count(), 2);

    // A request that failed validation stores nothing: the next one calls again.
    s.upstream.clear();
    let (status, _, failed) = chat(&s.gw, request("up-invalid-twice")).await;
    assert_eq!(status, 502, "{failed}");
    let (status, headers, ok) = chat(&s.gw, request("up-invalid-twice")).await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(cache_header(&headers), "miss");
    assert_valid_user(&ok);
    assert_eq!(s.upstream.count(), 3);
}

#[tokio::test]

async fn tenants_never_share_stored_answers() {
    // Also needs keys mapped to tenants in [auth] (today every key is the `default` tenant).
    let s = setup_with(
        r#"
[auth]
api_keys = ["key-default"]

[auth.tenants.acme]
api_keys = ["key-acme"]

[auth.tenants.globex]
api_keys = ["key-globex"]
"#,
    );
    let body = json!({"model": "up-model", "temperature": 0, "messages": user("tenant secret")});
    let (status, headers, _) = chat_as(&s.gw, "key-acme", body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(cache_header(&headers), "miss");
    let (_, headers, _) = chat_as(&s.gw, "key-acme", body.clone()).await;
    assert_eq!(cache_header(&headers), "hit");
    let (status, headers, _) = chat_as(&s.gw, "key-globex", body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(cache_header(&headers), "miss", "another tenant's answer");
    let (_, headers, _) = chat_as(&s.gw, "key-default", body).await;
    assert_eq!(cache_header(&headers), "miss");
    assert_eq!(s.upstream.count(), 3);
}

#[tokio::test]

async fn a_streaming_request_is_served_from_the_cache_as_a_replayed_stream() {
    let s = setup();
    let question = "A question whose answer is long enough to come back in several chunks.";
    let body = json!({"model": "up-model", "temperature": 0, "messages": user(question)});
    let (_, headers, first) = chat(&s.gw, body.clone()).await;
    assert_eq!(cache_header(&headers), "miss");
    let source = run_id(&headers);

    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    let (status, headers, events) = chat_stream(&s.gw, streaming.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(cache_header(&headers), "hit");
    assert_eq!(s.upstream.count(), 1);
    let streamed = reassemble(&events);
    assert!(streamed.errors.is_empty(), "{:?}", streamed.errors);
    assert!(streamed.done, "ends with [DONE]");
    assert_eq!(
        streamed.content,
        first["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert!(events.len() > 3, "replayed as a stream: {events:?}");
    assert_eq!(streamed.last["usage"], first["usage"]);
    assert_eq!(streamed.last["cost_usd"], 0.0);
    let run = run_of(&s.gw, &headers).await;
    assert_eq!(run["cache"], "hit");
    assert_eq!(run["stream"], true);
    assert_eq!(run["source_run_id"], source);

    // A stream that ended well is stored too, and serves both kinds of request.
    let other = json!({"model": "up-model", "temperature": 0, "stream": true,
        "messages": user("streamed first")});
    let (_, headers, events) = chat_stream(&s.gw, other.clone()).await;
    assert_eq!(cache_header(&headers), "miss");
    let original = reassemble(&events).content;
    let (_, headers, events) = chat_stream(&s.gw, other.clone()).await;
    assert_eq!(cache_header(&headers), "hit");
    assert_eq!(reassemble(&events).content, original);
    let mut whole = other;
    whole["stream"] = json!(false);
    let (_, headers, body) = chat(&s.gw, whole).await;
    assert_eq!(cache_header(&headers), "hit");
    assert_eq!(body["choices"][0]["message"]["content"], original.as_str());
    assert_eq!(s.upstream.count(), 2);
}

#[tokio::test]

async fn streaming_followers_of_an_in_flight_stream_receive_the_full_answer() {
    let s = setup();
    // About 40 chunks, 25 ms apart: a second of streaming to join in the middle of.
    let question = "Streams are shared: every follower gets every chunk, from the first.";
    let body = json!({"model": "up-trickle", "temperature": 0, "stream": true,
        "messages": user(question)});
    let leader = tokio::spawn({
        let url = s.gw.chat_url();
        let body = body.clone();
        async move {
            let response = client()
                .post(url)
                .bearer_auth("any")
                .json(&body)
                .send()
                .await
                .unwrap();
            let cache = response.headers()["x-flowgate-cache"]
                .to_str()
                .unwrap()
                .to_string();
            let text = response.text().await.unwrap();
            (cache, sse_events(&text))
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let followers =
        futures::future::join_all((0..5).map(|_| chat_stream(&s.gw, body.clone()))).await;
    let (leader_cache, leader_events) = leader.await.unwrap();
    assert_eq!(leader_cache, "miss");
    let expected = reassemble(&leader_events);
    assert_eq!(expected.content, question);
    assert!(expected.done);
    for (status, headers, events) in &followers {
        assert_eq!(*status, 200);
        assert_eq!(cache_header(headers), "hit");
        let got = reassemble(events);
        assert!(got.errors.is_empty(), "{:?}", got.errors);
        assert_eq!(
            got.content, question,
            "the whole answer, from the first chunk"
        );
        assert!(got.done);
        assert_eq!(got.last["cost_usd"], 0.0);
    }
    assert_eq!(s.upstream.count(), 1, "one upstream call for six streams");
}
