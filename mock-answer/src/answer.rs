//! The mock's "brain": what to answer to a chat-completions request, independent of any
//! transport or wire format.
//!
//! Rules, first match wins:
//!
//! 1. **Forced tool call.** `tool_choice` is `{"type":"function","function":{"name":N}}`
//!    → one call to `N` whose arguments are an instance of that tool's `parameters`
//!    schema. `tool_choice == "required"` → one call per declared tool (only the first
//!    one when `parallel_tool_calls` is `false`). No content; finish reason `tool_calls`.
//! 2. **Structured output.** `response_format.type == "json_schema"` → the content is the
//!    compact JSON text of an instance of `response_format.json_schema.schema`.
//! 3. **Schema in the system prompt.** A `system` or `developer` message embedding a JSON
//!    Schema object in its text (as Instructor's JSON / MD_JSON modes do) → the content
//!    is an instance of that schema. With `response_format.type == "json_object"` and no
//!    schema found, the content is `{}`.
//! 4. **Echo.** The content is the text of the last `user` message (its text parts joined
//!    with `\n`), or `""` without a user message.
//!
//! Token counts are `max(1, ceil(chars / 4))` of all message texts (prompt) and of the
//! content or tool-call arguments (completion).
//!
//! Directives of the request's `model` string change the structured answers of rules 1–3
//! (see [`crate::directives`]): `call_tools` makes `tool_choice: "auto"` (or no
//! `tool_choice`) call every declared tool, as `"required"` does; `bad_json_first=N` and
//! `invalid_first=N` make the first answers for that exact model string malformed JSON or
//! JSON that violates the schema ([`malformed_json`], [`violating_instance`]), counted per
//! model string in a process-wide map; `prose_json` wraps structured content answers in
//! prose and a code fence ([`in_prose`]).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

use serde_json::{json, Value};

use crate::directives::Directives;
use crate::ids;
use crate::schema_instance::instance_for;

/// What the mock answers to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockAnswer {
    /// The assistant message text; `None` when the answer is tool calls.
    pub content: Option<String>,
    /// The tool calls made; empty for a text answer.
    pub tool_calls: Vec<MockToolCall>,
    /// `"stop"` or `"tool_calls"`.
    pub finish_reason: &'static str,
    /// `max(1, ceil(chars of all message texts / 4))`.
    pub prompt_tokens: u64,
    /// `max(1, ceil(chars of the content or of all tool-call arguments / 4))`.
    pub completion_tokens: u64,
}

/// One tool (function) call of a [`MockAnswer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockToolCall {
    /// `call_` followed by 24 alphanumeric characters, unique within the process.
    pub id: String,
    /// The function name.
    pub name: String,
    /// The arguments, as compact JSON text.
    pub arguments: String,
}

/// Computes the answer to an OpenAI chat-completions request (as JSON). Never panics,
/// whatever the shape of `request`.
pub fn answer(request: &Value) -> MockAnswer {
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let directives = Directives::parse(model);
    let messages: &[Value] = request
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let prompt_chars: usize = messages
        .iter()
        .map(|m| message_text(m).chars().count())
        .sum();
    let prompt_tokens = tokens_for_chars(prompt_chars);

    if let Some(calls) = forced_tool_calls(request, directives.call_tools) {
        let fault = structured_fault(model, &directives);
        let tool_calls: Vec<MockToolCall> = calls
            .into_iter()
            .map(|(mut call, schema)| {
                if let Some(fault) = fault {
                    call.arguments = fault.apply(&call.arguments, &schema);
                }
                call
            })
            .collect();
        let chars = tool_calls.iter().map(|c| c.arguments.chars().count()).sum();
        return MockAnswer {
            content: None,
            tool_calls,
            finish_reason: "tool_calls",
            prompt_tokens,
            completion_tokens: tokens_for_chars(chars),
        };
    }

    let response_format = request
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str);
    // The content, and the schema it is an instance of when it is a structured answer.
    let (content, schema) = if directives.judge {
        (judgement(messages), None)
    } else if response_format == Some("json_schema") {
        let schema = request
            .pointer("/response_format/json_schema/schema")
            .unwrap_or(&Value::Null);
        let instance = match schema {
            Value::Null => Value::Object(Default::default()),
            schema => instance_for(schema),
        };
        (instance.to_string(), Some(schema.clone()))
    } else if let Some(schema) = system_prompt_schema(messages) {
        (instance_for(&schema).to_string(), Some(schema))
    } else if response_format == Some("json_object") {
        ("{}".to_string(), Some(json!({"type": "object"})))
    } else {
        let echo = messages
            .iter()
            .rev()
            .find(|m| role(m) == Some("user"))
            .map(message_text)
            .unwrap_or_default();
        let echo = match &directives.forget {
            Some(word) => echo.replace(word.as_str(), ""),
            None => echo,
        };
        (echo, None)
    };
    // Only structured answers are counted (and spoiled).
    let fault = schema
        .as_ref()
        .and_then(|schema| Some((structured_fault(model, &directives)?, schema)));
    let mut content = match fault {
        Some((fault, schema)) => fault.apply(&content, schema),
        None => content,
    };
    if directives.prose_json && schema.is_some() {
        content = in_prose(&content);
    }
    MockAnswer {
        completion_tokens: tokens_for_chars(content.chars().count()),
        content: Some(content),
        tool_calls: Vec::new(),
        finish_reason: "stop",
        prompt_tokens,
    }
}

