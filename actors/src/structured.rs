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
//!
//! A request may also ask for JSON without a machine-readable schema, as Instructor's JSON mode
//! (`response_format: json_object`, the schema in the system prompt) and MD_JSON mode (no
//! `response_format`, the schema in the system prompt, the answer in a ` ```json ` fence) do:
//! its target is [`Target::Json`], validated against the schema embedded in the system prompt
//! when one is found.
//!
//! Streams below the native layer go through [`isolate_stream`], which relays only the
//! characters of the first top-level JSON value of the model's text: no prose, no code fences.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::answer::LiveStream;
use crate::catalog::Supports;
use crate::completion::{Completion, FinishReason, StreamEvent, ToolCallOut};
use crate::provider::EventStream;
use crate::wire::{
    ChatRequest, Message, MessageContent, ResponseFormat, Role, Tool, ToolChoice, ToolChoiceMode,
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
    /// In the message content, a JSON object the request asks for without a `json_schema`
    /// format: `response_format: json_object`, or no format and a system prompt that embeds a
    /// JSON Schema and asks for JSON (Instructor's JSON and MD_JSON modes). The spec's schema
    /// is the one embedded in the system prompt, or `{"type": "object"}` when none is found.
    Json,
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
        if tools.is_empty() {
            // The answer is content: it may be JSON asked for in the prompt.
            return Self::json_in_prompt(request);
        }
        let forced = match &request.tool_choice {
            Some(ToolChoice::Named(named)) => Some(named.function.name.as_str()),
            Some(ToolChoice::Mode(ToolChoiceMode::Required)) if tools.len() == 1 => {
                Some(tools[0].function.name.as_str())
            }
            _ => None,
        }?;
        Self::forced_tool(tools, forced)
    }

    fn forced_tool(tools: &[Tool], forced: &str) -> Option<StructuredSpec> {
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

    /// A request without tools that asks for JSON in content: `response_format: json_object`
    /// (Instructor's JSON mode), or no format (or `text`) and a system or developer message
    /// that embeds a JSON Schema and says "json" (Instructor's MD_JSON mode). The schema is
    /// the one embedded in the system prompt; a `json_object` request without one accepts any
    /// JSON object.
    fn json_in_prompt(request: &ChatRequest) -> Option<StructuredSpec> {
        let json_object = match &request.response_format {
            Some(ResponseFormat::JsonObject) => true,
            None | Some(ResponseFormat::Text) => false,
            Some(ResponseFormat::JsonSchema { .. }) => return None,
        };
        let embedded = request
            .messages
            .iter()
            .filter(|m| matches!(m.role, Role::System | Role::Developer))
            .map(|m| m.text())
            .filter(|text| json_object || text.to_ascii_lowercase().contains("json"))
            .find_map(|text| find_embedded_schema(&text));
        let schema = match embedded {
            Some(schema) => schema,
            None if json_object => serde_json::json!({"type": "object"}),
            None => return None,
        };
        let name = schema
            .get("title")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .unwrap_or("json_object")
            .to_string();
        Some(StructuredSpec {
            target: Target::Json,
            name,
            schema,
        })
    }

    /// The best layer the model supports. A [`Target::Json`] request is native where the model
    /// has a JSON mode (the request goes as it came), else answered in text.
    pub fn layer_for(&self, supports: &Supports) -> Layer {
        let native = match self.target {
            Target::Content => supports.structured_output,
            Target::Tool(_) => supports.tools,
            Target::Json if supports.json_mode => return Layer::Native,
            Target::Json => return Layer::Text,
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
        if self.target == Target::Json {
            // The schema, if any, is already in the system prompt; the client may have asked
            // for a code fence (MD_JSON), which the extraction tolerates.
            return if self.schema == serde_json::json!({"type": "object"}) {
                "Answer with a single JSON object.".to_string()
            } else {
                "Answer with a single JSON object that validates against the JSON Schema given \
                 in these instructions (an instance of it, not the schema itself)."
                    .to_string()
            };
        }
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
                // MD_JSON answers lose their fence: Instructor reads bare JSON in that mode too.
                Target::Content | Target::Json => {
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
        repair_request(sent, bad_answer, error)
    }
}

/// The request for a repair attempt: the bad answer, and what was wrong with it.
pub fn repair_request(sent: &ChatRequest, bad_answer: &str, error: &str) -> ChatRequest {
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

/// Checks the tool calls a model chose to make (e.g. Instructor's PARALLEL_TOOLS, agents with
/// `tool_choice: auto`) against the parameter schemas of the tools they name. `Ok(false)`: the
/// answer has no tool calls to check.
pub fn validate_tool_calls(
    validators: &Validators,
    request: &ChatRequest,
    completion: &Completion,
) -> Result<bool, String> {
    let tools = request.tools.as_deref().unwrap_or_default();
    let mut checked = false;
    for choice in &completion.choices {
        for call in &choice.message.tool_calls {
            checked = true;
            let tool = tools
                .iter()
                .find(|t| t.function.name == call.name)
                .ok_or_else(|| format!("the tool `{}` does not exist", call.name))?;
            let arguments = extract_json(&call.arguments)
                .ok_or_else(|| format!("the arguments of `{}` are not JSON", call.name))?;
            if let Some(schema) = &tool.function.parameters {
                validators
                    .validate(schema, &arguments)
                    .map_err(|e| format!("the arguments of `{}`: {e}", call.name))?;
            }
        }
    }
    Ok(checked)
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
    let first_value = text.find(['{', '[']);
    // A fence inside a string of a value that starts before it (a code sample in a field of
    // an unfenced answer) is no fence: that value first.
    if let (Some(start), Some(fence)) = (first_value, text.find("```")) {
        // The streams' isolator tells where that value ends (strings and escapes tracked).
        let mut isolator = JsonIsolator::new();
        let value = isolator.push(&text[start..]);
        if start < fence && isolator.is_done() && start + value.len() > fence {
            candidates.push(&text[start..]);
        }
    }
    // Fenced blocks first: ```json … ``` or ``` … ```.
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let body_start = after.find('\n').map_or(0, |i| i + 1);
        let body = &after[body_start..];
        match body.find("```") {
            Some(end) => {
                // Uncut first: the value's own strings may hold a fence (a code sample in a
                // field), and the scan stops at the value's end; cut at the fence when the
                // value inside is truncated.
                candidates.push(body);
                candidates.push(&body[..end]);
                rest = &body[end + 3..];
            }
            None => {
                candidates.push(body);
                break;
            }
        }
    }
    if let Some(start) = first_value {
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

/// Braces of a system prompt tried as the start of an embedded schema, at most.
const MAX_SCHEMA_CANDIDATES: usize = 64;

/// The JSON Schema embedded in a prompt's text, as Instructor's JSON and MD_JSON modes append
/// it after their prose: the first `{…}` that parses as a JSON object, looks like a schema
/// (`properties`, `$defs`, or a `type` naming a JSON type) and compiles. An object that parses
/// but is not such a schema (an example answer) is skipped whole, not searched inside.
pub fn find_embedded_schema(text: &str) -> Option<Value> {
    let mut from = 0;
    for _ in 0..MAX_SCHEMA_CANDIDATES {
        let start = from + text.get(from..)?.find('{')?;
        // One JSON value from this brace, ignoring whatever follows it; prose fails fast.
        let mut values = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
        match values.next() {
            Some(Ok(Value::Object(map))) => {
                if looks_like_schema(&map) {
                    let schema = Value::Object(map);
                    if jsonschema::validator_for(&schema).is_ok() {
                        return Some(schema);
                    }
                }
                from = start + values.byte_offset().max(1);
            }
            _ => from = start + 1,
        }
    }
    None
}

fn looks_like_schema(map: &Map<String, Value>) -> bool {
    const TYPES: [&str; 7] = [
        "object", "array", "string", "number", "integer", "boolean", "null",
    ];
    let is_type = |v: &Value| v.as_str().is_some_and(|t| TYPES.contains(&t));
    map.get("properties").is_some_and(Value::is_object)
        || map.get("$defs").is_some_and(Value::is_object)
        || map.get("type").is_some_and(|t| match t {
            Value::Array(types) => !types.is_empty() && types.iter().all(is_type),
            other => is_type(other),
        })
}

// ---- streams below the native layer ----

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Isolation {
    /// Before the first `{` or `[`: prose, a code fence line, whitespace.
    #[default]
    Before,
    /// Inside the top-level value.
    Inside,
    /// The top-level value has closed: whatever follows is dropped.
    Done,
}

/// Isolates the first top-level JSON object or array of a streamed text, chunk by chunk: what
/// comes before its opening `{`/`[` (prose, a ` ```json ` fence line) and after its closer
/// (the closing fence, more prose) is dropped. Strings and their escapes are tracked, so
/// brackets and quotes inside them do not count, wherever the chunks split.
#[derive(Debug, Clone, Default)]
pub struct JsonIsolator {
    state: Isolation,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl JsonIsolator {
    pub fn new() -> JsonIsolator {
        JsonIsolator::default()
    }

    /// The part of `text`, the next chunk of the stream, that belongs to the JSON value.
    pub fn push(&mut self, text: &str) -> String {
        let mut begin = (self.state == Isolation::Inside).then_some(0);
        let mut end = text.len();
        for (i, c) in text.char_indices() {
            match self.state {
                Isolation::Done => {
                    end = i;
                    break;
                }
                Isolation::Before => {
                    if c == '{' || c == '[' {
                        self.state = Isolation::Inside;
                        self.depth = 1;
                        begin = Some(i);
                    }
                }
                Isolation::Inside if self.in_string => {
                    if self.escaped {
                        self.escaped = false;
                    } else if c == '\\' {
                        self.escaped = true;
                    } else if c == '"' {
                        self.in_string = false;
                    }
                }
                Isolation::Inside => match c {
                    '"' => self.in_string = true,
                    '{' | '[' => self.depth += 1,
                    '}' | ']' => {
                        self.depth = self.depth.saturating_sub(1);
                        if self.depth == 0 {
                            self.state = Isolation::Done;
                        }
                    }
                    _ => {}
                },
            }
        }
        begin.map_or_else(String::new, |b| text[b..end].to_string())
    }

    /// Whether the top-level value has closed.
    pub fn is_done(&self) -> bool {
        self.state == Isolation::Done
    }
}

/// The isolators of one stream: one per choice for content, one per (choice, call) for tool
/// call arguments.
#[derive(Debug, Default)]
struct StreamIsolators {
    content: HashMap<u32, JsonIsolator>,
    calls: HashMap<(u32, u32), JsonIsolator>,
}

impl StreamIsolators {
    /// The event with its text isolated; `None` when nothing of it is left to send (a tool
    /// call's first fragment, which names the call, is always kept). With `keep`, a content
    /// event is kept even when its text became empty.
    fn apply(&mut self, event: StreamEvent, keep: bool) -> Option<StreamEvent> {
        match event {
            StreamEvent::Content { index, text } => {
                let text = self.content.entry(index).or_default().push(&text);
                (keep || !text.is_empty()).then_some(StreamEvent::Content { index, text })
            }
            StreamEvent::ToolCall {
                index,
                call,
                id,
                name,
                arguments,
            } => {
                let arguments = self
                    .calls
                    .entry((index, call))
                    .or_default()
                    .push(&arguments);
                (keep || id.is_some() || name.is_some() || !arguments.is_empty()).then_some(
                    StreamEvent::ToolCall {
                        index,
                        call,
                        id,
                        name,
                        arguments,
                    },
                )
            }
            other @ (StreamEvent::Finish { .. } | StreamEvent::Usage(_)) => Some(other),
        }
    }
}

fn isolated_rest(mut isolators: StreamIsolators, stream: EventStream) -> EventStream {
    use futures::StreamExt;

    stream
        .filter_map(move |item| {
            let out = match item {
                Ok(event) => isolators.apply(event, false).map(Ok),
                Err(e) => Some(Err(e)),
            };
            futures::future::ready(out)
        })
        .boxed()
}

/// `stream` with the text of its content deltas (per choice) and of its tool-call argument
/// deltas (per choice and call) reduced to the first top-level JSON value: the stream of a
/// structured output answered below the native layer, without the prose and code fences the
/// model put around the JSON. Deltas left empty are dropped, except the first fragment of a
/// tool call (kept, with empty arguments, for its id and name); finish and usage events and
/// errors pass through.
pub fn isolate_stream(stream: EventStream) -> EventStream {
    isolated_rest(StreamIsolators::default(), stream)
}

/// [`isolate_stream`] for a stream whose first event has already been read: the isolated
/// first event and the isolated rest, sharing the isolators. The first event is kept even
/// when its text becomes empty (an empty content delta, as OpenAI itself starts streams), so
/// the stream still has a first event without waiting for the next ones.
pub fn isolate_live(first: StreamEvent, rest: EventStream) -> (StreamEvent, EventStream) {
    let mut isolators = StreamIsolators::default();
    let first = isolators
        .apply(first, true)
        .expect("a kept event is never dropped");
    (first, isolated_rest(isolators, rest))
}

impl LiveStream {
    /// The stream with only its JSON value relayed ([`isolate_live`]): for a structured
    /// output below the native layer, before `into_tool_call`.
    pub fn isolate_json(self) -> LiveStream {
        let (first, rest) = isolate_live(self.first, self.rest);
        LiveStream {
            first,
            rest,
            model: self.model,
        }
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
            // A fence inside a string of an unfenced answer, prose after it (found by the
            // property test below): the value, not what follows the fence.
            (
                "{\"_\":{\"a\":[\"```\"]},\"a\":[]} \u{a1}",
                serde_json::json!({"_": {"a": ["```"]}, "a": []}),
            ),
            // Brackets in the prose before a fenced answer: the fenced value.
            (
                "Step [1] done. ```json\n{\"a\": 1}\n```",
                serde_json::json!({"a": 1}),
            ),
            // A fence inside a string of a fenced answer (a code sample in a field).
            (
                "```json\n{\"code\": \"```py\\nx = 1\\n```\", \"n\": 2}\n```\nDone.",
                serde_json::json!({"code": "```py\nx = 1\n```", "n": 2}),
            ),
            // A truncated value in a fence, prose with braces after it.
            (
                "```json\n{\"a\": 1\n```\nThen {\"b\": 2}",
                serde_json::json!({"a": 1}),
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

    // ---- JSON asked for in the prompt (Instructor's JSON and MD_JSON modes) ----

    /// Instructor 1.17's JSON/MD_JSON system message (`instructor/v2/providers/openai/
    /// handlers.py`), as sent for a `User` with a nested `Address`.
    fn instructor_system(schema: &Value) -> String {
        format!(
            "\n            As a genius expert, your task is to understand the content and provide\n            \
             the parsed objects in json that match the following json_schema:\n\n\n            \
             {}\n\n            Make sure to return an instance of the JSON, not the schema itself\n",
            serde_json::to_string_pretty(schema).unwrap()
        )
    }

    fn user_schema() -> Value {
        serde_json::json!({
            "$defs": {"Address": {
                "properties": {
                    "city": {"title": "City", "type": "string"},
                    "country": {"enum": ["FR", "DE"], "title": "Country", "type": "string"}
                },
                "required": ["city", "country"], "title": "Address", "type": "object"
            }},
            "properties": {
                "name": {"title": "Name", "type": "string"},
                "age": {"title": "Age", "type": "integer"},
                "address": {"$ref": "#/$defs/Address"},
                "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null, "title": "Nickname"}
            },
            "required": ["name", "age", "address"], "title": "User", "type": "object"
        })
    }

    /// Instructor 1.17, `Mode.JSON`: the schema in the system message, a `json_object` format.
    fn instructor_json_request() -> ChatRequest {
        request(serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": instructor_system(&user_schema())},
            {"role": "user", "content": "Extract: Jason 25"}],
            "response_format": {"type": "json_object"}}))
    }

    /// Instructor 1.17, `Mode.MD_JSON`: the schema in the system message, no format, the
    /// answer asked for in a fence.
    fn instructor_md_json_request() -> ChatRequest {
        request(serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": instructor_system(&user_schema())},
            {"role": "user", "content": "Extract: Jason 25\n\nReturn the correct JSON response within a ```json codeblock. not the JSON_SCHEMA"}]}))
    }

    const JASON: &str = r#"{"name":"Jason","age":25,"address":{"city":"Paris","country":"FR"}}"#;

    #[test]
    fn json_mode_and_md_json_requests_are_validated_against_the_prompt_schema() {
        for r in [instructor_json_request(), instructor_md_json_request()] {
            let spec = StructuredSpec::of(&r).unwrap();
            assert_eq!(spec.target, Target::Json);
            assert_eq!(spec.name, "User");
            assert_eq!(spec.schema, user_schema());
        }
        // The schema may be in a developer message, or in text parts.
        let r = request(serde_json::json!({"model": "m", "messages": [
            {"role": "developer", "content": [{"type": "text", "text": instructor_system(&user_schema())}]},
            {"role": "user", "content": "hi"}]}));
        assert_eq!(StructuredSpec::of(&r).unwrap().schema, user_schema());
    }

    #[test]
    fn json_object_without_a_schema_accepts_any_object() {
        let r = request(serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": "Reply in JSON, e.g. {\"type\": \"greeting\", \"text\": \"hi\"}."},
            {"role": "user", "content": "hello"}],
            "response_format": {"type": "json_object"}}));
        let spec = StructuredSpec::of(&r).unwrap();
        assert_eq!(spec.target, Target::Json);
        assert_eq!(spec.name, "json_object");
        // The example answer is not mistaken for a schema.
        assert_eq!(spec.schema, serde_json::json!({"type": "object"}));
        let validators = Validators::default();
        assert!(validators
            .validate(&spec.schema, &serde_json::json!({"anything": [1]}))
            .is_ok());
        assert!(validators
            .validate(&spec.schema, &serde_json::json!([1]))
            .is_err());
    }

    #[test]
    fn md_json_detection_is_conservative() {
        let no_spec = |body: Value| assert!(StructuredSpec::of(&request(body)).is_none());
        let schema = serde_json::to_string(&user_schema()).unwrap();
        // A schema but no mention of JSON.
        no_spec(serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": format!("Fill this form: {schema}")},
            {"role": "user", "content": "hi"}]}));
        // JSON mentioned, but no schema (an example), or the schema only in a user message.
        no_spec(serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": "Answer in json like {\"type\": \"greeting\"}"},
            {"role": "user", "content": format!("json schema: {schema}")}]}));
        // A schema that does not compile.
        no_spec(serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": "json: {\"properties\": {\"a\": {\"type\": \"nope\"}}}"}]}));
        // Tools the model may call: the answer need not be content (PARALLEL_TOOLS stays
        // unvalidated too).
        no_spec(serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": instructor_system(&user_schema())}],
            "tools": [{"type": "function", "function": {"name": "a"}},
                      {"type": "function", "function": {"name": "b"}}],
            "tool_choice": "auto"}));
        // A text format is the same as none.
        let r = request(serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": instructor_system(&user_schema())}],
            "response_format": {"type": "text"}}));
        assert_eq!(StructuredSpec::of(&r).unwrap().target, Target::Json);
        // A json_schema format without a schema is not a JSON-in-prompt request.
        no_spec(serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": instructor_system(&user_schema())}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "U"}}}));
    }

    #[test]
    fn embedded_schemas_are_found_after_prose_and_braces() {
        let schema = user_schema();
        let pretty = serde_json::to_string_pretty(&schema).unwrap();
        let text = format!(
            "Use {{name}} placeholders; an example {{\"name\": \"x\", \"age\": 1}}, then the schema {pretty} \
             and {{\"type\": \"object\"}}"
        );
        assert_eq!(find_embedded_schema(&text), Some(schema));
        assert_eq!(
            find_embedded_schema("{\"type\": [\"string\", \"null\"]}"),
            Some(serde_json::json!({"type": ["string", "null"]}))
        );
        assert_eq!(find_embedded_schema("{\"type\": \"greeting\"}"), None);
        assert_eq!(find_embedded_schema("no braces"), None);
        assert_eq!(find_embedded_schema("{{{{ { {\"a\": é"), None);
        // Bounded: a prompt of many braces is not searched forever.
        let many = "{x ".repeat(10_000) + &serde_json::to_string(&user_schema()).unwrap();
        assert_eq!(find_embedded_schema(&many), None);
    }

    #[test]
    fn json_targets_are_native_with_a_json_mode_else_text() {
        let json_mode = Supports {
            json_mode: true,
            ..Supports::default()
        };
        let structured_only = Supports {
            structured_output: true,
            tools: true,
            ..Supports::default()
        };
        for r in [instructor_json_request(), instructor_md_json_request()] {
            let spec = StructuredSpec::of(&r).unwrap();
            assert_eq!(spec.layer_for(&json_mode), Layer::Native);
            assert_eq!(spec.layer_for(&structured_only), Layer::Text);
            assert_eq!(spec.layer_for(&Supports::default()), Layer::Text);
            // Native: as it came.
            let same = |a: &ChatRequest| serde_json::to_value(a).unwrap();
            assert_eq!(same(&spec.rewrite(&r, Layer::Native)), same(&r));
            // Text: no format; the instruction added to the system message, which already
            // has the schema (not repeated).
            let sent = spec.rewrite(&r, Layer::Text);
            assert!(sent.response_format.is_none());
            assert_eq!(sent.messages.len(), r.messages.len());
            let system = sent.messages[0].text();
            assert!(system.starts_with(&r.messages[0].text()), "{system}");
            assert!(system.ends_with("(an instance of it, not the schema itself)."));
            assert_eq!(system.matches("\"$defs\"").count(), 1, "{system}");
            assert_eq!(sent.messages[1], r.messages[1]);
        }
        // Without a schema the instruction asks for an object only.
        let r = request(serde_json::json!({"model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_object"}}));
        let spec = StructuredSpec::of(&r).unwrap();
        let sent = spec.rewrite(&r, Layer::Text);
        assert_eq!(sent.messages[0].role, Role::System);
        assert_eq!(sent.messages[0].text(), "Answer with a single JSON object.");
    }

    #[test]
    fn json_answers_are_extracted_validated_and_sent_as_compact_json() {
        let validators = Validators::default();
        for r in [instructor_json_request(), instructor_md_json_request()] {
            let spec = StructuredSpec::of(&r).unwrap();
            // The MD_JSON answer in its fence, with prose: the client gets bare JSON, which
            // Instructor's MD_JSON parser reads too.
            let fenced = format!("Here it is:\n```json\n{JASON}\n```\nDone.");
            let answer = completion(Some(&fenced), vec![]);
            let value = spec.extract(&answer, Layer::Native).unwrap();
            validators.validate(&spec.schema, &value).unwrap();
            let shaped = spec.shape(answer, &value);
            let sent = shaped.choices[0].message.content.clone().unwrap();
            assert!(
                sent.starts_with('{') && !sent.contains([' ', '\n', '`']),
                "{sent}"
            );
            assert_eq!(
                serde_json::from_str::<Value>(&sent).unwrap(),
                serde_json::from_str::<Value>(JASON).unwrap()
            );
            assert_eq!(shaped.choices[0].finish_reason, FinishReason::Stop);
            assert!(shaped.choices[0].message.tool_calls.is_empty());
            // Malformed JSON (what the mock's `bad_json_first` sends) gets the repair.
            let bad = completion(Some("{mock: bad_json, \"name\":\"Jason\","), vec![]);
            let error = spec.extract(&bad, Layer::Native).unwrap_err();
            let repair = spec.repair(&r, &answer_text(&bad), &error);
            assert_eq!(repair.messages.len(), r.messages.len() + 2);
            // JSON that misses a property of the prompt's schema is invalid.
            let partial = completion(Some("{\"name\": \"Jason\"}"), vec![]);
            let value = spec.extract(&partial, Layer::Native).unwrap();
            let problem = validators.validate(&spec.schema, &value).unwrap_err();
            assert!(
                problem.contains("\"age\" is a required property"),
                "{problem}"
            );
        }
    }

    // ---- streams ----

    /// Every way of cutting `text` into two or three chunks, and one char at a time, gives
    /// `expected`.
    fn isolates_whatever_the_chunks(text: &str, expected: &str) {
        let bounds: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        let run = |cuts: &[usize]| {
            let mut isolator = JsonIsolator::new();
            let mut out = String::new();
            let mut last = 0;
            for &cut in cuts.iter().chain([&text.len()]) {
                out.push_str(&isolator.push(&text[last..cut]));
                last = cut;
            }
            out
        };
        for (n, &a) in bounds.iter().enumerate() {
            assert_eq!(run(&[a]), expected, "cut at {a}");
            for &b in &bounds[n..] {
                assert_eq!(run(&[a, b]), expected, "cuts at {a}, {b}");
            }
        }
        let mut isolator = JsonIsolator::new();
        let by_char: String = text
            .chars()
            .map(|c| isolator.push(c.encode_utf8(&mut [0; 4])))
            .collect();
        assert_eq!(by_char, expected);
    }

    #[test]
    fn the_isolator_keeps_only_the_first_json_value() {
        let json =
            r#"{"q": "a \"quoted\" {brace} and [bracket] \\", "n": [1, {"x": "é}"}], "e": {}}"#;
        isolates_whatever_the_chunks(json, json);
        isolates_whatever_the_chunks(
            &format!("Sure! Here is the JSON you asked for:\n```json\n{json}\n```\nLet me know if {{you}} need more."),
            json,
        );
        isolates_whatever_the_chunks("```\n[1, [2], \"]\"] and [3]", "[1, [2], \"]\"]");
        // A truncated value is relayed as far as it goes; no value, nothing.
        isolates_whatever_the_chunks("text {\"a\": \"b", "{\"a\": \"b");
        isolates_whatever_the_chunks("no json here", "");
        let mut isolator = JsonIsolator::new();
        assert_eq!(isolator.push("x {\"a\":"), "{\"a\":");
        assert!(!isolator.is_done());
        assert_eq!(isolator.push(" 1} tail"), " 1}");
        assert!(isolator.is_done());
        assert_eq!(isolator.push("{\"b\": 2}"), "");
    }

    fn events(stream: EventStream) -> Vec<StreamEvent> {
        use futures::StreamExt;
        futures::executor::block_on(stream.map(|e| e.unwrap()).collect())
    }

    fn content(index: u32, text: &str) -> StreamEvent {
        StreamEvent::Content {
            index,
            text: text.into(),
        }
    }

    fn args(index: u32, call: u32, named: bool, arguments: &str) -> StreamEvent {
        StreamEvent::ToolCall {
            index,
            call,
            id: named.then(|| format!("call_{call}")),
            name: named.then(|| format!("f{call}")),
            arguments: arguments.into(),
        }
    }

    fn boxed(events: Vec<StreamEvent>) -> EventStream {
        use futures::StreamExt;
        futures::stream::iter(events.into_iter().map(Ok)).boxed()
    }

    #[test]
    fn streams_are_isolated_per_choice_and_per_call() {
        let finish = StreamEvent::Finish {
            index: 0,
            reason: FinishReason::Stop,
        };
        let usage = StreamEvent::Usage(Usage::default());
        let input = vec![
            content(0, "Sure! ``"),
            content(1, "{\"b\": \"}"),
            content(0, "`json\n{\"a\""),
            args(0, 0, true, ""),
            args(0, 1, true, "Here: {\"y\":"),
            args(0, 0, false, "```json\n"),
            content(0, ": \"x\\\"}\"}\n``"),
            content(1, "\"} more"),
            args(0, 0, false, "{\"x\": 1}"),
            args(0, 1, false, " 2} bye"),
            content(0, "`\nBye!"),
            args(0, 0, false, " trailing"),
            finish.clone(),
            usage.clone(),
        ];
        let expected = vec![
            content(1, "{\"b\": \"}"),
            content(0, "{\"a\""),
            args(0, 0, true, ""),
            args(0, 1, true, "{\"y\":"),
            content(0, ": \"x\\\"}\"}"),
            content(1, "\"}"),
            args(0, 0, false, "{\"x\": 1}"),
            args(0, 1, false, " 2}"),
            finish,
            usage,
        ];
        assert_eq!(events(isolate_stream(boxed(input))), expected);
    }

    #[test]
    fn errors_pass_through_the_isolated_stream() {
        use futures::StreamExt;
        let input = futures::stream::iter(vec![
            Ok(content(0, "x {\"a\": 1")),
            Err(crate::error::GatewayError::new(
                crate::error::ErrorKind::Timeout,
                "idle",
            )),
        ])
        .boxed();
        let out: Vec<_> = futures::executor::block_on(isolate_stream(input).collect());
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].as_ref().unwrap(), &content(0, "{\"a\": 1"));
        assert!(out[1].is_err());
    }

    #[test]
    fn a_live_stream_keeps_its_first_event_and_continues_its_isolation() {
        // The first delta is all prose: it stays, empty, so the stream still starts at once.
        let (first, rest) = isolate_live(
            content(0, "Sure! Here is the JSON:\n```json\n"),
            boxed(vec![
                content(0, "{\"a\": \"}"),
                content(0, "\"}\n```"),
                content(0, "\nBye"),
            ]),
        );
        assert_eq!(first, content(0, ""));
        assert_eq!(
            events(rest),
            vec![content(0, "{\"a\": \"}"), content(0, "\"}")]
        );
        // The isolators are shared between the first event and the rest.
        let (first, rest) = isolate_live(
            content(0, "ok {\"s\": \"{"),
            boxed(vec![content(0, "\"} {\"t\": 1}")]),
        );
        assert_eq!(first, content(0, "{\"s\": \"{"));
        assert_eq!(events(rest), vec![content(0, "\"}")]);
        // A tool call's first fragment keeps its id and name.
        let (first, rest) = isolate_live(
            args(0, 0, true, "```json"),
            boxed(vec![args(0, 0, false, "\n[1]")]),
        );
        assert_eq!(first, args(0, 0, true, ""));
        assert_eq!(events(rest), vec![args(0, 0, false, "[1]")]);
    }

    #[test]
    fn tool_calls_the_model_chose_are_checked_against_their_tools() {
        let validators = Validators::default();
        let r = request(
            serde_json::json!({"model": "m", "messages": [], "tool_choice": "auto",
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]}),
        );
        let call = |name: &str, arguments: &str| ToolCallOut {
            id: "call_1".into(),
            name: name.into(),
            arguments: arguments.into(),
        };
        let ok = completion(None, vec![call("weather", "{\"city\": \"Paris\"}")]);
        assert_eq!(validate_tool_calls(&validators, &r, &ok), Ok(true));
        let text = completion(Some("no tools needed"), vec![]);
        assert_eq!(validate_tool_calls(&validators, &r, &text), Ok(false));
        let missing = completion(None, vec![call("weather", "{}")]);
        assert!(validate_tool_calls(&validators, &r, &missing)
            .unwrap_err()
            .contains("city"));
        let unknown = completion(None, vec![call("stocks", "{}")]);
        assert!(validate_tool_calls(&validators, &r, &unknown)
            .unwrap_err()
            .contains("does not exist"));
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

    mod extraction_properties {
        use super::*;
        use proptest::prelude::*;

        /// JSON values a model could answer with (floats left out: their text round trip is
        /// not exact).
        fn arb_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                "[^\\u{0}]{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn arb_object() -> impl Strategy<Value = Value> {
            proptest::collection::btree_map("[a-z_]{1,8}", arb_json(), 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        }

        proptest! {
            #[test]
            fn any_text_is_handled_without_panicking(text in ".{0,400}") {
                let _ = extract_json(&text);
                let _ = find_embedded_schema(&text);
            }

            #[test]
            fn json_like_text_is_handled_without_panicking(
                text in proptest::collection::vec(
                    prop_oneof![
                        Just("{"), Just("}"), Just("["), Just("]"), Just("\""), Just("'"),
                        Just(","), Just(":"), Just("\\"), Just("```"), Just("```json\n"),
                        Just("a"), Just("1"), Just(" "), Just("\n"), Just("null"),
                    ],
                    0..200,
                ).prop_map(|parts| parts.concat()),
            ) {
                if let Some(value) = extract_json(&text) {
                    prop_assert!(value.is_object() || value.is_array());
                }
            }

            // An object in prose, in a fence, or alone comes back exactly.
            #[test]
            fn an_object_in_prose_or_fences_is_found(
                value in arb_object(),
                before in "[^{}\\[\\]`]{0,40}",
                after in "[^{}\\[\\]`]{0,40}",
                fenced in any::<bool>(),
            ) {
                let json = serde_json::to_string(&value).unwrap();
                let text = if fenced {
                    format!("{before}\n```json\n{json}\n```\n{after}")
                } else {
                    format!("{before} {json} {after}")
                };
                prop_assert_eq!(extract_json(&text), Some(value));
            }

            // A truncated answer is closed and parsed, or refused: never a panic.
            #[test]
            fn truncated_objects_are_repaired_or_refused(
                value in arb_object(),
                cut in any::<prop::sample::Index>(),
            ) {
                let json = serde_json::to_string(&value).unwrap();
                let mut end = cut.index(json.len() + 1);
                while !json.is_char_boundary(end) {
                    end -= 1;
                }
                if let Some(found) = extract_json(&json[..end]) {
                    prop_assert!(found.is_object() || found.is_array());
                }
            }
        }
    }
}
