//! Providers: one adapter per provider kind (a closed enum selected by `type = "…"` in config),
//! and one [`ProviderActor`](actor::ProviderActor) per configured provider that owns its health
//! and circuit breaker.

pub mod actor;
pub mod adapter;
pub mod anthropic;
pub mod bedrock;
pub mod driver;
pub mod gemini;
pub mod google_auth;
pub mod http;
pub mod media;
pub mod mock;
pub mod openai;
#[cfg(test)]
pub mod scripted;
pub mod sse;
pub mod transport;
pub mod vertex;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::breaker::BreakerSettings;
use crate::completion::{Completion, StreamEvent};
use crate::error::GatewayError;
use crate::outbox::{Outbox, Pending, Pushed};
use crate::wire::ChatRequest;
use actor::AttemptOutcome;

pub use actor::{HealthBoard, ProviderActor};

/// A stream of answer events; an `Err` ends it.
pub type EventStream = BoxStream<'static, Result<StreamEvent, GatewayError>>;

/// The stream's next item if the upstream has delivered it already (`None` if it has not),
/// for a relay that writes every delivered event in one piece. An upstream's events that the
/// transport has read are ready at once (it reads in the caller's task); a stream handed over
/// by another task (hyper's client did so before `transport`, a frame at a time) needs that
/// task's turn, so when no item is ready, other tasks get up to two turns (`yield_now`).
/// Nothing here waits for the network. A burst of frames then costs one write to the client
/// instead of one each. A body's first piece takes no turns, so that the first token is not
/// held for them.
pub async fn delivered(
    stream: &mut EventStream,
) -> Option<Option<Result<StreamEvent, GatewayError>>> {
    use futures::{FutureExt, StreamExt};
    for _ in 0..2 {
        if let Some(item) = stream.next().now_or_never() {
            return Some(item);
        }
        tokio::task::yield_now().await;
    }
    stream.next().now_or_never()
}

/// Timeouts of one provider.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub connect_seconds: f64,
    /// Until the response headers (non-streaming: the whole body) arrive.
    pub first_byte_seconds: f64,
    /// Longest gap between two stream chunks.
    pub idle_seconds: f64,
    /// The whole upstream call.
    pub total_seconds: f64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_seconds: 10.0,
            first_byte_seconds: 300.0,
            idle_seconds: 120.0,
            total_seconds: 600.0,
        }
    }
}

impl Timeouts {
    pub fn connect(&self) -> Duration {
        secs(self.connect_seconds)
    }
    pub fn first_byte(&self) -> Duration {
        secs(self.first_byte_seconds)
    }
    pub fn idle(&self) -> Duration {
        secs(self.idle_seconds)
    }
    pub fn total(&self) -> Duration {
        secs(self.total_seconds)
    }
}

fn secs(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::from_secs(600))
}

/// Settings of the `openai` kind: any OpenAI-compatible HTTP API.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiSettings {
    /// e.g. `https://api.openai.com/v1`; `/chat/completions` is appended.
    pub base_url: String,
    pub api_key: Option<String>,
    /// Extra headers sent with every request (e.g. OpenRouter's `HTTP-Referer`).
    pub headers: BTreeMap<String, String>,
    /// Which OpenAI-compatible API this is, for its known quirks.
    pub flavor: OpenAiFlavor,
}

/// The OpenAI-compatible APIs whose quirks the `openai` adapter knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpenAiFlavor {
    #[default]
    OpenAi,
    Groq,
    Mistral,
    Xai,
    Fireworks,
    Together,
    DeepSeek,
    OpenRouter,
    Ollama,
    Vllm,
}

impl OpenAiFlavor {
    /// The flavor of a well-known base URL; `OpenAi` for anything else.
    pub fn detect(base_url: &str) -> OpenAiFlavor {
        let host = base_url
            .split("://")
            .nth(1)
            .unwrap_or(base_url)
            .split('/')
            .next()
            .unwrap_or("");
        let known = [
            ("api.groq.com", OpenAiFlavor::Groq),
            ("api.mistral.ai", OpenAiFlavor::Mistral),
            ("api.x.ai", OpenAiFlavor::Xai),
            ("api.fireworks.ai", OpenAiFlavor::Fireworks),
            ("api.together.xyz", OpenAiFlavor::Together),
            ("api.together.ai", OpenAiFlavor::Together),
            ("api.deepseek.com", OpenAiFlavor::DeepSeek),
            ("openrouter.ai", OpenAiFlavor::OpenRouter),
            (":11434", OpenAiFlavor::Ollama),
        ];
        known
            .iter()
            .find(|(needle, _)| host.contains(needle))
            .map_or(OpenAiFlavor::OpenAi, |(_, flavor)| *flavor)
    }
}

