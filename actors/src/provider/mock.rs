//! The built-in `mock` provider: answers at once with no key, so flowgate works out of the box.
//! Text requests get an echo of the last user message; requests with a JSON schema (a
//! `json_schema` response format, a forced tool, or a schema in the system message) get an
//! instance of the schema. Its brain is `flowgate-mock-answer`, which the mock upstream (tests only) wraps in each
//! provider's wire format.

use std::time::Duration;

use flowgate_mock_answer::answer::{answer, MockAnswer};
use futures::StreamExt;

use super::http::kind_for_status;
use super::{EventStream, MockBehaviour, MockSettings, UpstreamRequest};
use crate::completion::{
    AssistantMessage, Choice, Completion, FinishReason, StreamEvent, ToolCallOut, Usage,
};
use crate::embeddings::{estimated_tokens, mock_vector, EmbedCall, Embedded, EmbeddingInput};
use crate::error::GatewayError;

/// Characters per streamed content chunk.
const CHUNK_CHARS: usize = 16;

/// The length of the mock's vectors when the request asks for none.
pub const MOCK_EMBEDDING_DIMENSIONS: u32 = 256;

#[derive(Debug)]
pub struct MockClient {
    settings: MockSettings,
}

impl MockClient {
    pub fn new(settings: MockSettings) -> Self {
        MockClient { settings }
    }

    fn behaviour(&self, model: &str) -> MockBehaviour {
        self.settings
            .models
            .get(model)
            .copied()
            .unwrap_or(self.settings.default)
    }

