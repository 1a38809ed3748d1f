//! Structured outputs that always validate. A request asks for a JSON object either with a
//! `json_schema` response format or by forcing one tool. flowgate answers it in one of three
//! layers, chosen from the model's catalog capabilities:
//!
//! 1. **native**: the provider's own structured generation (the adapter translates it);
//! 2. **json_mode**: the provider's JSON mode, with the schema appended to the system message;
//! 3. **text**: the schema in the system message and the JSON extracted from the raw text
//!    (code fences, prose around it, trailing commas, single quotes, truncated closers).
//!
//! Every result is validated against the schema; the engine gives a malformed or non-conforming
//! answer one repair attempt that shows the model its error, then falls back.

use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::catalog::Supports;
use crate::completion::{Completion, FinishReason, ToolCallOut};
use crate::wire::{
    ChatRequest, Message, MessageContent, ResponseFormat, Role, ToolChoice, ToolChoiceMode,
};

/// How the structured answer was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    Native,
    JsonMode,
    Text,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Native => "native",
            Layer::JsonMode => "json_mode",
            Layer::Text => "text",
        }
    }

    /// The next layer down, used when a provider rejects a schema.
    pub fn degrade(self, supports: &Supports) -> Option<Layer> {
        match self {
            Layer::Native if supports.json_mode => Some(Layer::JsonMode),
            Layer::Native | Layer::JsonMode => Some(Layer::Text),
            Layer::Text => None,
        }
    }
}

/// Where the client expects the object.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// In the message content (`response_format: json_schema`).
    Content,
    /// As the arguments of a call to this tool (a forced tool).
    Tool(String),
}

/// The structured output a request asks for.
#[derive(Debug, Clone)]
pub struct StructuredSpec {
    pub target: Target,
    pub name: String,
    pub schema: Value,
}

impl StructuredSpec {
    /// The spec of a request, if it asks for a schema-shaped answer.
    pub fn of(request: &ChatRequest) -> Option<StructuredSpec> {
        if let Some(ResponseFormat::JsonSchema { json_schema }) = &request.response_format {
            if let Some(schema) = &json_schema.schema {
                return Some(StructuredSpec {
                    target: Target::Content,
                    name: json_schema.name.clone(),
                    schema: schema.clone(),
                });
            }
        }
        let tools = request.tools.as_deref().unwrap_or_default();
        let forced = match &request.tool_choice {
            Some(ToolChoice::Named(named)) => Some(named.function.name.as_str()),
            Some(ToolChoice::Mode(ToolChoiceMode::Required)) if tools.len() == 1 => {
                Some(tools[0].function.name.as_str())
            }
            _ => None,
        }?;
        let tool = tools.iter().find(|t| t.function.name == forced)?;
        Some(StructuredSpec {
            target: Target::Tool(forced.to_string()),
            name: forced.to_string(),
            schema: tool
                .function
                .parameters
                .clone()
                .unwrap_or_else(|| serde_json::json!({"type": "object"})),
        })
    }

    /// The best layer the model supports.
    pub fn layer_for(&self, supports: &Supports) -> Layer {
        let native = match self.target {
            Target::Content => supports.structured_output,
            Target::Tool(_) => supports.tools,
        };
        if native {
            Layer::Native
        } else if supports.json_mode {
            Layer::JsonMode
        } else {
            Layer::Text
        }
    }

    fn instructions(&self) -> String {
        let schema = serde_json::to_string(&self.schema).unwrap_or_default();
        format!(
            "Answer with a single JSON object that validates against this JSON Schema, and \
             nothing else: no prose, no code fences.\nJSON Schema:\n{schema}"
        )
    }

    /// The request to send at `layer`: unchanged for native; for the lower layers the schema
    /// moves into the system message and tools or schema formats the model lacks are removed.
    pub fn rewrite(&self, request: &ChatRequest, layer: Layer) -> ChatRequest {
        let mut out = request.clone();
        if layer == Layer::Native {
            return out;
        }
        if matches!(self.target, Target::Tool(_)) {
            out.tools = None;
            out.tool_choice = None;
            out.parallel_tool_calls = None;
        }
        out.response_format = match layer {
            Layer::JsonMode => Some(ResponseFormat::JsonObject),
            _ => None,
        };
        append_system(&mut out.messages, &self.instructions());
        out
    }

