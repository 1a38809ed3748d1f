//! The `anthropic` adapter: Anthropic's Messages API (`POST <base_url>/v1/messages`), and
//! Claude on Vertex AI, which speaks the same format (see [`AnthropicClient::vertex`]).
//!
//! The OpenAI-shaped request is translated into a Messages request, and the answer back:
//!
//! | OpenAI | Anthropic |
//! |---|---|
//! | `system` / `developer` messages (anywhere) | top-level `system`, joined by blank lines |
//! | `user` / `assistant` messages | turns; consecutive turns of one role merged |
//! | assistant `tool_calls` | `tool_use` blocks (`input` = the parsed arguments) |
//! | `tool` messages | `tool_result` blocks in a user turn, before any text of that turn |
//! | `image_url` data URI / `https://` URL | `image` with a `base64` / `url` source |
//! | `image_url` `http://` URL | downloaded under the media guard, sent as `base64` |
//! | `file` part with a PDF (or plain-text) data URI | `document` block |
//! | `input_audio`, `file_id`, `n > 1` | refused: [`ErrorKind::UnsupportedByModel`] |
//! | `max_completion_tokens` / `max_tokens` | `max_tokens` (required; default 8192, capped per model) |
//! | `temperature` (0–2) | `temperature`, clamped to 1 |
//! | `stop` | `stop_sequences` |
//! | `user` | `metadata.user_id` |
//! | `tools`, `tool_choice`, `parallel_tool_calls: false` | `tools` with `input_schema`, `tool_choice` auto/any/tool/none, `disable_parallel_tool_use` |
//! | `response_format` | see [`apply_response_format`] |
//! | `reasoning_effort` low/medium/high | `thinking` with a 1024/4096/16384 token budget |
//! | `seed`, penalties, `logit_bias`, `logprobs` | dropped (Anthropic has no equivalent) |
//!
//! Answers: `text` blocks are the content, `tool_use` blocks the tool calls, `thinking` blocks
//! are not shown (their tokens are part of `output_tokens`). Usage: `prompt_tokens` is
//! `input_tokens + cache_read_input_tokens + cache_creation_input_tokens`, of which the cache
//! reads are `cached_tokens` and the cache writes `cache_write_tokens`.
//!
//! On Vertex AI (a `vertex` provider's `claude-…` models) only three things differ: the URL
//! (`POST {base}/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:rawPredict`,
//! `:streamRawPredict` to stream), the credentials (`Authorization: Bearer <OAuth token>` from
//! the provider's [`TokenSource`]), and the body, which names no `model` and carries
//! `"anthropic_version": "vertex-2023-10-16"` instead of the `anthropic-version` header.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};

use crate::provider::http::BodyRead;

use super::google_auth::TokenSource;
use super::http::{self, kind_for_status};
use super::http::{encode_segment, versioned_base};
use super::media;
use super::sse::SseDecoder;
use super::{AdapterContext, AnthropicSettings, EventStream, UpstreamRequest, VertexSettings};
use crate::completion::{
    AssistantMessage, Choice, Completion, FinishReason, StreamEvent, ToolCallOut, Usage,
};
use crate::error::{ErrorKind, GatewayError};
use crate::wire::{
    ChatRequest, ContentPart, FilePart, Message, MessageContent, ResponseFormat, Role, Stop, Tool,
    ToolChoice, ToolChoiceMode,
};

/// Upstream error bodies longer than this are cut before parsing.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// `max_tokens` when the client sets none (Anthropic requires it), unless the model allows less.
const DEFAULT_MAX_TOKENS: u32 = 8192;
/// Anthropic's smallest thinking budget.
const MIN_THINKING_BUDGET: u32 = 1024;
/// `top_p` values allowed together with thinking start here.
const THINKING_MIN_TOP_P: f64 = 0.95;
/// Image types the Messages API accepts.
const IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];
/// Added to `system` for `response_format: json_object`.
const JSON_OBJECT_INSTRUCTION: &str = "Respond with a single valid JSON object and nothing else: \
     no prose before or after it, no Markdown code fences.";
/// Added to `system` for `response_format: json_schema` when tools may not be used.
const JSON_SCHEMA_INSTRUCTION: &str = "Respond with a single valid JSON object that conforms to \
     this JSON Schema, and nothing else (no prose, no Markdown code fences):";
/// The description of the tool that carries a structured answer.
const ANSWER_TOOL_DESCRIPTION: &str =
    "Give your final answer by calling this tool: its input is the answer.";
/// The `anthropic_version` Vertex AI requires in the body.
pub const VERTEX_ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

#[derive(Debug)]
pub struct AnthropicClient {
    ctx: AdapterContext,
    endpoint: Endpoint,
    http: http::Client,
}

/// Where requests go and how they authenticate.
enum Endpoint {
    /// Anthropic's API: `<base_url>/v1/messages`, `x-api-key` and `anthropic-version` headers.
    Anthropic {
        url: String,
        settings: AnthropicSettings,
    },
    /// Claude on Vertex AI: `{base}/projects/{project}/locations/{region}/publishers/anthropic/
    /// models/{model}:rawPredict` (base ends in `/v1`), `Authorization: Bearer <oauth token>`.
    Vertex {
        base: String,
        project: String,
        region: String,
        /// Shared with the provider's Gemini client.
        tokens: Arc<TokenSource>,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Anthropic { url, settings } => f
                .debug_struct("Anthropic")
                .field("url", url)
                .field("api_key", &settings.api_key.as_ref().map(|_| "***"))
                .field("version", &settings.version)
                .finish_non_exhaustive(),
            Endpoint::Vertex {
                base,
                project,
                region,
                tokens,
            } => f
                .debug_struct("Vertex")
                .field("base", base)
                .field("project", project)
                .field("region", region)
                .field("tokens", tokens)
                .finish(),
        }
    }
}

// ---- request wire types, private to this module ----

