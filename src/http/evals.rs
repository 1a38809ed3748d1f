//! Evaluations over HTTP, scoped to the caller's tenant (an admin names one with
//! `x-flowgate-tenant`):
//!
//! * `POST /api/agents/{agent}/datasets` `{"name", "description", "items", "run_ids",
//!   "search"}` makes a dataset (items given, taken from runs by id, or from a runs search);
//!   `POST …/datasets/{name}/items` adds more (the same body, or JSON Lines);
//!   `GET …/datasets`, `GET …/datasets/{name}` (with its items), `GET …/datasets/{name}/export`
//!   (JSON Lines).
//! * `POST /api/agents/{agent}/reviews` `{"run_id", "verdict", "comment"}`: a person's review
//!   of a run's output; `GET …/reviews`; `PUT …/reviewer` `{"instructions", "model"}`: the
//!   agent's AI reviewer.
//! * `POST /api/agents/{agent}/benchmarks` `{"dataset", "candidates": [{"version_id",
//!   "model"}], "concurrency", "use_cache"}` → 202 and the benchmark, run in the background;
//!   `GET …/benchmarks`, `GET …/benchmarks/{id}` (progress and the table),
//!   `GET …/benchmarks/{id}/compare?a=0&b=1` (two candidates side by side),
//!   `POST …/benchmarks/{id}/cancel`.

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::error::{excerpt, GatewayError};
use flowgate_actors::evals::{
    output_hash, table, BenchStatus, Benchmark, Candidate, Dataset, DatasetItem, Review, Reviewer,
    ReviewerConfig, Verdict, MAX_CANDIDATES, MAX_ITEMS, MAX_ITEM_BYTES,
};
use flowgate_actors::model_ref::is_slug;
use flowgate_actors::recorder::run::RunRecord;
use flowgate_actors::search::SearchBody;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::agents::{parse_body, reader_tenant};
use super::replay::{check_model, load_version};
use super::runs::{find_run, parse_run_id};
use super::AppState;

/// Largest body of a dataset import (JSON Lines included).
const IMPORT_BYTES: usize = 16 * 1024 * 1024;
/// Run ids in one request at most.
const MAX_RUN_IDS: usize = 1000;
/// Bytes of a dataset's description at most.
const MAX_DESCRIPTION: usize = 4096;
/// Items at once in a benchmark at most.
const MAX_CONCURRENCY: u32 = 16;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) use super::agents::agent_name;

fn checked_name(name: &str) -> Result<(), GatewayError> {
    if is_slug(name) && name.len() <= 64 {
        Ok(())
    } else {
        Err(GatewayError::invalid(format!(
            "`{}` is not a dataset name (a slug of at most 64 characters)",
            excerpt(name, 64)
        ))
        .with_param("name"))
    }
}

/// The item a run makes: its input variables, or the messages it sent when it had none.
pub(crate) fn item_of_run(run: &RunRecord) -> DatasetItem {
    let messages = if run.input.is_some() {
        None
    } else {
        run.request
            .as_ref()
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
            .and_then(|request| request.get("messages").and_then(Value::as_array).cloned())
    };
    DatasetItem {
        input_hash: String::new(),
        input: run.input.clone(),
        messages,
        expected: None,
        note: None,
        source_run: Some(run.id),
    }
    .hashed()
}

/// The first choice's text of a run.
pub(crate) fn output_of_run(run: &RunRecord) -> Option<String> {
    run.output
        .as_ref()?
        .choices
        .first()?
        .message
        .content
        .clone()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemsBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    items: Vec<DatasetItem>,
    #[serde(default)]
    run_ids: Vec<String>,
    /// A runs search of this agent (its `field_queries`); its first page (up to 200) is taken.
    #[serde(default)]
    search: Option<SearchBody>,
}

