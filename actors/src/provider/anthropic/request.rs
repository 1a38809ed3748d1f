//! The request: the OpenAI-shaped request as a Messages API body (the table in the module
//! documentation), with structured output through a forced answer tool and thinking budgets.

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{ErrorKind, GatewayError};
use crate::provider::{media, UpstreamRequest};
use crate::wire::{
    ChatRequest, ContentPart, FilePart, Message, MessageContent, ResponseFormat, Role, Stop, Tool,
    ToolChoice, ToolChoiceMode,
};

/// `max_tokens` when the client sets none (Anthropic requires it), unless the model allows less.
pub(super) const DEFAULT_MAX_TOKENS: u32 = 8192;
/// Anthropic's smallest thinking budget.
pub(super) const MIN_THINKING_BUDGET: u32 = 1024;
/// `top_p` values allowed together with thinking start here.
pub(super) const THINKING_MIN_TOP_P: f64 = 0.95;
/// Image types the Messages API accepts.
pub(super) const IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];
/// Added to `system` for `response_format: json_object`.
pub(super) const JSON_OBJECT_INSTRUCTION: &str =
    "Respond with a single valid JSON object and nothing else: \
     no prose before or after it, no Markdown code fences.";
/// Added to `system` for `response_format: json_schema` when tools may not be used.
pub(super) const JSON_SCHEMA_INSTRUCTION: &str =
    "Respond with a single valid JSON object that conforms to \
     this JSON Schema, and nothing else (no prose, no Markdown code fences):";
/// The description of the tool that carries a structured answer.
pub(super) const ANSWER_TOOL_DESCRIPTION: &str =
    "Give your final answer by calling this tool: its input is the answer.";
/// The `anthropic_version` Vertex AI requires in the body.
pub const VERTEX_ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

// ---- wire types ----

#[derive(Debug, Serialize)]
pub(super) struct MessagesBody {
    /// `None` on Vertex AI, where the URL names the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) model: Option<String>,
    /// Vertex AI only: [`VERTEX_ANTHROPIC_VERSION`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) anthropic_version: Option<&'static str>,
    pub(super) max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) system: Option<String>,
    pub(super) messages: Vec<Turn>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) tools: Vec<ToolBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) tool_choice: Option<ToolChoiceBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) thinking: Option<ThinkingBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) metadata: Option<MetadataBody>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(super) stream: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct Turn {
    pub(super) role: TurnRole,
    pub(super) content: Vec<Block>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum TurnRole {
    User,
    Assistant,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum Block {
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
pub(super) enum Source {
    Base64 { media_type: String, data: String },
    Url { url: String },
    Text { media_type: String, data: String },
}

#[derive(Debug, Serialize)]
pub(super) struct ToolBody {
    pub(super) name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) description: Option<String>,
    pub(super) input_schema: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct ToolChoiceBody {
    #[serde(rename = "type")]
    pub(super) kind: ChoiceKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum ChoiceKind {
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
pub(super) struct ThinkingBody {
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) budget_tokens: u32,
}

#[derive(Debug, Serialize)]
pub(super) struct MetadataBody {
    pub(super) user_id: String,
}

/// A translated request and what is needed to read its answer.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) body: MessagesBody,
    /// The tool whose input is the structured answer (`response_format: json_schema`).
    pub(super) answer_tool: Option<String>,
}

// ---- request translation ----

pub(super) fn unsupported(message: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorKind::UnsupportedByModel, message)
}

/// Translates the client's request; pure (`http://` image URLs are downloaded later, by
/// [`AnthropicClient::resolve_media`]).
pub(super) fn translate(
    call: &UpstreamRequest<'_>,
    stream: bool,
) -> Result<Prepared, GatewayError> {
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
pub(super) fn translate_messages(
    messages: &[Message],
) -> Result<(Vec<String>, Vec<Turn>), GatewayError> {
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
pub(super) fn push_turn(turns: &mut Vec<Turn>, role: TurnRole, blocks: Vec<Block>) {
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
pub(super) fn text_block(text: &str) -> Vec<Block> {
    if text.trim().is_empty() {
        Vec::new()
    } else {
        vec![Block::Text {
            text: text.to_string(),
        }]
    }
}

/// The blocks of a message's content (message `i`).
pub(super) fn content_blocks(message: &Message, i: usize) -> Result<Vec<Block>, GatewayError> {
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
pub(super) fn parse_arguments(arguments: &str) -> Option<Value> {
    if arguments.trim().is_empty() {
        return Some(json!({}));
    }
    match serde_json::from_str(arguments) {
        Ok(Value::Object(map)) => Some(Value::Object(map)),
        _ => None,
    }
}

pub(super) fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

pub(super) fn is_http(url: &str) -> bool {
    url.get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"))
}

/// An `image_url`: data URIs inline, `http(s)` URLs as a `url` source (`http://` ones are
/// downloaded before sending).
pub(super) fn image_block(url: &str) -> Result<Block, GatewayError> {
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
pub(super) fn file_block(file: &FilePart) -> Result<Block, GatewayError> {
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
pub(super) fn inline_block(
    mime: &str,
    base64: &str,
    title: Option<&str>,
) -> Result<Block, GatewayError> {
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

pub(super) fn translate_tools(tools: Option<&[Tool]>) -> Vec<ToolBody> {
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
pub(super) fn object_schema(schema: Option<Value>) -> Value {
    match schema {
        Some(Value::Object(mut map)) => {
            map.entry("type").or_insert_with(|| json!("object"));
            Value::Object(map)
        }
        _ => json!({"type": "object", "properties": {}}),
    }
}

pub(super) fn translate_tool_choice(
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
pub(super) fn apply_response_format(
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
pub(super) fn answer_tool_name(schema_name: &str, tools: &[ToolBody]) -> String {
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
pub(super) fn thinking_budget(call: &UpstreamRequest<'_>) -> Option<u32> {
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
pub(super) fn output_cap(model: &str) -> u32 {
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
pub(super) fn plan_tokens(
    model: &str,
    explicit: Option<u32>,
    budget: Option<u32>,
) -> (u32, Option<u32>) {
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

#[cfg(test)]
mod tests {
    use super::*;
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
}