#[derive(Debug, Serialize)]
struct MessagesBody {
    /// `None` on Vertex AI, where the URL names the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// Vertex AI only: [`VERTEX_ANTHROPIC_VERSION`].
    #[serde(skip_serializing_if = "Option::is_none")]
    anthropic_version: Option<&'static str>,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<Turn>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<ThinkingBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<MetadataBody>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Debug, Serialize)]
struct Turn {
    role: TurnRole,
    content: Vec<Block>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum TurnRole {
    User,
    Assistant,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    Image {
        source: Source,
    },
    Document {
        source: Source,
        #[serde(skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        content: Vec<Block>,
    },
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Source {
    Base64 { media_type: String, data: String },
    Url { url: String },
    Text { media_type: String, data: String },
}

#[derive(Debug, Serialize)]
struct ToolBody {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    input_schema: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct ToolChoiceBody {
    #[serde(rename = "type")]
    kind: ChoiceKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum ChoiceKind {
    Auto,
    Any,
    Tool,
    None,
}

impl ToolChoiceBody {
    fn new(kind: ChoiceKind, name: Option<String>, disable_parallel: Option<bool>) -> Self {
        ToolChoiceBody {
            kind,
            name,
            disable_parallel_tool_use: disable_parallel,
        }
    }

    /// `any` and `tool` force a tool call.
    fn forces_tool(&self) -> bool {
        matches!(self.kind, ChoiceKind::Any | ChoiceKind::Tool)
    }
}

#[derive(Debug, Serialize)]
struct ThinkingBody {
    #[serde(rename = "type")]
    kind: &'static str,
    budget_tokens: u32,
}

#[derive(Debug, Serialize)]
struct MetadataBody {
    user_id: String,
}

/// A translated request and what is needed to read its answer.
#[derive(Debug)]
struct Prepared {
    body: MessagesBody,
    /// The tool whose input is the structured answer (`response_format: json_schema`).
    answer_tool: Option<String>,
}

// ---- response wire types ----

#[derive(Deserialize)]
struct MessageResponse {
    content: Vec<ResponseBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: UsageBody,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        #[serde(default)]
        id: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        input: Value,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    /// `redacted_thinking`, server tools, citations… nothing a client is shown.
    #[serde(other)]
    Other,
}

/// Token counts; every field optional because stream events carry parts of it.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq)]
struct UsageBody {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl UsageBody {
    /// Fields present in `later` replace ours (`message_delta` counts are cumulative).
    fn merge(&mut self, later: &UsageBody) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    /// `thinking_chars`: characters of thinking seen, for an estimate of the reasoning tokens
    /// (Anthropic counts them in `output_tokens` without breaking them out).
    fn to_usage(self, thinking_chars: usize) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let written = self.cache_creation_input_tokens.unwrap_or(0);
        let output = self.output_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: self.input_tokens.unwrap_or(0) + read + written,
            completion_tokens: output,
            cached_tokens: read,
            reasoning_tokens: (thinking_chars.div_ceil(4) as u64).min(output),
            cache_write_tokens: written,
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamBody {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: ResponseBlock,
    },
    ContentBlockDelta {
        index: u32,
        delta: DeltaBody,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<UsageBody>,
    },
    MessageStop,
    Error {
        error: ErrorBody,
    },
    /// `ping` and event types added later.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: UsageBody,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DeltaBody {
    TextDelta {
        #[serde(default)]
        text: String,
    },
    InputJsonDelta {
        #[serde(default)]
        partial_json: String,
    },
    ThinkingDelta {
        #[serde(default)]
        thinking: String,
    },
    /// `signature_delta`, `citations_delta`…
    #[serde(other)]
    Other,
}

#[derive(Deserialize, Default)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

// ---- request translation ----

fn unsupported(message: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorKind::UnsupportedByModel, message)
}

/// Translates the client's request; pure (`http://` image URLs are downloaded later, by
/// [`AnthropicClient::resolve_media`]).
fn translate(call: &UpstreamRequest<'_>, stream: bool) -> Result<Prepared, GatewayError> {
    let r = call.request;
    if r.n.is_some_and(|n| n > 1) {
        return Err(
            unsupported("Anthropic models return one choice per request: `n` must be 1")
                .with_param("n"),
        );
    }
    let (mut system, mut messages) = translate_messages(&r.messages)?;
    let mut tools = translate_tools(r.tools.as_deref());
    let mut tool_choice = translate_tool_choice(
        r.tool_choice.as_ref(),
        r.parallel_tool_calls,
        !tools.is_empty(),
    );
    let answer_tool = apply_response_format(r, &mut tools, &mut tool_choice, &mut system);

    let mut system = (!system.is_empty()).then(|| system.join("\n\n"));
    if messages.is_empty() {
        // OpenAI answers a lone system prompt; Anthropic needs a turn.
        let text = system.take().ok_or_else(|| {
            GatewayError::invalid("`messages` has no user or assistant message")
                .with_param("messages")
        })?;
        messages.push(Turn {
            role: TurnRole::User,
            content: vec![Block::Text { text }],
        });
    }

    // Thinking cannot be combined with forced tool use, nor continue a tool loop whose earlier
    // thinking blocks (and their signatures) the OpenAI format could not carry back.
    let in_tool_loop = messages.last().is_some_and(|turn| {
        turn.role == TurnRole::User
            && turn
                .content
                .iter()
                .any(|b| matches!(b, Block::ToolResult { .. }))
    });
    let forced = tool_choice
        .as_ref()
        .is_some_and(ToolChoiceBody::forces_tool);
    let budget = thinking_budget(call).filter(|_| !forced && !in_tool_loop);
    let explicit = r.max_completion_tokens.or(r.max_tokens);
    let (max_tokens, budget) = plan_tokens(call.model, explicit, budget);
    let thinking = budget.is_some();

    let temperature = if thinking {
        None
    } else {
        r.temperature.map(|t| t.clamp(0.0, 1.0))
    };
    // Recent models refuse both at once; `temperature` is the one clients mean.
    let top_p = r
        .top_p
        .filter(|_| temperature.is_none())
        .filter(|p| !thinking || *p >= THINKING_MIN_TOP_P);
    let stop_sequences = match &r.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    }
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect();

    Ok(Prepared {
        body: MessagesBody {
            model: Some(call.model.to_string()),
            anthropic_version: None,
            max_tokens,
            system,
            messages,
            tools,
            tool_choice,
            thinking: budget.map(|budget_tokens| ThinkingBody {
                kind: "enabled",
                budget_tokens,
            }),
            temperature,
            top_p,
            stop_sequences,
            metadata: r
                .user
                .as_ref()
                .filter(|u| !u.is_empty())
                .map(|user_id| MetadataBody {
                    user_id: user_id.clone(),
                }),
            stream,
        },
        answer_tool,
    })
}

/// System and developer texts, and the conversation as Anthropic turns.
fn translate_messages(messages: &[Message]) -> Result<(Vec<String>, Vec<Turn>), GatewayError> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        match message.role {
            Role::System | Role::Developer => {
                let text = message.text();
                if !text.trim().is_empty() {
                    system.push(text);
                }
            }
            Role::User => push_turn(&mut turns, TurnRole::User, content_blocks(message, i)?),
            Role::Assistant => {
                let mut blocks = content_blocks(message, i)?;
                for (j, call) in message.tool_calls.iter().flatten().enumerate() {
                    let input = parse_arguments(&call.function.arguments).ok_or_else(|| {
                        GatewayError::invalid(format!(
                            "the arguments of tool call `{}` are not a JSON object",
                            call.id
                        ))
                        .with_param(format!("messages[{i}].tool_calls[{j}].function.arguments"))
                    })?;
                    blocks.push(Block::ToolUse {
                        id: call.id.clone(),
                        name: call.function.name.clone(),
                        input,
                    });
                }
                push_turn(&mut turns, TurnRole::Assistant, blocks);
            }
            Role::Tool => {
                let tool_use_id = message
                    .tool_call_id
                    .clone()
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| {
                        GatewayError::invalid(
                            "a `tool` message needs the `tool_call_id` of the call it answers",
                        )
                        .with_param(format!("messages[{i}].tool_call_id"))
                    })?;
                let content = content_blocks(message, i)?;
                let result = Block::ToolResult {
                    tool_use_id,
                    content,
                };
                push_turn(&mut turns, TurnRole::User, vec![result]);
            }
            Role::Function => {
                push_turn(&mut turns, TurnRole::User, text_block(&message.text()));
            }
        }
    }
    for turn in &mut turns {
        if turn.role == TurnRole::User {
            // Anthropic wants the tool results first in their turn (the sort is stable).
            turn.content
                .sort_by_key(|b| !matches!(b, Block::ToolResult { .. }));
        }
    }
    // A final assistant turn is a prefill, which may not end with whitespace.
    if let Some(last) = turns.last_mut().filter(|t| t.role == TurnRole::Assistant) {
        if let Some(Block::Text { text }) = last.content.last_mut() {
            text.truncate(text.trim_end().len());
            if text.is_empty() {
                last.content.pop();
            }
        }
        if last.content.is_empty() {
            turns.pop();
        }
    }
    Ok((system, turns))
}

/// Appends blocks to the last turn when it has the same role (Anthropic wants alternation).
fn push_turn(turns: &mut Vec<Turn>, role: TurnRole, blocks: Vec<Block>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => last.content.extend(blocks),
        _ => turns.push(Turn {
            role,
            content: blocks,
        }),
    }
}

/// Anthropic refuses empty and whitespace-only text blocks.
fn text_block(text: &str) -> Vec<Block> {
    if text.trim().is_empty() {
        Vec::new()
    } else {
        vec![Block::Text {
            text: text.to_string(),
        }]
    }
}

/// The blocks of a message's content (message `i`).
fn content_blocks(message: &Message, i: usize) -> Result<Vec<Block>, GatewayError> {
    let parts = match &message.content {
        None => return Ok(Vec::new()),
        Some(MessageContent::Text(text)) => return Ok(text_block(text)),
        Some(MessageContent::Parts(parts)) => parts,
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let param = || format!("messages[{i}].content[{j}]");
        match part {
            ContentPart::Text { text } | ContentPart::Refusal { refusal: text } => {
                blocks.extend(text_block(text));
            }
            ContentPart::ImageUrl { image_url } => {
                blocks.push(image_block(&image_url.url).map_err(|e| e.with_param(param()))?);
            }
            ContentPart::File { file } => {
                blocks.push(file_block(file).map_err(|e| e.with_param(param()))?);
            }
            ContentPart::InputAudio { .. } => {
                return Err(unsupported(
                    "Anthropic models do not accept audio input (`input_audio` parts): \
                     transcribe it first, or use a model that supports audio",
                )
                .with_param(param()));
            }
        }
    }
    Ok(blocks)
}

/// Tool-call arguments as the `input` object; empty arguments are `{}`.
fn parse_arguments(arguments: &str) -> Option<Value> {
    if arguments.trim().is_empty() {
        return Some(json!({}));
    }
    match serde_json::from_str(arguments) {
        Ok(Value::Object(map)) => Some(Value::Object(map)),
        _ => None,
    }
}

fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

fn is_http(url: &str) -> bool {
    url.get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"))
}

/// An `image_url`: data URIs inline, `http(s)` URLs as a `url` source (`http://` ones are
/// downloaded before sending).
fn image_block(url: &str) -> Result<Block, GatewayError> {
    if url.starts_with("data:") {
        let (mime, data) = media::parse_data_uri(url).ok_or_else(|| {
            GatewayError::invalid("a data URI must look like `data:<mime>;base64,<data>`")
        })?;
        return inline_block(mime, data, None);
    }
    if is_https(url) || is_http(url) {
        return Ok(Block::Image {
            source: Source::Url {
                url: url.to_string(),
            },
        });
    }
    Err(GatewayError::invalid(
        "an image URL must be an `https://` URL or a `data:` URI",
    ))
}

/// A `file` part: a PDF (or plain text) sent inline.
fn file_block(file: &FilePart) -> Result<Block, GatewayError> {
    let title = file.filename.as_deref();
    match (&file.file_data, &file.file_id) {
        (Some(data), _) if data.starts_with("data:") => {
            let (mime, base64) = media::parse_data_uri(data).ok_or_else(|| {
                GatewayError::invalid("a data URI must look like `data:<mime>;base64,<data>`")
            })?;
            inline_block(mime, base64, title)
        }
        // Bare base64: the file name tells the type; OpenAI's file parts are PDFs.
        (Some(data), _) => {
            let mime = title.map_or("application/pdf", media::guess_mime);
            inline_block(mime, data, title)
        }
        (None, Some(_)) => Err(unsupported(
            "OpenAI file ids mean nothing to Anthropic: send the file inline as `file_data` \
             (a `data:application/pdf;base64,…` URI)",
        )),
        (None, None) => Err(GatewayError::invalid("a `file` part needs `file_data`")),
    }
}

