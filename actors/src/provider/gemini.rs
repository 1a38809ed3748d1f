//! The `gemini` and `vertex` adapters: Google's Gemini API (`x-goog-api-key`) and Gemini on
//! Vertex AI (OAuth bearer tokens, see [`google_auth`](super::google_auth)). Both speak the
//! same `generateContent` wire format; only the URL and the credentials differ.
//!
//! A `vertex` provider also serves Anthropic's Claude models, in Anthropic's own format:
//! [`VertexClient`](super::vertex::VertexClient) sends `claude-…` models to the Anthropic adapter in its Vertex mode and
//! every other model to the [`GeminiClient`], both with the provider's one OAuth token cache.
//!
//! The OpenAI request is translated both ways:
//!
//! * `system`/`developer` messages → `systemInstruction`; `user`/`assistant` turns →
//!   `contents` with roles `user`/`model`, consecutive turns of one role merged; assistant
//!   `tool_calls` → `functionCall` parts; `tool` messages → `functionResponse` parts named
//!   after the call they answer;
//! * images, PDFs and audio → `inlineData` (data URIs as they are, `http(s)` URLs downloaded
//!   through the guarded [`MediaFetcher`]), `gs://` URIs → `fileData`;
//! * tools → `functionDeclarations` with parameters converted to Gemini's OpenAPI schema
//!   subset ([`json_schema_to_gemini_schema`]); `tool_choice` → `functionCallingConfig`;
//!   `response_format` → `responseMimeType`/`responseSchema`; sampling options and
//!   `reasoning_effort` → `generationConfig`.
//!
//! Answers come back as text (thought parts skipped), tool calls with generated ids, finish
//! reasons and usage; streams use `:streamGenerateContent?alt=sse`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::time::{timeout, Instant};

use crate::provider::http::BodyRead;

use super::google_auth::TokenSource;
use super::http::{self, encode_segment, kind_for_status, versioned_base};
use super::media::{self, MediaData, MediaFetcher};
use super::sse::SseDecoder;
use super::{
    AdapterContext, EventStream, GeminiSettings, Timeouts, UpstreamRequest, VertexSettings,
};
use crate::completion::{
    AssistantMessage, Choice, Completion, FinishReason, StreamEvent, ToolCallOut, Usage,
};
use crate::error::{ErrorKind, GatewayError};
use crate::wire::{
    ChatRequest, ContentPart, Message, MessageContent, ResponseFormat, Role, Stop, Tool,
    ToolChoice, ToolChoiceMode,
};

/// Upstream error bodies longer than this are cut before parsing.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Gemini accepts at most this many stop sequences.
const MAX_STOP_SEQUENCES: usize = 5;
/// The thought signature Google documents for function calls that were not produced by the
/// model in this exact form (history replayed from elsewhere). Gemini 3 rejects replayed
/// function calls without a signature; the OpenAI format cannot carry the real one.
const REPLAYED_CALL_SIGNATURE: &str = "skip_thought_signature_validator";
/// `$ref`s are inlined at most this deep (recursive schemas are cut there).
const MAX_SCHEMA_DEPTH: usize = 24;

#[derive(Debug)]
pub struct GeminiClient {
    name: String,
    timeouts: Timeouts,
    media: MediaFetcher,
    http: http::Client,
    endpoint: Endpoint,
}

/// Where requests go and how they authenticate.
enum Endpoint {
    /// `{base}/models/{model}:generateContent` (base ends in `/v1beta`), `x-goog-api-key`.
    Gemini {
        base: String,
        api_key: Option<String>,
    },
    /// `{base}/projects/{project}/locations/{region}/publishers/google/models/{model}:…`
    /// (base ends in `/v1`), `Authorization: Bearer <oauth token>`.
    Vertex {
        base: String,
        project: String,
        region: String,
        /// Shared with the provider's Claude client (see [`VertexClient`]).
        tokens: Arc<TokenSource>,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Gemini { base, api_key } => f
                .debug_struct("Gemini")
                .field("base", base)
                .field("api_key", &api_key.as_ref().map(|_| "***"))
                .finish(),
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

// ---- wire types, private to this module ----

#[derive(Serialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct GenerateBody {
    contents: Vec<Content>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<Content>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig>,
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    generation_config: GenerationConfig,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Content {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(default)]
    parts: Vec<Part>,
}

/// One part; exactly one of the data fields is set.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Part {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    /// A thought summary (not part of the answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thought: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thought_signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inline_data: Option<Blob>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file_data: Option<FileData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    function_call: Option<FunctionCallPart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    function_response: Option<FunctionResponsePart>,
}

impl Part {
    fn text(text: impl Into<String>) -> Part {
        Part {
            text: Some(text.into()),
            ..Part::default()
        }
    }

    fn inline(mime: impl Into<String>, data: impl Into<String>) -> Part {
        Part {
            inline_data: Some(Blob {
                mime_type: mime.into(),
                data: data.into(),
            }),
            ..Part::default()
        }
    }

