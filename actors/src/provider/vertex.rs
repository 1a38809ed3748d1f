//! The `vertex` provider kind: Google's models on Vertex AI through the Gemini adapter
//! (`generateContent`), Anthropic's Claude models through the Anthropic adapter (`rawPredict`,
//! in Anthropic's format). One OAuth token source serves both families.

use std::sync::Arc;

use super::anthropic::AnthropicClient;
use super::gemini::GeminiClient;
use super::google_auth::TokenSource;
use super::{AdapterContext, EventStream, UpstreamRequest, VertexSettings};
use crate::completion::Completion;
use crate::error::GatewayError;

/// A `vertex` provider: Google's models through `generateContent`, Anthropic's Claude models
/// through `rawPredict` in Anthropic's format. Both families use the provider's one OAuth
/// token source, so one token serves them all.
#[derive(Debug)]
pub struct VertexClient {
    gemini: GeminiClient,
    claude: AnthropicClient,
}

/// The Claude model id `model` names, if it names one: `claude-…` as the Model Garden spells
/// them (`claude-3-7-sonnet@20250219`), or the same under `publishers/anthropic/models/`.
fn claude_model(model: &str) -> Option<&str> {
    let id = model
        .strip_prefix("publishers/anthropic/models/")
        .unwrap_or(model);
    id.starts_with("claude-").then_some(id)
}

impl VertexClient {
    pub fn new(ctx: AdapterContext, settings: VertexSettings) -> Result<Self, String> {
        let tokens = TokenSource::for_provider(&ctx, &settings.credentials)?;
        Ok(VertexClient {
            gemini: GeminiClient::vertex(ctx.clone(), settings.clone(), Arc::clone(&tokens))?,
            claude: AnthropicClient::vertex(ctx, settings, tokens)?,
        })
    }

    pub async fn complete(&self, call: UpstreamRequest<'_>) -> Result<Completion, GatewayError> {
        match claude_model(call.model) {
            Some(model) => {
                self.claude
                    .complete(UpstreamRequest { model, ..call })
                    .await
            }
            None => self.gemini.complete(call).await,
        }
    }

    pub async fn stream(&self, call: UpstreamRequest<'_>) -> Result<EventStream, GatewayError> {
        match claude_model(call.model) {
            Some(model) => self.claude.stream(UpstreamRequest { model, ..call }).await,
            None => self.gemini.stream(call).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::error::ErrorKind;
    use crate::provider::media::{MediaFetcher, MediaSettings};
    use crate::provider::{Timeouts, VertexCredentials};
    use crate::wire::ChatRequest;

    fn request(value: Value) -> ChatRequest {
        serde_json::from_value(value).unwrap()
    }

    fn ctx() -> AdapterContext {
        AdapterContext {
            name: "google".into(),
            timeouts: Timeouts::default(),
            media: MediaFetcher::new(MediaSettings::default()),
        }
    }

    #[test]
    fn vertex_routes_claude_models_to_anthropic() {
        for (model, claude) in [
            (
                "claude-3-7-sonnet@20250219",
                Some("claude-3-7-sonnet@20250219"),
            ),
            (
                "claude-sonnet-4@20250514;status=529",
                Some("claude-sonnet-4@20250514;status=529"),
            ),
            (
                "publishers/anthropic/models/claude-opus-4@20250514",
                Some("claude-opus-4@20250514"),
            ),
            ("gemini-2.5-pro", None),
            ("publishers/google/models/gemini-2.5-pro", None),
            ("endpoints/123", None),
            ("claudette", None),
        ] {
            assert_eq!(claude_model(model), claude, "{model}");
        }
    }

    #[actix_rt::test]
    async fn vertex_serves_both_families_with_one_token() {
        let mock = flowgate_mock_upstream::MockUpstream::start();
        let vertex = VertexClient::new(
            ctx(),
            VertexSettings {
                project: "p".into(),
                region: "us-east5".into(),
                base_url: mock.url(),
                credentials: VertexCredentials::MetadataServer(mock.url()),
            },
        )
        .unwrap();
        let r =
            request(json!({"model": "m", "messages": [{"role": "user", "content": "Hello both"}]}));
        let call = |model| UpstreamRequest {
            request: &r,
            model,
            reasoning_effort: None,
        };
        // Concurrent first calls of both families: one token request between them.
        let (gemini, claude) = futures::join!(
            vertex.complete(call("gemini-2.5-pro")),
            vertex.complete(call("claude-3-7-sonnet@20250219"))
        );
        for c in [gemini.unwrap(), claude.unwrap()] {
            assert_eq!(c.choices[0].message.content.as_deref(), Some("Hello both"));
        }
        let requests = mock.requests();
        let mut paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "/computeMetadata/v1/instance/service-accounts/default/token",
                "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-3-7-sonnet@20250219:rawPredict",
                "/v1/projects/p/locations/us-east5/publishers/google/models/gemini-2.5-pro:generateContent",
            ]
        );
        let bearers: Vec<&str> = requests
            .iter()
            .filter(|r| r.path.starts_with("/v1/"))
            .map(|r| r.headers["authorization"].as_str())
            .collect();
        assert_eq!(bearers.len(), 2);
        assert!(bearers[0].starts_with("Bearer mock-token-"), "{bearers:?}");
        assert_eq!(bearers[0], bearers[1]);

        // A token Claude's endpoint rejects is dropped for Gemini too.
        let err = vertex
            .complete(call("claude-3-7-sonnet@20250219;status=401"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamAuth);
        assert!(!err.message.contains("mock-token"), "{}", err.message);
        vertex.complete(call("gemini-2.5-pro")).await.unwrap();
        let requests = mock.requests();
        let tokens = requests
            .iter()
            .filter(|r| r.path.starts_with("/computeMetadata"))
            .count();
        assert_eq!(tokens, 2);
        assert_ne!(
            requests.last().unwrap().headers["authorization"],
            bearers[0]
        );
    }
}