    /// The JSON object of an answer at `layer`, or why there is none.
    pub fn extract(&self, completion: &Completion, layer: Layer) -> Result<Value, String> {
        let choice = completion
            .choices
            .first()
            .ok_or_else(|| "the answer has no choices".to_string())?;
        if let (Target::Tool(name), Layer::Native) = (&self.target, layer) {
            let call = choice
                .message
                .tool_calls
                .iter()
                .find(|c| &c.name == name)
                .or_else(|| choice.message.tool_calls.first())
                .ok_or_else(|| format!("the answer did not call the tool `{name}`"))?;
            return extract_json(&call.arguments)
                .ok_or_else(|| format!("the arguments of `{name}` are not JSON"));
        }
        let text = choice
            .message
            .content
            .as_deref()
            .ok_or_else(|| "the answer has no content".to_string())?;
        extract_json(text).ok_or_else(|| "the answer contains no JSON object".to_string())
    }

    /// The answer as the client asked for it: the object as content, or as a tool call.
    pub fn shape(&self, mut completion: Completion, value: &Value) -> Completion {
        let json = value.to_string();
        for choice in completion.choices.iter_mut().take(1) {
            match &self.target {
                Target::Content => {
                    choice.message.content = Some(json.clone());
                    choice.message.tool_calls.clear();
                    if choice.finish_reason == FinishReason::ToolCalls {
                        choice.finish_reason = FinishReason::Stop;
                    }
                }
                Target::Tool(name) => {
                    let id = choice
                        .message
                        .tool_calls
                        .first()
                        .map(|c| c.id.clone())
                        .unwrap_or_else(|| format!("call_{}", &hash_hex(json.as_bytes())[..24]));
                    choice.message.content = None;
                    choice.message.tool_calls = vec![ToolCallOut {
                        id,
                        name: name.clone(),
                        arguments: json.clone(),
                    }];
                    choice.finish_reason = FinishReason::ToolCalls;
                }
            }
        }
        completion
    }

    /// The request for the one repair attempt: the bad answer and what was wrong with it.
    pub fn repair(&self, sent: &ChatRequest, bad_answer: &str, error: &str) -> ChatRequest {
        let mut out = sent.clone();
        out.messages.push(Message {
            role: Role::Assistant,
            content: Some(MessageContent::Text(bad_answer.to_string())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            extra: Default::default(),
        });
        out.messages.push(user_message(format!(
            "Your answer was not valid: {error}\nAnswer again with only the corrected JSON \
             object, matching the schema exactly."
        )));
        out
    }
}

fn user_message(text: String) -> Message {
    Message {
        role: Role::User,
        content: Some(MessageContent::Text(text)),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        extra: Default::default(),
    }
}

/// Appends `text` to the first system message, or adds one.
fn append_system(messages: &mut Vec<Message>, text: &str) {
    if let Some(system) = messages
        .iter_mut()
        .find(|m| matches!(m.role, Role::System | Role::Developer))
    {
        let existing = system.text();
        system.content = Some(MessageContent::Text(if existing.is_empty() {
            text.to_string()
        } else {
            format!("{existing}\n\n{text}")
        }));
        return;
    }
    messages.insert(
        0,
        Message {
            role: Role::System,
            content: Some(MessageContent::Text(text.to_string())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            extra: Default::default(),
        },
    );
}

fn hash_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the answer's text of a choice was, for the repair message.
pub fn answer_text(completion: &Completion) -> String {
    completion
        .choices
        .first()
        .map(|c| {
            c.message.content.clone().unwrap_or_else(|| {
                c.message
                    .tool_calls
                    .first()
                    .map(|t| t.arguments.clone())
                    .unwrap_or_default()
            })
        })
        .unwrap_or_default()
}

/// Finds a JSON value in model output: the whole text, a fenced block, or the outermost
/// object/array inside prose; trailing commas, single-quoted strings and missing closers are
/// repaired.
pub fn extract_json(text: &str) -> Option<Value> {
    let text = text.trim();
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        if v.is_object() || v.is_array() {
            return Some(v);
        }
    }
    let mut candidates: Vec<&str> = Vec::new();
    // Fenced blocks first: ```json … ``` or ``` … ```.
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let body_start = after.find('\n').map_or(0, |i| i + 1);
        let body = &after[body_start..];
        match body.find("```") {
            Some(end) => {
                candidates.push(&body[..end]);
                rest = &body[end + 3..];
            }
            None => {
                candidates.push(body);
                break;
            }
        }
    }
    if let Some(start) = text.find(['{', '[']) {
        candidates.push(&text[start..]);
    }
    for candidate in candidates {
        if let Some(v) = parse_lenient(candidate.trim()) {
            return Some(v);
        }
    }
    None
}