/// A reviewer's verdict on the last user message: positive when the text after `OUTPUT:`
/// holds the (trimmed) line after `EXPECTED:`, negative when it does not, unsure without one.
fn judgement(messages: &[Value]) -> String {
    let text = messages
        .iter()
        .rev()
        .find(|m| role(m) == Some("user"))
        .map(message_text)
        .unwrap_or_default();
    let after = |label: &str| text.split_once(label).map(|(_, rest)| rest.trim_start());
    let expected = after("EXPECTED:")
        .and_then(|rest| rest.lines().next())
        .map(str::trim);
    let output = after("OUTPUT:").unwrap_or_default();
    let (verdict, reason) = match expected.filter(|e| !e.is_empty()) {
        None => ("unsure", "no expected answer to compare with".to_string()),
        Some(e) if output.contains(e) => ("positive", format!("the output says `{e}`")),
        Some(e) => ("negative", format!("the output never says `{e}`")),
    };
    json!({"verdict": verdict, "reason": reason}).to_string()
}

/// How a scripted structured answer goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `bad_json_first`: not JSON at all.
    Malformed,
    /// `invalid_first`: JSON that violates the schema.
    Invalid,
}

impl Fault {
    /// The faulty version of `json`, the compact JSON text of an instance of `schema`.
    fn apply(self, json: &str, schema: &Value) -> String {
        match self {
            Fault::Malformed => malformed_json(json),
            Fault::Invalid => {
                let instance = serde_json::from_str(json).unwrap_or(Value::Null);
                violating_instance(instance, schema).to_string()
            }
        }
    }
}

/// Structured answers given so far, by exact model string (for `bad_json_first` and
/// `invalid_first`). Process-wide: the answer function has no server state, and the
/// built-in `mock` provider of flowgate calls it in-process.
static STRUCTURED_ANSWERS: LazyLock<Mutex<HashMap<String, u64>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Counts a structured answer for `model` and says whether (and how) it goes wrong. Model
/// strings without `bad_json_first`/`invalid_first` are neither counted nor faulty.
fn structured_fault(model: &str, d: &Directives) -> Option<Fault> {
    if !d.scripts_structured_faults() {
        return None;
    }
    let index = {
        let mut counts = STRUCTURED_ANSWERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(model.to_string()).or_insert(0);
        let index = *count;
        *count += 1;
        index
    };
    let bad = d.bad_json_first.unwrap_or(0);
    let invalid = d.invalid_first.unwrap_or(0);
    if index < bad {
        Some(Fault::Malformed)
    } else if index < bad.saturating_add(invalid) {
        Some(Fault::Invalid)
    } else {
        None
    }
}

/// `json` (the compact text of an object or array) made unreadable the way models get JSON
/// wrong: an unquoted key and value added at the front, a trailing comma, no closer —
/// `{"age":0}` becomes `{mock: bad_json, "age":0,`. Neither a strict parser nor a lenient
/// one (trailing commas, single quotes, truncation) reads it.
pub fn malformed_json(json: &str) -> String {
    let json = json.trim();
    let (open, rest) = match json.chars().next() {
        Some(c @ ('{' | '[')) => (c, &json[1..]),
        _ => ('{', json),
    };
    let inner = rest.strip_suffix(['}', ']']).unwrap_or(rest).trim();
    if inner.is_empty() {
        format!("{open}mock: bad_json,")
    } else {
        format!("{open}mock: bad_json, {inner},")
    }
}

