//! The run record: one request through the gateway, as stored and as the admin API shows it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::completion::{Completion, Usage};
use crate::error::AttemptSummary;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Success,
    Error,
    /// The client went away; `output` holds what had been streamed.
    Cancelled,
}

/// How the cache took part in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStatus {
    /// The cache was not consulted (`use_cache` said no).
    Bypass,
    Miss,
    Hit,
    /// Answered by an identical request in flight at the same time.
    Coalesced,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Success => "success",
            RunStatus::Error => "error",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunSource {
    /// The app's own traffic (`/v1/chat/completions`).
    #[default]
    Api,
    /// The playground, comparing models.
    Playground,
    /// A replay of an earlier run.
    Replay,
    /// A benchmark, or its AI reviewer (evaluations).
    Benchmark,
}

impl RunSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RunSource::Api => "api",
            RunSource::Playground => "playground",
            RunSource::Replay => "replay",
            RunSource::Benchmark => "benchmark",
        }
    }
}

/// The API a run came in through: each door translates its own wire format into the same
/// engine request, and the run keeps which one it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Door {
    /// `POST /v1/chat/completions` (and every run written before doors were recorded).
    #[default]
    ChatCompletions,
    /// `POST /v1/responses`, the OpenAI Responses API.
    Responses,
    /// `POST /v1/messages`, the Anthropic Messages API.
    Messages,
    /// `POST /v1/embeddings`.
    Embeddings,
}

impl Door {
    pub fn as_str(self) -> &'static str {
        match self {
            Door::ChatCompletions => "chat_completions",
            Door::Responses => "responses",
            Door::Messages => "messages",
            Door::Embeddings => "embeddings",
        }
    }

    /// `false` for the default, so records of chat runs keep their old shape.
    pub fn is_chat_completions(&self) -> bool {
        *self == Door::ChatCompletions
    }
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Bypass => "bypass",
            CacheStatus::Miss => "miss",
            CacheStatus::Hit => "hit",
            CacheStatus::Coalesced => "coalesced",
        }
    }

    /// The `x-flowgate-cache` header value.
    pub fn header(self) -> &'static str {
        match self {
            CacheStatus::Hit | CacheStatus::Coalesced => "hit",
            CacheStatus::Miss | CacheStatus::Bypass => "miss",
        }
    }
}

/// One run, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: Uuid,
    pub tenant: String,
    pub agent: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub status: RunStatus,
    /// The `model` string as the client sent it.
    pub requested_model: String,
    /// The catalog model that answered (or was planned).
    pub model: Option<String>,
    pub provider: Option<String>,
    pub provider_model: Option<String>,
    pub version_id: Option<String>,
    pub stream: bool,
    /// The request body (messages and parameters), as received: kept as text, neither
    /// parsed into a tree nor re-encoded on the way to the store.
    pub request: Option<Box<serde_json::value::RawValue>>,
    pub input: Option<serde_json::Value>,
    pub output: Option<Completion>,
    pub attempts: Vec<AttemptSummary>,
    pub usage: Usage,
    /// Every upstream call of the run, retries included.
    pub cost_usd: f64,
    pub duration_seconds: f64,
    pub cache: CacheStatus,
    /// The OpenAI error body the client received.
    pub error: Option<serde_json::Value>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub feedback_token: String,
    /// For cache hits and coalesced runs: the run whose answer was reused.
    pub source_run_id: Option<Uuid>,
    /// For requests with a schema: how the structured output was produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured: Option<StructuredRecord>,
    /// The agent's id for the run's (input schema, output schema) pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_id: Option<u32>,
    /// Shared by the runs of one conversation: the id of its first run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<Uuid>,
    /// The messages as sent upstream, when they differ from the request's (templates rendered
    /// with `input`, or supplied by a deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendered_messages: Option<Vec<crate::wire::Message>>,
    /// What started the run (runs written before this field existed were the app's).
    #[serde(default)]
    pub source: RunSource,
    /// For a replay: the run it replays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<Uuid>,
    /// The API the request came in through; `request` holds it as the engine ran it (the
    /// Chat Completions shape). Runs written before this field existed came through
    /// `/v1/chat/completions`.
    #[serde(default, skip_serializing_if = "Door::is_chat_completions")]
    pub door: Door,
    /// The hash the run's next turn looks its conversation up by (its messages, then its
    /// answer), taken on the request path; not stored (the recorder stores it as a link).
    #[serde(skip)]
    pub continuation: Option<[u8; 32]>,
    /// What the metrics learn of the run; not stored.
    #[serde(skip)]
    pub telemetry: RunTelemetry,
}

