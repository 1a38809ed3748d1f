//! The engine on its own: a gateway whose providers play scripts (no HTTP), a plan from the
//! router, and what comes out — the answer or the error, the calls each provider saw, and the
//! run the recorder stored.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::breaker::BreakerSettings;
use crate::cache::CacheSettings;
use crate::catalog::{Catalog, Fallbacks, ModelEntry, Prices, ProviderOffer, Supports};
use crate::completion::StreamEvent;
use crate::error::AttemptSummary;
use crate::provider::media::MediaSettings;
use crate::provider::scripted::{Script, ScriptedSettings, Step};
use crate::provider::{ProviderKind, ProviderSettings, Timeouts};
use crate::recorder::run::{RunRecord, RunStatus};
use crate::recorder::Barrier;
use crate::retry::RetryPolicy;
use crate::router::Strategy;
use crate::structured::Layer;
use crate::supervisor::{GatewayConfig, Supervisor};
use crate::wire::ChatRequest;

const TENANT: &str = "t";

struct Harness {
    gateway: Arc<Gateway>,
    script: Arc<Script>,
    _dir: tempfile::TempDir,
}

/// A model served by `offers` (provider, provider model), in that order, $1/$2 per million.
fn model(id: &str, offers: &[(&str, &str)], fallbacks: Fallbacks) -> ModelEntry {
    ModelEntry {
        embedding: None,
        id: id.to_string(),
        display_name: id.to_string(),
        aliases: Vec::new(),
        context_window: None,
        max_output_tokens: None,
        release_date: None,
        supports: Supports {
            structured_output: true,
            json_mode: true,
            ..Supports::default()
        },
        providers: offers
            .iter()
            .map(|(provider, model)| ProviderOffer {
                provider: provider.to_string(),
                model: model.to_string(),
                prices: Prices {
                    input_per_mtok: 1.0,
                    output_per_mtok: 2.0,
                    ..Prices::default()
                },
            })
            .collect(),
        fallbacks,
    }
}

fn provider(name: &str, script: &Arc<Script>) -> ProviderSettings {
    ProviderSettings {
        name: name.to_string(),
        kind: ProviderKind::Scripted(ScriptedSettings {
            script: script.clone(),
        }),
        enabled: true,
        disabled_reason: None,
        timeouts: Timeouts::default(),
        breaker: BreakerSettings::default(),
    }
}

/// Providers `a` and `b` playing `script`; models `m` (a, then b), `solo` (a only) and `n`
/// (b), with `solo` falling back to `n` on rate limits.
fn harness(script: Arc<Script>, retry: RetryPolicy, hedging: HedgingPolicy) -> Harness {
    routed_harness(script, retry, hedging, Strategy::Ordered)
}

fn routed_harness(
    script: Arc<Script>,
    retry: RetryPolicy,
    hedging: HedgingPolicy,
    routing: Strategy,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::new(vec![
        model("m", &[("a", "m-a"), ("b", "m-b")], Fallbacks::default()),
        model(
            "solo",
            &[("a", "solo-a")],
            Fallbacks {
                rate_limit: vec!["n".into()],
                ..Fallbacks::default()
            },
        ),
        model("n", &[("b", "n-b")], Fallbacks::default()),
    ])
    .unwrap();
    let config = GatewayConfig {
        providers: vec![provider("a", &script), provider("b", &script)],
        catalog,
        storage: Default::default(),
        data_dir: dir.path().to_path_buf(),
        flush_interval: Duration::from_millis(20),
        sled_cache_bytes: crate::storage::sled::DEFAULT_CACHE_BYTES,
        retention: Default::default(),
        cache: CacheSettings {
            shards: 1,
            ttl: Duration::ZERO,
            max_bytes: 0,
        },
        public_url: "http://flowgate.test".into(),
        media: MediaSettings::default(),
        retry,
        hedging,
        routing,
    };
    let (gateway, _supervisor) = Supervisor::start(config).unwrap();
    Harness {
        gateway: Arc::new(gateway),
        script,
        _dir: dir,
    }
}

fn quick_retries(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        base_delay_ms: 1,
        max_delay_ms: 50,
        request_timeout_seconds: 30.0,
    }
}

fn request(model: &str, extra: serde_json::Value) -> ChatRequest {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    serde_json::from_value(body).unwrap()
}

impl Harness {
    fn guard(&self, agent: &str, request: &ChatRequest) -> Run {
        let ctx = RunContext::new(TENANT, agent, &request.model, request.is_stream());
        self.gateway.start(ctx)
    }

