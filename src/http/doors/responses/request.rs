//! An OpenAI Responses request (`POST /v1/responses`), translated into the Chat Completions
//! request the engine runs: `instructions` becomes the system message, `input` (text, or
//! message / `function_call` / `function_call_output` items) the conversation, function
//! `tools` and `tool_choice` their Chat Completions forms, `text.format` the
//! `response_format`, `max_output_tokens` the `max_tokens`. A `previous_response_id`
//! continues a recorded run: the edge passes its conversation in (see `previous.rs`).
//! flowgate's own extra fields (`use_cache`, `use_fallback`, `provider`, `agent_id`,
//! `metadata`) are taken as on Chat Completions.

use flowgate_actors::error::{excerpt, GatewayError};
use flowgate_actors::wire::{
    ChatRequest, ContentPart, FilePart, FunctionCall, FunctionDefinition, ImageUrl,
    JsonSchemaFormat, Message, MessageContent, NamedFunction, NamedToolChoice, ResponseFormat,
    Role, Tool, ToolCall, ToolChoice, ToolChoiceMode, UseCache, UseFallback,
};
use serde::Deserialize;
use serde_json::{Map, Value};

/// A `POST /v1/responses` body. Unknown fields are ignored (`store`, `include`, `truncation`,
/// `service_tier`: a stateless gateway records every run anyway).
#[derive(Debug, Deserialize)]
pub(in crate::http) struct ResponsesRequest {
    pub(in crate::http) model: String,
    #[serde(default)]
    input: Option<Input>,
    #[serde(default)]
    pub(in crate::http) instructions: Option<String>,
    #[serde(default)]
    pub(in crate::http) tools: Option<Vec<ToolDefinition>>,
    #[serde(default)]
    pub(in crate::http) tool_choice: Option<Value>,
    #[serde(default)]
    pub(in crate::http) text: Option<TextConfig>,
    #[serde(default)]
    pub(in crate::http) stream: Option<bool>,
    #[serde(default)]
    pub(in crate::http) temperature: Option<f64>,
    #[serde(default)]
    pub(in crate::http) top_p: Option<f64>,
    #[serde(default)]
    pub(in crate::http) max_output_tokens: Option<u32>,
    #[serde(default)]
    pub(in crate::http) previous_response_id: Option<String>,
    #[serde(default)]
    pub(in crate::http) parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub(in crate::http) metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub(in crate::http) user: Option<String>,
    #[serde(default)]
    pub(in crate::http) reasoning: Option<Reasoning>,
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
enum Input {
    Text(String),
    Items(Vec<Item>),
}

/// One input item, read flat: which fields it needs depends on its `type` (a message may leave
/// `type` out), checked when it is translated so the error names the item and what it lacks.
#[derive(Debug, Deserialize)]
struct Item {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    role: Option<ItemRole>,
    #[serde(default)]
    content: Option<ItemContent>,
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
    #[serde(default)]
    output: Option<ItemContent>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ItemRole {
    User,
    Assistant,
    System,
    Developer,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ItemContent {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    image_url: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    file_data: Option<String>,
    #[serde(default)]
    file_id: Option<String>,
    #[serde(default)]
    filename: Option<String>,
}

/// A tool as the Responses API declares it: the function's fields at the top level.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub(in crate::http) struct ToolDefinition {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub(in crate::http) struct TextConfig {
    #[serde(default)]
    pub(in crate::http) format: Option<TextFormat>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(in crate::http) enum TextFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
    },
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub(in crate::http) struct Reasoning {
    #[serde(default)]
    pub(in crate::http) effort: Option<String>,
}

fn invalid(param: impl Into<String>, message: impl Into<String>) -> GatewayError {
    GatewayError::invalid(message).with_param(param)
}

impl ResponsesRequest {
    /// The Chat Completions request this one asks for, after `earlier` (the conversation of
    /// the previous response, when it continues one).
    pub(in crate::http) fn to_chat(
        &self,
        earlier: Vec<Message>,
    ) -> Result<ChatRequest, GatewayError> {
        let mut messages = Vec::new();
        if let Some(instructions) = self.instructions.as_deref().filter(|i| !i.is_empty()) {
            messages.push(message(Role::System, text(instructions)));
        }
        messages.extend(earlier);
        match &self.input {
            Some(Input::Text(input)) => messages.push(message(Role::User, text(input))),
            Some(Input::Items(items)) => {
                for (i, item) in items.iter().enumerate() {
                    translate_item(i, item, &mut messages)?;
                }
            }
            None => {}
        }
        if !messages.iter().any(|m| m.role != Role::System) {
            return Err(invalid("input", "`input` must contain at least one item"));
        }
        let tools = match &self.tools {
            Some(tools) if !tools.is_empty() => Some(
                tools
                    .iter()
                    .enumerate()
                    .map(|(i, t)| translate_tool(i, t))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            _ => None,
        };
        let tool_choice = self
            .tool_choice
            .as_ref()
            .map(translate_tool_choice)
            .transpose()?;
        let response_format = match self.text.as_ref().and_then(|t| t.format.as_ref()) {
            None | Some(TextFormat::Text) => None,
            Some(TextFormat::JsonObject) => Some(ResponseFormat::JsonObject),
            Some(TextFormat::JsonSchema {
                name,
                schema,
                description,
                strict,
            }) => Some(ResponseFormat::JsonSchema {
                json_schema: JsonSchemaFormat {
                    name: name.clone(),
                    description: description.clone(),
                    schema: Some(schema.clone()),
                    strict: *strict,
                },
            }),
        };
        Ok(ChatRequest {
            model: self.model.clone(),
            messages,
            stream: self.stream,
            stream_options: None,
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_output_tokens,
            max_completion_tokens: None,
            n: None,
            stop: None,
            seed: None,
            presence_penalty: None,
            frequency_penalty: None,
            logit_bias: None,
            logprobs: None,
            top_logprobs: None,
            user: self.user.clone(),
            tools,
            tool_choice,
            parallel_tool_calls: self.parallel_tool_calls,
            response_format,
            reasoning_effort: self.reasoning.as_ref().and_then(|r| r.effort.clone()),
            input: None,
            use_cache: self.use_cache,
            use_fallback: self.use_fallback.clone(),
            provider: self.provider.clone(),
            agent_id: self.agent_id.clone(),
            environment: None,
            schema_id: None,
            metadata: self.metadata.clone(),
            reasoning: None,
        })
    }
}

fn text(text: &str) -> MessageContent {
    MessageContent::Text(text.to_string())
}

fn message(role: Role, content: MessageContent) -> Message {
    Message {
        role,
        content: Some(content),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        extra: Map::new(),
    }
}

fn translate_item(i: usize, item: &Item, out: &mut Vec<Message>) -> Result<(), GatewayError> {
    let at = format!("input[{i}]");
    match item.kind.as_deref() {
        None | Some("message") => {
            let Some(role) = item.role else {
                return Err(invalid(
                    format!("{at}.role"),
                    "a message item needs its `role`",
                ));
            };
            let Some(content) = &item.content else {
                return Err(invalid(
                    format!("{at}.content"),
                    "a message item needs its `content`",
                ));
            };
            let role = match role {
                ItemRole::User => Role::User,
                ItemRole::Assistant => Role::Assistant,
                ItemRole::System => Role::System,
                ItemRole::Developer => Role::Developer,
            };
            let content = translate_content(&format!("{at}.content"), content, role)?;
            out.push(message(role, content));
        }
        Some("function_call") => {
            let (Some(call_id), Some(name)) = (&item.call_id, &item.name) else {
                return Err(invalid(
                    at,
                    "a `function_call` item needs its `call_id` and `name`",
                ));
            };
            let call = ToolCall {
                id: call_id.clone(),
                kind: "function".into(),
                function: FunctionCall {
                    name: name.clone(),
                    arguments: item.arguments.clone().unwrap_or_else(|| "{}".into()),
                },
            };
            // Calls of one turn join the assistant message they follow.
            match out.last_mut() {
                Some(last) if last.role == Role::Assistant => {
                    last.tool_calls.get_or_insert_with(Vec::new).push(call);
                }
                _ => out.push(Message {
                    role: Role::Assistant,
                    content: None,
                    name: None,
                    tool_calls: Some(vec![call]),
                    tool_call_id: None,
                    extra: Map::new(),
                }),
            }
        }
        Some("function_call_output") => {
            let Some(call_id) = &item.call_id else {
                return Err(invalid(
                    at,
                    "a `function_call_output` item needs its `call_id`",
                ));
            };
            let output = match &item.output {
                None => String::new(),
                Some(ItemContent::Text(text)) => text.clone(),
                Some(ItemContent::Parts(parts)) => parts
                    .iter()
                    .filter_map(|p| p.text.as_deref())
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            out.push(Message {
                role: Role::Tool,
                content: Some(MessageContent::Text(output)),
                name: None,
                tool_calls: None,
                tool_call_id: Some(call_id.clone()),
                extra: Map::new(),
            });
        }
        // A reasoning model's own summary, sent back as received: not for another model.
        Some("reasoning") => {}
        Some("item_reference") => {
            return Err(invalid(
                format!("{at}.type"),
                "`item_reference` items are not supported: continue a response with \
                 `previous_response_id`, or send the items themselves",
            ))
        }
        Some(kind) => {
            return Err(invalid(
                format!("{at}.type"),
                format!(
                    "input items of type `{}` are not supported",
                    excerpt(kind, 40)
                ),
            ))
        }
    }
    Ok(())
}

fn translate_content(
    at: &str,
    content: &ItemContent,
    role: Role,
) -> Result<MessageContent, GatewayError> {
    let parts = match content {
        ItemContent::Text(text) => return Ok(MessageContent::Text(text.clone())),
        ItemContent::Parts(parts) => parts,
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{at}[{j}]");
        let translated = match (part.kind.as_str(), &part.text) {
            ("input_text" | "output_text" | "text", Some(text)) => {
                ContentPart::Text { text: text.clone() }
            }
            ("refusal", _) => ContentPart::Text {
                text: part.refusal.clone().unwrap_or_default(),
            },
            ("input_image", _) if role != Role::Assistant => match &part.image_url {
                Some(url) => ContentPart::ImageUrl {
                    image_url: ImageUrl {
                        url: url.clone(),
                        detail: part.detail.clone(),
                    },
                },
                None => {
                    return Err(invalid(
                        at,
                        "an `input_image` part needs its `image_url` (uploaded files are not \
                         supported)",
                    ))
                }
            },
            ("input_file", _) if role != Role::Assistant => {
                if part.file_data.is_none() && part.file_id.is_none() {
                    return Err(invalid(
                        at,
                        "an `input_file` part needs `file_data` or `file_id`",
                    ));
                }
                ContentPart::File {
                    file: FilePart {
                        file_data: part.file_data.clone(),
                        file_id: part.file_id.clone(),
                        filename: part.filename.clone(),
                    },
                }
            }
            ("input_text" | "output_text" | "text", None) => {
                return Err(invalid(at, "a text part needs its `text`"))
            }
            (kind, _) => {
                return Err(invalid(
                    format!("{at}.type"),
                    format!(
                        "content parts of type `{}` are not supported here",
                        excerpt(kind, 40)
                    ),
                ))
            }
        };
        out.push(translated);
    }
    // Text alone is sent as text: every provider takes it.
    if out.iter().all(|p| matches!(p, ContentPart::Text { .. })) {
        let joined = out
            .into_iter()
            .filter_map(|p| match p {
                ContentPart::Text { text } => Some(text),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n");
        return Ok(MessageContent::Text(joined));
    }
    Ok(MessageContent::Parts(out))
}

fn translate_tool(i: usize, tool: &ToolDefinition) -> Result<Tool, GatewayError> {
    if tool.kind != "function" {
        return Err(invalid(
            format!("tools[{i}].type"),
            format!(
                "built-in tool `{}` is not supported: declare `function` tools",
                excerpt(&tool.kind, 60)
            ),
        ));
    }
    let Some(name) = &tool.name else {
        return Err(invalid(
            format!("tools[{i}].name"),
            "a function tool needs its `name`",
        ));
    };
    Ok(Tool {
        kind: "function".into(),
        function: FunctionDefinition {
            name: name.clone(),
            description: tool.description.clone(),
            parameters: tool.parameters.clone(),
            strict: tool.strict,
        },
    })
}

fn translate_tool_choice(choice: &Value) -> Result<ToolChoice, GatewayError> {
    let bad = || {
        invalid(
            "tool_choice",
            "`tool_choice` must be `auto`, `none`, `required` or {\"type\": \"function\", \"name\": …}",
        )
    };
    match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => Ok(ToolChoice::Mode(ToolChoiceMode::Auto)),
            "none" => Ok(ToolChoice::Mode(ToolChoiceMode::None)),
            "required" => Ok(ToolChoice::Mode(ToolChoiceMode::Required)),
            _ => Err(bad()),
        },
        Value::Object(object) => match (
            object.get("type").and_then(Value::as_str),
            object.get("name").and_then(Value::as_str),
        ) {
            (Some("function"), Some(name)) => Ok(ToolChoice::Named(NamedToolChoice {
                kind: "function".into(),
                function: NamedFunction {
                    name: name.to_string(),
                },
            })),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(body: Value, earlier: Vec<Message>) -> Result<Value, GatewayError> {
        let request: ResponsesRequest = serde_json::from_value(body).unwrap();
        request
            .to_chat(earlier)
            .map(|chat| serde_json::to_value(chat).unwrap())
    }

    #[test]
    fn text_input_and_instructions_map_to_chat() {
        let out = chat(
            json!({"model": "m", "input": "Hello", "instructions": "Be brief",
                   "max_output_tokens": 50, "temperature": 0.2, "store": false,
                   "reasoning": {"effort": "low"}, "use_fallback": "never"}),
            vec![],
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"model": "m",
                   "messages": [{"role": "system", "content": "Be brief"},
                                {"role": "user", "content": "Hello"}],
                   "max_tokens": 50, "temperature": 0.2, "reasoning_effort": "low",
                   "use_fallback": "never"})
        );
    }

    #[test]
    fn function_calls_and_outputs_become_tool_calls_and_tool_messages() {
        let out = chat(
            json!({"model": "m",
            "tools": [{"type": "function", "name": "get_weather", "description": "W",
                       "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Paris?"}]},
                {"type": "function_call", "id": "fc_1", "call_id": "call_1",
                 "name": "get_weather", "arguments": "{\"city\":\"Paris\"}", "status": "completed"},
                {"type": "function_call", "call_id": "call_2", "name": "get_weather",
                 "arguments": "{\"city\":\"Lyon\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
                {"type": "function_call_output", "call_id": "call_2",
                 "output": [{"type": "input_text", "text": "20C"}]}
            ]}),
            vec![],
        )
        .unwrap();
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": "Paris?"},
                {"role": "assistant", "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Lyon\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": "20C"}
            ])
        );
        assert_eq!(
            out["tools"],
            json!([{"type": "function", "function": {"name": "get_weather", "description": "W",
                    "parameters": {"type": "object"}, "strict": true}}])
        );
        assert_eq!(
            out["tool_choice"],
            json!({"type": "function", "function": {"name": "get_weather"}})
        );
    }

