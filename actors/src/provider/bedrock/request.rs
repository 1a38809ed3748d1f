//! The OpenAI request translated into a Converse request: private wire types and the mapping.
//!
//! Media (images, documents) must be sent as bytes: [`media_urls`] lists what the request
//! refers to, the caller loads it (see `MediaFetcher::load`), and [`translate`] builds the body
//! from the loaded bytes. Translation itself is synchronous and does no I/O.

use std::collections::{HashMap, HashSet};

use base64::Engine;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::super::media::{guess_mime, MediaData};
use crate::error::{ErrorKind, GatewayError};
use crate::wire::{
    ChatRequest, ContentPart, FilePart, Message, MessageContent, ResponseFormat, Role, Stop,
    ToolChoice, ToolChoiceMode,
};

// ---- wire types ----

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) struct ConverseBody {
    pub messages: Vec<Turn>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub system: Vec<SystemBlock>,
    #[serde(skip_serializing_if = "InferenceConfig::is_empty")]
    pub inference_config: InferenceConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_config: Option<ToolConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_model_request_fields: Option<Value>,
}

#[derive(Debug, Serialize, PartialEq)]
pub(super) struct SystemBlock {
    pub text: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub(super) struct Turn {
    pub role: &'static str,
    pub content: Vec<Block>,
}

/// A content block: `{"text": …}`, `{"image": …}`, `{"toolUse": …}`, …
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) enum Block {
    Text(String),
    Image(ImageBlock),
    Document(DocumentBlock),
    ToolUse(ToolUseBlock),
    ToolResult(ToolResultBlock),
}

#[derive(Debug, Serialize, PartialEq)]
pub(super) struct ImageBlock {
    pub format: &'static str,
    pub source: Source,
}

#[derive(Debug, Serialize, PartialEq)]
pub(super) struct DocumentBlock {
    pub format: &'static str,
    pub name: String,
    pub source: Source,
}

/// Bytes, base64 in JSON.
#[derive(Debug, Serialize, PartialEq)]
pub(super) struct Source {
    pub bytes: String,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) struct ToolUseBlock {
    pub tool_use_id: String,
    pub name: String,
    pub input: Value,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) struct ToolResultBlock {
    pub tool_use_id: String,
    pub content: Vec<ToolResultContent>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) enum ToolResultContent {
    Json(Value),
    Text(String),
    Image(ImageBlock),
}

#[derive(Debug, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct InferenceConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop_sequences: Vec<String>,
}

impl InferenceConfig {
    fn is_empty(&self) -> bool {
        *self == InferenceConfig::default()
    }
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) struct ToolConfig {
    pub tools: Vec<ToolEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ChoiceBody>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) struct ToolEntry {
    pub tool_spec: ToolSpec,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) struct ToolSpec {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub input_schema: InputSchema,
}

#[derive(Debug, Serialize, PartialEq)]
pub(super) struct InputSchema {
    pub json: Value,
}

/// `{"any": {}}` or `{"tool": {"name": …}}` (`auto` is the default, never sent).
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) enum ChoiceBody {
    Any(Empty),
    Tool { name: String },
}

#[derive(Debug, Serialize, PartialEq)]
pub(super) struct Empty {}

// ---- model families ----

/// The model families on Bedrock whose Converse support differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    /// Anthropic Claude: forced tool choice, JSON tool results, extended thinking (3.7+).
    Claude,
    /// Amazon Nova: forced tool choice, JSON tool results.
    Nova,
    /// Meta Llama: `auto` tool choice only.
    Llama,
    /// Mistral: `auto` and `any` tool choice.
    Mistral,
    Other,
}

impl Family {
    /// The family of a model id, an inference-profile id (`us.anthropic.…`) or an ARN.
    pub fn of(model: &str) -> Family {
        let id = if model.starts_with("arn:") {
            model.rsplit('/').next().unwrap_or(model)
        } else {
            model
        };
        let id = id.to_ascii_lowercase();
        let segments: Vec<&str> = id.split('.').collect();
        for (i, segment) in segments.iter().enumerate().take(2) {
            match *segment {
                "anthropic" => return Family::Claude,
                "meta" => return Family::Llama,
                "mistral" => return Family::Mistral,
                "amazon" => {
                    return if segments.get(i + 1).is_some_and(|s| s.starts_with("nova")) {
                        Family::Nova
                    } else {
                        Family::Other
                    }
                }
                _ => {}
            }
        }
        Family::Other
    }