    /// A whole answer through the engine's entry.
    async fn complete(
        &self,
        run: &mut Run,
        request: &ChatRequest,
    ) -> Result<Arc<Answer>, GatewayError> {
        let request = RunRequest {
            chat: request,
            model: &request.model,
        };
        match self.gateway.run(run, request).await? {
            RunOutput::Answer(answer) => Ok(answer),
            RunOutput::Stream(_) => panic!("a whole answer was asked for"),
        }
    }

    /// A stream through the engine's entry.
    async fn stream(
        &self,
        run: &mut Run,
        request: &ChatRequest,
    ) -> Result<LiveStream, GatewayError> {
        let request = RunRequest {
            chat: request,
            model: &request.model,
        };
        match self.gateway.run(run, request).await? {
            RunOutput::Stream(live) => Ok(live),
            RunOutput::Answer(_) => panic!("a stream was asked for"),
        }
    }

    /// The stored run, once the recorder has written what it was given.
    async fn run(&self, id: Uuid) -> RunRecord {
        self.gateway.recorder.addr.send(Barrier).await.unwrap();
        self.gateway.runs.get(TENANT, id).await.unwrap().unwrap()
    }
}

fn providers_of(attempts: &[AttemptSummary]) -> Vec<(&str, Option<u16>, Option<&str>)> {
    attempts
        .iter()
        .map(|a| (a.provider.as_str(), a.status, a.reason.as_deref()))
        .collect()
}

#[actix_rt::test]
async fn falls_back_in_plan_order_and_the_run_keeps_every_attempt() {
    let script = Script::new()
        .then("m-a", [Step::Fail(500, None)])
        .then("m-b", [Step::Text("from b")]);
    let h = harness(script, quick_retries(0), HedgingPolicy::default());
    let request = request("m", json!({}));
    let mut guard = h.guard("agent", &request);
    let id = guard.ctx.run_id;
    let answer = h.complete(&mut guard, &request).await.unwrap();
    assert_eq!(answer.provider, "b");
    assert_eq!(
        answer.completion.choices[0].message.content.as_deref(),
        Some("from b")
    );
    assert_eq!(h.script.calls(), vec!["m-a", "m-b"]);
    assert_eq!(
        providers_of(&guard.attempts),
        vec![
            ("a", Some(500), None),
            (
                "b",
                Some(200),
                Some("other_provider after upstream_server_error")
            )
        ]
    );
    guard.succeed(answer);
    let run = h.run(id).await;
    assert!(matches!(run.status, RunStatus::Success));
    assert_eq!(run.provider.as_deref(), Some("b"));
    assert_eq!(run.attempts.len(), 2);
    assert_eq!(
        run.attempts[0].error.as_deref(),
        Some("upstream_server_error")
    );
    // 10 prompt and 5 completion tokens at $1 and $2 per million.
    assert!((run.cost_usd - 20e-6).abs() < 1e-12, "{}", run.cost_usd);
}

#[actix_rt::test]
async fn the_last_provider_is_retried_on_transient_errors() {
    let script = Script::new().then(
        "solo-a",
        [
            Step::Fail(503, None),
            Step::Fail(500, None),
            Step::Text("third time lucky"),
        ],
    );
    let h = harness(script, quick_retries(2), HedgingPolicy::default());
    let request = request("solo", json!({}));
    let mut guard = h.guard("agent", &request);
    let answer = h.complete(&mut guard, &request).await.unwrap();
    assert_eq!(
        answer.completion.choices[0].message.content.as_deref(),
        Some("third time lucky")
    );
    assert_eq!(h.script.calls(), vec!["solo-a", "solo-a", "solo-a"]);
    assert_eq!(guard.attempts.len(), 3);
    assert!(guard.attempts[1]
        .reason
        .as_deref()
        .is_some_and(|r| r.starts_with("retry")));
}

#[actix_rt::test]
async fn retries_stop_at_the_limit_and_the_failed_run_is_recorded() {
    let script = Script::new().then("solo-a", [Step::Fail(500, None), Step::Fail(500, None)]);
    let h = harness(script, quick_retries(1), HedgingPolicy::default());
    let request = request("solo", json!({}));
    let mut guard = h.guard("agent", &request);
    let id = guard.ctx.run_id;
    let error = h.complete(&mut guard, &request).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::UpstreamServer);
    assert_eq!(h.script.calls().len(), 2);
    let error = guard.fail(error);
    assert_eq!(error.attempts.len(), 2);
    let run = h.run(id).await;
    assert!(matches!(run.status, RunStatus::Error));
    assert_eq!(run.attempts.len(), 2);
    assert_eq!(
        run.error.as_ref().unwrap()["error"]["code"],
        "upstream_server_error"
    );
}