/// Inline media by type: images, PDF and plain-text documents.
fn inline_block(mime: &str, base64: &str, title: Option<&str>) -> Result<Block, GatewayError> {
    let mime = mime.trim().to_ascii_lowercase();
    let mime = if mime == "image/jpg" {
        "image/jpeg".to_string()
    } else {
        mime
    };
    if IMAGE_TYPES.contains(&mime.as_str()) {
        return Ok(Block::Image {
            source: Source::Base64 {
                media_type: mime,
                data: base64.trim().to_string(),
            },
        });
    }
    let title = title.map(str::to_string);
    match mime.as_str() {
        "application/pdf" => Ok(Block::Document {
            source: Source::Base64 {
                media_type: mime,
                data: base64.trim().to_string(),
            },
            title,
        }),
        "text/plain" => {
            let decoded = media::decode_data_uri(&format!("data:text/plain;base64,{base64}"))?;
            let text = String::from_utf8(decoded.data.to_vec())
                .map_err(|_| GatewayError::invalid("a text/plain file is not valid UTF-8"))?;
            Ok(Block::Document {
                source: Source::Text {
                    media_type: mime,
                    data: text,
                },
                title,
            })
        }
        _ => Err(unsupported(format!(
            "Anthropic models accept JPEG, PNG, GIF and WebP images and PDF or plain-text \
             documents, not `{mime}`"
        ))),
    }
}

fn translate_tools(tools: Option<&[Tool]>) -> Vec<ToolBody> {
    tools
        .unwrap_or_default()
        .iter()
        .map(|tool| ToolBody {
            name: tool.function.name.clone(),
            description: tool.function.description.clone(),
            input_schema: object_schema(tool.function.parameters.clone()),
        })
        .collect()
}

/// Anthropic requires an object schema with `"type": "object"`.
fn object_schema(schema: Option<Value>) -> Value {
    match schema {
        Some(Value::Object(mut map)) => {
            map.entry("type").or_insert_with(|| json!("object"));
            Value::Object(map)
        }
        _ => json!({"type": "object", "properties": {}}),
    }
}

fn translate_tool_choice(
    choice: Option<&ToolChoice>,
    parallel_tool_calls: Option<bool>,
    has_tools: bool,
) -> Option<ToolChoiceBody> {
    if !has_tools {
        return None;
    }
    let disable = (parallel_tool_calls == Some(false)).then_some(true);
    match choice {
        None => disable.map(|d| ToolChoiceBody::new(ChoiceKind::Auto, None, Some(d))),
        Some(ToolChoice::Mode(ToolChoiceMode::Auto)) => {
            Some(ToolChoiceBody::new(ChoiceKind::Auto, None, disable))
        }
        Some(ToolChoice::Mode(ToolChoiceMode::Required)) => {
            Some(ToolChoiceBody::new(ChoiceKind::Any, None, disable))
        }
        Some(ToolChoice::Mode(ToolChoiceMode::None)) => {
            Some(ToolChoiceBody::new(ChoiceKind::None, None, None))
        }
        Some(ToolChoice::Named(named)) => Some(ToolChoiceBody::new(
            ChoiceKind::Tool,
            Some(named.function.name.clone()),
            disable,
        )),
    }
}

/// Structured outputs, emulated (the Messages API has no `response_format`). Returns the name
/// of the tool whose input is the answer, if one was added.
///
/// * `json_schema` → a tool named after the schema, with the schema as its `input_schema`,
///   and forced: `{"type": "tool"}` when the client has no tools of its own, `{"type": "any"}`
///   when it has (the model then answers or calls one of them), and the client's own named
///   choice is kept. The tool's input comes back as the message *content* (JSON text) with
///   finish reason `stop`, never as a tool call. With `tool_choice: "none"` no tool may be
///   forced: the schema goes into the system prompt instead.
/// * `json_object` → a system instruction to answer with a single JSON object only.
fn apply_response_format(
    request: &ChatRequest,
    tools: &mut Vec<ToolBody>,
    tool_choice: &mut Option<ToolChoiceBody>,
    system: &mut Vec<String>,
) -> Option<String> {
    match request.response_format.as_ref()? {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => {
            system.push(JSON_OBJECT_INSTRUCTION.to_string());
            None
        }
        ResponseFormat::JsonSchema { json_schema } => {
            let schema = object_schema(json_schema.schema.clone());
            if matches!(
                request.tool_choice,
                Some(ToolChoice::Mode(ToolChoiceMode::None))
            ) {
                system.push(format!("{JSON_SCHEMA_INSTRUCTION}\n{schema}"));
                return None;
            }
            let name = answer_tool_name(&json_schema.name, tools);
            let client_tools = !tools.is_empty();
            tools.push(ToolBody {
                name: name.clone(),
                description: Some(
                    json_schema
                        .description
                        .clone()
                        .unwrap_or_else(|| ANSWER_TOOL_DESCRIPTION.to_string()),
                ),
                input_schema: schema,
            });
            match tool_choice {
                Some(choice) if choice.kind == ChoiceKind::Tool => {}
                Some(choice) if client_tools => {
                    choice.kind = ChoiceKind::Any;
                    choice.name = None;
                }
                _ if client_tools => {
                    *tool_choice = Some(ToolChoiceBody::new(ChoiceKind::Any, None, None));
                }
                _ => {
                    *tool_choice = Some(ToolChoiceBody::new(
                        ChoiceKind::Tool,
                        Some(name.clone()),
                        None,
                    ));
                }
            }
            Some(name)
        }
    }
}

/// The schema's name as a valid tool name (`[a-zA-Z0-9_-]{1,64}`), distinct from the
/// client's tools.
fn answer_tool_name(schema_name: &str, tools: &[ToolBody]) -> String {
    let mut name: String = schema_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        name = "json_answer".to_string();
    }
    while tools.iter().any(|t| t.name == name) {
        name.truncate(57);
        name.push_str("_answer");
    }
    name
}

/// The thinking budget asked for: the model suffix's effort, then the request's
/// `reasoning_effort`, then `reasoning: {"effort"|"max_tokens"}` (OpenRouter's form).
/// `minimal` and unknown efforts mean no thinking.
fn thinking_budget(call: &UpstreamRequest<'_>) -> Option<u32> {
    let r = call.request;
    let reasoning = r.reasoning.as_ref();
    let effort = call
        .reasoning_effort
        .or(r.reasoning_effort.as_deref())
        .or_else(|| reasoning?.get("effort")?.as_str());
    match effort {
        Some("low") => Some(1024),
        Some("medium") => Some(4096),
        Some("high") => Some(16384),
        Some(_) => None,
        None => reasoning?.get("max_tokens")?.as_u64().map(|n| {
            u32::try_from(n)
                .unwrap_or(u32::MAX)
                .max(MIN_THINKING_BUDGET)
        }),
    }
}

/// Largest output of the model (by its id), to keep computed `max_tokens` acceptable.
fn output_cap(model: &str) -> u32 {
    let m = model.to_ascii_lowercase();
    if [
        "claude-3-haiku",
        "claude-3-opus",
        "claude-3-sonnet",
        "claude-2",
        "claude-instant",
    ]
    .iter()
    .any(|old| m.contains(old))
    {
        4096
    } else if m.contains("claude-3-5") {
        8192
    } else if ["opus-4-0", "opus-4-1", "opus-4-2025"]
        .iter()
        .any(|opus| m.contains(opus))
    {
        32000
    } else {
        64000
    }
}

/// `max_tokens` and the thinking budget. An explicit limit is kept when it leaves room for
/// thinking (OpenAI's limit includes reasoning); otherwise the budget is added on top of it
/// (or of the default) within the model's cap. Without room for the minimum budget there is
/// no thinking.
fn plan_tokens(model: &str, explicit: Option<u32>, budget: Option<u32>) -> (u32, Option<u32>) {
    let cap = output_cap(model);
    let default = DEFAULT_MAX_TOKENS.min(cap);
    let Some(budget) = budget else {
        return (explicit.unwrap_or(default), None);
    };
    let max = match explicit {
        Some(max) if max > budget => return (max, Some(budget)),
        Some(max) => max.saturating_add(budget),
        None => default.saturating_add(budget),
    }
    .min(cap);
    let budget = if max > budget { budget } else { max / 2 };
    if budget < MIN_THINKING_BUDGET {
        return (explicit.unwrap_or(default), None);
    }
    (max, Some(budget))
}

// ---- answer translation ----

fn finish_reason(stop_reason: Option<&str>) -> FinishReason {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        // end_turn, stop_sequence, pause_turn
        _ => FinishReason::Stop,
    }
}

fn completion_from(response: MessageResponse, answer_tool: Option<&str>) -> Completion {
    let mut text = String::new();
    let mut structured = None;
    let mut tool_calls = Vec::new();
    let mut thinking_chars = 0;
    for block in response.content {
        match block {
            ResponseBlock::Text { text: t } => text.push_str(&t),
            ResponseBlock::ToolUse { name, input, .. } if Some(name.as_str()) == answer_tool => {
                structured = Some(input.to_string());
            }
            ResponseBlock::ToolUse { id, name, input } => tool_calls.push(ToolCallOut {
                id,
                name,
                arguments: input.to_string(),
            }),
            ResponseBlock::Thinking { thinking } => thinking_chars += thinking.chars().count(),
            ResponseBlock::Other => {}
        }
    }
    let mut finish = finish_reason(response.stop_reason.as_deref());
    if finish == FinishReason::ToolCalls && tool_calls.is_empty() {
        finish = FinishReason::Stop;
    }
    let content = match structured {
        Some(json) => Some(json),
        None if text.is_empty() && !tool_calls.is_empty() => None,
        None => Some(text),
    };
    Completion {
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                content,
                tool_calls,
                refusal: None,
            },
            finish_reason: finish,
        }],
        usage: response.usage.to_usage(thinking_chars),
    }
}

/// What a content block of a stream turns into.
#[derive(Debug, Clone, Copy)]
enum BlockState {
    Text,
    /// Tool call number `call`; `args` once a non-empty fragment was sent.
    Tool {
        call: u32,
        args: bool,
    },
    /// The structured answer's tool: its input is content.
    Answer {
        args: bool,
    },
    Thinking,
    Ignored,
}