    fn forces_any(self) -> bool {
        matches!(self, Family::Claude | Family::Nova | Family::Mistral)
    }

    fn forces_named(self) -> bool {
        matches!(self, Family::Claude | Family::Nova)
    }

    fn json_tool_results(self) -> bool {
        matches!(self, Family::Claude | Family::Nova)
    }
}

/// Whether a Claude model id takes extended thinking (3.7 and later).
fn claude_thinks(model: &str) -> bool {
    let model = model.to_ascii_lowercase();
    ![
        "claude-v2",
        "claude-instant",
        "claude-3-haiku",
        "claude-3-sonnet",
        "claude-3-opus",
        "claude-3-5",
    ]
    .iter()
    .any(|old| model.contains(old))
}

/// The thinking budget for a `reasoning_effort`; `None` for no thinking.
fn thinking_budget(effort: &str) -> Option<u32> {
    match effort {
        "minimal" => Some(1024),
        "low" => Some(2048),
        "medium" => Some(8192),
        "high" => Some(16384),
        "xhigh" => Some(32768),
        _ => None,
    }
}

/// Smallest thinking budget Claude accepts.
const MIN_THINKING_BUDGET: u32 = 1024;
/// Output tokens left for the answer when thinking is on and no limit was given.
const ANSWER_TOKENS_WITH_THINKING: u32 = 8192;

// ---- translation ----

/// A translated request: the body, and what mapping the answer back needs.
#[derive(Debug)]
pub(super) struct Translated {
    pub body: ConverseBody,
    /// The tool standing in for a `json_schema` response format: its input is the answer.
    pub output_tool: Option<String>,
}

/// The URLs (data URIs or http(s)) of the images and files the request refers to, once each,
/// in order.
pub(super) fn media_urls(request: &ChatRequest) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for message in &request.messages {
        let Some(MessageContent::Parts(parts)) = &message.content else {
            continue;
        };
        for part in parts {
            let url = match part {
                ContentPart::ImageUrl { image_url } => Some(image_url.url.as_str()),
                ContentPart::File { file } => file.file_data.as_deref().filter(|d| is_url(d)),
                _ => None,
            };
            if let Some(url) = url {
                if seen.insert(url) {
                    out.push(url.to_string());
                }
            }
        }
    }
    out
}

fn is_url(data: &str) -> bool {
    data.starts_with("data:") || data.starts_with("https://") || data.starts_with("http://")
}

fn unsupported(message: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorKind::UnsupportedByModel, message)
}

fn invalid(message: impl Into<String>, param: String) -> GatewayError {
    GatewayError::invalid(message).with_param(param)
}

/// `[a-zA-Z0-9_-]{1,64}`: what Bedrock accepts as a tool use id or tool name.
fn sanitize_id(id: &str) -> String {
    let cleaned: String = id
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
    if cleaned.is_empty() {
        "tool".to_string()
    } else {
        cleaned
    }
}

/// A document name Bedrock accepts: alphanumerics, single whitespace, hyphens, parentheses
/// and square brackets, at most 200 characters; the extension is dropped.
pub(super) fn document_name(filename: Option<&str>) -> String {
    let base = filename.unwrap_or("").trim();
    let base = match base.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() <= 5 => stem,
        _ => base,
    };
    let mut name = String::new();
    for c in base.chars() {
        let keep = c.is_ascii_alphanumeric() || matches!(c, '-' | '(' | ')' | '[' | ']');
        if keep {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with(' ') {
            name.push(' ');
        }
    }
    let name: String = name.trim_end().chars().take(200).collect();
    let name = name.trim_end().to_string();
    if name.is_empty() {
        "document".to_string()
    } else {
        name
    }
}

/// The image format of media: from its MIME type, else from its first bytes.
fn image_format(media: &MediaData) -> Option<&'static str> {
    let from_mime = match media.mime.to_ascii_lowercase().as_str() {
        "image/png" => Some("png"),
        "image/jpeg" | "image/jpg" | "image/pjpeg" => Some("jpeg"),
        "image/gif" => Some("gif"),
        "image/webp" => Some("webp"),
        _ => None,
    };
    from_mime.or_else(|| {
        let d = &media.data[..];
        if d.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some("png")
        } else if d.starts_with(&[0xff, 0xd8, 0xff]) {
            Some("jpeg")
        } else if d.starts_with(b"GIF87a") || d.starts_with(b"GIF89a") {
            Some("gif")
        } else if d.len() >= 12 && &d[..4] == b"RIFF" && &d[8..12] == b"WEBP" {
            Some("webp")
        } else {
            None
        }
    })
}

