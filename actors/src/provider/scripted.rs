//! A provider scripted by the test that uses it (tests only): each call to a model takes the
//! next step of that model's script, and every call is kept for the test to inspect. It lets
//! the engine be tested without HTTP: fallbacks, retries, repairs, hedging, cancellation.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::http::kind_for_status;
use super::{EventStream, UpstreamRequest};
use crate::completion::{AssistantMessage, Choice, Completion, FinishReason, StreamEvent, Usage};
use crate::error::GatewayError;
use crate::wire::ChatRequest;

/// What one call does.
#[derive(Debug, Clone)]
pub enum Step {
    /// Answers with this text.
    Text(&'static str),
    /// Fails as the provider would with this HTTP status (and `Retry-After`, seconds).
    Fail(u16, Option<u64>),
    /// Refuses the request as a bad one (400) with this message, as a provider that rejects a
    /// JSON schema does.
    Reject(&'static str),
    /// Waits, then does the step.
    After(Duration, Box<Step>),
}

/// The scripts and the calls made, shared by the test and the provider.
#[derive(Debug, Default)]
pub struct Script {
    steps: Mutex<HashMap<String, VecDeque<Step>>>,
    calls: Mutex<Vec<(String, ChatRequest)>>,
}

impl Script {
    pub fn new() -> Arc<Script> {
        Arc::new(Script::default())
    }

    /// Appends steps to `model`'s script.
    pub fn then(self: &Arc<Self>, model: &str, steps: impl IntoIterator<Item = Step>) -> Arc<Self> {
        self.steps
            .lock()
            .unwrap()
            .entry(model.to_string())
            .or_default()
            .extend(steps);
        self.clone()
    }

    /// The provider model of each call so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// The requests sent to the provider so far, in order.
    pub fn requests(&self) -> Vec<ChatRequest> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    fn next(&self, call: &UpstreamRequest<'_>) -> Option<Step> {
        self.calls
            .lock()
            .unwrap()
            .push((call.model.to_string(), call.request.clone()));
        self.steps.lock().unwrap().get_mut(call.model)?.pop_front()
    }
}

/// The provider settings: which script it plays.
#[derive(Debug, Clone)]
pub struct ScriptedSettings {
    pub script: Arc<Script>,
}

impl PartialEq for ScriptedSettings {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.script, &other.script)
    }
}

#[derive(Debug)]
pub struct ScriptedClient {
    name: String,
    script: Arc<Script>,
}

impl ScriptedClient {
    pub fn new(name: &str, settings: ScriptedSettings) -> Self {
        ScriptedClient {
            name: name.to_string(),
            script: settings.script,
        }
    }

    async fn play(&self, call: &UpstreamRequest<'_>) -> Result<&'static str, GatewayError> {
        let mut step = self.script.next(call).ok_or_else(|| {
            GatewayError::internal(format!(
                "scripted provider `{}`: no step left for `{}`",
                self.name, call.model
            ))
        })?;
        loop {
            match step {
                Step::Text(text) => return Ok(text),
                Step::Fail(status, retry_after) => {
                    return Err(GatewayError::new(
                        kind_for_status(status),
                        format!("provider `{}` answered {status}", self.name),
                    )
                    .with_upstream_status(status)
                    .with_retry_after(retry_after.map(Duration::from_secs)))
                }
                Step::Reject(message) => {
                    return Err(GatewayError::new(
                        kind_for_status(400),
                        format!("provider `{}` answered 400: {message}", self.name),
                    )
                    .with_upstream_status(400))
                }
                Step::After(delay, then) => {
                    tokio::time::sleep(delay).await;
                    step = *then;
                }
            }
        }
    }

    pub async fn complete(&self, call: UpstreamRequest<'_>) -> Result<Completion, GatewayError> {
        let text = self.play(&call).await?;
        Ok(Completion {
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    content: Some(text.to_string()),
                    tool_calls: Vec::new(),
                    refusal: None,
                },
                finish_reason: FinishReason::Stop,
            }],
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                ..Usage::default()
            },
        })
    }

    pub async fn stream(&self, call: UpstreamRequest<'_>) -> Result<EventStream, GatewayError> {
        use futures::StreamExt;
        let text = self.play(&call).await?;
        let events = vec![
            Ok(StreamEvent::Content {
                index: 0,
                text: text.to_string(),
            }),
            Ok(StreamEvent::Finish {
                index: 0,
                reason: FinishReason::Stop,
            }),
            Ok(StreamEvent::Usage(Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                ..Usage::default()
            })),
        ];
        Ok(futures::stream::iter(events).boxed())
    }
}