/// Turns stream events into [`StreamEvent`]s; no event for empty deltas.
#[derive(Debug, Default)]
struct StreamTranslator {
    answer_tool: Option<String>,
    blocks: HashMap<u32, BlockState>,
    calls: u32,
    usage: UsageBody,
    thinking_chars: usize,
    /// `message_stop` arrived.
    stopped: bool,
}

impl StreamTranslator {
    fn new(answer_tool: Option<String>) -> Self {
        StreamTranslator {
            answer_tool,
            ..Self::default()
        }
    }

    /// An `error` event comes back as its body.
    fn push(
        &mut self,
        event: StreamBody,
        out: &mut VecDeque<StreamEvent>,
    ) -> Result<(), ErrorBody> {
        match event {
            StreamBody::MessageStart { message } => self.usage.merge(&message.usage),
            StreamBody::ContentBlockStart {
                index,
                content_block,
            } => {
                let state = match content_block {
                    ResponseBlock::Text { text } => {
                        if !text.is_empty() {
                            out.push_back(StreamEvent::Content { index: 0, text });
                        }
                        BlockState::Text
                    }
                    ResponseBlock::ToolUse { name, input, .. }
                        if self.answer_tool.as_deref() == Some(name.as_str()) =>
                    {
                        let args = has_input(&input);
                        if args {
                            out.push_back(StreamEvent::Content {
                                index: 0,
                                text: input.to_string(),
                            });
                        }
                        BlockState::Answer { args }
                    }
                    ResponseBlock::ToolUse { id, name, input } => {
                        let call = self.calls;
                        self.calls += 1;
                        let args = has_input(&input);
                        out.push_back(StreamEvent::ToolCall {
                            index: 0,
                            call,
                            id: Some(id),
                            name: Some(name),
                            arguments: if args {
                                input.to_string()
                            } else {
                                String::new()
                            },
                        });
                        BlockState::Tool { call, args }
                    }
                    ResponseBlock::Thinking { thinking } => {
                        self.thinking_chars += thinking.chars().count();
                        BlockState::Thinking
                    }
                    ResponseBlock::Other => BlockState::Ignored,
                };
                self.blocks.insert(index, state);
            }
            StreamBody::ContentBlockDelta { index, delta } => {
                match (self.blocks.get_mut(&index), delta) {
                    (Some(BlockState::Text) | None, DeltaBody::TextDelta { text })
                        if !text.is_empty() =>
                    {
                        out.push_back(StreamEvent::Content { index: 0, text });
                    }
                    (
                        Some(BlockState::Tool { call, args }),
                        DeltaBody::InputJsonDelta { partial_json },
                    ) if !partial_json.is_empty() => {
                        *args = true;
                        out.push_back(StreamEvent::ToolCall {
                            index: 0,
                            call: *call,
                            id: None,
                            name: None,
                            arguments: partial_json,
                        });
                    }
                    (
                        Some(BlockState::Answer { args }),
                        DeltaBody::InputJsonDelta { partial_json },
                    ) if !partial_json.is_empty() => {
                        *args = true;
                        out.push_back(StreamEvent::Content {
                            index: 0,
                            text: partial_json,
                        });
                    }
                    (_, DeltaBody::ThinkingDelta { thinking }) => {
                        self.thinking_chars += thinking.chars().count();
                    }
                    // Empty deltas, signatures, citations: nothing to show.
                    _ => {}
                }
            }
            StreamBody::ContentBlockStop { index } => match self.blocks.get(&index) {
                // A tool without parameters streams no input: its arguments are `{}`.
                Some(BlockState::Tool { call, args: false }) => {
                    out.push_back(StreamEvent::ToolCall {
                        index: 0,
                        call: *call,
                        id: None,
                        name: None,
                        arguments: "{}".to_string(),
                    });
                }
                Some(BlockState::Answer { args: false }) => {
                    out.push_back(StreamEvent::Content {
                        index: 0,
                        text: "{}".to_string(),
                    });
                }
                _ => {}
            },
            StreamBody::MessageDelta { delta, usage } => {
                if let Some(usage) = usage {
                    self.usage.merge(&usage);
                }
                if let Some(reason) = delta.stop_reason {
                    let mut reason = finish_reason(Some(&reason));
                    if reason == FinishReason::ToolCalls && self.calls == 0 {
                        // Only the structured answer's tool was called.
                        reason = FinishReason::Stop;
                    }
                    out.push_back(StreamEvent::Finish { index: 0, reason });
                    out.push_back(StreamEvent::Usage(self.usage.to_usage(self.thinking_chars)));
                }
            }
            StreamBody::MessageStop => self.stopped = true,
            StreamBody::Error { error } => return Err(error),
            StreamBody::Other => {}
        }
        Ok(())
    }
}

/// Whether a `content_block_start` already carries tool input (Anthropic sends `{}`).
fn has_input(input: &Value) -> bool {
    match input {
        Value::Object(map) => !map.is_empty(),
        Value::Null => false,
        _ => true,
    }
}

// ---- errors ----

