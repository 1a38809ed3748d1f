//! `GET /runs/{run_id}`: one run of the viewer's tenant (the `url` of every answer): the
//! messages as sent, the input variables, the output (text, tool calls, the parsed object),
//! every attempt, tokens, cost, latency, cache, version, conversation, feedback; the buttons
//! that share it, try it in the playground and replay it (`static/run.js`, over the JSON API).
//!
//! Another tenant's run is a 404, as in `GET /api/runs/{run_id}`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::evals::{output_hash, Reviewer};
use flowgate_actors::recorder::run::RunRecord;
use flowgate_actors::search::{FieldQueryBody, SearchBody};
use minijinja::context;
use serde::Serialize;
use serde_json::{json, Value};

use super::format;
use super::page::{self, Viewer};
use super::runs::label;
use crate::http::AppState;

/// Most turns of a conversation listed.
const MAX_TURNS: usize = 50;
/// How long after its first turn a conversation's turns are looked for.
const CONVERSATION_SPAN: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

#[derive(Serialize)]
struct MessageView {
    role: String,
    text: String,
    /// Tool calls of an assistant message, as JSON.
    extra: Option<String>,
}

#[derive(Serialize)]
struct ChoiceView {
    text: Option<String>,
    /// The text parsed as JSON (a structured output), pretty-printed.
    parsed: Option<String>,
    tool_calls: Vec<ToolCallView>,
    refusal: Option<String>,
    finish_reason: String,
}

#[derive(Serialize)]
struct ToolCallView {
    name: String,
    arguments: String,
}

#[derive(Serialize)]
struct AttemptView {
    provider: String,
    model: String,
    status: String,
    error: String,
    duration: String,
    reason: String,
}

#[derive(Serialize)]
struct TurnView {
    id: String,
    time: String,
    current: bool,
}

/// The review of the run's output (a person's or the AI reviewer's).
#[derive(Serialize)]
struct ReviewView {
    verdict: String,
    by: String,
    comment: String,
    time: String,
}

/// Whether the run can be reviewed (it has a text output), and its current review.
async fn review_of(state: &AppState, tenant: &str, run: &RunRecord) -> (bool, Option<ReviewView>) {
    let Some(output) = crate::http::evals::output_of_run(run) else {
        return (false, None);
    };
    let item = crate::http::evals::item_of_run(run);
    let review = state
        .gateway
        .eval_store
        .review(tenant, &run.agent, &item.input_hash, &output_hash(&output))
        .await
        .unwrap_or_else(|e| {
            tracing::debug!(error = %e, "the run page could not read the run's review");
            None
        });
    let view = review.map(|r| ReviewView {
        verdict: label(&r.verdict),
        by: match r.reviewer {
            Reviewer::User { who } => who,
            Reviewer::Ai { model, .. } => format!("the AI reviewer on {model}"),
        },
        comment: r.comment.unwrap_or_default(),
        time: format::time_ms(r.created_ms),
    });
    (true, view)
}

#[derive(Serialize)]
struct FeedbackView {
    outcome: String,
    comment: String,
    user: String,
    time: String,
}