#[actix_rt::test]
async fn a_client_error_upstream_does_not_fall_back() {
    let script = Script::new()
        .then("m-a", [Step::Fail(400, None)])
        .then("m-b", [Step::Text("never")]);
    let h = harness(script, quick_retries(2), HedgingPolicy::default());
    let request = request("m", json!({}));
    let mut guard = h.guard("agent", &request);
    let error = h.complete(&mut guard, &request).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::UpstreamBadRequest);
    assert_eq!(h.script.calls(), vec!["m-a"]);
}

#[actix_rt::test]
async fn a_rate_limited_model_falls_back_to_its_catalog_fallback() {
    let script = Script::new()
        .then("solo-a", [Step::Fail(429, Some(0))])
        .then("n-b", [Step::Text("from the fallback model")]);
    let h = harness(script, quick_retries(0), HedgingPolicy::default());
    let request = request("solo", json!({}));
    let mut guard = h.guard("agent", &request);
    let answer = h.complete(&mut guard, &request).await.unwrap();
    assert_eq!(answer.model, "n");
    assert_eq!(h.script.calls(), vec!["solo-a", "n-b"]);
    assert_eq!(
        providers_of(&guard.attempts),
        vec![
            ("a", Some(429), None),
            ("b", Some(200), Some("auto_fallback after rate_limited"))
        ]
    );
    // `use_fallback: never` keeps the error.
    let script = Script::new().then("solo-a", [Step::Fail(429, Some(0))]);
    let h = harness(script, quick_retries(0), HedgingPolicy::default());
    let request = self::request("solo", json!({"use_fallback": "never"}));
    let mut guard = h.guard("agent", &request);
    let error = h.complete(&mut guard, &request).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::RateLimited);
    assert_eq!(h.script.calls(), vec!["solo-a"]);
}

#[actix_rt::test]
async fn a_hedge_starts_the_second_provider_and_the_first_answer_wins() {
    let script = Script::new()
        .then(
            "m-a",
            [Step::After(
                Duration::from_secs(5),
                Box::new(Step::Text("too slow")),
            )],
        )
        .then("m-b", [Step::Text("hedged")]);
    let hedging = HedgingPolicy {
        agents: vec!["hedged-agent".into()],
        after_ms: 30,
    };
    let h = harness(script, quick_retries(0), hedging);
    let request = request("m", json!({}));
    let mut guard = h.guard("hedged-agent", &request);
    let started = std::time::Instant::now();
    let answer = h.complete(&mut guard, &request).await.unwrap();
    assert_eq!(answer.provider, "b");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(h.script.calls(), vec!["m-a", "m-b"]);
    // Both calls are on the run: the winner, and the loser (cancelled) or what it did.
    assert_eq!(guard.attempts.len(), 2, "{:?}", guard.attempts);
    assert!(guard
        .attempts
        .iter()
        .any(|a| a.provider == "b" && a.reason.as_deref() == Some("hedge")));
}

#[actix_rt::test]
async fn an_invalid_structured_answer_is_repaired_once_with_its_error_shown() {
    let script = Script::new().then(
        "m-a",
        [
            Step::Text("Paris, I think"),
            Step::Text("{\"city\": \"Paris\"}"),
        ],
    );
    let h = harness(script, quick_retries(0), HedgingPolicy::default());
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}},
        "required": ["city"], "additionalProperties": false});
    let request = request(
        "m",
        json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "City", "schema": schema, "strict": true}}}),
    );
    let mut guard = h.guard("agent", &request);
    let answer = h.complete(&mut guard, &request).await.unwrap();
    let content = answer.completion.choices[0]
        .message
        .content
        .clone()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&content).unwrap(),
        json!({"city": "Paris"})
    );
    assert_eq!(h.script.calls(), vec!["m-a", "m-a"]);
    assert_eq!(guard.structured.repairs, 1);
    // The repair shows the model its answer and what was wrong with it.
    let repair = &h.script.requests()[1];
    let shown: Vec<String> = repair.messages.iter().map(|m| m.text()).collect();
    assert!(
        shown.iter().any(|t| t.contains("Paris, I think")),
        "{shown:?}"
    );
}