/// Parses the first JSON object or array in `text`, repairing common model mistakes.
fn parse_lenient(text: &str) -> Option<Value> {
    let start = text.find(['{', '['])?;
    let repaired = repair(&text[start..]);
    serde_json::from_str::<Value>(&repaired)
        .ok()
        .filter(|v| v.is_object() || v.is_array())
}

/// Scans one JSON value: converts single-quoted strings, drops trailing commas, stops at the
/// value's end, and closes whatever a truncated answer left open.
fn repair(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut stack: Vec<char> = Vec::new();
    let mut in_string: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        if let Some(quote) = in_string {
            if escaped {
                escaped = false;
                out.push(c);
                continue;
            }
            match c {
                '\\' => {
                    escaped = true;
                    out.push(c);
                }
                c if c == quote => {
                    in_string = None;
                    out.push('"');
                }
                '"' => out.push_str("\\\""),
                _ => out.push(c),
            }
            continue;
        }
        match c {
            '"' | '\'' => {
                in_string = Some(c);
                out.push('"');
            }
            '{' => {
                stack.push('}');
                out.push(c);
            }
            '[' => {
                stack.push(']');
                out.push(c);
            }
            '}' | ']' => {
                trim_trailing_comma(&mut out);
                stack.pop();
                out.push(c);
                if stack.is_empty() {
                    return out;
                }
            }
            _ => out.push(c),
        }
    }
    // Truncated: close the string and every open container.
    if in_string.is_some() {
        out.push('"');
    }
    trim_trailing_comma(&mut out);
    while let Some(closer) = stack.pop() {
        trim_trailing_comma(&mut out);
        if out.trim_end().ends_with(':') {
            out.push_str("null");
        }
        out.push(closer);
    }
    out
}

fn trim_trailing_comma(out: &mut String) {
    let trimmed = out.trim_end().len();
    if out[..trimmed].ends_with(',') {
        out.truncate(trimmed - 1);
    }
}

/// Compiled validators, by schema digest: compiling is costly, schemas repeat.
#[derive(Default)]
pub struct Validators {
    compiled: DashMap<[u8; 32], Arc<jsonschema::Validator>>,
}

/// Cached validators above this count are dropped wholesale (a crude but bounded cache).
const MAX_VALIDATORS: usize = 1024;