/// The messages as sent upstream: the rendered ones when templates were, else the request's.
fn messages_of(run: &RunRecord) -> Vec<MessageView> {
    let messages: Value = match &run.rendered_messages {
        Some(m) => serde_json::to_value(m).unwrap_or_default(),
        None => run
            .request
            .as_ref()
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
            .and_then(|r| r.get("messages").cloned())
            .unwrap_or_default(),
    };
    messages
        .as_array()
        .map(|list| {
            list.iter()
                .map(|m| MessageView {
                    role: m
                        .get("role")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string(),
                    text: format::content_text(m.get("content")),
                    extra: m.get("tool_calls").map(format::pretty),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The request's parameters other than its messages (temperature, tools, response format…).
fn parameters_of(run: &RunRecord) -> Option<String> {
    let mut request: Value = run
        .request
        .as_ref()
        .and_then(|raw| serde_json::from_str(raw.get()).ok())?;
    let object = request.as_object_mut()?;
    for key in ["messages", "model", "input", "metadata"] {
        object.remove(key);
    }
    (!object.is_empty()).then(|| format::pretty(&request))
}

fn choices_of(run: &RunRecord) -> Vec<ChoiceView> {
    run.output
        .iter()
        .flat_map(|o| o.choices.iter())
        .map(|choice| {
            let text = choice.message.content.clone();
            let parsed = text
                .as_deref()
                .and_then(|t| serde_json::from_str::<Value>(t.trim()).ok())
                .filter(|v| v.is_object() || v.is_array())
                .map(|v| format::pretty(&v));
            ChoiceView {
                text,
                parsed,
                tool_calls: choice
                    .message
                    .tool_calls
                    .iter()
                    .map(|call| ToolCallView {
                        name: call.name.clone(),
                        arguments: serde_json::from_str::<Value>(&call.arguments)
                            .map(|v| format::pretty(&v))
                            .unwrap_or_else(|_| call.arguments.clone()),
                    })
                    .collect(),
                refusal: choice.message.refusal.clone(),
                finish_reason: label(&choice.finish_reason),
            }
        })
        .collect()
}

/// The conversation's turns (newest first), when the run is part of one.
async fn turns_of(state: &AppState, tenant: &str, run: &RunRecord) -> Vec<TurnView> {
    let Some(conversation) = run.conversation_id else {
        return vec![];
    };
    // The conversation's id is its first run's (UUIDv7: a time): its turns are looked for in
    // the day that follows, an id range, not among all of the agent's runs.
    let Some(start) = conversation.get_timestamp().map(|t| {
        let (secs, nanos) = t.to_unix();
        std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos)
    }) else {
        return vec![];
    };
    let at = |t: std::time::SystemTime| humantime::format_rfc3339_millis(t).to_string();
    let body = SearchBody {
        field_queries: vec![
            FieldQueryBody {
                field: "conversation".into(),
                operator: "is".into(),
                values: vec![json!(conversation.to_string())],
            },
            FieldQueryBody {
                field: "created_at".into(),
                operator: "between".into(),
                values: vec![
                    json!(at(start - std::time::Duration::from_secs(1))),
                    json!(at(start + CONVERSATION_SPAN)),
                ],
            },
        ],
        limit: Some(MAX_TURNS),
        cursor: None,
    };
    match crate::http::search::search_page(state, tenant.to_string(), Some(run.agent.clone()), body)
        .await
    {
        // A conversation of one turn is no conversation to show.
        Ok(page) if page.items.len() > 1 => page
            .items
            .iter()
            .map(|item| TurnView {
                id: item.id.to_string(),
                time: format::time(&item.created_at),
                current: item.id == run.id,
            })
            .collect(),
        Ok(_) => vec![],
        Err(e) => {
            tracing::debug!(error = %e.message, "the run page could not list the conversation");
            vec![]
        }
    }
}

/// The agent's run just before this one and just after it (newest first lists: the older is
/// the next item, the newer the previous one).
async fn neighbours(
    state: &AppState,
    tenant: &str,
    run: &RunRecord,
) -> (Option<String>, Option<String>) {
    let runs = &state.gateway.runs;
    let older = runs
        .list_agent(tenant, &run.agent, Some(run.id), 1)
        .await
        .ok()
        .and_then(|p| p.items.first().map(|r| r.id.to_string()));
    let body = SearchBody {
        field_queries: vec![FieldQueryBody {
            field: "created_at".into(),
            operator: "after".into(),
            values: vec![json!(run.created_at)],
        }],
        limit: Some(20),
        cursor: None,
    };
    let newer =
        crate::http::search::search_page(state, tenant.to_string(), Some(run.agent.clone()), body)
            .await
            .ok()
            .filter(|p| p.next_cursor.is_none())
            .and_then(|p| {
                p.items
                    .iter()
                    .rev()
                    .find(|r| r.id > run.id)
                    .map(|r| r.id.to_string())
            });
    (older, newer)
}

pub async fn page(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let viewer = match page::viewer(&req, &state).await {
        Ok(v) => v,
        Err(redirect) => return *redirect,
    };
    let run = match crate::http::runs::parse_run_id(&path.into_inner()) {
        Ok(id) => crate::http::runs::find_run(&state, &viewer.tenant, id).await,
        Err(e) => Err(e),
    };
    let run = match run {
        Ok(run) => run,
        Err(e) => return page::error(Some(&viewer), &e),
    };
    render(&state, &viewer, run).await
}

async fn render(state: &AppState, viewer: &Viewer, run: RunRecord) -> HttpResponse {
    let feedback: Vec<FeedbackView> = state
        .gateway
        .feedback
        .for_run(run.id)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|f| FeedbackView {
            outcome: label(&f.outcome),
            comment: f.comment.unwrap_or_default(),
            user: f.user_id.unwrap_or_default(),
            time: format::time(&f.created_at),
        })
        .collect();
    let turns = turns_of(state, &viewer.tenant, &run).await;
    let (reviewable, review) = review_of(state, &viewer.tenant, &run).await;
    let (older, newer) = neighbours(state, &viewer.tenant, &run).await;
    let attempts: Vec<AttemptView> = run
        .attempts
        .iter()
        .map(|a| AttemptView {
            provider: a.provider.clone(),
            model: a.model.clone(),
            status: a
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            error: a.error.clone().unwrap_or_default(),
            duration: format::seconds(a.duration_seconds),
            reason: a.reason.clone().unwrap_or_default(),
        })
        .collect();
    let models: Vec<String> = state
        .gateway
        .catalog
        .load()
        .models()
        .iter()
        .map(|m| m.id.clone())
        .collect();
    let url = format!("{}/runs/{}", state.gateway.public_url, run.id);
    let ctx = context! {
        id => run.id.to_string(),
        url => url,
        agent => &run.agent,
        time => format::time(&run.created_at),
        status => label(&run.status),
        requested_model => &run.requested_model,
        model => run.model.as_deref().unwrap_or("-"),
        provider => run.provider.as_deref().unwrap_or("-"),
        provider_model => run.provider_model.as_deref().unwrap_or("-"),
        version_id => &run.version_id,
        schema_id => run.schema_id,
        source => label(&run.source),
        replay_of => run.replay_of.map(|r| r.to_string()),
        source_run => run.source_run_id.map(|r| r.to_string()),
        cache => label(&run.cache),
        stream => run.stream,
        prompt_tokens => run.usage.prompt_tokens,
        completion_tokens => run.usage.completion_tokens,
        cached_tokens => run.usage.cached_tokens,
        reasoning_tokens => run.usage.reasoning_tokens,
        cost => format::cost(run.cost_usd),
        latency => format::seconds(run.duration_seconds),
        input => run.input.as_ref().map(format::pretty),
        parameters => parameters_of(&run),
        metadata => run.metadata.as_ref().map(|m| format::pretty(&Value::Object(m.clone()))),
        messages => messages_of(&run),
        choices => choices_of(&run),
        error => run.error.as_ref().map(format::pretty),
        structured => run.structured.as_ref().map(|s| format!(
            "{} · {} repair{}",
            s.layer.map(|l| label(&l)).unwrap_or_else(|| "-".into()),
            s.repairs,
            if s.repairs == 1 { "" } else { "s" }
        )),
        attempts => attempts,
        turns => turns,
        older => older,
        newer => newer,
        feedback => feedback,
        reviewable => reviewable,
        review => review,
        models => models,
        can_act => !viewer.is_admin(),
    };
    page::render(StatusCode::OK, Some(viewer), "runs", "run.html", ctx)
}
