//! Providers: one adapter per provider kind (a closed enum selected by `type = "…"` in config),
//! and one [`ProviderActor`](actor::ProviderActor) per configured provider that owns its health
//! and circuit breaker.

pub mod actor;
pub mod mock;
pub mod openai;
pub mod sse;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::breaker::BreakerSettings;
use crate::completion::{Completion, StreamEvent};
use crate::error::GatewayError;
use crate::wire::ChatRequest;

pub use actor::{HealthBoard, ProviderActor};

/// A stream of answer events; an `Err` ends it.
pub type EventStream = BoxStream<'static, Result<StreamEvent, GatewayError>>;

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
    Mock(MockSettings),
}

impl ProviderKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ProviderKind::OpenAi(_) => "openai",
            ProviderKind::Mock(_) => "mock",
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
    OpenAi(openai::OpenAiClient),
    Mock(mock::MockClient),
}

impl ProviderClient {
    pub fn new(settings: &ProviderSettings) -> Result<ProviderClient, String> {
        Ok(match &settings.kind {
            ProviderKind::OpenAi(openai) => ProviderClient::OpenAi(openai::OpenAiClient::new(
                &settings.name,
                openai.clone(),
                settings.timeouts,
            )?),
            ProviderKind::Mock(mock) => ProviderClient::Mock(mock::MockClient::new(mock.clone())),
        })
    }

    /// One non-streaming call.
    pub async fn complete(&self, call: UpstreamRequest<'_>) -> Result<Completion, GatewayError> {
        match self {
            ProviderClient::OpenAi(client) => client.complete(call).await,
            ProviderClient::Mock(client) => client.complete(call).await,
        }
    }

    /// Opens a stream. `Ok` means the provider accepted the request; events follow.
    pub async fn stream(&self, call: UpstreamRequest<'_>) -> Result<EventStream, GatewayError> {
        match self {
            ProviderClient::OpenAi(client) => client.stream(call).await,
            ProviderClient::Mock(client) => client.stream(call).await,
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
}

impl ProviderHandle {
    pub fn name(&self) -> &str {
        &self.settings.name
    }
}

impl std::fmt::Debug for ProviderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderHandle")
            .field("name", &self.settings.name)
            .finish()
    }
}
