//! `GET /agents/{agent}/reviews`: an agent's reviews (verdict, who: a person or the AI
//! reviewer with its model, the comment or reason, excerpts of the input and output) and its
//! AI reviewer's settings, editable (`static/reviews.js`, over `PUT …/reviewer`): what
//! `GET /api/agents/{agent}/reviews` answers.

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::error::excerpt;
use flowgate_actors::evals::Reviewer;
use minijinja::context;
use serde::Serialize;
use serde_json::Value;

use super::format;
use super::page;
use super::runs::label;
use crate::http::AppState;

/// Reviews listed (the newest).
const MAX_SHOWN: usize = 500;
/// Characters of an input or output shown.
const EXCERPT: usize = 200;

#[derive(Serialize)]
struct ReviewView {
    verdict: String,
    by: String,
    ai: bool,
    run_id: Option<String>,
    comment: String,
    input: String,
    output: String,
    time: String,
}

/// An input as one short line: its variables or its messages' text.
fn input_excerpt(input: Option<&Value>) -> String {
    let text = match input {
        None | Some(Value::Null) => String::new(),
        Some(Value::Array(messages)) => messages
            .iter()
            .map(|m| format::content_text(m.get("content")))
            .collect::<Vec<_>>()
            .join(" / "),
        Some(other) => other.to_string(),
    };
    excerpt(&text, EXCERPT).to_string()
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
    let agent = match crate::http::evals::agent_name(path.into_inner()) {
        Ok(a) => a,
        Err(e) => return page::error(Some(&viewer), &e),
    };
    let store = &state.gateway.eval_store;
    let found = futures::future::try_join(
        store.reviews(&viewer.tenant, &agent, MAX_SHOWN),
        store.reviewer(&viewer.tenant, &agent),
    )
    .await;
    let (mut reviews, reviewer) = match found {
        Ok(found) => found,
        Err(e) => return page::error(Some(&viewer), &e.into()),
    };
    reviews.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
    let views: Vec<ReviewView> = reviews
        .iter()
        .map(|r| {
            let (by, ai, run_id) = match &r.reviewer {
                Reviewer::User { who } => (who.clone(), false, None),
                Reviewer::Ai { model, run_id } => {
                    (format!("AI on {model}"), true, Some(run_id.to_string()))
                }
            };
            ReviewView {
                verdict: label(&r.verdict),
                by,
                ai,
                run_id,
                comment: r.comment.clone().unwrap_or_default(),
                input: input_excerpt(r.input.as_ref()),
                output: excerpt(r.output.as_deref().unwrap_or(""), EXCERPT).to_string(),
                time: format::time_ms(r.created_ms),
            }
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
    page::ok(
        &viewer,
        "agents",
        "reviews.html",
        context! {
            agent => agent,
            tab => "reviews",
            reviews => views,
            instructions => reviewer.as_ref().map(|r| r.instructions.clone()).unwrap_or_default(),
            model => reviewer.as_ref().map(|r| r.model.clone()).unwrap_or_default(),
            configured => reviewer.is_some(),
            models => models,
        },
    )
}