#[actix_rt::test]
async fn a_request_dropped_mid_call_is_recorded_as_cancelled() {
    let script = Script::new().then(
        "m-a",
        [Step::After(
            Duration::from_secs(30),
            Box::new(Step::Text("nobody reads this")),
        )],
    );
    let h = harness(script, quick_retries(0), HedgingPolicy::default());
    let request = request("m", json!({}));
    let mut guard = h.guard("agent", &request);
    let id = guard.ctx.run_id;
    let call = h.complete(&mut guard, &request);
    // The client goes away: the call's future is dropped, then the guard.
    assert!(tokio::time::timeout(Duration::from_millis(50), call)
        .await
        .is_err());
    drop(guard);
    let run = h.run(id).await;
    assert!(
        matches!(run.status, RunStatus::Cancelled),
        "{:?}",
        run.status
    );
    assert_eq!(h.script.calls(), vec!["m-a"]);
}

#[actix_rt::test]
async fn a_stream_falls_back_before_its_first_byte() {
    use futures::StreamExt;
    let script = Script::new()
        .then("m-a", [Step::Fail(502, None)])
        .then("m-b", [Step::Text("streamed by b")]);
    let h = harness(script, quick_retries(0), HedgingPolicy::default());
    let request = request("m", json!({"stream": true}));
    let mut guard = h.guard("agent", &request);
    let live = h.stream(&mut guard, &request).await.unwrap();
    assert!(
        matches!(&live.first, StreamEvent::Content { text, .. } if text == "streamed by b"),
        "{:?}",
        live.first
    );
    let rest: Vec<_> = live.rest.collect().await;
    assert!(rest.iter().all(Result::is_ok));
    assert_eq!(h.script.calls(), vec!["m-a", "m-b"]);
    assert_eq!(guard.attempts.len(), 2);
}

/// A `City` structured-output request for `model`, streamed or not.
fn city_request(model: &str, stream: bool) -> ChatRequest {
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}},
        "required": ["city"], "additionalProperties": false});
    request(
        model,
        json!({"stream": stream, "response_format": {"type": "json_schema",
            "json_schema": {"name": "City", "schema": schema, "strict": true}}}),
    )
}

#[actix_rt::test]
async fn a_rejected_schema_is_sent_again_one_layer_down_streamed_or_not() {
    for stream in [false, true] {
        let script = Script::new().then(
            "m-a",
            [
                Step::Reject("response_format json_schema is not supported for this model"),
                Step::Text("{\"city\": \"Paris\"}"),
            ],
        );
        let h = harness(script, quick_retries(0), HedgingPolicy::default());
        let request = city_request("m", stream);
        let mut run = h.guard("agent", &request);
        let id = run.id();
        let text = if stream {
            use futures::StreamExt;
            let live = h.stream(&mut run, &request).await.unwrap();
            let mut text = String::new();
            for event in std::iter::once(Ok(live.first)).chain(live.rest.collect::<Vec<_>>().await)
            {
                if let Ok(StreamEvent::Content { text: t, .. }) = event {
                    text.push_str(&t);
                }
            }
            run.finish_stream();
            text
        } else {
            let answer = h.complete(&mut run, &request).await.unwrap();
            let text = answer.completion.choices[0].message.content.clone();
            run.succeed(answer);
            text.unwrap()
        };
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            json!({"city": "Paris"}),
            "stream: {stream}"
        );
        // Same provider, asked again in JSON mode: no schema sent the second time.
        assert_eq!(h.script.calls(), vec!["m-a", "m-a"], "stream: {stream}");
        let second = &h.script.requests()[1];
        assert!(
            !serde_json::to_string(&second.response_format)
                .unwrap()
                .contains("json_schema"),
            "stream: {stream}: {:?}",
            second.response_format
        );
        let run = h.run(id).await;
        assert!(matches!(run.status, RunStatus::Success), "stream: {stream}");
        assert_eq!(
            providers_of(&run.attempts),
            vec![
                ("a", Some(400), None),
                ("a", Some(200), Some("schema_rejected, retry at json_mode"))
            ],
            "stream: {stream}"
        );
        assert_eq!(
            run.structured.as_ref().and_then(|s| s.layer),
            Some(Layer::JsonMode),
            "stream: {stream}"
        );
    }
}