/// Messages Anthropic sends (as `invalid_request_error`) when the prompt does not fit.
fn is_context_overflow(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "prompt is too long",
        "exceed context limit",
        "exceeds the context window",
        "context window exceeded",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

/// The error kind of an Anthropic error: its `type` first (the most precise), then its
/// HTTP status.
fn error_kind(status: Option<u16>, error_type: Option<&str>, message: &str) -> ErrorKind {
    let by_type = match error_type {
        Some("overloaded_error") => Some(ErrorKind::Overloaded),
        Some("rate_limit_error") => Some(ErrorKind::RateLimited),
        Some("request_too_large") => Some(ErrorKind::ContextTooLong),
        Some("authentication_error" | "permission_error") => Some(ErrorKind::UpstreamAuth),
        Some("api_error") => Some(ErrorKind::UpstreamServer),
        Some("timeout_error") => Some(ErrorKind::Timeout),
        Some("invalid_request_error" | "not_found_error") => Some(ErrorKind::UpstreamBadRequest),
        _ => None,
    };
    let kind = by_type
        .or(status.map(kind_for_status))
        .unwrap_or(ErrorKind::UpstreamServer);
    if kind == ErrorKind::UpstreamBadRequest && is_context_overflow(message) {
        ErrorKind::ContextTooLong
    } else {
        kind
    }
}

// ---- the client ----

impl AnthropicClient {
    /// Anthropic's Messages API with an API key.
    pub fn new(ctx: AdapterContext, settings: AnthropicSettings) -> Result<Self, String> {
        let base = settings.base_url.trim_end_matches('/');
        let url = if base.ends_with("/v1") {
            format!("{base}/messages")
        } else {
            format!("{base}/v1/messages")
        };
        Ok(AnthropicClient {
            http: http::client(&ctx.name, &ctx.timeouts)?,
            endpoint: Endpoint::Anthropic { url, settings },
            ctx,
        })
    }

    /// Claude on Vertex AI, with OAuth tokens from the provider's token source (the one its
    /// Gemini models use too).
    pub fn vertex(
        ctx: AdapterContext,
        settings: VertexSettings,
        tokens: Arc<TokenSource>,
    ) -> Result<Self, String> {
        Ok(AnthropicClient {
            http: http::client(&ctx.name, &ctx.timeouts)?,
            endpoint: Endpoint::Vertex {
                base: versioned_base(&settings.base_url, "v1"),
                project: settings.project,
                region: settings.region,
                tokens,
            },
            ctx,
        })
    }

    /// The URL of one call to `model`.
    fn url(&self, model: &str, stream: bool) -> String {
        match &self.endpoint {
            Endpoint::Anthropic { url, .. } => url.clone(),
            Endpoint::Vertex {
                base,
                project,
                region,
                ..
            } => format!(
                "{base}/projects/{}/locations/{}/publishers/anthropic/models/{}:{}",
                encode_segment(project),
                encode_segment(region),
                encode_segment(model),
                if stream {
                    "streamRawPredict"
                } else {
                    "rawPredict"
                }
            ),
        }
    }

    /// The body as this endpoint wants it: on Vertex AI the URL names the model and the API
    /// version goes in the body.
    fn adapt_body(&self, body: &mut MessagesBody) {
        if let Endpoint::Vertex { .. } = self.endpoint {
            body.model = None;
            body.anthropic_version = Some(VERTEX_ANTHROPIC_VERSION);
        }
    }

    /// The secret of one call, never to be shown: the API key, or the OAuth token.
    fn secret<'a>(&'a self, token: Option<&'a str>) -> &'a str {
        match &self.endpoint {
            Endpoint::Anthropic { settings, .. } => settings.api_key.as_deref().unwrap_or(""),
            Endpoint::Vertex { .. } => token.unwrap_or(""),
        }
    }

    fn transport_error(&self, error: http::Error, token: Option<&str>) -> GatewayError {
        http::transport_error(&self.ctx.name, error, &[self.secret(token)])
    }

    fn malformed(&self, what: impl std::fmt::Display) -> GatewayError {
        GatewayError::new(
            ErrorKind::UpstreamMalformed,
            format!("provider `{}` sent {what}", self.ctx.name),
        )
        .with_upstream_status(200)
    }

    /// The translated request, with `http://` images downloaded.
    async fn prepare(
        &self,
        call: &UpstreamRequest<'_>,
        stream: bool,
    ) -> Result<Prepared, GatewayError> {
        let mut prepared = translate(call, stream).map_err(|mut e| {
            e.message = format!("provider `{}`: {}", self.ctx.name, e.message);
            e
        })?;
        self.adapt_body(&mut prepared.body);
        self.resolve_media(&mut prepared.body).await?;
        Ok(prepared)
    }

    /// Anthropic fetches `https://` images itself; plain `http://` ones are downloaded here,
    /// under the media guard, and sent inline.
    async fn resolve_media(&self, body: &mut MessagesBody) -> Result<(), GatewayError> {
        let mut blocks: Vec<&mut Block> = Vec::new();
        for turn in &mut body.messages {
            for block in &mut turn.content {
                match block {
                    Block::ToolResult { content, .. } => blocks.extend(content.iter_mut()),
                    other => blocks.push(other),
                }
            }
        }
        for block in blocks {
            let url = match block {
                Block::Image {
                    source: Source::Url { url },
                } if !is_https(url) => url.clone(),
                _ => continue,
            };
            let media = self.ctx.media.load(&url).await?;
            *block = inline_block(&media.mime, &media.base64(), None)?;
        }
        Ok(())
    }

    /// Sends `body` for `model`; the response and, on Vertex AI, the token it was sent with.
    async fn send(
        &self,
        model: &str,
        body: &MessagesBody,
    ) -> Result<(http::Response, Option<Arc<str>>), GatewayError> {
        let mut request = self.http.post(self.url(model, body.stream)).json(body);
        let token = match &self.endpoint {
            Endpoint::Anthropic { settings, .. } => {
                request = request.header("anthropic-version", &settings.version);
                if let Some(key) = &settings.api_key {
                    request = request.header("x-api-key", key);
                }
                for (name, value) in &settings.headers {
                    request = request.header(name, value);
                }
                None
            }
            Endpoint::Vertex { tokens, .. } => {
                let token = tokens.token().await?;
                request = request.bearer_auth(&*token);
                Some(token)
            }
        };
        let timeouts = &self.ctx.timeouts;
        let limit = timeouts.first_byte().min(timeouts.total());
        let response = timeout(limit, request.send())
            .await
            .map_err(|_| http::timeout_error(&self.ctx.name, "with headers", limit))?
            .map_err(|e| self.transport_error(e, token.as_deref()))?;
        if response.status().is_success() {
            return Ok((response, token));
        }
        Err(self.status_error(response, token.as_deref()).await)
    }

    async fn status_error(&self, response: http::Response, token: Option<&str>) -> GatewayError {
        let status = response.status().as_u16();
        let retry_after = http::retry_after(response.headers());
        let (error_type, text) = match timeout(Duration::from_secs(5), response.bytes()).await {
            Ok(Ok(bytes)) => {
                let cut = &bytes[..bytes.len().min(MAX_ERROR_BODY)];
                // Anthropic's `{"error": {"type", "message"}}`; Vertex AI's own errors are
                // `{"error": {"code", "message", "status"}}` and parse too (no type).
                match serde_json::from_slice::<ErrorEnvelope>(cut) {
                    Ok(envelope) => (
                        envelope.error.kind,
                        envelope.error.message.unwrap_or_default(),
                    ),
                    Err(_) => (
                        None,
                        String::from_utf8_lossy(cut).chars().take(500).collect(),
                    ),
                }
            }
            _ => (None, String::new()),
        };
        let kind = error_kind(Some(status), error_type.as_deref(), &text);
        let secrets = [self.secret(token)];
        let message = if kind == ErrorKind::UpstreamAuth {
            // A rejected token is dropped: the next call fetches another.
            if let (Endpoint::Vertex { tokens, .. }, Some(token)) = (&self.endpoint, token) {
                tokens.invalidate(token);
            }
            // Auth messages may quote the key: never pass them on.
            format!(
                "provider `{}` rejected its credentials ({status})",
                self.ctx.name
            )
        } else {
            let label = error_type.map(|t| format!(" {t}")).unwrap_or_default();
            format!(
                "provider `{}` answered {status}{}: {}",
                self.ctx.name,
                http::scrub(&label, &secrets),
                http::scrub(&text, &secrets)
            )
        };
        GatewayError::new(kind, message)
            .with_retry_after(retry_after)
            .with_upstream_status(status)
    }

    pub async fn complete(&self, call: UpstreamRequest<'_>) -> Result<Completion, GatewayError> {
        let started = Instant::now();
        let prepared = self.prepare(&call, false).await?;
        let (response, token) = self.send(call.model, &prepared.body).await?;
        let total = self.ctx.timeouts.total();
        let remaining = total.saturating_sub(started.elapsed());
        let bytes = timeout(remaining, response.bytes())
            .await
            .map_err(|_| http::timeout_error(&self.ctx.name, "its whole body", total))?
            .map_err(|e| self.transport_error(e, token.as_deref()))?;
        match serde_json::from_slice::<MessageResponse>(&bytes) {
            Ok(parsed) => Ok(completion_from(parsed, prepared.answer_tool.as_deref())),
            Err(e) => match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
                Ok(envelope) => Err(error_event(
                    &self.ctx.name,
                    &[self.secret(token.as_deref())],
                    envelope.error,
                    "instead of a message",
                )
                .with_upstream_status(200)),
                Err(_) => Err(self.malformed(format_args!("a malformed response: {e}"))),
            },
        }
    }

    pub async fn stream(&self, call: UpstreamRequest<'_>) -> Result<EventStream, GatewayError> {
        let started = Instant::now();
        let prepared = self.prepare(&call, true).await?;
        let (response, token) = self.send(call.model, &prepared.body).await?;
        let is_json = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if is_json {
            return Err(self.malformed("JSON instead of an event stream"));
        }
        let state = StreamState {
            name: self.ctx.name.clone(),
            secret: self.secret(token.as_deref()).to_string(),
            body: response.bytes_stream().boxed(),
            decoder: SseDecoder::new(),
            translator: StreamTranslator::new(prepared.answer_tool),
            pending: VecDeque::new(),
            error: None,
            finished: false,
            idle: self.ctx.timeouts.idle(),
            deadline: started + self.ctx.timeouts.total(),
        };
        Ok(futures::stream::unfold(state, next_event).boxed())
    }
}

/// An `error` object sent with a 200 (in the body or mid-stream).
fn error_event(name: &str, secrets: &[&str], error: ErrorBody, during: &str) -> GatewayError {
    let message = error.message.unwrap_or_default();
    let kind = error_kind(None, error.kind.as_deref(), &message);
    let message = if kind == ErrorKind::UpstreamAuth {
        format!("provider `{name}` rejected its credentials")
    } else {
        format!(
            "provider `{name}` sent an error {during}: {}: {}",
            http::scrub(error.kind.as_deref().unwrap_or("error"), secrets),
            http::scrub(&message, secrets)
        )
    };
    GatewayError::new(kind, message)
}

struct StreamState {
    name: String,
    /// The API key or OAuth token, scrubbed from error messages.
    secret: String,
    body: http::Body,
    decoder: SseDecoder,
    translator: StreamTranslator,
    pending: VecDeque<StreamEvent>,
    /// Returned once the events decoded before it are out.
    error: Option<GatewayError>,
    /// Nothing more to read.
    finished: bool,
    idle: Duration,
    deadline: Instant,
}

impl StreamState {
    fn fail(&mut self, kind: ErrorKind, message: String) {
        self.finished = true;
        self.error = Some(GatewayError::new(kind, message));
    }
}