/// `json` the way chatty models answer: a sentence, a ` ```json ` fence, a closing line.
pub fn in_prose(json: &str) -> String {
    format!("Sure! Here is the JSON you asked for:\n```json\n{json}\n```\nLet me know if you need anything else.")
}

/// A value that does not validate against `schema`, derived from `instance` (which does):
/// without the schema's first required property when it has one, else with its first
/// property of the wrong type, else of the wrong type altogether.
pub fn violating_instance(instance: Value, schema: &Value) -> Value {
    let required = schema
        .get("required")
        .and_then(Value::as_array)
        .and_then(|r| r.iter().filter_map(Value::as_str).next());
    match instance {
        Value::Object(mut map) => {
            if let Some(name) = required {
                if map.remove(name).is_some() {
                    return Value::Object(map);
                }
            }
            let Some(first) = map.keys().next().cloned() else {
                return json!("mock: invalid_first");
            };
            let wrong = wrong_type(&map[&first]);
            map.insert(first, wrong);
            Value::Object(map)
        }
        other => wrong_type(&other),
    }
}

/// A value of another JSON type than `value`.
fn wrong_type(value: &Value) -> Value {
    match value {
        Value::String(_) => json!(12345),
        _ => json!("mock: invalid_first"),
    }
}

/// `max(1, ceil(chars / 4))`.
pub fn tokens_for_chars(chars: usize) -> u64 {
    (chars.div_ceil(4).max(1)) as u64
}

/// A fresh tool-call id: `call_` followed by 24 deterministic, process-unique characters.
pub fn new_tool_call_id() -> String {
    ids::with_prefix("call_")
}

fn role(message: &Value) -> Option<&str> {
    message.get("role").and_then(Value::as_str)
}

/// The text of a message: its `content` string, or its text parts (`{"type":"text",
/// "text":…}`) joined with `\n`. Other parts (images, audio…) and missing content give "".
pub fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| {
                matches!(
                    p.get("type").and_then(Value::as_str),
                    Some("text") | Some("input_text")
                )
            })
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The forced tool calls of a request, each with its tool's `parameters` schema; with
/// `call_tools`, `tool_choice: "auto"` (or none) counts as `"required"`.
fn forced_tool_calls(request: &Value, call_tools: bool) -> Option<Vec<(MockToolCall, Value)>> {
    let tools: &[Value] = request
        .get("tools")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let function_of = |tool: &'_ Value| -> Option<(String, Value)> {
        let function = tool.get("function")?;
        let name = function.get("name")?.as_str()?.to_string();
        let parameters = function.get("parameters").cloned().unwrap_or(Value::Null);
        Some((name, parameters))
    };
    let call = |name: String, parameters: Value| {
        let call = MockToolCall {
            id: new_tool_call_id(),
            arguments: match &parameters {
                Value::Null => "{}".to_string(),
                schema => instance_for(schema).to_string(),
            },
            name,
        };
        (call, parameters)
    };
    let auto = Value::String("auto".to_string());
    let choice = match request.get("tool_choice") {
        Some(choice) => choice,
        None if call_tools => &auto,
        None => return None,
    };
    match choice {
        Value::Object(choice) => {
            if choice.get("type").and_then(Value::as_str) != Some("function") {
                return None;
            }
            let name = choice.get("function")?.get("name")?.as_str()?;
            let parameters = tools
                .iter()
                .filter_map(function_of)
                .find(|(n, _)| n == name)
                .map(|(_, p)| p)
                .unwrap_or(Value::Null);
            Some(vec![call(name.to_string(), parameters)])
        }
        // `any` is Mistral's name for `required`.
        Value::String(s) if s == "required" || s == "any" || (call_tools && s == "auto") => {
            let parallel = request.get("parallel_tool_calls") != Some(&Value::Bool(false));
            let mut calls: Vec<(MockToolCall, Value)> = tools
                .iter()
                .filter_map(function_of)
                .map(|(name, parameters)| call(name, parameters))
                .collect();
            if !parallel {
                calls.truncate(1);
            }
            (!calls.is_empty()).then_some(calls)
        }
        _ => None,
    }
}

/// The first JSON Schema embedded in the text of a system or developer message.
fn system_prompt_schema(messages: &[Value]) -> Option<Value> {
    messages
        .iter()
        .filter(|m| matches!(role(m), Some("system") | Some("developer")))
        .find_map(|m| find_embedded_schema(&message_text(m)))
}

/// Maximum number of `{` positions tried by [`find_embedded_schema`], to bound the work on
/// huge prompts full of braces.
const MAX_SCHEMA_CANDIDATES: usize = 256;

