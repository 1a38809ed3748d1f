//! The read-only page of a shared run (`GET /share/{token}` from a browser): what
//! [`SharedRunView`] holds, formatted for reading, in the web UI's stylesheet and without
//! script; the template escapes everything it shows.

use std::sync::OnceLock;

use flowgate_actors::error::GatewayError;
use flowgate_actors::share::SharedRunView;
use minijinja::{context, Environment};
use serde::Serialize;
use serde_json::Value;

const TEMPLATE: &str = include_str!("shared_run.html");

fn environment() -> &'static Environment<'static> {
    static ENVIRONMENT: OnceLock<Environment<'static>> = OnceLock::new();
    ENVIRONMENT.get_or_init(|| {
        let mut env = Environment::new();
        // A `.html` name turns on HTML escaping of every value.
        if let Err(e) = env.add_template("shared_run.html", TEMPLATE) {
            tracing::error!(error = %e, "the shared run template does not compile");
        }
        env
    })
}

/// One message as the page shows it.
#[derive(Serialize)]
struct MessageLine {
    role: String,
    text: String,
}

/// The text of a message's `content`: itself when a string, its text parts, else its JSON.
fn text_of(content: Option<&Value>) -> String {
    match content {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match part.get("text").and_then(Value::as_str) {
                Some(text) => text.to_string(),
                None => part.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Some(other) => other.to_string(),
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// The page, as HTML.
pub fn page(view: &SharedRunView) -> Result<String, GatewayError> {
    let messages: Vec<MessageLine> = view
        .messages
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .map(|m| MessageLine {
                    role: m
                        .get("role")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string(),
                    text: text_of(m.get("content")),
                })
                .collect()
        })
        .unwrap_or_default();
    let answers: Vec<String> = view
        .output
        .iter()
        .flat_map(|o| o.choices.iter())
        .map(|choice| {
            let content = choice.message.content.clone().unwrap_or_default();
            // A structured output reads best pretty-printed.
            let mut text = serde_json::from_str::<Value>(content.trim())
                .ok()
                .filter(|v| v.is_object() || v.is_array())
                .map_or(content, |v| pretty(&v));
            for call in &choice.message.tool_calls {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&format!("{}({})", call.name, call.arguments));
            }
            text
        })
        .collect();
    let template = environment()
        .get_template("shared_run.html")
        .map_err(|e| GatewayError::internal(format!("shared run page: {e}")))?;
    template
        .render(context! {
            id => view.id.to_string(),
            agent => &view.agent,
            created_at => &view.created_at,
            status => view.status.as_str(),
            model => view.model.as_deref().unwrap_or("-"),
            source => view.source.as_str(),
            cost_usd => format!("{:.6}", view.cost_usd),
            duration_seconds => format!("{:.3}", view.duration_seconds),
            prompt_tokens => view.usage.prompt_tokens,
            completion_tokens => view.usage.completion_tokens,
            input => view.input.as_ref().map(pretty),
            messages => messages,
            answers => answers,
            error => view.error.as_deref(),
        })
        .map_err(|e| GatewayError::internal(format!("shared run page: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_actors::completion::{AssistantMessage, Choice, Completion, FinishReason};
    use flowgate_actors::recorder::run::{RunSource, RunStatus};

    #[test]
    fn what_the_run_holds_is_escaped() {
        let view = SharedRunView {
            id: uuid::Uuid::now_v7(),
            agent: "shop".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            status: RunStatus::Success,
            model: Some("mock-echo".into()),
            source: RunSource::Api,
            messages: serde_json::json!([{"role": "user", "content": "<script>alert(1)</script>"}]),
            input: Some(serde_json::json!({"name": "<b>Ann</b>"})),
            output: Some(Completion {
                choices: vec![Choice {
                    index: 0,
                    message: AssistantMessage {
                        content: Some("<img src=x onerror=alert(2)>".into()),
                        ..Default::default()
                    },
                    finish_reason: FinishReason::Stop,
                }],
                usage: Default::default(),
            }),
            usage: Default::default(),
            cost_usd: 0.5,
            duration_seconds: 0.25,
            error: None,
        };
        let html = page(&view).unwrap();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>Ann"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{html}"
        );
        assert!(html.contains("mock-echo"));
    }
}
