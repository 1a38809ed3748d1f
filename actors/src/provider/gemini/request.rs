//! The request: the OpenAI request as a `generateContent` body (the list in the module
//! documentation), and JSON Schema converted to Gemini's OpenAPI subset.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{ErrorKind, GatewayError};
use crate::provider::media::{self, MediaData};
use crate::provider::UpstreamRequest;
use crate::wire::{
    ChatRequest, ContentPart, Message, MessageContent, ResponseFormat, Role, Stop, Tool,
    ToolChoice, ToolChoiceMode,
};

/// Gemini accepts at most this many stop sequences.
pub(super) const MAX_STOP_SEQUENCES: usize = 5;
/// The thought signature Google documents for function calls that were not produced by the
/// model in this exact form (history replayed from elsewhere). Gemini 3 rejects replayed
/// function calls without a signature; the OpenAI format cannot carry the real one.
pub(super) const REPLAYED_CALL_SIGNATURE: &str = "skip_thought_signature_validator";
/// `$ref`s are inlined at most this deep (recursive schemas are cut there).
pub(super) const MAX_SCHEMA_DEPTH: usize = 24;

// ---- wire types ----

#[derive(Serialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub(super) struct GenerateBody {
    pub(super) contents: Vec<Content>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) system_instruction: Option<Content>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) tools: Vec<ToolBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) tool_config: Option<ToolConfig>,
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    pub(super) generation_config: GenerationConfig,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) struct Content {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) role: Option<String>,
    #[serde(default)]
    pub(super) parts: Vec<Part>,
}

/// One part; exactly one of the data fields is set.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) struct Part {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) text: Option<String>,
    /// A thought summary (not part of the answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) thought: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) thought_signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) inline_data: Option<Blob>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) file_data: Option<FileData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) function_call: Option<FunctionCallPart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) function_response: Option<FunctionResponsePart>,
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
pub(super) struct Blob {
    pub(super) mime_type: String,
    /// Base64.
    pub(super) data: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) struct FileData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) mime_type: Option<String>,
    pub(super) file_uri: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(super) struct FunctionCallPart {
    pub(super) name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) args: Option<Value>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(super) struct FunctionResponsePart {
    pub(super) name: String,
    /// Always an object.
    pub(super) response: Value,
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) struct ToolBody {
    pub(super) function_declarations: Vec<FunctionDeclaration>,
}

#[derive(Serialize, Debug, PartialEq)]
pub(super) struct FunctionDeclaration {
    pub(super) name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) parameters: Option<Value>,
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) struct ToolConfig {
    pub(super) function_calling_config: FunctionCallingConfig,
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) struct FunctionCallingConfig {
    /// `AUTO`, `ANY` or `NONE`.
    pub(super) mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) allowed_function_names: Option<Vec<String>>,
}

#[derive(Serialize, Default, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) struct GenerationConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) stop_sequences: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) candidate_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) response_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) thinking_config: Option<ThinkingConfig>,
}

impl GenerationConfig {
    fn is_empty(&self) -> bool {
        *self == GenerationConfig::default()
    }
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) struct ThinkingConfig {
    pub(super) thinking_budget: u32,
}

// ---- request translation ----

pub(super) fn invalid(message: impl Into<String>, param: impl Into<String>) -> GatewayError {
    GatewayError::invalid(message).with_param(param)
}

/// Whether Gemini reads this URI itself (`fileData`) instead of needing the bytes.
pub(super) fn is_file_uri(url: &str) -> bool {
    url.starts_with("gs://") || url.starts_with("https://generativelanguage.googleapis.com/")
}

/// The `http(s)` (or otherwise unreadable-by-Gemini) media URLs of a request, each once, in
/// order: they are downloaded before the request is built.
pub(super) fn remote_media_urls(request: &ChatRequest) -> Vec<&str> {
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
pub(super) fn audio_mime(format: &str) -> String {
    match format.to_ascii_lowercase().as_str() {
        "mp3" | "mpeg" => "audio/mp3".to_string(),
        "wav" | "wave" => "audio/wav".to_string(),
        other => format!("audio/{other}"),
    }
}

/// An image given as a URL: inline bytes (data URI or downloaded) or a `fileData` URI.
pub(super) fn image_part(
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
pub(super) fn file_part(file: &crate::wire::FilePart, param: String) -> Result<Part, GatewayError> {
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

pub(super) fn user_parts(
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

pub(super) fn assistant_parts(message: &Message, index: usize) -> Result<Vec<Part>, GatewayError> {
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
pub(super) fn function_response_part(
    messages: &[Message],
    index: usize,
) -> Result<Part, GatewayError> {
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
pub(super) fn push_turn(contents: &mut Vec<Content>, role: &str, parts: Vec<Part>) {
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

pub(super) fn function_declarations(tools: &[Tool]) -> Vec<FunctionDeclaration> {
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

pub(super) fn tool_config(choice: &ToolChoice) -> ToolConfig {
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
pub(super) fn thinking_budget(effort: &str) -> Option<u32> {
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
pub(super) fn request_body(
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
pub(super) const KEPT_KEYWORDS: &[&str] = &[
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

pub(super) fn is_null_schema(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
        || schema.get("const") == Some(&Value::Null)
}

pub(super) fn gemini_type(json_type: &str) -> Option<&'static str> {
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
pub(super) fn resolve_ref<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    root.pointer(pointer)
}

pub(super) fn convert_schema(node: &Value, root: &Value, refs: &mut Vec<String>) -> Value {
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

pub(super) fn copy_description(from: &Map<String, Value>, to: &mut Value) {
    if let (Some(description), Some(out)) = (from.get("description"), to.as_object_mut()) {
        out.entry("description")
            .or_insert_with(|| description.clone());
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use serde_json::json;

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
}