#[actix_rt::test]
async fn a_stream_that_no_provider_opens_is_recorded_with_every_attempt() {
    let script = Script::new()
        .then("m-a", [Step::Fail(500, None)])
        .then("m-b", [Step::Fail(502, None)]);
    let h = harness(script, quick_retries(0), HedgingPolicy::default());
    let request = request("m", json!({"stream": true}));
    let mut run = h.guard("agent", &request);
    let id = run.id();
    let error = match h.stream(&mut run, &request).await {
        Ok(_) => panic!("no provider should have opened the stream"),
        Err(error) => run.fail(error),
    };
    assert_eq!(error.kind, ErrorKind::UpstreamServer);
    assert_eq!(error.attempts.len(), 2);
    let run = h.run(id).await;
    assert!(matches!(run.status, RunStatus::Error));
    // The last provider tried, and both attempts with their statuses.
    assert_eq!(run.provider.as_deref(), Some("b"));
    assert_eq!(run.model.as_deref(), Some("m"));
    assert_eq!(
        providers_of(&run.attempts),
        vec![
            ("a", Some(500), None),
            (
                "b",
                Some(502),
                Some("other_provider after upstream_server_error")
            )
        ]
    );
    assert!(run.stream);
}

#[actix_rt::test]
async fn an_unknown_model_fails_at_planning_and_is_recorded() {
    let h = harness(Script::new(), quick_retries(0), HedgingPolicy::default());
    let request = request("no-such-model", json!({}));
    let mut run = h.guard("agent", &request);
    let id = run.id();
    let error = h.complete(&mut run, &request).await.unwrap_err();
    let error = run.fail(error);
    assert_eq!(error.kind, ErrorKind::ModelNotFound);
    assert!(h.script.calls().is_empty());
    let run = h.run(id).await;
    assert!(matches!(run.status, RunStatus::Error));
    assert_eq!(run.requested_model, "no-such-model");
}

/// Sends `model` `n` times, one after the other, letting the router learn in between.
async fn ask_in_turn(h: &Harness, model: &str, n: usize) {
    for _ in 0..n {
        let request = request(model, json!({}));
        let mut guard = h.guard("agent", &request);
        let answer = h.complete(&mut guard, &request).await.unwrap();
        guard.succeed(answer);
        // The router learns in batches: wait until it has learned of this call.
        let called = h.script.calls().len() as u64;
        for _ in 0..200 {
            let scores = h.gateway.router.scores();
            let learned: u64 = scores
                .providers
                .values()
                .flat_map(|models| models.values())
                .map(|s| s.samples)
                .sum();
            if learned >= called {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[actix_rt::test]
async fn the_fastest_strategy_learns_which_provider_answers_sooner() {
    let slow = || Step::After(Duration::from_millis(60), Box::new(Step::Text("slow")));
    let script = Script::new()
        .then("m-a", [slow(), slow(), slow(), slow()])
        .then(
            "m-b",
            [Step::Text("fast"), Step::Text("fast"), Step::Text("fast")],
        );
    let h = routed_harness(
        script,
        quick_retries(0),
        HedgingPolicy::default(),
        Strategy::Fastest,
    );
    ask_in_turn(&h, "m", 4).await;
    // Catalog order while nothing is known, then the one not measured yet, then the faster.
    assert_eq!(h.script.calls(), vec!["m-a", "m-b", "m-b", "m-b"]);
    let scores = h.gateway.router.scores();
    assert!(scores.get("a", "m-a").unwrap().latency_ms >= 60.0);
    assert_eq!(scores.get("b", "m-b").unwrap().samples, 3);

    // The default keeps the catalog's order whatever is learned.
    let script = Script::new().then("m-a", [slow(), slow(), slow()]);
    let h = harness(script, quick_retries(0), HedgingPolicy::default());
    ask_in_turn(&h, "m", 3).await;
    assert_eq!(h.script.calls(), vec!["m-a", "m-a", "m-a"]);
}

#[actix_rt::test]
async fn the_fastest_strategy_moves_a_failing_provider_back() {
    let script = Script::new().then("m-a", [Step::Fail(503, None)]).then(
        "m-b",
        [Step::Text("ok"), Step::Text("ok"), Step::Text("ok")],
    );
    let h = routed_harness(
        script,
        quick_retries(0),
        HedgingPolicy::default(),
        Strategy::Fastest,
    );
    ask_in_turn(&h, "m", 3).await;
    assert_eq!(h.script.calls(), vec!["m-a", "m-b", "m-b", "m-b"]);
    assert!(
        h.gateway
            .router
            .scores()
            .get("a", "m-a")
            .unwrap()
            .error_rate
            > 0.5
    );
}
