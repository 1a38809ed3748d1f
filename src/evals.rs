//! The benchmark runner: every item of a dataset on every candidate, through the normal engine
//! (the playground's way: the version's templates, the candidate's model), each output
//! reviewed — by a person's review of the same input and output if there is one, else by the
//! agent's AI reviewer — and each result written as it comes. A benchmark runs in the
//! background with a bound on items at once; it can be cancelled; after a restart it resumes
//! with the pairs that have no result yet (a graceful stop lets the items in flight finish
//! first, so none runs twice).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use flowgate_actors::error::GatewayError;
use flowgate_actors::evals::{
    output_hash, BenchResult, BenchStatus, Benchmark, DatasetItem, Review, Reviewer,
    ReviewerConfig, Verdict,
};
use flowgate_actors::recorder::run::RunSource;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::http::playground::run_once;
use crate::http::AppState;

/// The agent the AI reviewer's runs are recorded under.
pub const REVIEWER_AGENT: &str = "flowgate-reviewer";
/// People's reviews shown to the AI reviewer as examples, at most.
const EXAMPLES: usize = 5;

/// Benchmarks running in this process: their cancel flags.
static RUNNING: LazyLock<Mutex<HashMap<Uuid, Arc<AtomicBool>>>> = LazyLock::new(Default::default);
/// Set on shutdown: no new item starts.
static DRAINING: AtomicBool = AtomicBool::new(false);
/// Items in flight in every benchmark.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts running `benchmark` in the background (from where its results stop).
pub fn start(state: AppState, benchmark: Benchmark) {
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        if running.contains_key(&benchmark.id) {
            return;
        }
        running.insert(benchmark.id, cancel.clone());
    }
    // On an arbiter of its own: a request handler's worker arbiter stops with the HTTP server
    // (dropping what runs on it), while this one lives until the process ends, after the drain.
    let spawned = arbiter().spawn_fn(move || {
        actix_rt::spawn(async move {
            let id = benchmark.id;
            if let Err(e) = run(&state, benchmark, &cancel).await {
                tracing::error!(benchmark = %id, error = %e, "benchmark failed");
            }
            RUNNING
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
    });
    if !spawned {
        tracing::error!("the benchmarks' arbiter is gone: the benchmark resumes at the next start");
    }
}

/// The arbiter benchmarks run on, started with the first.
fn arbiter() -> &'static actix_rt::ArbiterHandle {
    static ARBITER: std::sync::OnceLock<actix_rt::ArbiterHandle> = std::sync::OnceLock::new();
    ARBITER.get_or_init(|| actix_rt::Arbiter::new().handle())
}

/// Asks a running benchmark to stop; whether it was running here.
pub fn cancel(id: Uuid) -> bool {
    match RUNNING.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
        Some(flag) => {
            flag.store(true, Ordering::Relaxed);
            true
        }
        None => false,
    }
}