    fn file(mime: impl Into<String>, uri: impl Into<String>) -> Part {
        Part {
            file_data: Some(FileData {
                mime_type: Some(mime.into()),
                file_uri: uri.into(),
            }),
            ..Part::default()
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Blob {
    mime_type: String,
    /// Base64.
    data: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
struct FileData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mime_type: Option<String>,
    file_uri: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct FunctionCallPart {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    args: Option<Value>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct FunctionResponsePart {
    name: String,
    /// Always an object.
    response: Value,
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct ToolBody {
    function_declarations: Vec<FunctionDeclaration>,
}

#[derive(Serialize, Debug, PartialEq)]
struct FunctionDeclaration {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct ToolConfig {
    function_calling_config: FunctionCallingConfig,
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct FunctionCallingConfig {
    /// `AUTO`, `ANY` or `NONE`.
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_function_names: Option<Vec<String>>,
}

#[derive(Serialize, Default, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<ThinkingConfig>,
}

impl GenerationConfig {
    fn is_empty(&self) -> bool {
        *self == GenerationConfig::default()
    }
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct ThinkingConfig {
    thinking_budget: u32,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    /// Only in a stream that fails midway.
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    finish_reason: Option<String>,
    /// Omitted for 0 (proto3 JSON).
    #[serde(default)]
    index: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
}

impl From<UsageMetadata> for Usage {
    fn from(u: UsageMetadata) -> Usage {
        Usage {
            prompt_tokens: u.prompt_token_count,
            completion_tokens: u.candidates_token_count + u.thoughts_token_count,
            cached_tokens: u.cached_content_token_count,
            reasoning_tokens: u.thoughts_token_count,
            cache_write_tokens: 0,
        }
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

/// Google's error: `{"code": 429, "message": "…", "status": "RESOURCE_EXHAUSTED",
/// "details": [...]}`.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    details: Vec<Value>,
}

/// Parses an error body: an object, or (`streamGenerateContent` without SSE) an array.
fn parse_error_body(bytes: &[u8]) -> Option<ErrorBody> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let value = match value {
        Value::Array(items) => items.into_iter().next()?,
        other => other,
    };
    serde_json::from_value::<ErrorEnvelope>(value)
        .ok()
        .map(|e| e.error)
}

// ---- request translation ----

fn invalid(message: impl Into<String>, param: impl Into<String>) -> GatewayError {
    GatewayError::invalid(message).with_param(param)
}

/// Whether Gemini reads this URI itself (`fileData`) instead of needing the bytes.
fn is_file_uri(url: &str) -> bool {
    url.starts_with("gs://") || url.starts_with("https://generativelanguage.googleapis.com/")
}

/// The `http(s)` (or otherwise unreadable-by-Gemini) media URLs of a request, each once, in
/// order: they are downloaded before the request is built.
fn remote_media_urls(request: &ChatRequest) -> Vec<&str> {
    let mut urls: Vec<&str> = Vec::new();
    for message in request.messages.iter().filter(|m| m.role == Role::User) {
        let Some(MessageContent::Parts(parts)) = &message.content else {
            continue;
        };
        for part in parts {
            if let ContentPart::ImageUrl { image_url } = part {
                let url = image_url.url.as_str();
                if !url.starts_with("data:") && !is_file_uri(url) && !urls.contains(&url) {
                    urls.push(url);
                }
            }
        }
    }
    urls
}

/// MIME type of an OpenAI `input_audio.format`.
fn audio_mime(format: &str) -> String {
    match format.to_ascii_lowercase().as_str() {
        "mp3" | "mpeg" => "audio/mp3".to_string(),
        "wav" | "wave" => "audio/wav".to_string(),
        other => format!("audio/{other}"),
    }
}

/// An image given as a URL: inline bytes (data URI or downloaded) or a `fileData` URI.
fn image_part(
    url: &str,
    media: &HashMap<String, MediaData>,
    param: String,
) -> Result<Part, GatewayError> {
    if url.starts_with("data:") {
        let (mime, data) = media::parse_data_uri(url).ok_or_else(|| {
            invalid(
                "an image data URI must look like `data:<mime>;base64,<data>`",
                param,
            )
        })?;
        return Ok(Part::inline(mime, data.trim()));
    }
    if is_file_uri(url) {
        let mime = match media::guess_mime(url) {
            "application/octet-stream" => "image/jpeg",
            mime => mime,
        };
        return Ok(Part::file(mime, url));
    }
    match media.get(url) {
        Some(data) => Ok(Part::inline(data.mime.clone(), data.base64())),
        // `remote_media_urls` lists every such URL: only a bug gets here.
        None => Err(GatewayError::internal(format!(
            "the media at `{param}` was not downloaded"
        ))),
    }
}

/// A file part (PDF): `file_data` inline (a data URI or bare base64), or a `file_id` that
/// is a URI Gemini can read.
fn file_part(file: &crate::wire::FilePart, param: String) -> Result<Part, GatewayError> {
    let mime_from_name = || {
        file.filename
            .as_deref()
            .map(media::guess_mime)
            .filter(|m| *m != "application/octet-stream")
            .unwrap_or("application/pdf")
    };
    if let Some(data) = &file.file_data {
        if data.starts_with("data:") {
            let (mime, data) = media::parse_data_uri(data).ok_or_else(|| {
                invalid(
                    "`file_data` must be a data URI `data:<mime>;base64,<data>`",
                    format!("{param}.file_data"),
                )
            })?;
            return Ok(Part::inline(mime, data.trim()));
        }
        return Ok(Part::inline(mime_from_name(), data.trim()));
    }
    match &file.file_id {
        Some(id) if is_file_uri(id) => Ok(Part::file(mime_from_name(), id.clone())),
        Some(id) => Err(GatewayError::new(
            ErrorKind::UnsupportedByModel,
            format!(
                "Gemini cannot read the uploaded file `{id}`: send the file inline as \
                 `file_data` (a data URI)"
            ),
        )
        .with_param(format!("{param}.file_id"))),
        None => Err(invalid("a file part needs `file_data` or `file_id`", param)),
    }
}

fn user_parts(
    message: &Message,
    index: usize,
    media: &HashMap<String, MediaData>,
) -> Result<Vec<Part>, GatewayError> {
    let parts = match &message.content {
        None => return Ok(Vec::new()),
        Some(MessageContent::Text(text)) => {
            return Ok(if text.is_empty() {
                Vec::new()
            } else {
                vec![Part::text(text.clone())]
            })
        }
        Some(MessageContent::Parts(parts)) => parts,
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let param = format!("messages[{index}].content[{j}]");
        match part {
            ContentPart::Text { text } | ContentPart::Refusal { refusal: text } => {
                if !text.is_empty() {
                    out.push(Part::text(text.clone()));
                }
            }
            ContentPart::ImageUrl { image_url } => {
                out.push(image_part(&image_url.url, media, param)?);
            }
            ContentPart::InputAudio { input_audio } => {
                out.push(Part::inline(
                    audio_mime(&input_audio.format),
                    input_audio.data.trim(),
                ));
            }
            ContentPart::File { file } => out.push(file_part(file, param)?),
        }
    }
    Ok(out)
}

fn assistant_parts(message: &Message, index: usize) -> Result<Vec<Part>, GatewayError> {
    let mut out = Vec::new();
    let text = message.text();
    if !text.is_empty() {
        out.push(Part::text(text));
    }
    for (k, call) in message.tool_calls.iter().flatten().enumerate() {
        let raw = call.function.arguments.trim();
        let args = if raw.is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_str::<Value>(raw).map_err(|e| {
                invalid(
                    format!("tool call arguments are not valid JSON: {e}"),
                    format!("messages[{index}].tool_calls[{k}].function.arguments"),
                )
            })?
        };
        if !args.is_object() {
            return Err(invalid(
                "tool call arguments must be a JSON object",
                format!("messages[{index}].tool_calls[{k}].function.arguments"),
            ));
        }
        out.push(Part {
            function_call: Some(FunctionCallPart {
                name: call.function.name.clone(),
                args: Some(args),
            }),
            // Gemini validates the signature of the first call of a turn.
            thought_signature: (k == 0).then(|| REPLAYED_CALL_SIGNATURE.to_string()),
            ..Part::default()
        });
    }
    Ok(out)
}

/// A `tool` message as a `functionResponse`, named after the earlier call it answers.
fn function_response_part(messages: &[Message], index: usize) -> Result<Part, GatewayError> {
    let message = &messages[index];
    let from_call = message.tool_call_id.as_deref().and_then(|id| {
        messages[..index]
            .iter()
            .rev()
            .filter(|m| m.role == Role::Assistant)
            .flat_map(|m| m.tool_calls.iter().flatten())
            .find(|call| call.id == id)
            .map(|call| call.function.name.clone())
    });
    let name = from_call.or_else(|| message.name.clone()).ok_or_else(|| {
        invalid(
            "this tool message's `tool_call_id` matches no tool call of an earlier \
                 assistant message",
            format!("messages[{index}].tool_call_id"),
        )
    })?;
    let text = message.text();
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(object)) => Value::Object(object),
        Ok(other) => json!({ "result": other }),
        Err(_) => json!({ "result": text }),
    };
    Ok(Part {
        function_response: Some(FunctionResponsePart { name, response }),
        ..Part::default()
    })
}

/// Appends parts to the conversation, merging consecutive turns of one role.
fn push_turn(contents: &mut Vec<Content>, role: &str, parts: Vec<Part>) {
    if parts.is_empty() {
        return;
    }
    match contents.last_mut() {
        Some(last) if last.role.as_deref() == Some(role) => last.parts.extend(parts),
        _ => contents.push(Content {
            role: Some(role.to_string()),
            parts,
        }),
    }
}

fn function_declarations(tools: &[Tool]) -> Vec<FunctionDeclaration> {
    tools
        .iter()
        .filter(|t| t.kind == "function")
        .map(|t| FunctionDeclaration {
            name: t.function.name.clone(),
            description: t.function.description.clone().filter(|d| !d.is_empty()),
            // Gemini rejects an OBJECT without properties: no parameters at all then.
            parameters: t
                .function
                .parameters
                .as_ref()
                .map(json_schema_to_gemini_schema)
                .filter(|p| {
                    p.get("type").and_then(Value::as_str) != Some("OBJECT")
                        || p.get("properties")
                            .and_then(Value::as_object)
                            .is_some_and(|props| !props.is_empty())
                }),
        })
        .collect()
}

fn tool_config(choice: &ToolChoice) -> ToolConfig {
    let (mode, allowed) = match choice {
        ToolChoice::Mode(ToolChoiceMode::Auto) => ("AUTO", None),
        ToolChoice::Mode(ToolChoiceMode::None) => ("NONE", None),
        ToolChoice::Mode(ToolChoiceMode::Required) => ("ANY", None),
        ToolChoice::Named(named) => ("ANY", Some(vec![named.function.name.clone()])),
    };
    ToolConfig {
        function_calling_config: FunctionCallingConfig {
            mode,
            allowed_function_names: allowed,
        },
    }
}

/// `reasoning_effort` → a thinking budget in tokens.
fn thinking_budget(effort: &str) -> Option<u32> {
    match effort {
        "none" => Some(0),
        "minimal" => Some(512),
        "low" => Some(1024),
        "medium" => Some(8192),
        "high" => Some(24576),
        _ => None,
    }
}

/// The `generateContent` body for an OpenAI request; `media` holds the downloaded bytes of
/// every URL [`remote_media_urls`] listed.
fn request_body(
    call: &UpstreamRequest<'_>,
    media: &HashMap<String, MediaData>,
) -> Result<GenerateBody, GatewayError> {
    let r = call.request;
    let mut system = Vec::new();
    let mut contents: Vec<Content> = Vec::new();
    for (i, message) in r.messages.iter().enumerate() {
        match message.role {
            Role::System | Role::Developer => {
                let text = message.text();
                if !text.is_empty() {
                    system.push(Part::text(text));
                }
            }
            Role::User => push_turn(&mut contents, "user", user_parts(message, i, media)?),
            Role::Assistant => push_turn(&mut contents, "model", assistant_parts(message, i)?),
            Role::Tool | Role::Function => push_turn(
                &mut contents,
                "user",
                vec![function_response_part(&r.messages, i)?],
            ),
        }
    }
    let mut system_instruction = (!system.is_empty()).then_some(Content {
        role: None,
        parts: system,
    });
    if contents.is_empty() {
        // Gemini needs one turn: the instructions become it.
        match system_instruction.take() {
            Some(instruction) => push_turn(&mut contents, "user", instruction.parts),
            None => {
                return Err(invalid(
                    "the request has no message with content",
                    "messages",
                ))
            }
        }
    }

    let declarations = function_declarations(r.tools.as_deref().unwrap_or_default());
    let tool_config = r
        .tool_choice
        .as_ref()
        .filter(|_| !declarations.is_empty())
        .map(tool_config);
    let tools = if declarations.is_empty() {
        Vec::new()
    } else {
        vec![ToolBody {
            function_declarations: declarations,
        }]
    };

    let (response_mime_type, response_schema) = match &r.response_format {
        Some(ResponseFormat::JsonObject) => (Some("application/json"), None),
        Some(ResponseFormat::JsonSchema { json_schema }) => (
            Some("application/json"),
            json_schema
                .schema
                .as_ref()
                .map(json_schema_to_gemini_schema),
        ),
        Some(ResponseFormat::Text) | None => (None, None),
    };
    let stop_sequences = r
        .stop
        .as_ref()
        .map(|stop| match stop {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(many) => many.clone(),
        })
        .map(|stops| {
            stops
                .into_iter()
                .filter(|s| !s.is_empty())
                .take(MAX_STOP_SEQUENCES)
                .collect::<Vec<_>>()
        })
        .filter(|stops| !stops.is_empty());
    let thinking_config = call
        .reasoning_effort
        .or(r.reasoning_effort.as_deref())
        .and_then(thinking_budget)
        .map(|thinking_budget| ThinkingConfig { thinking_budget });

    Ok(GenerateBody {
        contents,
        system_instruction,
        tools,
        tool_config,
        generation_config: GenerationConfig {
            temperature: r.temperature,
            top_p: r.top_p,
            max_output_tokens: r.max_completion_tokens.or(r.max_tokens),
            stop_sequences,
            seed: r.seed,
            candidate_count: r.n,
            presence_penalty: r.presence_penalty,
            frequency_penalty: r.frequency_penalty,
            response_mime_type,
            response_schema,
            thinking_config,
        },
    })
}

// ---- schema conversion ----

/// Converts a JSON Schema (as OpenAI tools and `response_format` carry it) into the OpenAPI
/// 3.0 subset Gemini's `Schema` accepts:
///
/// * `$ref`s are inlined from `$defs`/`definitions` (recursion is cut at
///   [`MAX_SCHEMA_DEPTH`] as a bare `OBJECT`);
/// * `anyOf`/`oneOf` with a `{"type": "null"}` branch → the other branch(es) plus
///   `nullable: true`; `type: [X, "null"]` likewise; single-branch `allOf` is unwrapped and
///   multi-branch `allOf` merged;
/// * `type` names are upper-cased (`STRING`, `OBJECT`, …) and inferred when absent;
/// * `const` becomes a one-value `enum`; `enum` is kept for strings only;
/// * `format` is kept only where Gemini knows it (`date-time`/`enum`, `int32`/`int64`,
///   `float`/`double`);
/// * `required` is kept to declared properties;
/// * everything else (`additionalProperties`, `$schema`, `$id`, `title`, `default`,
///   `examples`, `exclusiveMinimum`, `not`, `patternProperties`, …) is dropped.
pub fn json_schema_to_gemini_schema(schema: &Value) -> Value {
    let mut refs = Vec::new();
    convert_schema(schema, schema, &mut refs)
}

/// Keywords copied as they are.
const KEPT_KEYWORDS: &[&str] = &[
    "description",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minProperties",
    "maxProperties",
    "nullable",
];

fn is_null_schema(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
        || schema.get("const") == Some(&Value::Null)
}

fn gemini_type(json_type: &str) -> Option<&'static str> {
    Some(match json_type {
        "string" => "STRING",
        "number" => "NUMBER",
        "integer" => "INTEGER",
        "boolean" => "BOOLEAN",
        "array" => "ARRAY",
        "object" => "OBJECT",
        _ => return None,
    })
}

/// Resolves a local `$ref` (`#/$defs/X`, `#/definitions/X`, any JSON pointer into the root).
fn resolve_ref<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    root.pointer(pointer)
}

fn convert_schema(node: &Value, root: &Value, refs: &mut Vec<String>) -> Value {
    let Some(map) = node.as_object() else {
        // `true` (anything) or garbage: no constraint.
        return Value::Object(Map::new());
    };

    if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
        if refs.iter().any(|r| r == reference) || refs.len() >= MAX_SCHEMA_DEPTH {
            // A recursive schema: Gemini has no references, so the recursion stops here.
            let mut cut = json!({"type": "OBJECT"});
            copy_description(map, &mut cut);
            return cut;
        }
        let target = resolve_ref(root, reference).cloned().unwrap_or(Value::Null);
        refs.push(reference.to_string());
        let mut out = convert_schema(&target, root, refs);
        refs.pop();
        copy_description(map, &mut out);
        if map.get("nullable") == Some(&Value::Bool(true)) {
            out["nullable"] = Value::Bool(true);
        }
        return out;
    }

    for key in ["anyOf", "oneOf"] {
        if let Some(variants) = map.get(key).and_then(Value::as_array) {
            let nullable = variants.iter().any(is_null_schema);
            let mut branches: Vec<Value> = variants
                .iter()
                .filter(|v| !is_null_schema(v))
                .map(|v| convert_schema(v, root, refs))
                .collect();
            let mut out = match branches.len() {
                0 => json!({"type": "STRING"}),
                1 => branches.remove(0),
                _ => json!({ "anyOf": branches }),
            };
            if nullable {
                out["nullable"] = Value::Bool(true);
            }
            copy_description(map, &mut out);
            return out;
        }
    }

    if let Some(parts) = map.get("allOf").and_then(Value::as_array) {
        let mut merged = map.clone();
        merged.remove("allOf");
        for part in parts {
            let part = match part.get("$ref").and_then(Value::as_str) {
                Some(reference) => resolve_ref(root, reference).unwrap_or(part),
                None => part,
            };
            let Some(part) = part.as_object() else {
                continue;
            };
            for (key, value) in part {
                match (key.as_str(), merged.get_mut(key)) {
                    ("properties", Some(Value::Object(existing))) => {
                        if let Value::Object(more) = value {
                            existing.extend(more.clone());
                        }
                    }
                    ("required", Some(Value::Array(existing))) => {
                        if let Value::Array(more) = value {
                            existing.extend(more.iter().cloned());
                        }
                    }
                    (_, Some(_)) => {}
                    (_, None) => {
                        merged.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        return convert_schema(&Value::Object(merged), root, refs);
    }

    let mut out = Map::new();
    let mut nullable = false;
    let mut schema_type: Option<&'static str> = None;
    match map.get("type") {
        Some(Value::String(t)) if t == "null" => nullable = true,
        Some(Value::String(t)) => schema_type = gemini_type(t),
        Some(Value::Array(types)) => {
            nullable = types.iter().any(|t| t.as_str() == Some("null"));
            let named: Vec<&'static str> = types
                .iter()
                .filter_map(Value::as_str)
                .filter_map(gemini_type)
                .collect();
            match named.as_slice() {
                [] => {}
                [one] => schema_type = Some(one),
                many => {
                    // Several types: one branch each, the other keywords with their type.
                    let branches: Vec<Value> = many
                        .iter()
                        .map(|t| {
                            let mut single = map.clone();
                            single.insert("type".into(), Value::String(t.to_ascii_lowercase()));
                            convert_schema(&Value::Object(single), root, refs)
                        })
                        .collect();
                    let mut out = json!({ "anyOf": branches });
                    if nullable {
                        out["nullable"] = Value::Bool(true);
                    }
                    copy_description(map, &mut out);
                    return out;
                }
            }
        }
        _ => {}
    }

    let mut enum_values: Option<Vec<Value>> = map.get("enum").and_then(Value::as_array).cloned();
    if let Some(constant) = map.get("const") {
        enum_values = Some(vec![constant.clone()]);
    }
    if let Some(values) = enum_values {
        nullable |= values.iter().any(Value::is_null);
        let strings: Vec<Value> = values.into_iter().filter(|v| !v.is_null()).collect();
        if !strings.is_empty() && strings.iter().all(Value::is_string) {
            out.insert("enum".into(), Value::Array(strings));
            schema_type = schema_type.or(Some("STRING"));
        }
    }

    let schema_type = schema_type.or_else(|| {
        if map.contains_key("properties") {
            Some("OBJECT")
        } else if map.contains_key("items") {
            Some("ARRAY")
        } else {
            None
        }
    });
    if let Some(t) = schema_type {
        out.insert("type".into(), Value::String(t.into()));
    }

    if let Some(format) = map.get("format").and_then(Value::as_str) {
        let known = match schema_type {
            Some("STRING") => matches!(format, "date-time" | "enum"),
            Some("INTEGER") => matches!(format, "int32" | "int64"),
            Some("NUMBER") => matches!(format, "float" | "double"),
            _ => false,
        };
        if known {
            out.insert("format".into(), Value::String(format.into()));
        }
    }

    for key in KEPT_KEYWORDS {
        if let Some(value) = map.get(*key) {
            out.insert((*key).to_string(), value.clone());
        }
    }
    if nullable {
        out.insert("nullable".into(), Value::Bool(true));
    }

    if let Some(properties) = map.get("properties").and_then(Value::as_object) {
        let converted: Map<String, Value> = properties
            .iter()
            .map(|(name, schema)| (name.clone(), convert_schema(schema, root, refs)))
            .collect();
        if let Some(required) = map.get("required").and_then(Value::as_array) {
            let required: Vec<Value> = required
                .iter()
                .filter(|name| name.as_str().is_some_and(|n| converted.contains_key(n)))
                .cloned()
                .collect();
            if !required.is_empty() {
                out.insert("required".into(), Value::Array(required));
            }
        }
        out.insert("properties".into(), Value::Object(converted));
    }

    match map.get("items") {
        Some(Value::Array(tuple)) => {
            if let Some(first) = tuple.first() {
                out.insert("items".into(), convert_schema(first, root, refs));
            }
        }
        Some(items) => {
            out.insert("items".into(), convert_schema(items, root, refs));
        }
        None if schema_type == Some("ARRAY") => {
            // Gemini requires `items` on arrays.
            if let Some(first) = map
                .get("prefixItems")
                .and_then(Value::as_array)
                .and_then(|p| p.first())
            {
                out.insert("items".into(), convert_schema(first, root, refs));
            } else {
                out.insert("items".into(), json!({"type": "STRING"}));
            }
        }
        None => {}
    }
    Value::Object(out)
}

fn copy_description(from: &Map<String, Value>, to: &mut Value) {
    if let (Some(description), Some(out)) = (from.get("description"), to.as_object_mut()) {
        out.entry("description")
            .or_insert_with(|| description.clone());
    }
}

// ---- response translation ----

/// A fresh tool-call id: `call_` and 24 random alphanumeric characters.
fn new_call_id() -> String {
    let mut id = String::with_capacity(29);
    id.push_str("call_");
    id.extend(std::iter::repeat_with(fastrand::alphanumeric).take(24));
    id
}

/// Gemini's finish reason; `STOP` with function calls is OpenAI's `tool_calls`.
fn finish_reason(reason: Option<&str>, has_calls: bool) -> FinishReason {
    match reason {
        Some("MAX_TOKENS") => FinishReason::Length,
        Some(
            "SAFETY"
            | "RECITATION"
            | "BLOCKLIST"
            | "PROHIBITED_CONTENT"
            | "SPII"
            | "IMAGE_SAFETY"
            | "IMAGE_PROHIBITED_CONTENT"
            | "IMAGE_RECITATION",
        ) => FinishReason::ContentFilter,
        _ if has_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

fn arguments_text(args: Option<Value>) -> String {
    match args {
        None | Some(Value::Null) => "{}".to_string(),
        Some(args) => args.to_string(),
    }
}

fn blocked(name: &str, reason: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::ContentFiltered,
        format!("provider `{name}` blocked the prompt ({reason})"),
    )
}

fn choice_from(candidate: Candidate, position: usize) -> Choice {
    let index = candidate.index.unwrap_or(position as u32);
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
        if part.thought == Some(true) {
            continue;
        }
        if let Some(call) = part.function_call {
            tool_calls.push(ToolCallOut {
                id: new_call_id(),
                name: call.name,
                arguments: arguments_text(call.args),
            });
        } else if let Some(t) = part.text {
            text.get_or_insert_with(String::new).push_str(&t);
        }
    }
    let finish_reason = finish_reason(candidate.finish_reason.as_deref(), !tool_calls.is_empty());
    if text.is_none() && tool_calls.is_empty() && finish_reason != FinishReason::ContentFilter {
        text = Some(String::new());
    }
    Choice {
        index,
        message: AssistantMessage {
            content: text,
            tool_calls,
            refusal: None,
        },
        finish_reason,
    }
}

fn completion_from(name: &str, response: GenerateResponse) -> Result<Completion, GatewayError> {
    if response.candidates.is_empty() {
        if let Some(reason) = response.prompt_feedback.and_then(|f| f.block_reason) {
            return Err(blocked(name, &reason));
        }
        return Err(GatewayError::new(
            ErrorKind::UpstreamMalformed,
            format!("provider `{name}` sent a response with no candidates"),
        )
        .with_upstream_status(200));
    }
    let mut choices: Vec<Choice> = response
        .candidates
        .into_iter()
        .enumerate()
        .map(|(position, candidate)| choice_from(candidate, position))
        .collect();
    choices.sort_by_key(|c| c.index);
    Ok(Completion {
        choices,
        usage: response.usage_metadata.map(Usage::from).unwrap_or_default(),
    })
}

// ---- errors ----

/// Whether an `INVALID_ARGUMENT` message says the prompt is too long.
fn is_context_too_long(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    (m.contains("input token count") && (m.contains("exceeds") || m.contains("only supports")))
        || m.contains("exceeds the maximum number of tokens")
        || m.contains("context window")
}

/// Maps an HTTP status and Google's `error.status` to the gateway's error kind.
fn error_kind(
    status: u16,
    google_status: Option<&str>,
    message: &str,
    details: &[Value],
) -> ErrorKind {
    let reason = |wanted: &str| {
        details
            .iter()
            .any(|d| d.get("reason").and_then(Value::as_str) == Some(wanted))
    };
    // A bad API key is a 400 INVALID_ARGUMENT with this reason.
    if reason("API_KEY_INVALID") || reason("API_KEY_EXPIRED") || reason("ACCESS_TOKEN_EXPIRED") {
        return ErrorKind::UpstreamAuth;
    }
    match google_status {
        Some("RESOURCE_EXHAUSTED") => ErrorKind::RateLimited,
        Some("UNAVAILABLE") => ErrorKind::Overloaded,
        Some("PERMISSION_DENIED" | "UNAUTHENTICATED") => ErrorKind::UpstreamAuth,
        // Billing, region or API not enabled: this provider cannot serve, another may.
        Some("FAILED_PRECONDITION") => ErrorKind::UpstreamAuth,
        Some("DEADLINE_EXCEEDED") => ErrorKind::Timeout,
        Some("INTERNAL" | "UNKNOWN" | "DATA_LOSS" | "ABORTED") => ErrorKind::UpstreamServer,
        Some("INVALID_ARGUMENT" | "OUT_OF_RANGE") if is_context_too_long(message) => {
            ErrorKind::ContextTooLong
        }
        Some("INVALID_ARGUMENT" | "OUT_OF_RANGE" | "NOT_FOUND") => ErrorKind::UpstreamBadRequest,
        _ => match status {
            503 => ErrorKind::Overloaded,
            504 => ErrorKind::Timeout,
            400 if is_context_too_long(message) => ErrorKind::ContextTooLong,
            status => kind_for_status(status),
        },
    }
}

/// `RetryInfo.retryDelay` (`"37s"`, `"1.5s"`) from the error details.
fn retry_delay(details: &[Value]) -> Option<Duration> {
    details.iter().find_map(|d| {
        let delay = d.get("retryDelay")?.as_str()?;
        let seconds = delay.strip_suffix('s')?.trim().parse::<f64>().ok()?;
        Duration::try_from_secs_f64(seconds).ok()
    })
}

// ---- the client ----

fn encode_path(path: &str) -> String {
    path.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

impl GeminiClient {
    /// The Gemini API (`generativelanguage.googleapis.com`) with an API key.
    pub fn gemini(ctx: AdapterContext, settings: GeminiSettings) -> Result<Self, String> {
        Ok(GeminiClient {
            http: http::client(&ctx.name, &ctx.timeouts)?,
            endpoint: Endpoint::Gemini {
                base: versioned_base(&settings.base_url, "v1beta"),
                api_key: settings.api_key.filter(|k| !k.is_empty()),
            },
            name: ctx.name,
            timeouts: ctx.timeouts,
            media: ctx.media,
        })
    }

    /// Gemini on Vertex AI, with OAuth tokens from the provider's token source.
    pub fn vertex(
        ctx: AdapterContext,
        settings: VertexSettings,
        tokens: Arc<TokenSource>,
    ) -> Result<Self, String> {
        Ok(GeminiClient {
            http: http::client(&ctx.name, &ctx.timeouts)?,
            endpoint: Endpoint::Vertex {
                base: versioned_base(&settings.base_url, "v1"),
                project: settings.project,
                region: settings.region,
                tokens,
            },
            name: ctx.name,
            timeouts: ctx.timeouts,
            media: ctx.media,
        })
    }

    /// The URL of one call. The API key never goes in it.
    fn url(&self, model: &str, stream: bool) -> String {
        let method = if stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        match &self.endpoint {
            Endpoint::Gemini { base, .. } => {
                if model.contains('/') {
                    // `models/…` or `tunedModels/…`, as given.
                    format!("{base}/{}:{method}", encode_path(model))
                } else {
                    format!("{base}/models/{}:{method}", encode_segment(model))
                }
            }
            Endpoint::Vertex {
                base,
                project,
                region,
                ..
            } => {
                let location = format!(
                    "{base}/projects/{}/locations/{}",
                    encode_segment(project),
                    encode_segment(region)
                );
                if model.starts_with("projects/") {
                    format!("{base}/{}:{method}", encode_path(model))
                } else if model.contains('/') {
                    // `publishers/{p}/models/{m}` or `endpoints/{id}`.
                    format!("{location}/{}:{method}", encode_path(model))
                } else {
                    format!(
                        "{location}/publishers/google/models/{}:{method}",
                        encode_segment(model)
                    )
                }
            }
        }
    }

    /// Secrets that must never appear in a message: the API key and the current token.
    fn secrets<'a>(&'a self, token: Option<&'a str>) -> Vec<&'a str> {
        let mut secrets = Vec::with_capacity(2);
        if let Endpoint::Gemini {
            api_key: Some(key), ..
        } = &self.endpoint
        {
            secrets.push(key.as_str());
        }
        secrets.extend(token);
        secrets
    }

    /// Downloads the request's remote media, concurrently.
    async fn fetch_media(
        &self,
        request: &ChatRequest,
    ) -> Result<HashMap<String, MediaData>, GatewayError> {
        let urls = remote_media_urls(request);
        if urls.is_empty() {
            return Ok(HashMap::new());
        }
        let fetched =
            futures::future::try_join_all(urls.iter().map(|url| self.media.load(url))).await?;
        Ok(urls
            .into_iter()
            .map(String::from)
            .zip(fetched)
            .collect::<HashMap<_, _>>())
    }

    async fn send(
        &self,
        call: &UpstreamRequest<'_>,
        stream: bool,
    ) -> Result<http::Response, GatewayError> {
        let media = self.fetch_media(call.request).await?;
        let body = request_body(call, &media)?;
        drop(media);
        let request = self.http.post(self.url(call.model, stream)).json(&body);
        drop(body);
        let (request, token) = match &self.endpoint {
            Endpoint::Gemini { api_key, .. } => (
                match api_key {
                    Some(key) => request.header("x-goog-api-key", key),
                    None => request,
                },
                None,
            ),
            Endpoint::Vertex { tokens, .. } => {
                let token = tokens.token().await?;
                (request.bearer_auth(&*token), Some(token))
            }
        };
        let limit = self.timeouts.first_byte().min(self.timeouts.total());
        let response = timeout(limit, request.send())
            .await
            .map_err(|_| http::timeout_error(&self.name, "with headers", limit))?
            .map_err(|e| http::transport_error(&self.name, e, &self.secrets(token.as_deref())))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.status_error(response, token.as_deref()).await)
    }

    async fn status_error(&self, response: http::Response, token: Option<&str>) -> GatewayError {
        let status = response.status().as_u16();
        let header_retry = http::retry_after(response.headers());
        let (body, raw) = match timeout(Duration::from_secs(5), response.bytes()).await {
            Ok(Ok(bytes)) => {
                let cut = &bytes[..bytes.len().min(MAX_ERROR_BODY)];
                (
                    parse_error_body(cut),
                    String::from_utf8_lossy(cut).chars().take(500).collect(),
                )
            }
            _ => (None, String::new()),
        };
        let body = body.unwrap_or_default();
        let message = body.message.clone().unwrap_or(raw);
        let google_status = body.status.as_deref();
        let kind = error_kind(status, google_status, &message, &body.details);
        let label = match google_status {
            Some(s) => format!("{status} {s}"),
            None => status.to_string(),
        };
        // Billing, region or API-enablement problems say what to fix and quote no secret.
        let precondition = google_status == Some("FAILED_PRECONDITION");
        let message = if kind == ErrorKind::UpstreamAuth && !precondition {
            if let (Endpoint::Vertex { tokens, .. }, Some(token)) = (&self.endpoint, token) {
                tokens.invalidate(token);
            }
            // Auth messages may quote the key: never pass them on.
            format!(
                "provider `{}` rejected its credentials ({label})",
                self.name
            )
        } else {
            format!(
                "provider `{}` answered {label}: {}",
                self.name,
                http::scrub(&message, &self.secrets(token))
            )
        };
        GatewayError::new(kind, message)
            .with_retry_after(header_retry.or_else(|| retry_delay(&body.details)))
            .with_upstream_status(status)
    }

    pub async fn complete(&self, call: UpstreamRequest<'_>) -> Result<Completion, GatewayError> {
        let started = Instant::now();
        let response = self.send(&call, false).await?;
        let remaining = self.timeouts.total().saturating_sub(started.elapsed());
        let bytes = timeout(remaining, response.bytes())
            .await
            .map_err(|_| http::timeout_error(&self.name, "its whole body", self.timeouts.total()))?
            .map_err(|e| http::transport_error(&self.name, e, &self.secrets(None)))?;
        let parsed: GenerateResponse = serde_json::from_slice(&bytes).map_err(|e| {
            GatewayError::new(
                ErrorKind::UpstreamMalformed,
                format!("provider `{}` sent a malformed response: {e}", self.name),
            )
            .with_upstream_status(200)
        })?;
        completion_from(&self.name, parsed)
    }

    pub async fn stream(&self, call: UpstreamRequest<'_>) -> Result<EventStream, GatewayError> {
        let started = Instant::now();
        let response = self.send(&call, true).await?;
        let state = StreamState {
            name: self.name.clone(),
            body: response.bytes_stream().boxed(),
            decoder: SseDecoder::new(),
            pending: VecDeque::new(),
            calls: HashMap::new(),
            usage: None,
            finish_seen: false,
            finished: false,
            idle: self.timeouts.idle(),
            deadline: started + self.timeouts.total(),
        };
        Ok(futures::stream::unfold(state, next_event).boxed())
    }
}

// ---- streaming ----

struct StreamState {
    name: String,
    body: http::Body,
    decoder: SseDecoder,
    pending: VecDeque<StreamEvent>,
    /// Tool calls seen so far, per candidate.
    calls: HashMap<u32, u32>,
    /// The latest `usageMetadata` (each chunk carries the running totals).
    usage: Option<Usage>,
    /// A finish reason was seen: the end of the body is not a cut.
    finish_seen: bool,
    finished: bool,
    idle: Duration,
    deadline: Instant,
}

impl StreamState {
    /// Turns one chunk into events; empty parts and thoughts produce none.
    fn absorb(&mut self, chunk: GenerateResponse) -> Result<(), GatewayError> {
        if let Some(error) = chunk.error {
            let message = error.message.unwrap_or_default();
            let kind = error_kind(
                error.code.unwrap_or(500),
                error.status.as_deref(),
                &message,
                &error.details,
            );
            return Err(GatewayError::new(
                kind,
                format!(
                    "provider `{}` sent an error mid-stream: {message}",
                    self.name
                ),
            ));
        }
        if chunk.candidates.is_empty() {
            if let Some(reason) = chunk.prompt_feedback.and_then(|f| f.block_reason) {
                return Err(blocked(&self.name, &reason));
            }
        }
        for (position, candidate) in chunk.candidates.into_iter().enumerate() {
            let index = candidate.index.unwrap_or(position as u32);
            for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
                if part.thought == Some(true) {
                    continue;
                }
                if let Some(call) = part.function_call {
                    let count = self.calls.entry(index).or_insert(0);
                    self.pending.push_back(StreamEvent::ToolCall {
                        index,
                        call: *count,
                        id: Some(new_call_id()),
                        name: Some(call.name),
                        arguments: arguments_text(call.args),
                    });
                    *count += 1;
                } else if let Some(text) = part.text.filter(|t| !t.is_empty()) {
                    self.pending.push_back(StreamEvent::Content { index, text });
                }
            }
            if let Some(reason) = candidate.finish_reason {
                let has_calls = self.calls.get(&index).is_some_and(|n| *n > 0);
                self.pending.push_back(StreamEvent::Finish {
                    index,
                    reason: finish_reason(Some(&reason), has_calls),
                });
                self.finish_seen = true;
            }
        }
        if let Some(usage) = chunk.usage_metadata {
            self.usage = Some(usage.into());
        }
        Ok(())
    }
}

async fn next_event(
    mut s: StreamState,
) -> Option<(Result<StreamEvent, GatewayError>, StreamState)> {
    loop {
        if let Some(event) = s.pending.pop_front() {
            return Some((Ok(event), s));
        }
        if s.finished {
            return None;
        }
        let fail = |s: &mut StreamState, kind: ErrorKind, message: String| {
            s.finished = true;
            Err(GatewayError::new(kind, message))
        };
        match http::read_body(&s.name, &mut s.body, s.idle, s.deadline).await {
            BodyRead::Failed(error) => {
                s.finished = true;
                return Some((Err(error), s));
            }
            BodyRead::End => {
                s.finished = true;
                if !s.finish_seen {
                    let message = format!(
                        "provider `{}` stream ended before its finish reason",
                        s.name
                    );
                    let err = fail(&mut s, ErrorKind::UpstreamConnection, message);
                    return Some((err, s));
                }
                if let Some(usage) = s.usage.take() {
                    s.pending.push_back(StreamEvent::Usage(usage));
                }
            }
            BodyRead::Bytes(bytes) => {
                let events = match s.decoder.push(&bytes) {
                    Ok(events) => events,
                    Err(e) => {
                        s.finished = true;
                        s.pending.clear();
                        let message = format!("provider `{}` {e}", s.name);
                        return Some((
                            Err(GatewayError::new(ErrorKind::UpstreamMalformed, message)),
                            s,
                        ));
                    }
                };
                for event in events {
                    let parsed = serde_json::from_str::<GenerateResponse>(&event.data);
                    let result = match parsed {
                        Ok(chunk) => s.absorb(chunk),
                        Err(e) => Err(GatewayError::new(
                            ErrorKind::UpstreamMalformed,
                            format!("provider `{}` sent a malformed chunk: {e}", s.name),
                        )),
                    };
                    if let Err(error) = result {
                        s.finished = true;
                        s.pending.clear();
                        return Some((Err(error), s));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::media::MediaSettings;
    use crate::provider::{VertexCredentials, VertexSettings};
    use bytes::Bytes;

    fn request(value: Value) -> ChatRequest {
        serde_json::from_value(value).unwrap()
    }

    fn body_json(request: &ChatRequest, media: &HashMap<String, MediaData>) -> Value {
        let call = UpstreamRequest {
            request,
            model: "gemini-2.0-flash",
            reasoning_effort: None,
        };
        serde_json::to_value(request_body(&call, media).unwrap()).unwrap()
    }

    fn ctx() -> AdapterContext {
        AdapterContext {
            name: "google".into(),
            timeouts: Timeouts::default(),
            media: MediaFetcher::new(MediaSettings::default()),
        }
    }

    #[test]
    fn request_body_translates_messages_tools_and_generation_config() {
        let r = request(json!({
            "model": "agent/gemini",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "user", "content": [{"type": "text", "text": "And Rome."}]},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "$schema": "http://json-schema.org/draft-07/schema#",
                    "title": "Args", "additionalProperties": false,
                    "properties": {"city": {"type": "string", "title": "City"}},
                    "required": ["city"]}}},
                {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 100,
            "max_completion_tokens": 200,
            "stop": ["a", "b", "c", "d", "e", "f"],
            "seed": 7,
            "n": 2,
            "reasoning_effort": "medium",
            "response_format": {"type": "json_object"},
            "metadata": {"x": 1},
            "use_fallback": "never"
        }));
        assert_eq!(
            body_json(&r, &HashMap::new()),
            json!({
                "contents": [{"role": "user", "parts": [{"text": "Weather in Paris?"}, {"text": "And Rome."}]}],
                "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use tools."}]},
                "tools": [{"functionDeclarations": [
                    {"name": "get_weather", "description": "Weather", "parameters": {
                        "type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}},
                    {"name": "noop"}
                ]}],
                "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
                "generationConfig": {
                    "temperature": 0.2, "topP": 0.9, "maxOutputTokens": 200,
                    "stopSequences": ["a", "b", "c", "d", "e"], "seed": 7, "candidateCount": 2,
                    "responseMimeType": "application/json",
                    "thinkingConfig": {"thinkingBudget": 8192}
                }
            })
        );

        // tool_choice modes; the resolved effort wins over the request's.
        for (choice, mode) in [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")] {
            let r = request(
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": choice,
                "reasoning_effort": "low"}),
            );
            let call = UpstreamRequest {
                request: &r,
                model: "m",
                reasoning_effort: Some("high"),
            };
            let json = serde_json::to_value(request_body(&call, &HashMap::new()).unwrap()).unwrap();
            assert_eq!(
                json["toolConfig"],
                json!({"functionCallingConfig": {"mode": mode}})
            );
            assert_eq!(
                json["generationConfig"]["thinkingConfig"]["thinkingBudget"],
                24576
            );
        }
        // A tool_choice without tools is not sent; nor an empty generationConfig.
        let r = request(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "tool_choice": "required", "stop": "END"}),
        );
        let json = body_json(&r, &HashMap::new());
        assert!(json.get("toolConfig").is_none() && json.get("tools").is_none());
        assert_eq!(json["generationConfig"], json!({"stopSequences": ["END"]}));
        let r = request(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
        assert!(body_json(&r, &HashMap::new())
            .get("generationConfig")
            .is_none());
    }

    #[test]
    fn tool_turns_become_function_calls_and_responses() {
        let r = request(json!({"model": "m", "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "{\"temp\": 21}"},
            {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
            {"role": "tool", "tool_call_id": "call_b", "content": "[1, 2]"},
            {"role": "assistant", "content": "Paris: 21."},
            {"role": "assistant", "content": null},
            {"role": "user", "content": "Thanks"}
        ]}));
        assert_eq!(
            body_json(&r, &HashMap::new())["contents"],
            json!([
                {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
                {"role": "model", "parts": [
                    {"text": "Checking."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                     "thoughtSignature": "skip_thought_signature_validator"},
                    {"functionCall": {"name": "get_time", "args": {}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                    {"functionResponse": {"name": "get_time", "response": {"result": "12:00"}}},
                    {"functionResponse": {"name": "get_time", "response": {"result": [1, 2]}}}
                ]},
                {"role": "model", "parts": [{"text": "Paris: 21."}]},
                {"role": "user", "parts": [{"text": "Thanks"}]}
            ])
        );

        let orphan = request(json!({"model": "m", "messages": [
            {"role": "user", "content": "x"},
            {"role": "tool", "tool_call_id": "call_zzz", "content": "1"}
        ]}));
        let call = UpstreamRequest {
            request: &orphan,
            model: "m",
            reasoning_effort: None,
        };
        let err = request_body(&call, &HashMap::new()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest);
        assert_eq!(err.param.as_deref(), Some("messages[1].tool_call_id"));

        let bad_args = request(json!({"model": "m", "messages": [
            {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}
        ]}));
        let call = UpstreamRequest {
            request: &bad_args,
            model: "m",
            reasoning_effort: None,
        };
        let err = request_body(&call, &HashMap::new()).unwrap_err();
        assert_eq!(
            err.param.as_deref(),
            Some("messages[0].tool_calls[0].function.arguments")
        );

        // Only instructions: they become the user turn.
        let only_system =
            request(json!({"model": "m", "messages": [{"role": "system", "content": "Say hi"}]}));
        let json = body_json(&only_system, &HashMap::new());
        assert_eq!(
            json["contents"],
            json!([{"role": "user", "parts": [{"text": "Say hi"}]}])
        );
        assert!(json.get("systemInstruction").is_none());
    }

    #[test]
    fn media_becomes_inline_data_or_file_data() {
        let r = request(
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Describe"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "image_url", "image_url": {"url": "gs://bucket/dog.webp"}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERg==", "filename": "a.pdf"}},
                {"type": "file", "file": {"file_id": "gs://bucket/report.pdf"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
            ]}]}),
        );
        assert_eq!(remote_media_urls(&r), ["https://example.com/cat.jpg"]);
        let mut media = HashMap::new();
        media.insert(
            "https://example.com/cat.jpg".to_string(),
            MediaData {
                mime: "image/jpeg".into(),
                data: Bytes::from_static(b"meow"),
            },
        );
        assert_eq!(
            body_json(&r, &media)["contents"][0]["parts"],
            json!([
                {"text": "Describe"},
                {"inlineData": {"mimeType": "image/png", "data": "aGVsbG8="}},
                {"inlineData": {"mimeType": "image/jpeg", "data": "bWVvdw=="}},
                {"fileData": {"mimeType": "image/webp", "fileUri": "gs://bucket/dog.webp"}},
                {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBERg=="}},
                {"fileData": {"mimeType": "application/pdf", "fileUri": "gs://bucket/report.pdf"}},
                {"inlineData": {"mimeType": "image/jpeg", "data": "bWVvdw=="}}
            ])
        );

        let r = request(
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "file", "file": {"file_id": "file-abc123"}}
            ]}]}),
        );
        let call = UpstreamRequest {
            request: &r,
            model: "m",
            reasoning_effort: None,
        };
        let err = request_body(&call, &HashMap::new()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::UnsupportedByModel);
        assert_eq!(err.param.as_deref(), Some("messages[0].content[0].file_id"));
    }

    #[actix_rt::test]
    async fn loopback_media_urls_are_refused_before_any_call() {
        let client = GeminiClient::gemini(
            ctx(),
            GeminiSettings {
                base_url: "http://127.0.0.1:9".into(),
                api_key: Some("k".into()),
            },
        )
        .unwrap();
        let r = request(
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}
            ]}]}),
        );
        let err = client
            .complete(UpstreamRequest {
                request: &r,
                model: "gemini-2.0-flash",
                reasoning_effort: None,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code.as_deref(), Some("media_url_refused"));
    }

    #[actix_rt::test]
    async fn client_round_trips_with_the_mock_upstream() {
        let mock = flowgate_mock_upstream::MockUpstream::start();
        let gemini = GeminiClient::gemini(
            ctx(),
            GeminiSettings {
                base_url: mock.url(),
                api_key: Some("gemini-secret".into()),
            },
        )
        .unwrap();
        let r = request(json!({"model": "m", "messages": [
            {"role": "system", "content": "Extract."},
            {"role": "user", "content": "Jason is 25"}],
            "tools": [{"type": "function", "function": {"name": "User", "parameters": {"type": "object",
                "additionalProperties": false, "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "required": ["name", "age"]}}}],
            "tool_choice": {"type": "function", "function": {"name": "User"}}}));
        let call = |model: &'static str| UpstreamRequest {
            request: &r,
            model,
            reasoning_effort: None,
        };
        let c = gemini.complete(call("gemini-2.0-flash")).await.unwrap();
        let tool_call = &c.choices[0].message.tool_calls[0];
        assert_eq!(tool_call.name, "User");
        assert_eq!(tool_call.arguments, "{\"age\":0,\"name\":\"string\"}");
        assert_eq!(c.choices[0].finish_reason, FinishReason::ToolCalls);
        // 19 prompt characters, 25 of arguments.
        assert_eq!((c.usage.prompt_tokens, c.usage.completion_tokens), (5, 7));
        let sent = &mock.requests()[0];
        assert_eq!(sent.headers["x-goog-api-key"], "gemini-secret");
        assert!(!sent.headers.contains_key("authorization"));

        let events: Vec<StreamEvent> = gemini
            .stream(call("gemini-2.0-flash"))
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        assert!(matches!(&events[0], StreamEvent::ToolCall { name: Some(n), .. } if n == "User"));
        assert!(matches!(
            events[1],
            StreamEvent::Finish {
                reason: FinishReason::ToolCalls,
                ..
            }
        ));
        assert!(matches!(events[2], StreamEvent::Usage(u) if u.completion_tokens == 7));

        let err = gemini
            .complete(call("gemini-2.0-flash;status=429;retry_after=7"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::RateLimited);
        assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(err.upstream_status, Some(429));
        let err = gemini
            .stream(call("gemini-2.0-flash;status=503"))
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind, ErrorKind::Overloaded);
        assert!(err.message.contains("503 UNAVAILABLE"), "{}", err.message);
        let err = gemini
            .complete(call("gemini-2.0-flash;malformed"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamMalformed);

        let err = gemini
            .complete(call("gemini-2.0-flash;status=412"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamAuth);
        assert!(
            err.message.contains("412 FAILED_PRECONDITION: Scripted"),
            "{}",
            err.message
        );

        let keyless = GeminiClient::gemini(
            ctx(),
            GeminiSettings {
                base_url: mock.url(),
                api_key: None,
            },
        )
        .unwrap();
        let err = keyless
            .complete(call("gemini-2.0-flash"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamAuth);

        let settings = VertexSettings {
            project: "p".into(),
            region: "us-central1".into(),
            base_url: mock.url(),
            credentials: VertexCredentials::MetadataServer(mock.url()),
        };
        let tokens = TokenSource::for_provider(&ctx(), &settings.credentials).unwrap();
        let vertex = GeminiClient::vertex(ctx(), settings, tokens).unwrap();
        mock.clear();
        for _ in 0..3 {
            vertex.complete(call("gemini-2.5-pro")).await.unwrap();
        }
        let requests = mock.requests();
        let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/computeMetadata/v1/instance/service-accounts/default/token",
                "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
                "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
                "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
            ]
        );
        let bearer = &requests[1].headers["authorization"];
        assert!(bearer.starts_with("Bearer mock-token-"), "{bearer}");
        assert!(requests[2..]
            .iter()
            .all(|r| &r.headers["authorization"] == bearer));
        // A rejected token is dropped: the next call fetches another.
        let err = vertex
            .complete(call("gemini-2.5-pro;status=401"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamAuth);
        assert!(!err.message.contains("mock-token"), "{}", err.message);
        vertex.complete(call("gemini-2.5-pro")).await.unwrap();
        let requests = mock.requests();
        assert_eq!(
            requests
                .iter()
                .filter(|r| r.path.starts_with("/computeMetadata"))
                .count(),
            2
        );
        assert_ne!(&requests.last().unwrap().headers["authorization"], bearer);
    }

    #[test]
    fn json_schema_converts_to_gemini_schema() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Person",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "name": {"type": "string", "title": "Name", "minLength": 1, "format": "email"},
                "born": {"type": "string", "format": "date-time"},
                "age": {"anyOf": [{"type": "integer", "format": "int32"}, {"type": "null"}], "default": null, "title": "Age"},
                "nick": {"type": ["string", "null"], "description": "Nickname"},
                "role": {"enum": ["admin", "user"]},
                "level": {"type": "integer", "enum": [1, 2, 3]},
                "kind": {"const": "person"},
                "pet": {"$ref": "#/$defs/Pet", "description": "The pet"},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3, "uniqueItems": true},
                "id": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                "score": {"type": ["number", "string"]},
                "mixed": {"allOf": [{"$ref": "#/$defs/Pet"}, {"properties": {"age": {"type": "integer"}}, "required": ["age"]}]},
                "friend": {"$ref": "#"},
            },
            "required": ["name", "age", "ghost"],
            "$defs": {"Pet": {"type": "object", "title": "Pet", "additionalProperties": false,
                "properties": {"species": {"type": "string"}}, "required": ["species"]}}
        });
        let pet = json!({"type": "OBJECT", "properties": {"species": {"type": "STRING"}}, "required": ["species"]});
        let converted = json_schema_to_gemini_schema(&schema);
        let properties = &converted["properties"];
        assert_eq!(converted["type"], "OBJECT");
        assert_eq!(converted["required"], json!(["name", "age"]));
        for dropped in ["$schema", "title", "additionalProperties", "$defs"] {
            assert!(converted.get(dropped).is_none(), "{dropped} kept");
        }
        assert_eq!(
            properties["name"],
            json!({"type": "STRING", "minLength": 1})
        );
        assert_eq!(
            properties["born"],
            json!({"type": "STRING", "format": "date-time"})
        );
        assert_eq!(
            properties["age"],
            json!({"type": "INTEGER", "format": "int32", "nullable": true})
        );
        assert_eq!(
            properties["nick"],
            json!({"type": "STRING", "nullable": true, "description": "Nickname"})
        );
        assert_eq!(
            properties["role"],
            json!({"type": "STRING", "enum": ["admin", "user"]})
        );
        assert_eq!(properties["level"], json!({"type": "INTEGER"}));
        assert_eq!(
            properties["kind"],
            json!({"type": "STRING", "enum": ["person"]})
        );
        let mut described_pet = pet.clone();
        described_pet["description"] = json!("The pet");
        assert_eq!(properties["pet"], described_pet);
        assert_eq!(
            properties["tags"],
            json!({"type": "ARRAY", "items": {"type": "STRING"}, "maxItems": 3})
        );
        assert_eq!(
            properties["id"],
            json!({"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]})
        );
        assert_eq!(
            properties["score"],
            json!({"anyOf": [{"type": "NUMBER"}, {"type": "STRING"}]})
        );
        assert_eq!(
            properties["mixed"],
            json!({"type": "OBJECT", "properties": {"species": {"type": "STRING"}, "age": {"type": "INTEGER"}},
                "required": ["species", "age"]})
        );
        // The recursive reference is expanded once, then cut.
        assert_eq!(properties["friend"]["type"], "OBJECT");
        assert_eq!(
            properties["friend"]["properties"]["friend"],
            json!({"type": "OBJECT"})
        );
        assert_eq!(properties["friend"]["properties"]["pet"], described_pet);

        // Arrays need items; boolean schemas are unconstrained.
        assert_eq!(
            json_schema_to_gemini_schema(&json!({"type": "array"})),
            json!({"type": "ARRAY", "items": {"type": "STRING"}})
        );
        assert_eq!(json_schema_to_gemini_schema(&json!(true)), json!({}));
    }

    #[test]
    fn json_schema_response_format_becomes_response_schema() {
        let r = request(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "P", "strict": true,
                "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "required": ["a"],
                    "additionalProperties": false, "$defs": {"A": {"type": "integer"}}}}}}),
        );
        assert_eq!(
            body_json(&r, &HashMap::new())["generationConfig"],
            json!({"responseMimeType": "application/json", "responseSchema": {
                "type": "OBJECT", "properties": {"a": {"type": "INTEGER"}}, "required": ["a"]}})
        );
    }

    fn response(value: Value) -> GenerateResponse {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn responses_map_text_tool_calls_finish_reasons_and_usage() {
        let c = completion_from(
            "google",
            response(json!({
                "candidates": [{"content": {"role": "model", "parts": [
                    {"text": "Let me think", "thought": true},
                    {"text": "Hello "}, {"text": "world"}
                ]}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 7,
                    "cachedContentTokenCount": 4, "totalTokenCount": 22},
                "modelVersion": "gemini-2.5-flash", "responseId": "abc"
            })),
        )
        .unwrap();
        assert_eq!(c.choices[0].message.content.as_deref(), Some("Hello world"));
        assert_eq!(c.choices[0].finish_reason, FinishReason::Stop);
        assert_eq!(
            c.usage,
            Usage {
                prompt_tokens: 10,
                completion_tokens: 12,
                cached_tokens: 4,
                reasoning_tokens: 7,
                cache_write_tokens: 0
            }
        );

        let c = completion_from(
            "google",
            response(json!({
                "candidates": [{"content": {"role": "model", "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2ln"},
                    {"functionCall": {"name": "noop"}}
                ]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2}
            })),
        )
        .unwrap();
        let choice = &c.choices[0];
        assert_eq!(choice.finish_reason, FinishReason::ToolCalls);
        assert_eq!(choice.message.content, None);
        let calls = &choice.message.tool_calls;
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments, "{\"city\":\"Paris\"}");
        assert_eq!(calls[1].arguments, "{}");
        assert!(calls[0].id.starts_with("call_") && calls[0].id.len() == 29);
        assert_ne!(calls[0].id, calls[1].id);

        for (reason, expected) in [
            ("MAX_TOKENS", FinishReason::Length),
            ("SAFETY", FinishReason::ContentFilter),
            ("RECITATION", FinishReason::ContentFilter),
            ("BLOCKLIST", FinishReason::ContentFilter),
            ("PROHIBITED_CONTENT", FinishReason::ContentFilter),
            ("SPII", FinishReason::ContentFilter),
            ("OTHER", FinishReason::Stop),
            ("MALFORMED_FUNCTION_CALL", FinishReason::Stop),
        ] {
            let c = completion_from(
                "google",
                response(json!({"candidates": [{"finishReason": reason}, {"finishReason": reason, "index": 1,
                    "content": {"parts": [{"text": "x"}]}}]})),
            )
            .unwrap();
            assert_eq!(c.choices[0].finish_reason, expected, "{reason}");
            assert_eq!(c.choices[1].index, 1);
            assert_eq!(c.choices[1].message.content.as_deref(), Some("x"));
        }
        let filtered = completion_from(
            "google",
            response(json!({"candidates": [{"finishReason": "SAFETY"}]})),
        )
        .unwrap();
        assert_eq!(filtered.choices[0].message.content, None);

        let err = completion_from(
            "google",
            response(json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}})),
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ContentFiltered);
        assert!(err.message.contains("SAFETY"), "{}", err.message);
        let err = completion_from("google", response(json!({}))).unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamMalformed);
    }

    fn state() -> StreamState {
        StreamState {
            name: "google".into(),
            body: futures::stream::empty().boxed(),
            decoder: SseDecoder::new(),
            pending: VecDeque::new(),
            calls: HashMap::new(),
            usage: None,
            finish_seen: false,
            finished: false,
            idle: Duration::from_secs(1),
            deadline: Instant::now() + Duration::from_secs(5),
        }
    }

    #[test]
    fn stream_chunks_become_events() {
        let mut s = state();
        for chunk in [
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "thinking", "thought": true}]}}],
                "usageMetadata": {"promptTokenCount": 5}}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "lo"}, {"functionCall": {"name": "f", "args": {"a": 1}}}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "g", "args": {}}}]},
                "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3, "thoughtsTokenCount": 2}}),
        ] {
            s.absorb(response(chunk)).unwrap();
        }
        let events: Vec<StreamEvent> = s.pending.drain(..).collect();
        assert_eq!(events.len(), 5, "{events:?}");
        assert_eq!(
            events[0],
            StreamEvent::Content {
                index: 0,
                text: "Hel".into()
            }
        );
        assert_eq!(
            events[1],
            StreamEvent::Content {
                index: 0,
                text: "lo".into()
            }
        );
        assert!(
            matches!(&events[2], StreamEvent::ToolCall { call: 0, id: Some(id), name: Some(n), arguments, .. }
            if id.starts_with("call_") && n == "f" && arguments == "{\"a\":1}")
        );
        assert!(
            matches!(&events[3], StreamEvent::ToolCall { call: 1, name: Some(n), arguments, .. }
            if n == "g" && arguments == "{}")
        );
        assert_eq!(
            events[4],
            StreamEvent::Finish {
                index: 0,
                reason: FinishReason::ToolCalls
            }
        );
        assert!(s.finish_seen);
        assert_eq!(
            s.usage,
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 5,
                reasoning_tokens: 2,
                ..Usage::default()
            })
        );

        let mut s = state();
        let err = s
            .absorb(response(
                json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}),
            ))
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ContentFiltered);
        let err = s
            .absorb(response(
                json!({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}),
            ))
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Overloaded);
    }

    #[actix_rt::test]
    async fn streams_end_with_usage_or_fail_when_cut() {
        let sse = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hi\"}], \"role\": \"model\"}, \"index\": 0}]}\r\n\r\n\
                   data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"\"}], \"role\": \"model\"}, \"finishReason\": \"STOP\", \"index\": 0}], \
                   \"usageMetadata\": {\"promptTokenCount\": 2, \"candidatesTokenCount\": 1, \"totalTokenCount\": 3}}\r\n\r\n";
        let run = |body: &'static str| async move {
            let mut s = state();
            s.body = futures::stream::iter(
                body.as_bytes()
                    .chunks(7)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect::<Vec<_>>(),
            )
            .boxed();
            futures::stream::unfold(s, next_event)
                .collect::<Vec<_>>()
                .await
        };
        let events = run(sse).await;
        let events: Vec<StreamEvent> = events.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            events,
            vec![
                StreamEvent::Content {
                    index: 0,
                    text: "Hi".into()
                },
                StreamEvent::Finish {
                    index: 0,
                    reason: FinishReason::Stop
                },
                StreamEvent::Usage(Usage {
                    prompt_tokens: 2,
                    completion_tokens: 1,
                    ..Usage::default()
                }),
            ]
        );
        let cut = &sse[..sse
            .find("data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"\"}]")
            .unwrap()];
        let events = run(cut).await;
        assert_eq!(events.len(), 2);
        let err = events[1].as_ref().unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamConnection);
        let events = run("data: {not json\n\n").await;
        assert_eq!(
            events[0].as_ref().unwrap_err().kind,
            ErrorKind::UpstreamMalformed
        );
    }

    #[test]
    fn google_errors_map_to_kinds() {
        let none: &[Value] = &[];
        assert_eq!(
            error_kind(429, Some("RESOURCE_EXHAUSTED"), "quota", none),
            ErrorKind::RateLimited
        );
        assert_eq!(
            error_kind(503, Some("UNAVAILABLE"), "overloaded", none),
            ErrorKind::Overloaded
        );
        assert_eq!(error_kind(503, None, "", none), ErrorKind::Overloaded);
        assert_eq!(
            error_kind(500, Some("INTERNAL"), "", none),
            ErrorKind::UpstreamServer
        );
        assert_eq!(error_kind(500, None, "", none), ErrorKind::UpstreamServer);
        assert_eq!(
            error_kind(403, Some("PERMISSION_DENIED"), "", none),
            ErrorKind::UpstreamAuth
        );
        assert_eq!(
            error_kind(401, Some("UNAUTHENTICATED"), "", none),
            ErrorKind::UpstreamAuth
        );
        assert_eq!(
            error_kind(504, Some("DEADLINE_EXCEEDED"), "", none),
            ErrorKind::Timeout
        );
        assert_eq!(
            error_kind(
                400,
                Some("INVALID_ARGUMENT"),
                "Invalid value at 'contents'",
                none
            ),
            ErrorKind::UpstreamBadRequest
        );
        assert_eq!(
            error_kind(404, Some("NOT_FOUND"), "models/x is not found", none),
            ErrorKind::UpstreamBadRequest
        );
        assert_eq!(
            error_kind(
                400,
                Some("INVALID_ARGUMENT"),
                "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
                none
            ),
            ErrorKind::ContextTooLong
        );
        assert_eq!(
            error_kind(
                400,
                Some("INVALID_ARGUMENT"),
                "Unable to submit request because the input token count is 1200000 but model only supports up to 1048576.",
                none
            ),
            ErrorKind::ContextTooLong
        );
        let key_invalid = [
            json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}),
        ];
        assert_eq!(
            error_kind(
                400,
                Some("INVALID_ARGUMENT"),
                "API key not valid.",
                &key_invalid
            ),
            ErrorKind::UpstreamAuth
        );
        let retry = [
            json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure"}),
            json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}),
        ];
        assert_eq!(retry_delay(&retry), Some(Duration::from_secs(37)));
        assert_eq!(
            retry_delay(&[json!({"retryDelay": "0.5s"})]),
            Some(Duration::from_millis(500))
        );
        assert_eq!(retry_delay(none), None);
        let parsed = parse_error_body(
            br#"[{"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}]"#,
        )
        .unwrap();
        assert_eq!(parsed.status.as_deref(), Some("RESOURCE_EXHAUSTED"));
    }

    #[test]
    fn urls_carry_the_model_but_never_the_key() {
        let gemini = GeminiClient::gemini(
            ctx(),
            GeminiSettings {
                base_url: "https://generativelanguage.googleapis.com/".into(),
                api_key: Some("AIza-secret".into()),
            },
        )
        .unwrap();
        assert_eq!(
            gemini.url("gemini-2.0-flash", false),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"
        );
        assert_eq!(
            gemini.url("gemini-2.0-flash;status=503", true),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash;status=503:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            gemini.url("tunedModels/my model", false),
            "https://generativelanguage.googleapis.com/v1beta/tunedModels/my%20model:generateContent"
        );
        assert!(!gemini.url("m", true).contains("AIza"));
        assert!(!format!("{gemini:?}").contains("AIza"));
        let pinned = GeminiClient::gemini(
            ctx(),
            GeminiSettings {
                base_url: "http://127.0.0.1:1/v1alpha".into(),
                api_key: None,
            },
        )
        .unwrap();
        assert_eq!(
            pinned.url("m", false),
            "http://127.0.0.1:1/v1alpha/models/m:generateContent"
        );

        let settings = VertexSettings {
            project: "my-project".into(),
            region: "europe-west4".into(),
            base_url: "https://europe-west4-aiplatform.googleapis.com".into(),
            credentials: VertexCredentials::AccessToken("ya29.token".into()),
        };
        let tokens = TokenSource::for_provider(&ctx(), &settings.credentials).unwrap();
        let vertex = GeminiClient::vertex(ctx(), settings, tokens).unwrap();
        assert_eq!(
            vertex.url("gemini-2.5-pro", false),
            "https://europe-west4-aiplatform.googleapis.com/v1/projects/my-project/locations/europe-west4/publishers/google/models/gemini-2.5-pro:generateContent"
        );
        assert_eq!(
            vertex.url("endpoints/123", true),
            "https://europe-west4-aiplatform.googleapis.com/v1/projects/my-project/locations/europe-west4/endpoints/123:streamGenerateContent?alt=sse"
        );
        assert!(!format!("{vertex:?}").contains("ya29"));
        let bad =
            TokenSource::for_provider(&ctx(), &VertexCredentials::ServiceAccount("{}".into()))
                .unwrap_err();
        assert!(bad.contains("provider `google`"), "{bad}");
    }
}