/// The document format of media: from its MIME type, the file name's extension, or `%PDF`.
fn document_format(mime: &str, filename: Option<&str>, data: &[u8]) -> Option<&'static str> {
    let from_mime = match mime.to_ascii_lowercase().as_str() {
        "application/pdf" => Some("pdf"),
        "text/csv" => Some("csv"),
        "application/msword" => Some("doc"),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => Some("docx"),
        "application/vnd.ms-excel" => Some("xls"),
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => Some("xlsx"),
        "text/html" => Some("html"),
        "text/plain" => Some("txt"),
        "text/markdown" => Some("md"),
        _ => None,
    };
    let from_name = || {
        let ext = filename?.rsplit_once('.')?.1.to_ascii_lowercase();
        [
            "pdf", "csv", "doc", "docx", "xls", "xlsx", "html", "txt", "md",
        ]
        .into_iter()
        .find(|f| *f == ext)
    };
    from_mime
        .or_else(from_name)
        .or_else(|| data.starts_with(b"%PDF").then_some("pdf"))
}

struct Builder<'a> {
    family: Family,
    media: &'a HashMap<String, MediaData>,
    document_names: HashSet<String>,
}

impl Builder<'_> {
    fn media(&self, url: &str, param: &str) -> Result<&MediaData, GatewayError> {
        self.media
            .get(url)
            .ok_or_else(|| GatewayError::internal(format!("media for `{param}` was not loaded")))
    }

    fn image(&self, url: &str, param: String) -> Result<ImageBlock, GatewayError> {
        let media = self.media(url, &param)?;
        let format = image_format(media).ok_or_else(|| {
            unsupported(format!(
                "Bedrock takes png, jpeg, gif and webp images; `{param}` is `{}`",
                media.mime
            ))
            .with_param(param.clone())
        })?;
        Ok(ImageBlock {
            format,
            source: Source {
                bytes: media.base64(),
            },
        })
    }

    fn document(&mut self, file: &FilePart, param: String) -> Result<DocumentBlock, GatewayError> {
        let filename = file.filename.as_deref();
        let (mime, data) = match file.file_data.as_deref() {
            Some(data) if is_url(data) => {
                let media = self.media(data, &param)?;
                (media.mime.clone(), media.data.to_vec())
            }
            Some(raw) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(raw.trim())
                    .map_err(|e| {
                        invalid(
                            format!("`file_data` is neither a data URI nor base64: {e}"),
                            param.clone(),
                        )
                    })?;
                (guess_mime(filename.unwrap_or("")).to_string(), bytes)
            }
            None => {
                return Err(unsupported(
                    "Bedrock cannot read uploaded files (`file_id`); send the file inline as \
                     `file_data`",
                )
                .with_param(param))
            }
        };
        let format = document_format(&mime, filename, &data).ok_or_else(|| {
            unsupported(format!(
                "Bedrock takes pdf, csv, doc, docx, xls, xlsx, html, txt and md documents; \
                 `{param}` is `{mime}`"
            ))
            .with_param(param.clone())
        })?;
        // Names must be unique within a request.
        let base = document_name(filename);
        let mut name = base.clone();
        let mut n = 2;
        while !self.document_names.insert(name.clone()) {
            name = format!("{base} ({n})");
            n += 1;
        }
        Ok(DocumentBlock {
            format,
            name,
            source: Source {
                bytes: base64::engine::general_purpose::STANDARD.encode(&data),
            },
        })
    }

    fn user_blocks(&mut self, message: &Message, i: usize) -> Result<Vec<Block>, GatewayError> {
        let mut blocks = Vec::new();
        match &message.content {
            None => {}
            Some(MessageContent::Text(text)) => push_text(&mut blocks, text),
            Some(MessageContent::Parts(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    let param = format!("messages[{i}].content[{j}]");
                    match part {
                        ContentPart::Text { text } => push_text(&mut blocks, text),
                        ContentPart::Refusal { refusal } => push_text(&mut blocks, refusal),
                        ContentPart::ImageUrl { image_url } => {
                            blocks.push(Block::Image(self.image(&image_url.url, param)?))
                        }
                        ContentPart::File { file } => {
                            blocks.push(Block::Document(self.document(file, param)?))
                        }
                        ContentPart::InputAudio { .. } => {
                            return Err(unsupported(
                                "Bedrock's Converse API does not take audio input",
                            )
                            .with_param(param))
                        }
                    }
                }
            }
        }
        Ok(blocks)
    }

    fn tool_result(&self, message: &Message, i: usize) -> Result<Block, GatewayError> {
        let id = message
            .tool_call_id
            .as_deref()
            .or(message.name.as_deref())
            .ok_or_else(|| {
                invalid(
                    "a tool message needs a `tool_call_id`",
                    format!("messages[{i}].tool_call_id"),
                )
            })?;
        let mut content = Vec::new();
        let json_ok = self.family.json_tool_results();
        let push = |content: &mut Vec<ToolResultContent>, text: &str| {
            if text.trim().is_empty() {
                return;
            }
            match serde_json::from_str::<Value>(text) {
                Ok(value @ Value::Object(_)) if json_ok => {
                    content.push(ToolResultContent::Json(value))
                }
                _ => content.push(ToolResultContent::Text(text.to_string())),
            }
        };
        match &message.content {
            None => {}
            Some(MessageContent::Text(text)) => push(&mut content, text),
            Some(MessageContent::Parts(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    match part {
                        ContentPart::Text { text } => push(&mut content, text),
                        ContentPart::ImageUrl { image_url } => {
                            let param = format!("messages[{i}].content[{j}]");
                            content
                                .push(ToolResultContent::Image(self.image(&image_url.url, param)?));
                        }
                        _ => {}
                    }
                }
            }
        }
        if content.is_empty() {
            content.push(ToolResultContent::Text("(no output)".to_string()));
        }
        Ok(Block::ToolResult(ToolResultBlock {
            tool_use_id: sanitize_id(id),
            content,
        }))
    }
}

