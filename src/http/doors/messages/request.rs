//! An Anthropic Messages request (`POST /v1/messages`), translated into the Chat Completions
//! request the engine runs: `system` becomes a system message, content blocks become message
//! parts, `tool_use` blocks become the assistant's tool calls and `tool_result` blocks tool
//! messages, `tools` / `tool_choice` / `stop_sequences` / `max_tokens` their Chat Completions
//! counterparts. flowgate's own extra fields (`use_cache`, `use_fallback`, `provider`,
//! `agent_id`, `metadata`) are taken as on Chat Completions.

use flowgate_actors::error::{excerpt, GatewayError};
use flowgate_actors::wire::{
    ChatRequest, ContentPart, FilePart, FunctionCall, FunctionDefinition, ImageUrl, Message,
    MessageContent, NamedFunction, NamedToolChoice, Role, Stop, Tool, ToolCall, ToolChoice,
    ToolChoiceMode, UseCache, UseFallback,
};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Most stop sequences (Anthropic's own bound is in the thousands; one is plenty for a
/// stop, and each is sent on to the provider).
const MAX_STOP_SEQUENCES: usize = 16;

/// A `POST /v1/messages` body. Unknown fields are ignored (`top_k`, `thinking`, `service_tier`
/// have no Chat Completions counterpart).
#[derive(Debug, Deserialize)]
pub(in crate::http) struct MessagesRequest {
    pub(in crate::http) model: String,
    max_tokens: u32,
    messages: Vec<InputMessage>,
    #[serde(default)]
    system: Option<System>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    pub(in crate::http) stream: Option<bool>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    tools: Option<Vec<ToolDefinition>>,
    #[serde(default)]
    tool_choice: Option<AnthropicToolChoice>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    // ---- flowgate's extra body fields ----
    #[serde(default)]
    use_cache: Option<UseCache>,
    #[serde(default)]
    use_fallback: Option<UseFallback>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum System {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Debug, Deserialize)]
struct InputMessage {
    role: AnthropicRole,
    content: Content,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum AnthropicRole {
    User,
    Assistant,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

/// One content block, read flat: which fields it needs depends on its `type`, checked when it
/// is translated (so the error names the block and what it lacks).
#[derive(Debug, Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    source: Option<Source>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    tool_use_id: Option<String>,
    #[serde(default)]
    content: Option<Box<Content>>,
    #[serde(default)]
    is_error: Option<bool>,
}

/// Where an image or a document comes from.
#[derive(Debug, Deserialize)]
struct Source {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ToolDefinition {
    /// Client tools have none or `custom`; server tools (`web_search_…`, `bash_…`) name theirs.
    #[serde(rename = "type", default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    input_schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct AnthropicToolChoice {
    #[serde(rename = "type")]
    kind: ToolChoiceKind,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ToolChoiceKind {
    Auto,
    Any,
    Tool,
    None,
}

fn invalid(param: impl Into<String>, message: impl Into<String>) -> GatewayError {
    GatewayError::invalid(message).with_param(param)
}

impl MessagesRequest {
    pub(in crate::http) fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// The Chat Completions request this one asks for.
    pub(in crate::http) fn into_chat(self) -> Result<ChatRequest, GatewayError> {
        if self.messages.is_empty() {
            return Err(invalid(
                "messages",
                "`messages` must contain at least one message",
            ));
        }
        if self.max_tokens == 0 {
            return Err(invalid("max_tokens", "`max_tokens` must be at least 1"));
        }
        if let Some(t) = self.temperature {
            if !(0.0..=1.0).contains(&t) {
                return Err(invalid(
                    "temperature",
                    format!("`temperature` must be between 0 and 1, got {t}"),
                ));
            }
        }
        let mut messages = Vec::with_capacity(self.messages.len() + 1);
        match self.system {
            Some(System::Text(text)) if !text.is_empty() => {
                messages.push(text_message(Role::System, MessageContent::Text(text)))
            }
            Some(System::Blocks(blocks)) => {
                let mut texts = Vec::with_capacity(blocks.len());
                for (i, block) in blocks.into_iter().enumerate() {
                    match (block.kind.as_str(), block.text) {
                        ("text", Some(text)) => texts.push(text),
                        _ => {
                            return Err(invalid(
                                format!("system[{i}]"),
                                "`system` blocks must be `text` blocks with a `text`",
                            ))
                        }
                    }
                }
                if !texts.is_empty() {
                    messages.push(text_message(
                        Role::System,
                        MessageContent::Text(texts.join("\n")),
                    ));
                }
            }
            _ => {}
        }
        for (i, message) in self.messages.into_iter().enumerate() {
            translate_message(i, message, &mut messages)?;
        }
        let stop = match self.stop_sequences {
            Some(stops) if stops.len() > MAX_STOP_SEQUENCES => {
                return Err(invalid(
                    "stop_sequences",
                    format!(
                        "`stop_sequences` has {} entries, more than the limit of \
                         {MAX_STOP_SEQUENCES}",
                        stops.len()
                    ),
                ))
            }
            Some(stops) if !stops.is_empty() => Some(Stop::Many(stops)),
            _ => None,
        };
        let tools = match self.tools {
            Some(tools) if !tools.is_empty() => Some(
                tools
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| translate_tool(i, t))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            _ => None,
        };
        let (tool_choice, parallel_tool_calls) = match self.tool_choice {
            None => (None, None),
            Some(choice) => {
                let parallel = choice.disable_parallel_tool_use.map(|disable| !disable);
                let choice = match (choice.kind, choice.name) {
                    (ToolChoiceKind::Auto, _) => ToolChoice::Mode(ToolChoiceMode::Auto),
                    (ToolChoiceKind::Any, _) => ToolChoice::Mode(ToolChoiceMode::Required),
                    (ToolChoiceKind::None, _) => ToolChoice::Mode(ToolChoiceMode::None),
                    (ToolChoiceKind::Tool, Some(name)) => ToolChoice::Named(NamedToolChoice {
                        kind: "function".into(),
                        function: NamedFunction { name },
                    }),
                    (ToolChoiceKind::Tool, None) => {
                        return Err(invalid(
                            "tool_choice.name",
                            "`tool_choice` of type `tool` needs the tool's `name`",
                        ))
                    }
                };
                (Some(choice), parallel)
            }
        };
        if tool_choice.is_some() && tools.is_none() {
            return Err(invalid(
                "tool_choice",
                "`tool_choice` is set but `tools` declares no tool",
            ));
        }
        let stream = self.stream;
        Ok(ChatRequest {
            model: self.model,
            messages,
            stream,
            stream_options: None,
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: Some(self.max_tokens),
            max_completion_tokens: None,
            n: None,
            stop,
            seed: None,
            presence_penalty: None,
            frequency_penalty: None,
            logit_bias: None,
            logprobs: None,
            top_logprobs: None,
            user: None,
            tools,
            tool_choice,
            parallel_tool_calls,
            response_format: None,
            reasoning_effort: None,
            input: None,
            use_cache: self.use_cache,
            use_fallback: self.use_fallback,
            provider: self.provider,
            agent_id: self.agent_id,
            environment: None,
            schema_id: None,
            metadata: self.metadata,
            reasoning: None,
        })
    }
}

fn text_message(role: Role, content: MessageContent) -> Message {
    Message {
        role,
        content: Some(content),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        extra: Map::new(),
    }
}

/// One Anthropic message as Chat Completions messages: a user turn's `tool_result` blocks
/// become tool messages (first, answering the assistant's calls), its other blocks one user
/// message; an assistant turn's `tool_use` blocks become its tool calls.
fn translate_message(
    i: usize,
    message: InputMessage,
    out: &mut Vec<Message>,
) -> Result<(), GatewayError> {
    let role = match message.role {
        AnthropicRole::User => Role::User,
        AnthropicRole::Assistant => Role::Assistant,
    };
    let blocks = match message.content {
        Content::Text(text) => {
            out.push(text_message(role, MessageContent::Text(text)));
            return Ok(());
        }
        Content::Blocks(blocks) => blocks,
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.into_iter().enumerate() {
        let at = format!("messages[{i}].content[{j}]");
        match (block.kind.as_str(), message.role) {
            ("text", _) => match block.text {
                Some(text) => parts.push(ContentPart::Text { text }),
                None => return Err(invalid(at, "a `text` block needs its `text`")),
            },
            ("image", AnthropicRole::User) => parts.push(ContentPart::ImageUrl {
                image_url: ImageUrl {
                    url: source_url(&at, block.source)?,
                    detail: None,
                },
            }),
            ("document", AnthropicRole::User) => parts.push(ContentPart::File {
                file: FilePart {
                    file_data: Some(source_url(&at, block.source)?),
                    file_id: None,
                    filename: None,
                },
            }),
            ("tool_result", AnthropicRole::User) => {
                let Some(call_id) = block.tool_use_id else {
                    return Err(invalid(at, "a `tool_result` block needs its `tool_use_id`"));
                };
                let text = match block.content.map(|c| *c) {
                    None => String::new(),
                    Some(Content::Text(text)) => text,
                    Some(Content::Blocks(blocks)) => blocks
                        .into_iter()
                        .filter_map(|b| (b.kind == "text").then_some(b.text).flatten())
                        .collect::<Vec<_>>()
                        .join("\n"),
                };
                // A failed tool says so: Chat Completions has no flag for it.
                let text = match block.is_error {
                    Some(true) => format!("Error: {text}"),
                    _ => text,
                };
                out.push(Message {
                    role: Role::Tool,
                    content: Some(MessageContent::Text(text)),
                    name: None,
                    tool_calls: None,
                    tool_call_id: Some(call_id),
                    extra: Map::new(),
                });
            }
            ("tool_use", AnthropicRole::Assistant) => {
                let (Some(id), Some(name)) = (block.id, block.name) else {
                    return Err(invalid(at, "a `tool_use` block needs its `id` and `name`"));
                };
                let input = block.input.unwrap_or_else(|| Value::Object(Map::new()));
                calls.push(ToolCall {
                    id,
                    kind: "function".into(),
                    function: FunctionCall {
                        name,
                        arguments: input.to_string(),
                    },
                });
            }
            // The model's own reasoning, sent back as received: not for another model.
            ("thinking" | "redacted_thinking", AnthropicRole::Assistant) => {}
            (kind, _) => {
                return Err(invalid(
                    format!("{at}.type"),
                    format!(
                        "a `{}` block is not supported in a{} message",
                        excerpt(kind, 40),
                        match message.role {
                            AnthropicRole::User => " user",
                            AnthropicRole::Assistant => "n assistant",
                        }
                    ),
                ))
            }
        }
    }
    let only_text = parts.iter().all(|p| matches!(p, ContentPart::Text { .. }));
    let content = match (parts.is_empty(), only_text) {
        (true, _) => None,
        // Text alone is sent as text: every provider takes it.
        (false, true) => Some(MessageContent::Text(
            parts
                .into_iter()
                .filter_map(|p| match p {
                    ContentPart::Text { text } => Some(text),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n"),
        )),
        (false, false) => Some(MessageContent::Parts(parts)),
    };
    if content.is_some() || !calls.is_empty() {
        out.push(Message {
            role,
            content,
            name: None,
            tool_calls: (!calls.is_empty()).then_some(calls),
            tool_call_id: None,
            extra: Map::new(),
        });
    }
    Ok(())
}

/// An image or document source as the URL Chat Completions takes: a `data:` URI for base64.
fn source_url(at: &str, source: Option<Source>) -> Result<String, GatewayError> {
    let Some(source) = source else {
        return Err(invalid(at, "the block needs its `source`"));
    };
    match (
        source.kind.as_str(),
        source.media_type,
        source.data,
        source.url,
    ) {
        ("base64", Some(media_type), Some(data), _) => {
            Ok(format!("data:{media_type};base64,{data}"))
        }
        ("url", _, _, Some(url)) => Ok(url),
        ("base64", _, _, _) => Err(invalid(
            format!("{at}.source"),
            "a `base64` source needs `media_type` and `data`",
        )),
        ("url", _, _, None) => Err(invalid(
            format!("{at}.source"),
            "a `url` source needs `url`",
        )),
        (kind, _, _, _) => Err(invalid(
            format!("{at}.source.type"),
            format!("source type `{}` is not supported", excerpt(kind, 40)),
        )),
    }
}

fn translate_tool(i: usize, tool: ToolDefinition) -> Result<Tool, GatewayError> {
    match tool.kind.as_deref() {
        None | Some("custom") => {}
        Some(kind) => {
            return Err(invalid(
                format!("tools[{i}].type"),
                format!(
                    "server tool `{}` is not supported: declare client tools with `name` and \
                     `input_schema`",
                    excerpt(kind, 60)
                ),
            ))
        }
    }
    Ok(Tool {
        kind: "function".into(),
        function: FunctionDefinition {
            name: tool.name,
            description: tool.description,
            parameters: Some(
                tool.input_schema
                    .unwrap_or_else(|| serde_json::json!({"type": "object"})),
            ),
            strict: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(body: Value) -> Result<Value, GatewayError> {
        let request: MessagesRequest = serde_json::from_value(body).unwrap();
        request
            .into_chat()
            .map(|chat| serde_json::to_value(chat).unwrap())
    }

    #[test]
    fn system_text_and_parameters_map_to_chat() {
        let out = chat(json!({
            "model": "claude-x", "max_tokens": 64, "system": "Be brief",
            "messages": [{"role": "user", "content": "Hello"}],
            "temperature": 0.5, "stop_sequences": ["END"], "metadata": {"user_id": "u1"},
            "top_k": 5, "use_cache": "never"
        }))
        .unwrap();
        assert_eq!(
            out,
            json!({
                "model": "claude-x",
                "messages": [{"role": "system", "content": "Be brief"},
                             {"role": "user", "content": "Hello"}],
                "temperature": 0.5, "max_tokens": 64, "stop": ["END"],
                "metadata": {"user_id": "u1"}, "use_cache": "never"
            })
        );
    }

    #[test]
    fn tool_use_and_results_become_tool_calls_and_tool_messages() {
        let out = chat(json!({
            "model": "m", "max_tokens": 10,
            "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
            "tools": [{"name": "get_weather", "description": "Weather",
                       "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1",
                     "content": [{"type": "text", "text": "18C"}]},
                    {"type": "text", "text": "Thanks"}]}
            ]
        }))
        .unwrap();
        assert_eq!(
            out["messages"],
            json!([
                {"role": "system", "content": "A\nB"},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "toolu_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                {"role": "user", "content": "Thanks"}
            ])
        );
        assert_eq!(out["tool_choice"], "required");
        assert_eq!(out["parallel_tool_calls"], false);
        assert_eq!(
            out["tools"],
            json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
        );
    }

    #[test]
    fn images_and_documents_become_data_uris_and_named_choice_maps() {
        let out = chat(json!({
            "model": "m", "max_tokens": 10,
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "f"},
            "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
                {"type": "text", "text": "What is this?"}]}]
        }))
        .unwrap();
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE"}},
                {"type": "text", "text": "What is this?"}
            ])
        );
        assert_eq!(
            out["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
    }

    #[test]
    fn bad_requests_name_what_is_wrong() {
        let e = chat(json!({"model": "m", "max_tokens": 10, "messages": []})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = chat(json!({"model": "m", "max_tokens": 10, "temperature": 1.5,
                            "messages": [{"role": "user", "content": "x"}]}))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = chat(json!({"model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}]}))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
        let e = chat(json!({"model": "m", "max_tokens": 10,
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            "messages": [{"role": "user", "content": "x"}]}))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
        let e = chat(
            json!({"model": "m", "max_tokens": 10, "tool_choice": {"type": "tool"},
            "tools": [{"name": "f"}], "messages": [{"role": "user", "content": "x"}]}),
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tool_choice.name"));
    }
}