/// Resumes the benchmarks a previous process left running.
pub async fn resume(state: &AppState) {
    match state.gateway.eval_store.running().await {
        Ok(benchmarks) => {
            for benchmark in benchmarks {
                tracing::info!(benchmark = %benchmark.id, "resuming a benchmark");
                start(state.clone(), benchmark);
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read the benchmarks to resume"),
    }
}

/// Stops starting items and waits (at most `wait`) for those in flight to be written.
pub async fn drain(wait: Duration) {
    DRAINING.store(true, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + wait;
    while IN_FLIGHT.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run(
    state: &AppState,
    mut bench: Benchmark,
    cancel: &AtomicBool,
) -> Result<(), GatewayError> {
    let store = &state.gateway.eval_store;
    let dataset = store
        .dataset(&bench.tenant, &bench.agent, &bench.dataset)
        .await?
        .ok_or_else(|| GatewayError::not_found("the benchmark's dataset is gone"))?;
    let items = store.items(&dataset).await?;
    let done: HashSet<(u16, u32)> = store
        .results(bench.id)
        .await?
        .iter()
        .map(|r| (r.candidate, r.item))
        .collect();
    let reviewer = store.reviewer(&bench.tenant, &bench.agent).await?;
    let pairs: Vec<(u16, u32)> = (0..bench.candidates.len() as u16)
        .flat_map(|c| (0..items.len() as u32).map(move |i| (c, i)))
        .filter(|pair| !done.contains(pair))
        .collect();
    let limit = Arc::new(tokio::sync::Semaphore::new(
        bench.concurrency.max(1) as usize
    ));
    let mut tasks = futures::stream::FuturesUnordered::new();
    for (candidate, item) in pairs {
        let permit = limit
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| GatewayError::internal("the benchmark's limiter closed"))?;
        if cancel.load(Ordering::Relaxed) || DRAINING.load(Ordering::SeqCst) {
            break;
        }
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        let (state, bench, reviewer) = (state.clone(), bench.clone(), reviewer.clone());
        let entry = items[item as usize].clone();
        tasks.push(actix_rt::spawn(async move {
            let result = run_item(&state, &bench, candidate, item, &entry, reviewer.as_ref()).await;
            let written = state.gateway.eval_store.put_result(bench.id, &result).await;
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
            written
        }));
    }
    use futures::StreamExt;
    while let Some(joined) = tasks.next().await {
        if let Ok(Err(e)) = joined {
            tracing::error!(benchmark = %bench.id, error = %e, "cannot write a benchmark result");
        }
    }
    if DRAINING.load(Ordering::SeqCst) {
        // Left running: the next start resumes it.
        return Ok(());
    }
    bench.status = if cancel.load(Ordering::Relaxed) {
        BenchStatus::Cancelled
    } else {
        BenchStatus::Done
    };
    bench.finished_ms = Some(now_ms());
    store.put_benchmark(&bench).await?;
    tracing::info!(benchmark = %bench.id, status = ?bench.status, "benchmark ended");
    Ok(())
}

/// The chat request of an item: its messages and input variables, tagged with the agent.
fn request_of(bench: &Benchmark, item: &DatasetItem) -> Map<String, Value> {
    let mut request = Map::new();
    if let Some(messages) = &item.messages {
        request.insert("messages".into(), Value::Array(messages.clone()));
    }
    if let Some(input) = &item.input {
        request.insert("input".into(), input.clone());
    }
    request.insert(
        "metadata".into(),
        json!({"agent_id": bench.agent, "benchmark_id": bench.id.to_string()}),
    );
    if bench.use_cache {
        request.insert("use_cache".into(), "auto".into());
    }
    request
}

async fn run_item(
    state: &AppState,
    bench: &Benchmark,
    candidate: u16,
    item: u32,
    entry: &DatasetItem,
    reviewer: Option<&ReviewerConfig>,
) -> BenchResult {
    let which = &bench.candidates[usize::from(candidate)];
    let model = which.model.clone().unwrap_or_default();
    let mut result = BenchResult {
        candidate,
        item,
        input_hash: entry.input_hash.clone(),
        run_id: None,
        output: None,
        cost_usd: 0.0,
        duration_seconds: 0.0,
        error: None,
        verdict: None,
        reason: None,
    };
    let outcome = run_once(
        state,
        &bench.tenant,
        request_of(bench, entry),
        which.version_id.clone(),
        &model,
        RunSource::Benchmark,
    )
    .await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            result.error = Some(e.body()["error"].clone());
            return result;
        }
    };
    result.run_id = Some(outcome.run_id);
    result.cost_usd = outcome.cost_usd;
    result.duration_seconds = outcome.duration_seconds;
    result.error = outcome.error;
    result.output = outcome.output;
    if result.error.is_some() {
        return result;
    }
    let output = result.output.clone().unwrap_or_default();
    match review(state, bench, entry, &output, reviewer).await {
        Ok(Some(review)) => {
            result.verdict = Some(review.verdict);
            result.reason = review.comment;
        }
        Ok(None) => {}
        Err(e) => result.reason = Some(format!("the review failed: {}", e.message)),
    }
    result
}

/// The review of an output for an item's input: a person's (or an earlier AI's) if the pair
/// was reviewed, else the AI reviewer's, kept for next time. `None` without a reviewer.
async fn review(
    state: &AppState,
    bench: &Benchmark,
    entry: &DatasetItem,
    output: &str,
    reviewer: Option<&ReviewerConfig>,
) -> Result<Option<Review>, GatewayError> {
    let store = &state.gateway.eval_store;
    let out_hash = output_hash(output);
    if let Some(found) = store
        .review(&bench.tenant, &bench.agent, &entry.input_hash, &out_hash)
        .await?
    {
        return Ok(Some(found));
    }
    let Some(reviewer) = reviewer else {
        return Ok(None);
    };
    let examples = store
        .reviews(&bench.tenant, &bench.agent, 200)
        .await?
        .into_iter()
        .filter(|r| matches!(r.reviewer, Reviewer::User { .. }))
        .take(EXAMPLES)
        .collect::<Vec<_>>();
    let (verdict, reason, run_id) = judge(state, bench, reviewer, entry, output, &examples).await?;
    let review = Review {
        tenant: bench.tenant.clone(),
        agent: bench.agent.clone(),
        input_hash: entry.input_hash.clone(),
        output_hash: out_hash,
        verdict,
        comment: Some(reason),
        reviewer: Reviewer::Ai {
            model: reviewer.model.clone(),
            run_id,
        },
        input: entry.input.clone(),
        output: Some(output.to_string()),
        created_ms: now_ms(),
    };
    // A person's review of the pair made meanwhile stands.
    Ok(Some(store.put_review(&review).await?))
}

/// Asks the AI reviewer; its run is recorded under [`REVIEWER_AGENT`], with its cost.
async fn judge(
    state: &AppState,
    bench: &Benchmark,
    reviewer: &ReviewerConfig,
    entry: &DatasetItem,
    output: &str,
    examples: &[Review],
) -> Result<(Verdict, String, Uuid), GatewayError> {
    let mut system = format!(
        "{}\n\nYou review the answers of the agent `{}`. Reply with JSON only: \
         {{\"verdict\": \"positive\" | \"negative\" | \"unsure\", \"reason\": \"one sentence\"}}.",
        reviewer.instructions, bench.agent
    );
    for example in examples {
        system.push_str(&format!(
            "\n\nA reviewed example.\nINPUT: {}\nANSWER: {}\nVERDICT: {:?}{}",
            example
                .input
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default(),
            example.output.as_deref().unwrap_or(""),
            example.verdict,
            example
                .comment
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default()
        ));
    }
    let mut user = String::new();
    if let Some(input) = &entry.input {
        user.push_str(&format!("INPUT:\n{input}\n"));
    }
    if let Some(messages) = &entry.messages {
        user.push_str(&format!("MESSAGES:\n{}\n", Value::Array(messages.clone())));
    }
    if let Some(expected) = &entry.expected {
        user.push_str(&format!("EXPECTED:\n{expected}\n"));
    }
    if let Some(note) = &entry.note {
        user.push_str(&format!("A CORRECT ANSWER:\n{note}\n"));
    }
    // Last: what is judged.
    user.push_str(&format!("OUTPUT:\n{output}\n"));
    let request = json!({
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "review", "strict": true,
            "schema": {"type": "object", "additionalProperties": false,
                "required": ["verdict", "reason"],
                "properties": {"verdict": {"type": "string", "enum": ["positive", "negative", "unsure"]},
                               "reason": {"type": "string"}}}}},
        "metadata": {"agent_id": REVIEWER_AGENT, "reviews_agent": bench.agent, "benchmark_id": bench.id.to_string()},
    });
    let Value::Object(request) = request else {
        return Err(GatewayError::internal(
            "the review request is not an object",
        ));
    };
    let outcome = run_once(
        state,
        &bench.tenant,
        request,
        None,
        &reviewer.model,
        RunSource::Benchmark,
    )
    .await?;
    if let Some(error) = outcome.error {
        return Err(GatewayError::internal(format!(
            "the AI reviewer failed: {}",
            error["message"].as_str().unwrap_or("")
        )));
    }
    let answer: Value =
        serde_json::from_str(outcome.output.as_deref().unwrap_or("")).map_err(|e| {
            GatewayError::internal(format!("the AI reviewer's answer is not JSON: {e}"))
        })?;
    let verdict: Verdict =
        serde_json::from_value(answer["verdict"].clone()).unwrap_or(Verdict::Unsure);
    let reason = answer["reason"].as_str().unwrap_or_default().to_string();
    Ok((verdict, reason, outcome.run_id))
}