fn assistant_blocks(message: &Message, i: usize) -> Result<Vec<Block>, GatewayError> {
    let mut blocks = Vec::new();
    match &message.content {
        None => {}
        Some(MessageContent::Text(text)) => push_text(&mut blocks, text),
        Some(MessageContent::Parts(parts)) => {
            for part in parts {
                match part {
                    ContentPart::Text { text } => push_text(&mut blocks, text),
                    ContentPart::Refusal { refusal } => push_text(&mut blocks, refusal),
                    _ => {}
                }
            }
        }
    }
    for (j, call) in message.tool_calls.iter().flatten().enumerate() {
        let arguments = call.function.arguments.trim();
        let input = if arguments.is_empty() {
            Value::Object(Map::new())
        } else {
            match serde_json::from_str::<Value>(arguments) {
                Ok(value @ Value::Object(_)) => value,
                _ => {
                    return Err(invalid(
                        "tool call arguments must be a JSON object",
                        format!("messages[{i}].tool_calls[{j}].function.arguments"),
                    ))
                }
            }
        };
        blocks.push(Block::ToolUse(ToolUseBlock {
            tool_use_id: sanitize_id(&call.id),
            name: call.function.name.clone(),
            input,
        }));
    }
    Ok(blocks)
}

/// Bedrock rejects blank text blocks.
fn push_text(blocks: &mut Vec<Block>, text: &str) {
    if !text.trim().is_empty() {
        blocks.push(Block::Text(text.to_string()));
    }
}