/// Settings of the `azure` kind: Azure OpenAI. The catalog's provider model id is the
/// deployment name.
#[derive(Debug, Clone, PartialEq)]
pub struct AzureSettings {
    /// `https://<resource>.openai.azure.com`
    pub endpoint: String,
    pub api_key: Option<String>,
    pub api_version: String,
}

/// Settings of the `anthropic` kind: the Messages API.
#[derive(Debug, Clone, PartialEq)]
pub struct AnthropicSettings {
    /// `https://api.anthropic.com`; `/v1/messages` is appended.
    pub base_url: String,
    pub api_key: Option<String>,
    /// The `anthropic-version` header.
    pub version: String,
    /// Extra headers (e.g. `anthropic-beta`).
    pub headers: BTreeMap<String, String>,
}

/// Settings of the `gemini` kind: the Gemini API with an API key.
#[derive(Debug, Clone, PartialEq)]
pub struct GeminiSettings {
    /// `https://generativelanguage.googleapis.com`; `/v1beta/models/…` is appended.
    pub base_url: String,
    pub api_key: Option<String>,
}

/// How the `vertex` kind gets its OAuth token.
#[derive(Debug, Clone, PartialEq)]
pub enum VertexCredentials {
    /// A service-account key (the JSON text): a signed JWT is exchanged at its `token_uri`.
    ServiceAccount(String),
    /// The GCE/GKE metadata server at this base URL.
    MetadataServer(String),
    /// A fixed access token (for tests and short-lived setups).
    AccessToken(String),
}

/// Settings of the `vertex` kind: Gemini on Vertex AI.
#[derive(Debug, Clone, PartialEq)]
pub struct VertexSettings {
    pub project: String,
    /// e.g. `us-central1`, or `global`.
    pub region: String,
    /// Default: `https://<region>-aiplatform.googleapis.com` (`https://aiplatform.googleapis.com`
    /// for `global`).
    pub base_url: String,
    pub credentials: VertexCredentials,
}

/// Settings of the `bedrock` kind: Amazon Bedrock's Converse API, signed with SigV4.
#[derive(Debug, Clone, PartialEq)]
pub struct BedrockSettings {
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Default: `https://bedrock-runtime.<region>.amazonaws.com`.
    pub base_url: String,
}

/// Behaviour of one model of the built-in `mock` provider.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockBehaviour {
    /// Added before the answer (and before the first stream chunk).
    pub latency_ms: u64,
    /// Between stream chunks.
    pub chunk_delay_ms: u64,
    /// Share of requests that fail, 0.0 to 1.0.
    pub failure_rate: f64,
    /// The HTTP status a failure imitates (500, 429, …).
    pub failure_status: Option<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MockSettings {
    pub default: MockBehaviour,
    /// Per provider model id.
    pub models: BTreeMap<String, MockBehaviour>,
}

/// What kind of provider, with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderKind {
    OpenAi(OpenAiSettings),
    Azure(AzureSettings),
    Anthropic(AnthropicSettings),
    Gemini(GeminiSettings),
    Vertex(VertexSettings),
    Bedrock(BedrockSettings),
    Mock(MockSettings),
    /// Tests only: a provider that plays a script.
    #[cfg(test)]
    Scripted(scripted::ScriptedSettings),
}

impl ProviderKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ProviderKind::OpenAi(_) => "openai",
            ProviderKind::Azure(_) => "azure",
            ProviderKind::Anthropic(_) => "anthropic",
            ProviderKind::Gemini(_) => "gemini",
            ProviderKind::Vertex(_) => "vertex",
            ProviderKind::Bedrock(_) => "bedrock",
            ProviderKind::Mock(_) => "mock",
            #[cfg(test)]
            ProviderKind::Scripted(_) => "scripted",
        }
    }
}

/// A configured provider, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSettings {
    pub name: String,
    pub kind: ProviderKind,
    /// `false` when its API key variable is unset: it is listed but never called.
    pub enabled: bool,
    /// Why it is disabled, for logs and `/v1/models`.
    pub disabled_reason: Option<String>,
    pub timeouts: Timeouts,
    pub breaker: BreakerSettings,
}