/// The items a body names, checked (bounded, each with an input), hashed, in order.
async fn gather(
    state: &AppState,
    tenant: &str,
    agent: &str,
    body: ItemsBody,
) -> Result<Vec<DatasetItem>, GatewayError> {
    if body.items.len() + body.run_ids.len() > MAX_ITEMS {
        return Err(GatewayError::invalid(format!(
            "at most {MAX_ITEMS} items at once"
        )));
    }
    if body.run_ids.len() > MAX_RUN_IDS {
        return Err(
            GatewayError::invalid(format!("at most {MAX_RUN_IDS} `run_ids`")).with_param("run_ids"),
        );
    }
    let mut items = Vec::new();
    for (i, item) in body.items.into_iter().enumerate() {
        if item.input.is_none() && item.messages.as_ref().is_none_or(Vec::is_empty) {
            return Err(GatewayError::invalid(format!(
                "`items[{i}]` has neither `input` nor `messages`"
            ))
            .with_param(format!("items[{i}]")));
        }
        let size = serde_json::to_vec(&item).map_or(0, |v| v.len());
        if size > MAX_ITEM_BYTES {
            return Err(GatewayError::invalid(format!(
                "`items[{i}]` is {size} bytes, more than {MAX_ITEM_BYTES}"
            )));
        }
        items.push(item.hashed());
    }
    for raw in &body.run_ids {
        let run = find_run(state, tenant, parse_run_id(raw)?).await?;
        if run.agent != agent {
            return Err(GatewayError::invalid(format!(
                "the run `{}` is of the agent `{}`, not `{agent}`",
                excerpt(raw, 64),
                run.agent
            ))
            .with_param("run_ids"));
        }
        items.push(item_of_run(&run));
    }
    if let Some(search) = body.search {
        // As the search API runs it: after the recorder has written the runs sent before, and
        // with the agent's environments resolved (`version is production`).
        let page =
            super::search::search_page(state, tenant.to_string(), Some(agent.to_string()), search)
                .await?;
        for summary in page.items {
            if let Ok(run) = find_run(state, tenant, summary.id).await {
                items.push(item_of_run(&run));
            }
        }
    }
    Ok(items)
}

async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<bytes::Bytes, GatewayError> {
    let (body, _reservation) = super::body::read_body(
        req,
        payload,
        IMPORT_BYTES,
        state.limits.body_timeout,
        &state.body_budget,
    )
    .await?;
    Ok(body)
}

/// A JSON body, or JSON Lines of items (`application/x-ndjson`, `application/jsonl`).
fn items_body(req: &HttpRequest, body: &[u8]) -> Result<ItemsBody, GatewayError> {
    let lines = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("ndjson") || t.contains("jsonl"));
    if !lines {
        return parse_body(body);
    }
    let mut items = Vec::new();
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let item: DatasetItem = parse_body(line)
            .map_err(|e| GatewayError::invalid(format!("line {}: {}", n + 1, e.message)))?;
        items.push(item);
    }
    Ok(ItemsBody {
        name: None,
        description: None,
        items,
        run_ids: vec![],
        search: None,
    })
}

pub async fn create_dataset(
    req: HttpRequest,
    agent: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let agent = agent_name(agent.into_inner())?;
    let bytes = read_body(&req, payload, &state).await?;
    let body: ItemsBody = parse_body(&bytes)?;
    let name = body
        .name
        .clone()
        .ok_or_else(|| GatewayError::invalid("a dataset needs a `name`").with_param("name"))?;
    checked_name(&name)?;
    if body
        .description
        .as_ref()
        .is_some_and(|d| d.len() > MAX_DESCRIPTION)
    {
        return Err(GatewayError::invalid(format!(
            "`description` is longer than {MAX_DESCRIPTION} bytes"
        ))
        .with_param("description"));
    }
    let store = &state.gateway.eval_store;
    if store.dataset(&tenant, &agent, &name).await?.is_some() {
        return Err(GatewayError::invalid(format!(
            "the dataset `{name}` exists: add items with POST …/datasets/{name}/items"
        ))
        .with_param("name"));
    }
    let dataset = Dataset {
        tenant: tenant.clone(),
        agent: agent.clone(),
        name,
        description: body.description.clone(),
        created_ms: now_ms(),
    };
    let items = gather(&state, &tenant, &agent, body).await?;
    store.put_dataset(&dataset).await?;
    let added = store.add_items(&dataset, &items, MAX_ITEMS).await?;
    Ok(HttpResponse::Created().json(
        json!({"dataset": dataset, "added": added, "items": store.items(&dataset).await?.len()}),
    ))
}

pub(crate) async fn dataset_of(
    state: &AppState,
    tenant: &str,
    agent: &str,
    name: &str,
) -> Result<Dataset, GatewayError> {
    state
        .gateway
        .eval_store
        .dataset(tenant, agent, name)
        .await?
        .ok_or_else(|| {
            GatewayError::not_found(format!(
                "agent `{agent}` has no dataset `{}`",
                excerpt(name, 64)
            ))
        })
}

pub async fn add_items(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let (agent, name) = path.into_inner();
    let agent = agent_name(agent)?;
    let dataset = dataset_of(&state, &tenant, &agent, &name).await?;
    let bytes = read_body(&req, payload, &state).await?;
    let body = items_body(&req, &bytes)?;
    let items = gather(&state, &tenant, &agent, body).await?;
    let store = &state.gateway.eval_store;
    let added = store.add_items(&dataset, &items, MAX_ITEMS).await?;
    let total = store.items(&dataset).await?.len();
    Ok(HttpResponse::Ok()
        .json(json!({"added": added, "skipped": items.len() - added, "items": total})))
}

pub async fn list_datasets(
    req: HttpRequest,
    agent: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let agent = agent_name(agent.into_inner())?;
    let datasets = state.gateway.eval_store.datasets(&tenant, &agent).await?;
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": datasets})))
}