impl Validators {
    /// Validates `value`; the error lists what is wrong, with paths.
    pub fn validate(&self, schema: &Value, value: &Value) -> Result<(), String> {
        let key: [u8; 32] = Sha256::digest(schema.to_string().as_bytes()).into();
        let validator = match self.compiled.get(&key) {
            Some(v) => v.clone(),
            None => {
                let compiled = Arc::new(
                    jsonschema::validator_for(schema)
                        .map_err(|e| format!("the schema itself is invalid: {e}"))?,
                );
                if self.compiled.len() >= MAX_VALIDATORS {
                    self.compiled.clear();
                }
                self.compiled.insert(key, compiled.clone());
                compiled
            }
        };
        let errors: Vec<String> = validator
            .iter_errors(value)
            .take(5)
            .map(|e| {
                let path = e.instance_path().to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("at `{path}`: {e}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::completion::{AssistantMessage, Choice, Usage};

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    fn completion(content: Option<&str>, calls: Vec<ToolCallOut>) -> Completion {
        Completion {
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    content: content.map(String::from),
                    tool_calls: calls,
                    refusal: None,
                },
                finish_reason: FinishReason::Stop,
            }],
            usage: Usage::default(),
        }
    }

    #[test]
    fn extracts_json_from_messy_text() {
        let cases = [
            ("{\"a\": 1}", serde_json::json!({"a": 1})),
            (
                "Sure! ```json\n{\"a\": 1}\n``` hope it helps",
                serde_json::json!({"a": 1}),
            ),
            (
                "Here you go: {\"a\": [1, 2,], } trailing",
                serde_json::json!({"a": [1, 2]}),
            ),
            (
                "{'name': 'Jason', 'age': 25}",
                serde_json::json!({"name": "Jason", "age": 25}),
            ),
            (
                "{\"a\": {\"b\": \"trunc",
                serde_json::json!({"a": {"b": "trunc"}}),
            ),
            ("{\"a\": 1, \"b\":", serde_json::json!({"a": 1, "b": null})),
            (
                "{\"q\": \"it's \\\"quoted\\\"\"}",
                serde_json::json!({"q": "it's \"quoted\""}),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(extract_json(text), Some(expected), "{text}");
        }
        assert_eq!(extract_json("no json here"), None);
    }

    #[test]
    fn spec_comes_from_response_format_or_a_forced_tool() {
        let r = request(serde_json::json!({"model": "m", "messages": [],
            "response_format": {"type": "json_schema", "json_schema": {"name": "A", "schema": {"type": "object"}}}}));
        let spec = StructuredSpec::of(&r).unwrap();
        assert_eq!(spec.target, Target::Content);
        let r = request(serde_json::json!({"model": "m", "messages": [],
            "tools": [{"type": "function", "function": {"name": "User", "parameters": {"type": "object"}}}],
            "tool_choice": "required"}));
        assert_eq!(
            StructuredSpec::of(&r).unwrap().target,
            Target::Tool("User".into())
        );
        let r = request(serde_json::json!({"model": "m", "messages": [],
            "tools": [{"type": "function", "function": {"name": "User"}}], "tool_choice": "auto"}));
        assert!(StructuredSpec::of(&r).is_none());
    }

    #[test]
    fn lower_layers_move_the_schema_into_the_system_message() {
        let r = request(serde_json::json!({"model": "m",
            "messages": [{"role": "system", "content": "Extract."}, {"role": "user", "content": "Jason is 25"}],
            "tools": [{"type": "function", "function": {"name": "User", "parameters": {"type": "object", "properties": {"age": {"type": "integer"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "User"}}}));
        let spec = StructuredSpec::of(&r).unwrap();
        let supports = Supports {
            json_mode: true,
            ..Supports::default()
        };
        assert_eq!(spec.layer_for(&supports), Layer::JsonMode);
        let sent = spec.rewrite(&r, Layer::JsonMode);
        assert!(sent.tools.is_none() && sent.tool_choice.is_none());
        assert_eq!(sent.response_format, Some(ResponseFormat::JsonObject));
        let system = sent.messages[0].text();
        assert!(
            system.starts_with("Extract.") && system.contains("\"age\""),
            "{system}"
        );
        let sent = spec.rewrite(&r, Layer::Text);
        assert!(sent.response_format.is_none());

        // The text answer becomes the tool call the client asked for.
        let answer = completion(Some("```json\n{\"age\": 25}\n```"), vec![]);
        let value = spec.extract(&answer, Layer::JsonMode).unwrap();
        let shaped = spec.shape(answer, &value);
        assert_eq!(shaped.choices[0].finish_reason, FinishReason::ToolCalls);
        assert_eq!(shaped.choices[0].message.tool_calls[0].name, "User");
        assert_eq!(
            shaped.choices[0].message.tool_calls[0].arguments,
            "{\"age\":25}"
        );
        assert!(shaped.choices[0].message.content.is_none());
    }

    #[test]
    fn validation_names_the_problem() {
        let validators = Validators::default();
        let schema = serde_json::json!({"type": "object",
            "properties": {"age": {"type": "integer"}, "kind": {"enum": ["a", "b"]}},
            "required": ["age", "kind"]});
        assert!(validators
            .validate(&schema, &serde_json::json!({"age": 3, "kind": "a"}))
            .is_ok());
        let err = validators
            .validate(&schema, &serde_json::json!({"age": "x", "kind": "c"}))
            .unwrap_err();
        assert!(err.contains("/age") && err.contains("/kind"), "{err}");
        let err = validators
            .validate(&schema, &serde_json::json!({"age": 3}))
            .unwrap_err();
        assert!(err.contains("kind"), "{err}");
    }
}