/// One upstream call: the client's request, the provider's model id and resolved options.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamRequest<'a> {
    pub request: &'a ChatRequest,
    /// The provider's id for the model.
    pub model: &'a str,
    pub reasoning_effort: Option<&'a str>,
}

/// The adapter of one provider kind.
#[derive(Debug)]
pub enum ProviderClient {
    /// OpenAI and Azure OpenAI (same wire format).
    OpenAi(openai::OpenAiClient),
    Anthropic(anthropic::AnthropicClient),
    /// Gemini API and Vertex AI (same wire format).
    Gemini(gemini::GeminiClient),
    /// Vertex AI: Gemini models, and Claude models in Anthropic's format.
    Vertex(vertex::VertexClient),
    Bedrock(bedrock::BedrockClient),
    Mock(mock::MockClient),
    #[cfg(test)]
    Scripted(scripted::ScriptedClient),
}

/// What every adapter is built from.
#[derive(Debug, Clone)]
pub struct AdapterContext {
    /// The provider's name in config, for messages.
    pub name: String,
    pub timeouts: Timeouts,
    /// Downloads images and files for providers that cannot fetch URLs.
    pub media: media::MediaFetcher,
}

impl ProviderClient {
    pub fn new(
        settings: &ProviderSettings,
        media: &media::MediaFetcher,
    ) -> Result<ProviderClient, String> {
        let ctx = AdapterContext {
            name: settings.name.clone(),
            timeouts: settings.timeouts,
            media: media.clone(),
        };
        Ok(match &settings.kind {
            ProviderKind::OpenAi(openai) => ProviderClient::OpenAi(openai::OpenAiClient::new(
                &settings.name,
                openai.clone(),
                settings.timeouts,
            )?),
            ProviderKind::Azure(azure) => {
                ProviderClient::OpenAi(openai::OpenAiClient::azure(ctx, azure.clone())?)
            }
            ProviderKind::Anthropic(anthropic) => {
                ProviderClient::Anthropic(anthropic::AnthropicClient::new(ctx, anthropic.clone())?)
            }
            ProviderKind::Gemini(gemini) => {
                ProviderClient::Gemini(gemini::GeminiClient::gemini(ctx, gemini.clone())?)
            }
            ProviderKind::Vertex(vertex) => {
                ProviderClient::Vertex(vertex::VertexClient::new(ctx, vertex.clone())?)
            }
            ProviderKind::Bedrock(bedrock) => {
                ProviderClient::Bedrock(bedrock::BedrockClient::new(ctx, bedrock.clone())?)
            }
            ProviderKind::Mock(mock) => ProviderClient::Mock(mock::MockClient::new(mock.clone())),
            #[cfg(test)]
            ProviderKind::Scripted(s) => {
                ProviderClient::Scripted(scripted::ScriptedClient::new(&settings.name, s.clone()))
            }
        })
    }

    /// One non-streaming call.
    pub async fn complete(&self, call: UpstreamRequest<'_>) -> Result<Completion, GatewayError> {
        match self {
            ProviderClient::OpenAi(client) => client.complete(call).await,
            ProviderClient::Anthropic(client) => client.complete(call).await,
            ProviderClient::Gemini(client) => client.complete(call).await,
            ProviderClient::Vertex(client) => client.complete(call).await,
            ProviderClient::Bedrock(client) => client.complete(call).await,
            ProviderClient::Mock(client) => client.complete(call).await,
            #[cfg(test)]
            ProviderClient::Scripted(client) => client.complete(call).await,
        }
    }

    /// One embeddings call, for the providers whose APIs have embeddings.
    pub async fn embed(
        &self,
        call: crate::embeddings::EmbedCall<'_>,
    ) -> Result<crate::embeddings::Embedded, GatewayError> {
        let unsupported = |api: &str| {
            Err(GatewayError::new(
                crate::error::ErrorKind::UnsupportedByModel,
                format!("the {api} API has no embeddings in flowgate: choose an embedding model served by an OpenAI-compatible, Gemini, Bedrock or mock provider"),
            ))
        };
        match self {
            ProviderClient::OpenAi(client) => client.embed(call).await,
            ProviderClient::Gemini(client) => client.embed(call).await,
            ProviderClient::Mock(client) => client.embed(call).await,
            ProviderClient::Anthropic(_) => unsupported("Anthropic"),
            ProviderClient::Vertex(_) => unsupported("Vertex AI"),
            ProviderClient::Bedrock(client) => client.embed(call).await,
            #[cfg(test)]
            ProviderClient::Scripted(_) => unsupported("scripted"),
        }
    }