async fn next_event(
    mut s: StreamState,
) -> Option<(Result<StreamEvent, GatewayError>, StreamState)> {
    loop {
        if let Some(event) = s.pending.pop_front() {
            return Some((Ok(event), s));
        }
        if let Some(error) = s.error.take() {
            s.finished = true;
            return Some((Err(error), s));
        }
        if s.finished {
            return None;
        }
        match http::read_body(&s.name, &mut s.body, s.idle, s.deadline).await {
            BodyRead::Failed(error) => {
                s.finished = true;
                s.error = Some(error);
            }
            BodyRead::End => {
                s.finished = true;
                if !s.translator.stopped {
                    let message = format!("provider `{}` stream ended before message_stop", s.name);
                    s.fail(ErrorKind::UpstreamConnection, message);
                }
            }
            BodyRead::Bytes(bytes) => {
                let events = match s.decoder.push(&bytes) {
                    Ok(events) => events,
                    Err(e) => {
                        let message = format!("provider `{}` {e}", s.name);
                        s.fail(ErrorKind::UpstreamMalformed, message);
                        continue;
                    }
                };
                for event in events {
                    if event.data.trim().is_empty() {
                        continue;
                    }
                    let parsed = match serde_json::from_str::<StreamBody>(&event.data) {
                        Ok(parsed) => parsed,
                        Err(e) => {
                            let message =
                                format!("provider `{}` sent a malformed event: {e}", s.name);
                            s.fail(ErrorKind::UpstreamMalformed, message);
                            break;
                        }
                    };
                    if let Err(error) = s.translator.push(parsed, &mut s.pending) {
                        s.finished = true;
                        s.error = Some(error_event(&s.name, &[&s.secret], error, "mid-stream"));
                        break;
                    }
                    if s.translator.stopped {
                        s.finished = true;
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::VertexCredentials;
    use crate::wire::ChatRequest;
    use serde_json::json;

    fn request(value: Value) -> ChatRequest {
        serde_json::from_value(value).unwrap()
    }

    fn body_json(value: Value) -> Value {
        body_for(value, "claude-sonnet-4-5", None)
    }

    fn body_for(value: Value, model: &str, effort: Option<&str>) -> Value {
        let request = request(value);
        let call = UpstreamRequest {
            request: &request,
            model,
            reasoning_effort: effort,
        };
        serde_json::to_value(translate(&call, false).unwrap().body).unwrap()
    }

    fn translate_err(value: Value) -> GatewayError {
        let request = request(value);
        let call = UpstreamRequest {
            request: &request,
            model: "claude-sonnet-4-5",
            reasoning_effort: None,
        };
        translate(&call, false).unwrap_err()
    }

    #[test]
    fn request_translation_merges_turns_and_maps_every_field() {
        let body = body_json(json!({
            "model": "agent/claude",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Look:"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}}
                ]},
                {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
                {"role": "user", "content": "and this"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "time", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "noon"}]},
                {"role": "user", "content": "  "},
                {"role": "user", "content": "Thanks!"}
            ],
            "tools": [
                {"type": "function", "function": {"name": "weather", "description": "Weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "time", "parameters": {}}}
            ],
            "tool_choice": "auto",
            "parallel_tool_calls": false,
            "temperature": 1.7,
            "top_p": 0.5,
            "stop": "END",
            "user": "user-42",
            "seed": 7,
            "presence_penalty": 0.5,
            "max_tokens": 300
        }));
        assert_eq!(
            body,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 300,
                "system": "Be brief.\n\nUse tools.",
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "Look:"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}, "title": "a.pdf"},
                        {"type": "text", "text": "and this"}
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                        {"type": "tool_use", "id": "toolu_2", "name": "time", "input": {}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "noon"}]},
                        {"type": "text", "text": "Thanks!"}
                    ]}
                ],
                "tools": [
                    {"name": "weather", "description": "Weather",
                        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                    {"name": "time", "input_schema": {"type": "object"}}
                ],
                "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
                "temperature": 1.0,
                "stop_sequences": ["END"],
                "metadata": {"user_id": "user-42"}
            })
        );
    }

    #[test]
    fn tool_results_go_first_and_final_assistant_prefill_is_trimmed() {
        let body = body_json(json!({
            "model": "m",
            "max_completion_tokens": 50,
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [{"id": "t1", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "user", "content": "also"},
                {"role": "tool", "tool_call_id": "t1", "content": "r"},
                {"role": "assistant", "content": "The answer is "}
            ],
            "tool_choice": "required",
            "stream": true
        }));
        assert_eq!(body["max_tokens"], 50);
        assert_eq!(
            body["messages"][2]["content"],
            json!([
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "r"}]},
                {"type": "text", "text": "also"}
            ])
        );
        assert_eq!(
            body["messages"][3],
            json!({"role": "assistant", "content": [{"type": "text", "text": "The answer is"}]})
        );
        // No tools: no tool_choice.
        assert!(body.get("tool_choice").is_none());
        assert!(body.get("tools").is_none());
        assert_eq!(body["max_tokens"], 50);
    }

    #[test]
    fn tool_choice_variants() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let choice = |tool_choice: Value, parallel: Option<bool>| {
            let mut r = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                "tools": tools, "tool_choice": tool_choice});
            if let Some(p) = parallel {
                r["parallel_tool_calls"] = json!(p);
            }
            body_json(r)["tool_choice"].clone()
        };
        assert_eq!(choice(json!("auto"), None), json!({"type": "auto"}));
        assert_eq!(choice(json!("required"), None), json!({"type": "any"}));
        assert_eq!(
            choice(json!("required"), Some(false)),
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(choice(json!("none"), Some(false)), json!({"type": "none"}));
        assert_eq!(
            choice(json!({"type": "function", "function": {"name": "f"}}), None),
            json!({"type": "tool", "name": "f"})
        );
        assert_eq!(choice(Value::Null, Some(true)), Value::Null);
        // The tool without parameters gets an empty object schema.
        let body = body_json(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools}),
        );
        assert_eq!(
            body["tools"][0],
            json!({"name": "f", "input_schema": {"type": "object", "properties": {}}})
        );
    }

    #[test]
    fn response_format_json_schema_becomes_a_forced_answer_tool() {
        let schema = json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]});
        let base = json!({
            "model": "m",
            "messages": [{"role": "user", "content": "Alice"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "Person info", "schema": schema, "strict": true}}
        });
        let request_value = base.clone();
        let r = request(request_value);
        let call = UpstreamRequest {
            request: &r,
            model: "claude-sonnet-4-5",
            reasoning_effort: None,
        };
        let prepared = translate(&call, false).unwrap();
        assert_eq!(prepared.answer_tool.as_deref(), Some("Person_info"));
        let body = serde_json::to_value(prepared.body).unwrap();
        assert_eq!(
            body["tools"],
            json!([{"name": "Person_info", "description": ANSWER_TOOL_DESCRIPTION, "input_schema": schema}])
        );
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": "Person_info"})
        );

        // With the client's own tools: the model must answer or call one of them.
        let mut with_tools = base.clone();
        with_tools["tools"] = json!([{"type": "function", "function": {"name": "Person_info"}}]);
        with_tools["tool_choice"] = json!("auto");
        let body = body_json(with_tools);
        assert_eq!(body["tools"][1]["name"], "Person_info_answer");
        assert_eq!(body["tool_choice"], json!({"type": "any"}));

        // tool_choice none: the schema goes into the system prompt.
        let mut none = base.clone();
        none["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
        none["tool_choice"] = json!("none");
        let body = body_json(none);
        assert_eq!(body["tools"].as_array().unwrap().len(), 1);
        assert_eq!(body["tool_choice"], json!({"type": "none"}));
        let system = body["system"].as_str().unwrap();
        assert!(system.starts_with(JSON_SCHEMA_INSTRUCTION), "{system}");
        assert!(system.contains("\"required\":[\"name\"]"), "{system}");

        // json_object: an instruction.
        let body = body_json(json!({"model": "m", "messages": [
            {"role": "system", "content": "Extract."}, {"role": "user", "content": "x"}],
            "response_format": {"type": "json_object"}}));
        assert_eq!(
            body["system"],
            format!("Extract.\n\n{JSON_OBJECT_INSTRUCTION}")
        );
        assert!(body.get("tools").is_none());
    }

    #[test]
    fn reasoning_effort_becomes_a_thinking_budget() {
        let r = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0.2, "top_p": 0.5});
        let body = body_for(r.clone(), "claude-sonnet-4-5", Some("medium"));
        assert_eq!(
            body["thinking"],
            json!({"type": "enabled", "budget_tokens": 4096})
        );
        assert_eq!(body["max_tokens"], 8192 + 4096);
        assert!(body.get("temperature").is_none() && body.get("top_p").is_none());

        // The request's own field, an explicit limit that leaves room, one that does not.
        let mut high = r.clone();
        high["reasoning_effort"] = json!("high");
        high["max_tokens"] = json!(20000);
        high["temperature"] = Value::Null;
        high["top_p"] = json!(0.97);
        let body = body_for(high, "claude-sonnet-4-5", None);
        assert_eq!(body["thinking"]["budget_tokens"], 16384);
        assert_eq!(body["max_tokens"], 20000);
        assert_eq!(body["top_p"], 0.97);
        let mut small = r.clone();
        small["max_tokens"] = json!(100);
        let body = body_for(small, "claude-sonnet-4-5", Some("low"));
        assert_eq!(body["thinking"]["budget_tokens"], 1024);
        assert_eq!(body["max_tokens"], 1124);
        // The model suffix wins over the field; minimal means no thinking.
        let mut field = r.clone();
        field["reasoning_effort"] = json!("high");
        let body = body_for(field, "claude-sonnet-4-5", Some("minimal"));
        assert!(body.get("thinking").is_none());
        assert_eq!(body["temperature"], 0.2);
        assert!(
            body.get("top_p").is_none(),
            "not both temperature and top_p"
        );
        // OpenRouter's `reasoning` object.
        let mut openrouter = r.clone();
        openrouter["reasoning"] = json!({"max_tokens": 2000});
        let body = body_for(openrouter, "claude-opus-4-1-20250805", None);
        assert_eq!(body["thinking"]["budget_tokens"], 2000);

        // Forced tool use and a tool loop cannot think.
        let mut forced = r.clone();
        forced["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
        forced["tool_choice"] = json!("required");
        assert!(body_for(forced, "claude-sonnet-4-5", Some("high"))
            .get("thinking")
            .is_none());
        let looped = json!({"model": "m", "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "t", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "t", "content": "ok"}]});
        assert!(body_for(looped, "claude-sonnet-4-5", Some("high"))
            .get("thinking")
            .is_none());
    }

    #[test]
    fn max_tokens_defaults_respect_the_model() {
        let r = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        assert_eq!(
            body_for(r.clone(), "claude-sonnet-4-5", None)["max_tokens"],
            8192
        );
        assert_eq!(
            body_for(r.clone(), "claude-3-haiku-20240307", None)["max_tokens"],
            4096
        );
        assert_eq!(
            body_for(r.clone(), "claude-3-5-haiku-latest", None)["max_tokens"],
            8192
        );
        assert_eq!(
            plan_tokens("claude-opus-4-20250514", None, Some(30000)),
            (32000, Some(30000))
        );
        assert_eq!(
            plan_tokens("claude-3-5-sonnet", None, Some(16384)),
            (8192, Some(4096))
        );
        assert_eq!(
            plan_tokens("claude-3-haiku", Some(1500), Some(1024)),
            (1500, Some(1024))
        );
        assert_eq!(
            plan_tokens("claude-3-haiku", Some(900), Some(16384)),
            (4096, Some(2048))
        );
    }

    #[test]
    fn unsupported_and_invalid_inputs_are_refused() {
        let with_part = |part: Value| {
            translate_err(json!({"model": "m", "messages": [{"role": "user", "content": [part]}]}))
        };
        let e = with_part(
            json!({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}),
        );
        assert_eq!(e.kind, ErrorKind::UnsupportedByModel);
        assert_eq!(e.status_code(), 400);
        assert!(e.message.contains("audio"), "{}", e.message);
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
        let e = with_part(json!({"type": "file", "file": {"file_id": "file-abc"}}));
        assert_eq!(e.kind, ErrorKind::UnsupportedByModel);
        let e = with_part(
            json!({"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}),
        );
        assert_eq!(e.kind, ErrorKind::UnsupportedByModel);
        assert!(e.message.contains("image/bmp"));
        let e = with_part(json!({"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}));
        assert_eq!(e.kind, ErrorKind::InvalidRequest);

        let e = translate_err(
            json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}),
        );
        assert_eq!(e.kind, ErrorKind::UnsupportedByModel);
        assert_eq!(e.param.as_deref(), Some("n"));
        let e = translate_err(json!({"model": "m", "messages": [
            {"role": "assistant", "tool_calls": [{"id": "t", "function": {"name": "f", "arguments": "[1"}}]}]}));
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        assert_eq!(
            e.param.as_deref(),
            Some("messages[0].tool_calls[0].function.arguments")
        );
        let e =
            translate_err(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}));
        assert_eq!(e.param.as_deref(), Some("messages[0].tool_call_id"));
        let e = translate_err(json!({"model": "m", "messages": []}));
        assert_eq!(e.kind, ErrorKind::InvalidRequest);

        // A lone system prompt becomes the user turn; a text file becomes a text document.
        let body = body_json(json!({"model": "m", "messages": [
            {"role": "system", "content": "Say hi"},
            {"role": "user", "content": [{"type": "file", "file": {"filename": "n.txt",
                "file_data": "data:text/plain;base64,aGVsbG8="}}]}]}));
        assert_eq!(
            body["messages"][0]["content"][0],
            json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hello"}, "title": "n.txt"})
        );
        let body =
            body_json(json!({"model": "m", "messages": [{"role": "system", "content": "Say hi"}]}));
        assert!(body.get("system").is_none());
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}])
        );
    }

    fn response(value: Value) -> MessageResponse {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn response_maps_text_tool_calls_thinking_and_cache_usage() {
        let c = completion_from(
            response(json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
                "content": [
                    {"type": "thinking", "thinking": "abcdefgh", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "xyz"},
                    {"type": "text", "text": "Let me check. "},
                    {"type": "text", "text": "One moment."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 20, "cache_creation_input_tokens": 30,
                    "cache_read_input_tokens": 40, "service_tier": "standard"}
            })),
            None,
        );
        let choice = &c.choices[0];
        assert_eq!(choice.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            choice.message.content.as_deref(),
            Some("Let me check. One moment.")
        );
        assert_eq!(
            choice.message.tool_calls,
            vec![ToolCallOut {
                id: "toolu_1".into(),
                name: "weather".into(),
                arguments: r#"{"city":"Paris"}"#.into()
            }]
        );
        assert_eq!(
            c.usage,
            Usage {
                prompt_tokens: 80,
                completion_tokens: 20,
                cached_tokens: 40,
                cache_write_tokens: 30,
                reasoning_tokens: 2,
            }
        );

        // Tool calls alone: no content. Null cache fields are zero.
        let c = completion_from(
            response(
                json!({"content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": null}}),
            ),
            None,
        );
        assert_eq!(c.choices[0].message.content, None);
        assert_eq!(c.choices[0].message.tool_calls[0].arguments, "{}");
        assert_eq!(c.usage.prompt_tokens, 3);

        // The structured answer's tool is content, with finish reason stop.
        let c = completion_from(
            response(
                json!({"content": [{"type": "tool_use", "id": "t", "name": "Person", "input": {"name": "Alice"}}],
                "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}}),
            ),
            Some("Person"),
        );
        assert_eq!(
            c.choices[0].message.content.as_deref(),
            Some(r#"{"name":"Alice"}"#)
        );
        assert!(c.choices[0].message.tool_calls.is_empty());
        assert_eq!(c.choices[0].finish_reason, FinishReason::Stop);

        for (reason, expected) in [
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::Stop),
            ("pause_turn", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("model_context_window_exceeded", FinishReason::Length),
            ("refusal", FinishReason::ContentFilter),
        ] {
            let c = completion_from(
                response(
                    json!({"content": [{"type": "text", "text": "x"}], "stop_reason": reason}),
                ),
                None,
            );
            assert_eq!(c.choices[0].finish_reason, expected, "{reason}");
        }
        assert!(serde_json::from_value::<MessageResponse>(json!({"id": "x"})).is_err());
    }

    fn translate_stream(
        events: &[Value],
        answer_tool: Option<&str>,
    ) -> Result<Vec<StreamEvent>, ErrorBody> {
        let mut translator = StreamTranslator::new(answer_tool.map(str::to_string));
        let mut out = VecDeque::new();
        for event in events {
            let parsed: StreamBody = serde_json::from_value(event.clone()).unwrap();
            translator.push(parsed, &mut out)?;
        }
        Ok(out.into())
    }

    fn start(input: u64, read: u64, write: u64) -> Value {
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
            "content": [], "model": "claude", "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input, "cache_creation_input_tokens": write,
                "cache_read_input_tokens": read, "output_tokens": 1}}})
    }

    #[test]
    fn stream_events_become_text_tool_calls_finish_and_usage() {
        let events = translate_stream(
            &[
                start(10, 5, 2),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
                json!({"type": "ping"}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm, let me see"}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "abc"}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": ""}}),
                json!({"type": "content_block_stop", "index": 1}),
                json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_a", "name": "weather", "input": {}}}),
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
                json!({"type": "content_block_stop", "index": 2}),
                json!({"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "toolu_b", "name": "now", "input": {}}}),
                json!({"type": "content_block_stop", "index": 3}),
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 42}}),
                json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {}}),
            ],
            None,
        )
        .unwrap();
        let call = |call: u32, id: Option<&str>, name: Option<&str>, arguments: &str| {
            StreamEvent::ToolCall {
                index: 0,
                call,
                id: id.map(String::from),
                name: name.map(String::from),
                arguments: arguments.to_string(),
            }
        };
        assert_eq!(
            events,
            vec![
                StreamEvent::Content {
                    index: 0,
                    text: "Hi".into()
                },
                call(0, Some("toolu_a"), Some("weather"), ""),
                call(0, None, None, "{\"city\":"),
                call(0, None, None, "\"Paris\"}"),
                call(1, Some("toolu_b"), Some("now"), ""),
                call(1, None, None, "{}"),
                StreamEvent::Finish {
                    index: 0,
                    reason: FinishReason::ToolCalls
                },
                StreamEvent::Usage(Usage {
                    prompt_tokens: 17,
                    completion_tokens: 42,
                    cached_tokens: 5,
                    cache_write_tokens: 2,
                    reasoning_tokens: 4,
                }),
            ]
        );
    }

    #[test]
    fn streamed_structured_answer_is_content_and_errors_surface() {
        let events = translate_stream(
            &[
                start(3, 0, 0),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "Person", "input": {}}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"name\""}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ":\"A\"}"}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5, "input_tokens": 4}}),
                json!({"type": "message_stop"}),
            ],
            Some("Person"),
        )
        .unwrap();
        assert_eq!(
            events,
            vec![
                StreamEvent::Content {
                    index: 0,
                    text: "{\"name\"".into()
                },
                StreamEvent::Content {
                    index: 0,
                    text: ":\"A\"}".into()
                },
                StreamEvent::Finish {
                    index: 0,
                    reason: FinishReason::Stop
                },
                StreamEvent::Usage(Usage {
                    prompt_tokens: 4,
                    completion_tokens: 5,
                    ..Usage::default()
                }),
            ]
        );

        let error = translate_stream(
            &[
                start(3, 0, 0),
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ],
            None,
        )
        .unwrap_err();
        assert_eq!(error.kind.as_deref(), Some("overloaded_error"));
        let e = error_event("claude", &["sk-ant-secret"], error, "mid-stream");
        assert_eq!(e.kind, ErrorKind::Overloaded);
        assert_eq!(e.status_code(), 503);
    }

    #[test]
    fn errors_map_by_type_then_status() {
        for (status, error_type, message, expected) in [
            (
                Some(529),
                Some("overloaded_error"),
                "Overloaded",
                ErrorKind::Overloaded,
            ),
            (
                Some(500),
                Some("overloaded_error"),
                "Overloaded",
                ErrorKind::Overloaded,
            ),
            (Some(529), None, "", ErrorKind::Overloaded),
            (
                Some(429),
                Some("rate_limit_error"),
                "slow down",
                ErrorKind::RateLimited,
            ),
            (
                Some(413),
                Some("request_too_large"),
                "too big",
                ErrorKind::ContextTooLong,
            ),
            (Some(413), None, "<html>", ErrorKind::ContextTooLong),
            (
                Some(400),
                Some("invalid_request_error"),
                "prompt is too long: 210000 tokens > 200000 maximum",
                ErrorKind::ContextTooLong,
            ),
            (
                Some(400),
                Some("invalid_request_error"),
                "input length and `max_tokens` exceed context limit: 1 + 2 > 3",
                ErrorKind::ContextTooLong,
            ),
            (
                Some(400),
                Some("invalid_request_error"),
                "messages: field required",
                ErrorKind::UpstreamBadRequest,
            ),
            (
                Some(404),
                Some("not_found_error"),
                "model: x",
                ErrorKind::UpstreamBadRequest,
            ),
            (
                Some(401),
                Some("authentication_error"),
                "invalid x-api-key",
                ErrorKind::UpstreamAuth,
            ),
            (
                Some(403),
                Some("permission_error"),
                "no",
                ErrorKind::UpstreamAuth,
            ),
            (
                Some(500),
                Some("api_error"),
                "Internal",
                ErrorKind::UpstreamServer,
            ),
            (Some(502), None, "bad gateway", ErrorKind::UpstreamServer),
            (None, Some("something_new"), "?", ErrorKind::UpstreamServer),
        ] {
            assert_eq!(
                error_kind(status, error_type, message),
                expected,
                "{status:?} {error_type:?}"
            );
        }
    }

    fn client_for(base_url: String) -> AnthropicClient {
        AnthropicClient::new(
            AdapterContext {
                name: "claude".into(),
                timeouts: super::super::Timeouts {
                    idle_seconds: 2.0,
                    ..Default::default()
                },
                media: media::MediaFetcher::new(media::MediaSettings::default()),
            },
            AnthropicSettings {
                base_url,
                api_key: Some("sk-ant-test-secret".into()),
                version: "2023-06-01".into(),
                headers: [("anthropic-beta".to_string(), "x-1".to_string())].into(),
            },
        )
        .unwrap()
    }

    fn vertex_client(base_url: &str, region: &str) -> AnthropicClient {
        let ctx = AdapterContext {
            name: "vertex".into(),
            timeouts: super::super::Timeouts::default(),
            media: media::MediaFetcher::new(media::MediaSettings::default()),
        };
        let credentials = VertexCredentials::AccessToken("ya29.vertex-secret".into());
        let tokens = TokenSource::for_provider(&ctx, &credentials).unwrap();
        let settings = VertexSettings {
            project: "my-project".into(),
            region: region.into(),
            base_url: base_url.into(),
            credentials,
        };
        AnthropicClient::vertex(ctx, settings, tokens).unwrap()
    }

    #[actix_rt::test]
    async fn vertex_urls_and_body_name_the_model_once() {
        let regional = vertex_client("https://us-east5-aiplatform.googleapis.com/", "us-east5");
        assert_eq!(
            regional.url("claude-3-7-sonnet@20250219", false),
            "https://us-east5-aiplatform.googleapis.com/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/claude-3-7-sonnet@20250219:rawPredict"
        );
        assert_eq!(
            regional.url("claude-3-7-sonnet@20250219", true),
            "https://us-east5-aiplatform.googleapis.com/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/claude-3-7-sonnet@20250219:streamRawPredict"
        );
        let global = vertex_client("https://aiplatform.googleapis.com/v1", "global");
        assert_eq!(
            global.url("claude sonnet/4", false),
            "https://aiplatform.googleapis.com/v1/projects/my-project/locations/global/publishers/anthropic/models/claude%20sonnet%2F4:rawPredict"
        );
        assert!(!format!("{global:?}").contains("ya29"));

        let r = request(json!({"model": "x", "stream": true, "max_tokens": 300,
            "messages": [{"role": "user", "content": "Hi"}]}));
        let call = UpstreamRequest {
            request: &r,
            model: "claude-3-7-sonnet@20250219",
            reasoning_effort: None,
        };
        let body = serde_json::to_value(regional.prepare(&call, true).await.unwrap().body).unwrap();
        assert_eq!(
            body,
            json!({
                "anthropic_version": "vertex-2023-10-16",
                "max_tokens": 300,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                "stream": true
            })
        );
        // Anthropic's own API: the model in the body, no version in it.
        let direct = client_for("https://api.anthropic.com".into());
        let body = serde_json::to_value(direct.prepare(&call, false).await.unwrap().body).unwrap();
        assert_eq!(body["model"], "claude-3-7-sonnet@20250219");
        assert!(body.get("anthropic_version").is_none());
        assert_eq!(
            direct.url("claude-x", true),
            "https://api.anthropic.com/v1/messages"
        );
        assert!(!format!("{direct:?}").contains("sk-ant"));
    }

    #[actix_rt::test]
    async fn vertex_against_the_mock_raw_predict() {
        let mock = flowgate_mock_upstream::MockUpstream::start();
        let client = vertex_client(&mock.url(), "us-east5");
        let r = request(
            json!({"model": "x", "messages": [{"role": "user", "content": "Hello Vertex"}]}),
        );
        let call = |model| UpstreamRequest {
            request: &r,
            model,
            reasoning_effort: None,
        };
        let c = client
            .complete(call("claude-3-7-sonnet@20250219"))
            .await
            .unwrap();
        assert_eq!(
            c.choices[0].message.content.as_deref(),
            Some("Hello Vertex")
        );
        assert!(c.usage.prompt_tokens > 0 && c.usage.completion_tokens > 0);
        let sent = &mock.requests()[0];
        assert_eq!(
            sent.path,
            "/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/claude-3-7-sonnet@20250219:rawPredict"
        );
        assert_eq!(sent.headers["authorization"], "Bearer ya29.vertex-secret");
        assert!(!sent.headers.contains_key("x-api-key"));
        assert!(!sent.headers.contains_key("anthropic-version"));
        assert_eq!(sent.body["anthropic_version"], "vertex-2023-10-16");
        assert!(sent.body.get("model").is_none());

        let mut stream = client
            .stream(call("claude-3-7-sonnet@20250219;chunk_chars=3"))
            .await
            .unwrap();
        let mut text = String::new();
        while let Some(event) = stream.next().await {
            if let StreamEvent::Content { text: t, .. } = event.unwrap() {
                text.push_str(&t);
            }
        }
        assert_eq!(text, "Hello Vertex");
        let sent = mock.requests().pop().unwrap();
        assert!(sent.path.ends_with(":streamRawPredict"), "{}", sent.path);
        assert_eq!(sent.body["stream"], true);

        let e = client
            .complete(call("claude-3-7-sonnet@20250219;status=529"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.upstream_status),
            (ErrorKind::Overloaded, Some(529))
        );
        let e = client
            .complete(call("claude-3-7-sonnet@20250219;status=401"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::UpstreamAuth);
        assert!(!e.message.contains("ya29"), "{}", e.message);
    }

    #[actix_rt::test]
    async fn against_the_mock_messages_api() {
        let mock = flowgate_mock_upstream::MockUpstream::start();
        let client = client_for(format!("{}/", mock.url()));
        let r = request(json!({"model": "x", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello Claude"}]}));
        let call = |model| UpstreamRequest {
            request: &r,
            model,
            reasoning_effort: None,
        };
        let c = client.complete(call("claude-sonnet-4-5")).await.unwrap();
        assert_eq!(
            c.choices[0].message.content.as_deref(),
            Some("Hello Claude")
        );
        assert_eq!(c.choices[0].finish_reason, FinishReason::Stop);
        assert!(c.usage.prompt_tokens > 0 && c.usage.completion_tokens > 0);
        let sent = &mock.requests()[0];
        assert_eq!(sent.path, "/v1/messages");
        assert_eq!(sent.headers["x-api-key"], "sk-ant-test-secret");
        assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
        assert_eq!(sent.headers["anthropic-beta"], "x-1");
        assert_eq!(sent.body["max_tokens"], 8192);

        let mut stream = client
            .stream(call("claude-sonnet-4-5;chunk_chars=3"))
            .await
            .unwrap();
        let mut text = String::new();
        let mut tail = Vec::new();
        while let Some(event) = stream.next().await {
            match event.unwrap() {
                StreamEvent::Content { text: t, .. } => text.push_str(&t),
                other => tail.push(other),
            }
        }
        assert_eq!(text, "Hello Claude");
        assert!(matches!(
            tail[0],
            StreamEvent::Finish {
                reason: FinishReason::Stop,
                ..
            }
        ));
        assert!(matches!(tail[1], StreamEvent::Usage(u) if u.completion_tokens > 0));

        // Errors: kinds, retry-after, status, no key in messages.
        let e = client
            .complete(call("claude;status=529"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.upstream_status),
            (ErrorKind::Overloaded, Some(529))
        );
        let e = client
            .complete(call("claude;status=429;retry_after=3"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        let e = client
            .complete(call("claude;status=401"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::UpstreamAuth);
        assert!(!e.message.contains("sk-ant-test-secret"));
        let e = client
            .complete(call("claude;prompt_too_long"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::ContextTooLong);
        let e = client.complete(call("claude;malformed")).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::UpstreamMalformed);
        let Err(e) = client.stream(call("claude;malformed")).await else {
            panic!("a JSON body is not a stream");
        };
        assert_eq!(e.kind, ErrorKind::UpstreamMalformed);

        // A stream cut after content, and an error event mid-stream.
        let mut stream = client
            .stream(call("claude;cut_after=1;chunk_chars=2"))
            .await
            .unwrap();
        assert!(matches!(
            stream.next().await,
            Some(Ok(StreamEvent::Content { .. }))
        ));
        let e = stream.next().await.unwrap().unwrap_err();
        assert_eq!(e.kind, ErrorKind::UpstreamConnection);
        assert!(stream.next().await.is_none());
        let mut stream = client
            .stream(call("claude;stream_error=1;chunk_chars=2"))
            .await
            .unwrap();
        assert!(matches!(
            stream.next().await,
            Some(Ok(StreamEvent::Content { .. }))
        ));
        let e = stream.next().await.unwrap().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Overloaded);

        // A stalled stream times out on the idle limit.
        let started = std::time::Instant::now();
        let mut stream = client
            .stream(call("claude;chunk_delay_ms=5000"))
            .await
            .unwrap();
        let e = loop {
            match stream.next().await.unwrap() {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(e.kind, ErrorKind::Timeout);
        assert!(started.elapsed() < Duration::from_secs(5));

        // An http:// image is downloaded under the guard (loopback is refused by default).
        let r = request(
            json!({"model": "x", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": format!("{}/cat.png", mock.url())}}]}]}),
        );
        let e = client
            .complete(UpstreamRequest {
                request: &r,
                model: "claude",
                reasoning_effort: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code.as_deref(), Some("media_url_refused"));
    }
}
