//! `GET /playground`: one prompt on up to 6 models side by side, streamed (`POST
//! /api/playground`, driven by `static/playground.js`). The form's state is the URL: `?s=`
//! holds it as JSON (models, messages, parameters, agent), `?run=<id>` starts from a run.

use actix_web::{web, HttpRequest, HttpResponse};
use minijinja::context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::format;
use super::page;
use crate::http::AppState;

/// Model columns of the playground (as `POST /api/playground` takes at most).
const COLUMNS: usize = 6;

/// What the playground form holds; the URL's `s`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct State {
    models: Vec<String>,
    messages: Vec<MessageRow>,
    temperature: Option<f64>,
    max_tokens: Option<u64>,
    agent: Option<String>,
    /// Template variables (JSON text), rendered into the messages.
    input: Option<String>,
    /// A version of the agent whose templates and parameters the run takes.
    version_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MessageRow {
    role: String,
    content: String,
}

#[derive(Deserialize)]
pub struct PlaygroundQuery {
    #[serde(default)]
    s: Option<String>,
    #[serde(default)]
    run: Option<String>,
}

pub async fn page(
    req: HttpRequest,
    query: web::Query<PlaygroundQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let viewer = match page::viewer(&req, &state).await {
        Ok(v) => v,
        Err(redirect) => return *redirect,
    };
    let mut form: State = query
        .s
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let mut from_run = None;
    if let Some(raw) = &query.run {
        let run = match crate::http::runs::parse_run_id(raw) {
            Ok(id) => crate::http::runs::find_run(&state, &viewer.tenant, id).await,
            Err(e) => Err(e),
        };
        let run = match run {
            Ok(run) => run,
            Err(e) => return page::error(Some(&viewer), &e),
        };
        let request: Value = run
            .request
            .as_ref()
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .unwrap_or_default();
        // The templates (with the input beside them) when the run had some, else what was sent.
        form.messages = request
            .get("messages")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|m| MessageRow {
                        role: m
                            .get("role")
                            .and_then(Value::as_str)
                            .unwrap_or("user")
                            .to_string(),
                        content: format::content_text(m.get("content")),
                    })
                    .collect()
            })
            .unwrap_or_default();
        form.temperature = request.get("temperature").and_then(Value::as_f64);
        form.max_tokens = request
            .get("max_tokens")
            .or_else(|| request.get("max_completion_tokens"))
            .and_then(Value::as_u64);
        form.input = run.input.as_ref().map(format::pretty);
        form.agent = Some(run.agent.clone());
        form.models = run.model.iter().cloned().collect();
        from_run = Some(run.id.to_string());
    }
    if form.messages.is_empty() {
        form.messages = vec![
            MessageRow {
                role: "system".into(),
                content: String::new(),
            },
            MessageRow {
                role: "user".into(),
                content: String::new(),
            },
        ];
    }
    form.models.truncate(COLUMNS);
    let mut models = form.models.clone();
    models.resize(COLUMNS, String::new());
    let catalog: Vec<String> = state
        .gateway
        .catalog
        .load()
        .models()
        .iter()
        .map(|m| m.id.clone())
        .collect();
    page::ok(
        &viewer,
        "playground",
        "playground.html",
        context! {
            messages => form.messages,
            models => models,
            temperature => form.temperature,
            max_tokens => form.max_tokens,
            agent => form.agent.unwrap_or_default(),
            input => form.input.unwrap_or_default(),
            version_id => form.version_id.unwrap_or_default(),
            catalog => catalog,
            from_run => from_run,
        },
    )
}