/// Appends blocks as a turn of `role`, merged into the previous turn when it has the same
/// role (Converse requires alternating turns).
fn push_turn(turns: &mut Vec<Turn>, role: &'static str, blocks: Vec<Block>) {
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

fn tool_spec(name: &str, description: Option<&str>, schema: Option<&Value>) -> ToolEntry {
    let schema = match schema {
        Some(schema @ Value::Object(_)) => schema.clone(),
        _ => json!({"type": "object", "properties": {}}),
    };
    ToolEntry {
        tool_spec: ToolSpec {
            name: name.to_string(),
            description: description.filter(|d| !d.is_empty()).map(str::to_string),
            input_schema: InputSchema { json: schema },
        },
    }
}

/// Translates an OpenAI request for `model` into a Converse request. `media` holds the bytes
/// of every URL [`media_urls`] listed.
pub(super) fn translate(
    request: &ChatRequest,
    model: &str,
    reasoning_effort: Option<&str>,
    media: &HashMap<String, MediaData>,
) -> Result<Translated, GatewayError> {
    let family = Family::of(model);
    if request.n.is_some_and(|n| n > 1) {
        return Err(
            unsupported("Bedrock's Converse API returns one choice; `n` must be 1").with_param("n"),
        );
    }
    let mut builder = Builder {
        family,
        media,
        document_names: HashSet::new(),
    };
    let mut system: Vec<SystemBlock> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, message) in request.messages.iter().enumerate() {
        match message.role {
            Role::System | Role::Developer => {
                let text = message.text();
                if !text.trim().is_empty() {
                    system.push(SystemBlock { text });
                }
            }
            Role::User => {
                let blocks = builder.user_blocks(message, i)?;
                push_turn(&mut turns, "user", blocks);
            }
            Role::Assistant => push_turn(&mut turns, "assistant", assistant_blocks(message, i)?),
            Role::Tool | Role::Function => {
                let block = builder.tool_result(message, i)?;
                push_turn(&mut turns, "user", vec![block]);
            }
        }
    }
    for turn in &mut turns {
        if turn.role == "user" {
            // Tool results come first in their turn.
            let (mut results, rest): (Vec<Block>, Vec<Block>) = std::mem::take(&mut turn.content)
                .into_iter()
                .partition(|b| matches!(b, Block::ToolResult(_)));
            results.extend(rest);
            turn.content = results;
        }
    }
    if turns.is_empty() {
        return Err(invalid(
            "the conversation needs at least one user message",
            "messages".to_string(),
        ));
    }
    if turns[0].role != "user" {
        turns.insert(
            0,
            Turn {
                role: "user",
                content: vec![Block::Text(".".to_string())],
            },
        );
    }
    // A final assistant turn is a prefill; it must not end with whitespace.
    if let Some(Turn {
        role: "assistant",
        content,
    }) = turns.last_mut()
    {
        if let Some(Block::Text(text)) = content.last_mut() {
            text.truncate(text.trim_end().len());
        }
    }

    // Tools used earlier in the conversation.
    let mut history_tools: Vec<String> = Vec::new();
    let mut history_has_tools = false;
    for turn in &turns {
        for block in &turn.content {
            match block {
                Block::ToolUse(tool_use) => {
                    history_has_tools = true;
                    if !history_tools.contains(&tool_use.name) {
                        history_tools.push(tool_use.name.clone());
                    }
                }
                Block::ToolResult(_) => history_has_tools = true,
                _ => {}
            }
        }
    }

    // Extended thinking (Claude 3.7+), unless the answer continues a tool call made without
    // thinking (Claude requires the thinking block before such a tool use).
    let max_tokens = request.max_completion_tokens.or(request.max_tokens);
    let continues_tool_call = turns.len() >= 2
        && turns[turns.len() - 1]
            .content
            .iter()
            .any(|b| matches!(b, Block::ToolResult(_)))
        && turns[turns.len() - 2]
            .content
            .iter()
            .any(|b| matches!(b, Block::ToolUse(_)));
    let effort = reasoning_effort.or(request.reasoning_effort.as_deref());
    let thinking = match effort.and_then(thinking_budget) {
        Some(budget)
            if family == Family::Claude && claude_thinks(model) && !continues_tool_call =>
        {
            match max_tokens {
                Some(max) if max <= MIN_THINKING_BUDGET => None,
                Some(max) => Some((budget.min(max - 1).max(MIN_THINKING_BUDGET), max)),
                None => Some((budget, budget + ANSWER_TOKENS_WITH_THINKING)),
            }
        }
        _ => None,
    };

    let mut inference_config = InferenceConfig {
        max_tokens,
        temperature: request.temperature.map(|t| t.clamp(0.0, 1.0)),
        top_p: request.top_p.map(|p| p.clamp(0.0, 1.0)),
        stop_sequences: match &request.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        }
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect(),
    };
    let mut additional = None;
    if let Some((budget, max)) = thinking {
        // Claude refuses temperature and top_p with thinking.
        inference_config.max_tokens = Some(max);
        inference_config.temperature = None;
        inference_config.top_p = None;
        additional = Some(json!({"thinking": {"type": "enabled", "budget_tokens": budget}}));
    }

    // Tools and tool choice.
    let user_tools: Vec<ToolEntry> = request
        .tools
        .iter()
        .flatten()
        .map(|t| {
            tool_spec(
                &t.function.name,
                t.function.description.as_deref(),
                t.function.parameters.as_ref(),
            )
        })
        .collect();
    #[derive(PartialEq)]
    enum Want {
        Auto,
        None,
        Required,
        Named(String),
    }
    let mut want = match &request.tool_choice {
        None | Some(ToolChoice::Mode(ToolChoiceMode::Auto)) => Want::Auto,
        Some(ToolChoice::Mode(ToolChoiceMode::None)) => Want::None,
        Some(ToolChoice::Mode(ToolChoiceMode::Required)) => Want::Required,
        Some(ToolChoice::Named(named)) => Want::Named(named.function.name.clone()),
    };
    let mut tools = if user_tools.is_empty() || want == Want::None {
        Vec::new()
    } else {
        user_tools
    };
    let mut instructions: Vec<String> = Vec::new();
    let mut output_tool = None;
    match &request.response_format {
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            let forced = family.forces_named() || family.forces_any();
            if forced {
                let mut name = sanitize_id(&json_schema.name);
                while tools.iter().any(|t| t.tool_spec.name == name) {
                    name = format!("{}_output", name.chars().take(56).collect::<String>());
                }
                let description = json_schema.description.clone().unwrap_or_else(|| {
                    "Gives the final answer: its input is the answer, as a JSON object matching \
                     this schema."
                        .to_string()
                });
                tools.push(tool_spec(
                    &name,
                    Some(&description),
                    json_schema.schema.as_ref(),
                ));
                if tools.len() == 1 {
                    want = Want::Named(name.clone());
                } else {
                    // With the caller's tools too, the model must call one of them: the
                    // caller's, or this one with the final answer.
                    instructions.push(format!(
                        "When you have the final answer, give it by calling the `{name}` tool."
                    ));
                    if !matches!(want, Want::Named(_)) {
                        want = Want::Required;
                    }
                }
                output_tool = Some(name);
            } else {
                let schema = json_schema
                    .schema
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object"}));
                instructions.push(format!(
                    "Answer with a single JSON object that matches this JSON schema, and nothing \
                     else (no prose, no code fences):\n{schema}"
                ));
            }
        }
        Some(ResponseFormat::JsonObject) => instructions.push(
            "Answer with a single valid JSON object, and nothing else (no prose, no code fences)."
                .to_string(),
        ),
        Some(ResponseFormat::Text) | None => {}
    }
    if thinking.is_some() && matches!(want, Want::Required | Want::Named(_)) {
        // Claude refuses forced tool use with thinking: ask instead.
        if let Some(name) = &output_tool {
            instructions.push(format!(
                "Give your final answer by calling the `{name}` tool."
            ));
        }
        want = Want::Auto;
    }
    let tool_choice = match want {
        Want::Auto | Want::None => None,
        Want::Required if family.forces_any() => Some(ChoiceBody::Any(Empty {})),
        Want::Named(name) if family.forces_named() => Some(ChoiceBody::Tool { name }),
        Want::Named(name) if family.forces_any() => {
            // Only the named tool, and some tool must be called.
            tools.retain(|t| t.tool_spec.name == name);
            Some(ChoiceBody::Any(Empty {}))
        }
        Want::Named(name) => {
            tools.retain(|t| t.tool_spec.name == name);
            None
        }
        Want::Required => None,
    };
    if tools.is_empty() && history_has_tools {
        // Bedrock needs a toolConfig whenever the conversation holds tool blocks.
        match request.tools.as_deref().filter(|t| !t.is_empty()) {
            Some(declared) => {
                tools = declared
                    .iter()
                    .map(|t| {
                        tool_spec(
                            &t.function.name,
                            t.function.description.as_deref(),
                            t.function.parameters.as_ref(),
                        )
                    })
                    .collect()
            }
            None => {
                tools = history_tools
                    .iter()
                    .map(|name| {
                        tool_spec(
                            name,
                            Some("A tool used earlier in this conversation."),
                            None,
                        )
                    })
                    .collect()
            }
        }
        instructions.push("Do not call any tool now; answer with text.".to_string());
    }
    let tool_config = (!tools.is_empty()).then_some(ToolConfig { tools, tool_choice });
    system.extend(instructions.into_iter().map(|text| SystemBlock { text }));

    Ok(Translated {
        body: ConverseBody {
            messages: turns,
            system,
            inference_config,
            tool_config,
            additional_model_request_fields: additional,
        },
        output_tool,
    })
}