/// Finds the first balanced `{…}` substring of `text` that parses as a JSON object with a
/// `"properties"`, `"type"` or `"$defs"` key — a JSON Schema embedded in prose, as
/// Instructor appends it to the system prompt. Objects without those keys are skipped
/// (and searched inside).
pub fn find_embedded_schema(text: &str) -> Option<Value> {
    for (start, _) in text.match_indices('{').take(MAX_SCHEMA_CANDIDATES) {
        // Parse one JSON value starting at this brace, ignoring whatever follows it; this
        // fails fast on prose.
        let mut values = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
        if let Some(Ok(Value::Object(map))) = values.next() {
            if ["properties", "type", "$defs"]
                .iter()
                .any(|k| map.contains_key(*k))
            {
                return Some(Value::Object(map));
            }
        }
    }
    None
}

/// Splits `text` into pieces of at most `max_chars` characters (on char boundaries), for
/// streaming. An empty text gives no piece.
pub fn chunks(text: &str, max_chars: usize) -> Vec<&str> {
    let max_chars = max_chars.max(1);
    let mut out = Vec::with_capacity(text.len() / max_chars + 1);
    let mut start = 0;
    let mut count = 0;
    for (i, _) in text.char_indices() {
        if count == max_chars {
            out.push(&text[start..i]);
            start = i;
            count = 0;
        }
        count += 1;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn weather_tool() -> Value {
        json!({"type": "function", "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["c", "f"]}
                },
                "required": ["city", "unit"],
                "additionalProperties": false
            }
        }})
    }

    #[test]
    fn echoes_last_user_message() {
        let a = answer(&json!({"model": "m", "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [
                {"type": "text", "text": "hello"},
                {"type": "image_url", "image_url": {"url": "https://x"}},
                {"type": "text", "text": "world"}
            ]}
        ]}));
        assert_eq!(a.content.as_deref(), Some("hello\nworld"));
        assert_eq!(a.finish_reason, "stop");
        assert!(a.tool_calls.is_empty());
        // 7 + 5 + 2 + 11 = 25 chars → 7 tokens; 11 chars → 3 tokens.
        assert_eq!(a.prompt_tokens, 7);
        assert_eq!(a.completion_tokens, 3);
    }

    #[test]
    fn empty_and_garbage_requests() {
        let a = answer(&json!({"model": "m", "messages": [{"role": "system", "content": "x"}]}));
        assert_eq!(a.content.as_deref(), Some(""));
        assert_eq!((a.prompt_tokens, a.completion_tokens), (1, 1));
        let a = answer(&json!("nonsense"));
        assert_eq!(a.content.as_deref(), Some(""));
        let a = answer(&json!({"messages": 3, "tool_choice": {"type": "function"}, "tools": 1}));
        assert_eq!(a.content.as_deref(), Some(""));
    }

    #[test]
    fn forced_tool_choice() {
        let a = answer(&json!({
            "model": "m",
            "messages": [{"role": "user", "content": "weather in Paris?"}],
            "tools": [{"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}, weather_tool()],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}
        }));
        assert_eq!(a.content, None);
        assert_eq!(a.finish_reason, "tool_calls");
        assert_eq!(a.tool_calls.len(), 1);
        let call = &a.tool_calls[0];
        assert_eq!(call.name, "get_weather");
        assert!(call.id.starts_with("call_") && call.id.len() == 29);
        let args: Value = serde_json::from_str(&call.arguments).unwrap();
        assert_eq!(args, json!({"city": "string", "unit": "c"}));
        assert_eq!(a.completion_tokens, tokens_for_chars(call.arguments.len()));
    }

    #[test]
    fn required_tool_choice() {
        let mut request = json!({
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [weather_tool(), {"type": "function", "function": {"name": "noop"}}],
            "tool_choice": "required"
        });
        let a = answer(&request);
        let names: Vec<&str> = a.tool_calls.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["get_weather", "noop"]);
        assert_eq!(a.tool_calls[1].arguments, "{}");
        assert_ne!(a.tool_calls[0].id, a.tool_calls[1].id);

        request["parallel_tool_calls"] = json!(false);
        assert_eq!(answer(&request).tool_calls.len(), 1);

        request["tool_choice"] = json!("auto");
        assert_eq!(answer(&request).content.as_deref(), Some("x"));
    }

    #[test]
    fn json_schema_response_format() {
        let a = answer(&json!({
            "model": "m",
            "messages": [{"role": "user", "content": "extract"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "P", "strict": true, "schema": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "required": ["name", "age"],
                "additionalProperties": false
            }}}
        }));
        assert_eq!(a.content.as_deref(), Some(r#"{"age":0,"name":"string"}"#));
        assert_eq!(a.finish_reason, "stop");
    }

    #[test]
    fn instructor_json_mode_schema_in_system_prompt() {
        let schema = json!({
            "properties": {"name": {"title": "Name", "type": "string"}, "age": {"title": "Age", "type": "integer"}},
            "required": ["name", "age"],
            "title": "UserDetail",
            "type": "object"
        });
        let system = format!(
            "You are helpful. {{not json}} As a genius expert, your task is to understand the content and provide\n\
             the parsed objects in json that match the following json_schema:\n\n{}\n\n\
             Make sure to return an instance of the JSON, not the schema itself",
            serde_json::to_string_pretty(&schema).unwrap()
        );
        let request = json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": system}]},
                {"role": "user", "content": "Jason is 25"}
            ],
            "response_format": {"type": "json_object"}
        });
        let a = answer(&request);
        let v: Value = serde_json::from_str(a.content.as_deref().unwrap()).unwrap();
        assert_eq!(v, json!({"name": "string", "age": 0}));

        // developer role, MD_JSON mode (no response_format)
        let request = json!({"model": "m", "messages": [
            {"role": "developer", "content": format!("Schema: {schema}")},
            {"role": "user", "content": "Return the correct JSON response within a ```json codeblock."}
        ]});
        let v: Value = serde_json::from_str(answer(&request).content.as_deref().unwrap()).unwrap();
        assert_eq!(v["age"], json!(0));

        // json_object without a schema
        let request = json!({"model": "m", "response_format": {"type": "json_object"}, "messages": [
            {"role": "system", "content": "Answer in JSON {\"a\": 1}"},
            {"role": "user", "content": "hi"}
        ]});
        assert_eq!(answer(&request).content.as_deref(), Some("{}"));
    }

    #[test]
    fn embedded_schema_edge_cases() {
        assert_eq!(find_embedded_schema("no braces"), None);
        assert_eq!(find_embedded_schema("{unbalanced"), None);
        assert_eq!(
            find_embedded_schema(r#"x {"type": "string", "pattern": "}{"} y"#),
            Some(json!({"type": "string", "pattern": "}{"}))
        );
        assert_eq!(
            find_embedded_schema(r#"{"outer": 1, "inner": {"type": "integer"}}"#),
            Some(json!({"type": "integer"}))
        );
    }

    /// A model string no other test uses, so that the process-wide counters start at 0.
    fn unique_model(directives: &str) -> String {
        format!("m-{};{directives}", ids::with_prefix("t"))
    }

    fn user_schema() -> Value {
        json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"]
        })
    }

    #[test]
    fn bad_json_first_spoils_the_first_answers_then_answers_well() {
        let model = unique_model("bad_json_first=2");
        let request = json!({
            "model": model,
            "messages": [{"role": "user", "content": "Jason is 25"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "U", "schema": user_schema()}}
        });
        for _ in 0..2 {
            let a = answer(&request);
            let text = a.content.unwrap();
            assert_eq!(text, r#"{mock: bad_json, "age":0,"name":"string","#);
            assert!(serde_json::from_str::<Value>(&text).is_err());
            assert_eq!(a.completion_tokens, tokens_for_chars(text.chars().count()));
        }
        let good = answer(&request).content.unwrap();
        assert_eq!(good, r#"{"age":0,"name":"string"}"#);

        // The counter is per exact model string: another string starts afresh.
        let mut other = request.clone();
        other["model"] = json!(unique_model("bad_json_first=2"));
        assert!(answer(&other)
            .content
            .unwrap()
            .starts_with("{mock: bad_json"));
    }

    #[test]
    fn invalid_first_follows_bad_json_first_and_applies_to_tool_arguments() {
        let model = unique_model("bad_json_first=1;invalid_first=1");
        let request = json!({
            "model": model,
            "messages": [{"role": "user", "content": "Jason is 25"}],
            "tools": [{"type": "function", "function": {"name": "User", "parameters": user_schema()}}],
            "tool_choice": {"type": "function", "function": {"name": "User"}}
        });
        let arguments = |a: MockAnswer| a.tool_calls[0].arguments.clone();
        let first = arguments(answer(&request));
        assert!(serde_json::from_str::<Value>(&first).is_err(), "{first}");
        // The required `name` is missing.
        let second: Value = serde_json::from_str(&arguments(answer(&request))).unwrap();
        assert_eq!(second, json!({"age": 0}));
        let third: Value = serde_json::from_str(&arguments(answer(&request))).unwrap();
        assert_eq!(third, json!({"age": 0, "name": "string"}));
    }

    #[test]
    fn structured_faults_apply_to_system_prompt_schemas_and_skip_echoes() {
        let model = unique_model("invalid_first=1");
        let echo = json!({"model": model, "messages": [{"role": "user", "content": "hello"}]});
        // An echo is not structured: it is neither spoiled nor counted.
        assert_eq!(answer(&echo).content.as_deref(), Some("hello"));
        let request = json!({"model": model, "messages": [
            {"role": "system", "content": format!("Answer with JSON matching {}", user_schema())},
            {"role": "user", "content": "Jason is 25"}
        ]});
        let first: Value = serde_json::from_str(&answer(&request).content.unwrap()).unwrap();
        assert_eq!(first, json!({"age": 0}));
        let second: Value = serde_json::from_str(&answer(&request).content.unwrap()).unwrap();
        assert_eq!(second, json!({"age": 0, "name": "string"}));
    }

    #[test]
    fn prose_json_wraps_structured_content_only() {
        let model = unique_model("prose_json");
        let request = json!({
            "model": model,
            "messages": [{"role": "user", "content": "Jason is 25"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "U", "schema": user_schema()}}
        });
        let text = answer(&request).content.unwrap();
        assert_eq!(
            text,
            "Sure! Here is the JSON you asked for:\n```json\n{\"age\":0,\"name\":\"string\"}\n```\n\
             Let me know if you need anything else."
        );
        // Tool calls and echoes are left alone.
        let tools = json!({
            "model": model,
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "User", "parameters": user_schema()}}],
            "tool_choice": "required"
        });
        assert_eq!(
            answer(&tools).tool_calls[0].arguments,
            r#"{"age":0,"name":"string"}"#
        );
        let echo = json!({"model": model, "messages": [{"role": "user", "content": "x"}]});
        assert_eq!(answer(&echo).content.as_deref(), Some("x"));
    }

    #[test]
    fn faulty_values() {
        assert_eq!(malformed_json("{}"), "{mock: bad_json,");
        assert_eq!(malformed_json("[1,2]"), "[mock: bad_json, 1,2,");
        assert_eq!(malformed_json("3"), "{mock: bad_json, 3,");
        // Nothing required: the first property gets the wrong type.
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        assert_eq!(
            violating_instance(json!({"a": "x"}), &schema),
            json!({"a": 12345})
        );
        assert_eq!(
            violating_instance(json!({"a": 1}), &schema),
            json!({"a": "mock: invalid_first"})
        );
        assert_eq!(
            violating_instance(json!({}), &schema),
            json!("mock: invalid_first")
        );
        assert_eq!(
            violating_instance(json!([1]), &json!({"type": "array"})),
            json!("mock: invalid_first")
        );
    }

    #[test]
    fn call_tools_calls_every_tool_under_auto() {
        let model = unique_model("call_tools");
        let mut request = json!({
            "model": model,
            "messages": [{"role": "user", "content": "x"}],
            "tools": [weather_tool(), {"type": "function", "function": {"name": "noop"}}],
            "tool_choice": "auto"
        });
        let names =
            |a: MockAnswer| -> Vec<String> { a.tool_calls.into_iter().map(|c| c.name).collect() };
        assert_eq!(names(answer(&request)), ["get_weather", "noop"]);
        request.as_object_mut().unwrap().remove("tool_choice");
        assert_eq!(names(answer(&request)), ["get_weather", "noop"]);
        request["parallel_tool_calls"] = json!(false);
        assert_eq!(names(answer(&request)), ["get_weather"]);
        request["tool_choice"] = json!("none");
        assert_eq!(answer(&request).content.as_deref(), Some("x"));
        // Without the directive, `auto` echoes.
        request["model"] = json!("m");
        request["tool_choice"] = json!("auto");
        assert_eq!(answer(&request).content.as_deref(), Some("x"));
    }

    #[test]
    fn chunking() {
        assert!(chunks("", 8).is_empty());
        assert_eq!(chunks("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(chunks("héllo wörld", 3), ["hél", "lo ", "wör", "ld"]);
        assert_eq!(chunks("ab", 0), ["a", "b"]);
    }
}