pub async fn get_dataset(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let (agent, name) = path.into_inner();
    let dataset = dataset_of(&state, &tenant, &agent_name(agent)?, &name).await?;
    let items = state.gateway.eval_store.items(&dataset).await?;
    Ok(HttpResponse::Ok().json(json!({"dataset": dataset, "items": items})))
}

pub async fn export_dataset(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let (agent, name) = path.into_inner();
    let dataset = dataset_of(&state, &tenant, &agent_name(agent)?, &name).await?;
    let mut out = Vec::new();
    for item in state.gateway.eval_store.items(&dataset).await? {
        if let Ok(line) = serde_json::to_vec(&item) {
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header((
            "content-disposition",
            format!("attachment; filename=\"{}.jsonl\"", dataset.name),
        ))
        .body(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewBody {
    run_id: String,
    verdict: Verdict,
    #[serde(default)]
    comment: Option<String>,
}

pub async fn review_run(
    req: HttpRequest,
    agent: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let agent = agent_name(agent.into_inner())?;
    let body: ReviewBody = super::agents::read_small_json(&req, payload, &state).await?;
    if body.comment.as_ref().is_some_and(|c| c.len() > 4096) {
        return Err(
            GatewayError::invalid("`comment` is longer than 4096 bytes").with_param("comment")
        );
    }
    let run = find_run(&state, &tenant, parse_run_id(&body.run_id)?).await?;
    if run.agent != agent {
        return Err(GatewayError::not_found(format!(
            "agent `{agent}` has no run `{}`",
            excerpt(&body.run_id, 64)
        )));
    }
    let output = output_of_run(&run).ok_or_else(|| {
        GatewayError::invalid("the run has no text output to review").with_param("run_id")
    })?;
    let item = item_of_run(&run);
    let who = super::agents::bearer(&req)
        .and_then(|key| state.admin.who(key))
        .unwrap_or_else(|| format!("tenant {tenant}"));
    let review = Review {
        tenant,
        agent,
        input_hash: item.input_hash,
        output_hash: output_hash(&output),
        verdict: body.verdict,
        comment: body.comment,
        reviewer: Reviewer::User { who },
        input: item.input.or(item.messages.map(Value::Array)),
        output: Some(output),
        created_ms: now_ms(),
    };
    let kept = state.gateway.eval_store.put_review(&review).await?;
    Ok(HttpResponse::Ok().json(kept))
}

pub async fn list_reviews(
    req: HttpRequest,
    agent: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let agent = agent_name(agent.into_inner())?;
    let reviews = state
        .gateway
        .eval_store
        .reviews(&tenant, &agent, 1000)
        .await?;
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": reviews})))
}

pub async fn put_reviewer(
    req: HttpRequest,
    agent: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let agent = agent_name(agent.into_inner())?;
    let body: ReviewerConfig = super::agents::read_small_json(&req, payload, &state).await?;
    if body.instructions.trim().is_empty() || body.instructions.len() > 16 * 1024 {
        return Err(
            GatewayError::invalid("`instructions` must be 1 to 16384 bytes")
                .with_param("instructions"),
        );
    }
    check_model(&state, &body.model, "model")?;
    state
        .gateway
        .eval_store
        .put_reviewer(&tenant, &agent, &body)
        .await?;
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BenchmarkBody {
    dataset: String,
    candidates: Vec<Candidate>,
    #[serde(default)]
    concurrency: Option<u32>,
    #[serde(default)]
    use_cache: bool,
}

pub async fn create_benchmark(
    req: HttpRequest,
    agent: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let agent = agent_name(agent.into_inner())?;
    let body: BenchmarkBody = super::agents::read_small_json(&req, payload, &state).await?;
    // Every refusal before anything runs.
    let dataset = dataset_of(&state, &tenant, &agent, &body.dataset).await?;
    let items = state.gateway.eval_store.items(&dataset).await?;
    if items.is_empty() {
        return Err(
            GatewayError::invalid(format!("the dataset `{}` has no items", dataset.name))
                .with_param("dataset"),
        );
    }
    if body.candidates.is_empty() || body.candidates.len() > MAX_CANDIDATES {
        return Err(GatewayError::invalid(format!(
            "`candidates` lists 1 to {MAX_CANDIDATES} candidates"
        ))
        .with_param("candidates"));
    }
    let concurrency = body.concurrency.unwrap_or(4);
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        return Err(
            GatewayError::invalid(format!("`concurrency` is 1 to {MAX_CONCURRENCY}"))
                .with_param("concurrency"),
        );
    }
    let mut candidates = Vec::new();
    for (i, candidate) in body.candidates.into_iter().enumerate() {
        let param = format!("candidates[{i}]");
        let model = match (&candidate.version_id, &candidate.model) {
            (None, None) => {
                return Err(GatewayError::invalid(format!(
                    "`{param}` needs a `version_id` or a `model`"
                ))
                .with_param(param))
            }
            (Some(version), model) => {
                let version = load_version(&state, &tenant, &agent, version).await?;
                model
                    .clone()
                    .unwrap_or_else(|| version.properties.model.clone())
            }
            (None, Some(model)) => model.clone(),
        };
        check_model(&state, &model, &format!("{param}.model"))?;
        if candidates.contains(&Candidate {
            version_id: candidate.version_id.clone(),
            model: Some(model.clone()),
        }) {
            return Err(
                GatewayError::invalid(format!("`{param}` is listed twice")).with_param(param)
            );
        }
        candidates.push(Candidate {
            version_id: candidate.version_id,
            model: Some(model),
        });
    }
    let benchmark = Benchmark {
        id: Uuid::now_v7(),
        tenant,
        agent,
        dataset: dataset.name,
        total: (items.len() * candidates.len()) as u32,
        candidates,
        concurrency,
        use_cache: body.use_cache,
        status: BenchStatus::Running,
        created_ms: now_ms(),
        finished_ms: None,
        error: None,
    };
    state.gateway.eval_store.put_benchmark(&benchmark).await?;
    crate::evals::start(AppState::clone(&state), benchmark.clone());
    Ok(HttpResponse::Accepted().json(json!({"benchmark": benchmark, "done": 0})))
}

pub(crate) async fn benchmark_of(
    state: &AppState,
    tenant: &str,
    agent: &str,
    id: &str,
) -> Result<Benchmark, GatewayError> {
    let missing = || {
        GatewayError::not_found(format!(
            "agent `{agent}` has no benchmark `{}`",
            excerpt(id, 64)
        ))
    };
    let id: Uuid = id.parse().map_err(|_| missing())?;
    state
        .gateway
        .eval_store
        .benchmark(tenant, id)
        .await?
        .filter(|b| b.agent == agent)
        .ok_or_else(missing)
}

pub async fn list_benchmarks(
    req: HttpRequest,
    agent: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let agent = agent_name(agent.into_inner())?;
    let benchmarks = state.gateway.eval_store.benchmarks(&tenant, &agent).await?;
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": benchmarks})))
}

pub async fn get_benchmark(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let (agent, id) = path.into_inner();
    let benchmark = benchmark_of(&state, &tenant, &agent_name(agent)?, &id).await?;
    let results = state.gateway.eval_store.results(benchmark.id).await?;
    let rows = table(&benchmark.candidates, &results);
    Ok(HttpResponse::Ok().json(json!({
        "benchmark": benchmark,
        "done": results.len(),
        "total": benchmark.total,
        "table": rows,
    })))
}

#[derive(Deserialize)]
pub struct CompareQuery {
    a: u16,
    b: u16,
}

pub async fn compare(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<CompareQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let (agent, id) = path.into_inner();
    let benchmark = benchmark_of(&state, &tenant, &agent_name(agent)?, &id).await?;
    let n = benchmark.candidates.len() as u16;
    if query.a >= n || query.b >= n {
        return Err(GatewayError::invalid(format!(
            "`a` and `b` are candidate indexes below {n}"
        )));
    }
    let results = state.gateway.eval_store.results(benchmark.id).await?;
    let dataset = dataset_of(&state, &tenant, &benchmark.agent, &benchmark.dataset).await?;
    let items = state.gateway.eval_store.items(&dataset).await?;
    let pick = |c: u16, i: u32| results.iter().find(|r| r.candidate == c && r.item == i);
    let rows: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            json!({"item": i, "input": item.input, "messages": item.messages, "expected": item.expected,
                   "a": pick(query.a, i as u32), "b": pick(query.b, i as u32)})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "a": benchmark.candidates[usize::from(query.a)].label(),
        "b": benchmark.candidates[usize::from(query.b)].label(),
        "items": rows,
    })))
}

pub async fn cancel_benchmark(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = reader_tenant(&req, &state)?;
    let (agent, id) = path.into_inner();
    let mut benchmark = benchmark_of(&state, &tenant, &agent_name(agent)?, &id).await?;
    if benchmark.status != BenchStatus::Running {
        return Ok(HttpResponse::Ok().json(json!({"benchmark": benchmark})));
    }
    if !crate::evals::cancel(benchmark.id) {
        // Not running in this process (another instance, or not resumed): mark it.
        benchmark.status = BenchStatus::Cancelled;
        benchmark.finished_ms = Some(now_ms());
        state.gateway.eval_store.put_benchmark(&benchmark).await?;
    }
    Ok(HttpResponse::Accepted().json(json!({"benchmark": benchmark})))
}