    #[test]
    fn json_schema_format_and_images_map_and_earlier_turns_come_first() {
        let earlier = vec![
            message(Role::User, text("first")),
            message(Role::Assistant, text("answer")),
        ];
        let out = chat(
            json!({"model": "m", "instructions": "I",
                "text": {"format": {"type": "json_schema", "name": "User", "strict": true,
                                    "schema": {"type": "object"}}},
                "input": [{"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "Who?"},
                    {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"}]}]}),
            earlier,
        )
        .unwrap();
        assert_eq!(
            out["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "User", "strict": true,
                                                          "schema": {"type": "object"}}})
        );
        assert_eq!(
            out["messages"][0],
            json!({"role": "system", "content": "I"})
        );
        assert_eq!(out["messages"][1]["content"], "first");
        assert_eq!(out["messages"][2]["content"], "answer");
        assert_eq!(
            out["messages"][3]["content"],
            json!([{"type": "text", "text": "Who?"},
                   {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}])
        );
    }

    #[test]
    fn bad_requests_name_what_is_wrong() {
        let e = chat(json!({"model": "m", "input": []}), vec![]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input"));
        let e = chat(
            json!({"model": "m", "input": [{"type": "function_call", "name": "f"}]}),
            vec![],
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0]"));
        let e = chat(
            json!({"model": "m", "input": "x", "tools": [{"type": "web_search_preview"}]}),
            vec![],
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
        let e = chat(
            json!({"model": "m", "input": "x", "tool_choice": "sometimes"}),
            vec![],
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        let e = chat(
            json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}),
            vec![],
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].type"));
        let e = chat(
            json!({"model": "m", "input": [{"content": "no role"}]}),
            vec![],
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].role"));
    }
}