/// What the recorder's metrics take from a run besides its record: measured on the request
/// path (two clock reads), observed on the recorder's thread.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunTelemetry {
    /// The HTTP status the client got (200, or the error's; 499 for a client that went away).
    pub http_status: u16,
    /// The time spent in flowgate itself: the run's duration without what it waited for.
    pub overhead_seconds: f64,
    /// For a stream: from the request to its first event.
    pub first_token_seconds: Option<f64>,
}

/// How a structured output was produced: its layer, repairs and validation errors.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StructuredRecord {
    pub layer: Option<crate::structured::Layer>,
    /// Repair attempts that showed the model its error.
    pub repairs: u32,
    pub validation_errors: Vec<String>,
}

/// What run listings show of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub id: Uuid,
    pub agent: String,
    pub created_at: String,
    pub status: RunStatus,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub cost_usd: f64,
    pub duration_seconds: f64,
    pub cache: CacheStatus,
    pub version_id: Option<String>,
    pub source: RunSource,
    /// The API the run came in through (left out for Chat Completions).
    #[serde(skip_serializing_if = "Door::is_chat_completions")]
    pub door: Door,
    /// The start of the input: its variables, else the last user message.
    pub input_preview: String,
    /// The start of the output: the first choice's text or tool call.
    pub output_preview: String,
}

/// How long a preview is, in characters.
pub const PREVIEW_CHARS: usize = 160;

fn preview(text: &str) -> String {
    let mut out: String = text.chars().take(PREVIEW_CHARS).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

impl RunRecord {
    /// The input variables, else the last user message of what was sent.
    pub fn input_preview(&self) -> String {
        if let Some(input) = &self.input {
            return preview(&input.to_string());
        }
        if let Some(messages) = &self.rendered_messages {
            if let Some(last) = messages
                .iter()
                .rev()
                .find(|m| m.role == crate::wire::Role::User)
            {
                return preview(&last.text());
            }
        }
        let request = self
            .request
            .as_ref()
            .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw.get()).ok());
        let last_user = request
            .as_ref()
            .and_then(|r| {
                r.get("messages")?
                    .as_array()?
                    .iter()
                    .rev()
                    .find(|m| m.get("role").and_then(serde_json::Value::as_str) == Some("user"))
            })
            .and_then(|m| m.get("content"));
        match last_user {
            Some(serde_json::Value::String(text)) => preview(text),
            Some(parts @ serde_json::Value::Array(_)) => preview(&parts.to_string()),
            // An embeddings run: its (first) input text.
            _ => match request.as_ref().and_then(|r| r.get("input")) {
                Some(serde_json::Value::String(text)) => preview(text),
                Some(serde_json::Value::Array(items)) => items
                    .first()
                    .and_then(serde_json::Value::as_str)
                    .map(preview)
                    .unwrap_or_default(),
                _ => String::new(),
            },
        }
    }

    /// The first choice's text, else its first tool call.
    pub fn output_preview(&self) -> String {
        let Some(message) = self
            .output
            .as_ref()
            .and_then(|o| o.choices.first())
            .map(|c| &c.message)
        else {
            return String::new();
        };
        match (&message.content, message.tool_calls.first()) {
            (Some(text), _) if !text.is_empty() => preview(text),
            (_, Some(call)) => preview(&format!("{}({})", call.name, call.arguments)),
            _ => String::new(),
        }
    }
}

impl From<&RunRecord> for RunSummary {
    fn from(r: &RunRecord) -> Self {
        RunSummary {
            id: r.id,
            agent: r.agent.clone(),
            created_at: r.created_at.clone(),
            status: r.status,
            model: r.model.clone(),
            provider: r.provider.clone(),
            cost_usd: r.cost_usd,
            duration_seconds: r.duration_seconds,
            cache: r.cache,
            version_id: r.version_id.clone(),
            source: r.source,
            door: r.door,
            input_preview: r.input_preview(),
            output_preview: r.output_preview(),
        }
    }
}

/// A fresh feedback token for a run: the run id and a random secret (122 bits from a
/// cryptographically secure generator, seeded once per thread).
pub fn feedback_token(run_id: Uuid) -> String {
    format!("{}.{}", run_id, Uuid::new_v4().simple())
}