    /// Waits the configured latency, then fails if the dice say so.
    async fn prelude(&self, call: &UpstreamRequest<'_>) -> Result<MockBehaviour, GatewayError> {
        let behaviour = self.behaviour(call.model);
        if behaviour.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(behaviour.latency_ms)).await;
        }
        if behaviour.failure_rate > 0.0 && fastrand::f64() < behaviour.failure_rate {
            let status = behaviour.failure_status.unwrap_or(500);
            return Err(GatewayError::new(
                kind_for_status(status),
                format!("mock model `{}` failed on purpose ({status})", call.model),
            )
            .with_upstream_status(status));
        }
        Ok(behaviour)
    }

    fn think(call: &UpstreamRequest<'_>) -> Result<MockAnswer, GatewayError> {
        let request = serde_json::to_value(call.request)
            .map_err(|e| GatewayError::internal(format!("mock: {e}")))?;
        Ok(answer(&request))
    }

    /// Embeddings: deterministic unit vectors of the texts (see [`mock_vector`]), `dimensions`
    /// long (256 unless asked), with the latency and failures configured for the model.
    pub async fn embed(&self, call: EmbedCall<'_>) -> Result<Embedded, GatewayError> {
        let behaviour = self.behaviour(call.model);
        if behaviour.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(behaviour.latency_ms)).await;
        }
        if behaviour.failure_rate > 0.0 && fastrand::f64() < behaviour.failure_rate {
            let status = behaviour.failure_status.unwrap_or(500);
            return Err(GatewayError::new(
                kind_for_status(status),
                format!("mock model `{}` failed on purpose ({status})", call.model),
            )
            .with_upstream_status(status));
        }
        let dimensions = call.dimensions.unwrap_or(MOCK_EMBEDDING_DIMENSIONS);
        let (vectors, prompt_tokens) = match call.input {
            EmbeddingInput::Texts(texts) => (
                texts.iter().map(|t| mock_vector(t, dimensions)).collect(),
                texts.iter().map(|t| estimated_tokens(t)).sum(),
            ),
            EmbeddingInput::Tokens(tokens) => (
                tokens
                    .iter()
                    .map(|t| mock_vector(&format!("{t:?}"), dimensions))
                    .collect(),
                tokens.iter().map(|t| t.len() as u64).sum(),
            ),
        };
        Ok(Embedded {
            vectors,
            prompt_tokens,
        })
    }

    pub async fn complete(&self, call: UpstreamRequest<'_>) -> Result<Completion, GatewayError> {
        self.prelude(&call).await?;
        let a = Self::think(&call)?;
        let n = call.request.n.unwrap_or(1).max(1);
        let message = AssistantMessage {
            content: a.content.clone(),
            tool_calls: a
                .tool_calls
                .iter()
                .map(|t| ToolCallOut {
                    id: t.id.clone(),
                    name: t.name.clone(),
                    arguments: t.arguments.clone(),
                })
                .collect(),
            refusal: None,
        };
        Ok(Completion {
            choices: (0..n)
                .map(|index| Choice {
                    index,
                    message: message.clone(),
                    finish_reason: FinishReason::from_openai(a.finish_reason),
                })
                .collect(),
            usage: Usage {
                prompt_tokens: a.prompt_tokens,
                completion_tokens: a.completion_tokens * u64::from(n),
                ..Usage::default()
            },
        })
    }

    pub async fn stream(&self, call: UpstreamRequest<'_>) -> Result<EventStream, GatewayError> {
        let behaviour = self.prelude(&call).await?;
        let a = Self::think(&call)?;
        let mut events = Vec::new();
        if let Some(content) = &a.content {
            let chars: Vec<char> = content.chars().collect();
            for piece in chars.chunks(CHUNK_CHARS) {
                events.push(StreamEvent::Content {
                    index: 0,
                    text: piece.iter().collect(),
                });
            }
        }
        for (call_index, tool) in a.tool_calls.iter().enumerate() {
            let call_index = call_index as u32;
            events.push(StreamEvent::ToolCall {
                index: 0,
                call: call_index,
                id: Some(tool.id.clone()),
                name: Some(tool.name.clone()),
                arguments: String::new(),
            });
            let chars: Vec<char> = tool.arguments.chars().collect();
            for piece in chars.chunks(CHUNK_CHARS) {
                events.push(StreamEvent::ToolCall {
                    index: 0,
                    call: call_index,
                    id: None,
                    name: None,
                    arguments: piece.iter().collect(),
                });
            }
        }
        events.push(StreamEvent::Finish {
            index: 0,
            reason: FinishReason::from_openai(a.finish_reason),
        });
        events.push(StreamEvent::Usage(Usage {
            prompt_tokens: a.prompt_tokens,
            completion_tokens: a.completion_tokens,
            ..Usage::default()
        }));
        let delay = Duration::from_millis(behaviour.chunk_delay_ms);
        let stream = futures::stream::iter(events.into_iter().enumerate()).then(
            move |(i, event)| async move {
                if i > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok(event)
            },
        );
        Ok(stream.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::completion::CompletionAccumulator;
    use crate::wire::ChatRequest;

    fn client() -> MockClient {
        MockClient::new(MockSettings {
            default: MockBehaviour::default(),
            models: [(
                "always-fails".to_string(),
                MockBehaviour {
                    failure_rate: 1.0,
                    failure_status: Some(429),
                    ..MockBehaviour::default()
                },
            )]
            .into_iter()
            .collect(),
        })
    }

    fn request(body: serde_json::Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    #[actix_rt::test]
    async fn echoes_the_last_user_message() {
        let req = request(serde_json::json!({"model": "mock-echo", "messages": [
            {"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
            {"role": "user", "content": "Hello, flowgate"}]}));
        let call = UpstreamRequest {
            request: &req,
            model: "mock-echo",
            reasoning_effort: None,
        };
        let c = client().complete(call).await.unwrap();
        assert_eq!(
            c.choices[0].message.content.as_deref(),
            Some("Hello, flowgate")
        );
        assert!(c.usage.prompt_tokens > 0);

        // The stream carries the same answer.
        let mut acc = CompletionAccumulator::default();
        let mut stream = client().stream(call).await.unwrap();
        while let Some(event) = stream.next().await {
            acc.push(&event.unwrap());
        }
        assert_eq!(acc.finish().choices[0].message, c.choices[0].message);
    }

    #[actix_rt::test]
    async fn forced_tool_gets_an_instance_of_its_schema() {
        let req = request(serde_json::json!({"model": "mock-echo",
            "messages": [{"role": "user", "content": "Jason is 25"}],
            "tools": [{"type": "function", "function": {"name": "User", "parameters": {
                "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "required": ["name", "age"]}}}],
            "tool_choice": {"type": "function", "function": {"name": "User"}}}));
        let call = UpstreamRequest {
            request: &req,
            model: "mock-echo",
            reasoning_effort: None,
        };
        let c = client().complete(call).await.unwrap();
        assert_eq!(c.choices[0].finish_reason, FinishReason::ToolCalls);
        let args: serde_json::Value =
            serde_json::from_str(&c.choices[0].message.tool_calls[0].arguments).unwrap();
        assert!(args["name"].is_string());
        assert!(args["age"].is_i64());
    }

    #[actix_rt::test]
    async fn configured_failures_map_to_error_kinds() {
        let req = request(serde_json::json!({"model": "m", "messages": []}));
        let call = UpstreamRequest {
            request: &req,
            model: "always-fails",
            reasoning_effort: None,
        };
        let err = client().complete(call).await.unwrap_err();
        assert_eq!(err.kind, crate::error::ErrorKind::RateLimited);
    }
}