    /// Opens a stream. `Ok` means the provider accepted the request; events follow.
    pub async fn stream(&self, call: UpstreamRequest<'_>) -> Result<EventStream, GatewayError> {
        match self {
            ProviderClient::OpenAi(client) => client.stream(call).await,
            ProviderClient::Anthropic(client) => client.stream(call).await,
            ProviderClient::Gemini(client) => client.stream(call).await,
            ProviderClient::Vertex(client) => client.stream(call).await,
            ProviderClient::Bedrock(client) => client.stream(call).await,
            ProviderClient::Mock(client) => client.stream(call).await,
            #[cfg(test)]
            ProviderClient::Scripted(client) => client.stream(call).await,
        }
    }
}

/// Everything the request path needs of one provider: its adapter, its published health, and
/// the address of the actor that owns that health. Cheap to clone.
#[derive(Clone)]
pub struct ProviderHandle {
    pub settings: Arc<ProviderSettings>,
    pub client: Arc<ProviderClient>,
    pub health: Arc<HealthBoard>,
    pub actor: Addr<ProviderActor>,
    /// The actor's queue of outcomes.
    pub outcomes: Arc<Outbox<AttemptOutcome>>,
}

impl ProviderHandle {
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Tells the provider actor how a call went, without waiting. Outcomes reach it in batches
    /// (see [`crate::outbox`]); a failure is taken at once, so a breaker opens without delay.
    /// A stuck actor loses samples, never blocks a request.
    pub fn report(&self, outcome: AttemptOutcome) {
        let failure = outcome.error.is_some();
        match self.outcomes.push(outcome) {
            Pushed::First => self.actor.do_send(Pending { now: failure }),
            Pushed::Queued | Pushed::FullBatch if failure => {
                self.actor.do_send(Pending { now: true })
            }
            Pushed::Queued | Pushed::FullBatch => {}
            Pushed::Full => tracing::debug!(provider = self.name(), "provider outbox full"),
        }
    }
}

impl std::fmt::Debug for ProviderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderHandle")
            .field("name", &self.settings.name)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use futures::{SinkExt, StreamExt};

    use super::*;

    fn text(text: &str) -> StreamEvent {
        StreamEvent::Content {
            index: 0,
            text: text.into(),
        }
    }

    /// Items another task hands over, one at a time, each after `turns` turns of its own.
    fn handed_over(items: &[&str], turns: usize) -> EventStream {
        let items: Vec<StreamEvent> = items.iter().map(|t| text(t)).collect();
        let (mut tx, rx) = futures::channel::mpsc::channel(0);
        tokio::spawn(async move {
            for item in items {
                for _ in 1..turns {
                    tokio::task::yield_now().await;
                }
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        });
        rx.boxed()
    }

    async fn all_delivered(stream: &mut EventStream) -> Vec<String> {
        let mut texts = Vec::new();
        while let Some(Some(item)) = delivered(stream).await {
            match item.unwrap() {
                StreamEvent::Content { text, .. } => texts.push(text),
                other => panic!("{other:?}"),
            }
        }
        texts
    }

    /// What the other task can hand over within two turns counts as delivered; the end of the
    /// stream is delivered too.
    #[tokio::test]
    async fn items_handed_over_within_two_turns_are_delivered() {
        let mut stream = handed_over(&["a", "b", "c"], 2);
        assert_eq!(all_delivered(&mut stream).await, ["a", "b", "c"]);
        assert!(matches!(delivered(&mut stream).await, Some(None)));
    }

    /// Nothing is waited for: an item the other task has not got yet is not delivered, and it
    /// comes later, in order.
    #[tokio::test]
    async fn what_is_not_there_yet_is_not_waited_for() {
        let mut stream: EventStream = futures::stream::iter([Ok(text("a"))])
            .chain(futures::stream::pending())
            .boxed();
        assert_eq!(all_delivered(&mut stream).await, ["a"]);
        let mut later = handed_over(&["b"], 5);
        assert!(delivered(&mut later).await.is_none());
        let b = later.next().await.expect("b comes").unwrap();
        assert!(matches!(b, StreamEvent::Content { text, .. } if text == "b"));
    }
}
