//! Whether a run matches a filter. Stores narrow the candidates with their indexes; this is the
//! one place that decides, so every backend answers a query alike.

use std::cmp::Ordering;

use serde_json::Value;

use super::{id_millis, Field, Filter, Operand, Operator, Step};
use crate::recorder::run::RunRecord;

/// A run and what is known of it beside its record.
pub struct RunFacts<'a> {
    pub run: &'a RunRecord,
    /// `positive` or `negative` when an end user gave feedback.
    pub feedback: Option<&'a str>,
}

impl Filter {
    pub fn matches(&self, facts: &RunFacts<'_>) -> bool {
        let run = facts.run;
        match &self.field {
            Field::Status => self.keyword(Some(run.status.as_str())),
            Field::Cache => self.keyword(Some(run.cache.as_str())),
            Field::Source => self.keyword(Some(run.source.as_str())),
            Field::Feedback => self.keyword(Some(facts.feedback.unwrap_or("none"))),
            Field::Agent => self.keyword(Some(&run.agent)),
            Field::Model => self.keyword(run.model.as_deref().or(Some(&run.requested_model))),
            Field::Provider => self.keyword(run.provider.as_deref()),
            Field::Version => self.version(run.version_id.as_deref(), id_millis(&run.id)),
            Field::Schema => self.keyword(run.schema_id.map(|id| id.to_string()).as_deref()),
            Field::Conversation => {
                self.keyword(run.conversation_id.map(|id| id.to_string()).as_deref())
            }
            Field::CostUsd => self.number(run.cost_usd),
            Field::DurationSeconds => self.number(run.duration_seconds),
            Field::CreatedAt => self.time(id_millis(&run.id)),
            Field::Metadata(key) => {
                let value = run.metadata.as_ref().and_then(|m| m.get(key));
                self.json(value)
            }
            Field::Input(path) => match &run.input {
                Some(input) => self.json(walk(input, path)),
                None => {
                    let request = run
                        .request
                        .as_ref()
                        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
                    self.json(request.as_ref().and_then(|r| walk(r, path)))
                }
            },
            Field::Output(path) => {
                let output = output_json(run);
                self.json(output.as_ref().and_then(|o| walk(o, path)))
            }
            Field::Text => {
                let texts = run_texts(run);
                let found = |needle: &str| {
                    let needle = TextNeedle::new(needle);
                    texts.iter().any(|t| needle.is_in(t))
                };
                let any = self.texts().any(found);
                match self.operator {
                    Operator::DoesNotContain => !any,
                    _ => any,
                }
            }
        }
    }

    fn texts(&self) -> impl Iterator<Item = &str> {
        self.operands.iter().filter_map(|o| match o {
            Operand::Text(t) => Some(t.as_str()),
            _ => None,
        })
    }

    fn keyword(&self, value: Option<&str>) -> bool {
        let value = value.filter(|v| !v.is_empty());
        match self.operator {
            Operator::Is => value.is_some_and(|v| self.texts().any(|t| t == v)),
            Operator::IsNot => !value.is_some_and(|v| self.texts().any(|t| t == v)),
            Operator::Contains => {
                value.is_some_and(|v| self.texts().any(|t| TextNeedle::new(t).is_in(v)))
            }
            Operator::DoesNotContain => {
                !value.is_some_and(|v| self.texts().any(|t| TextNeedle::new(t).is_in(v)))
            }
            Operator::IsEmpty => value.is_none(),
            Operator::IsNotEmpty => value.is_some(),
            _ => false,
        }
    }

    /// A version id, or the version deployed to an environment when the run ran.
    fn version(&self, value: Option<&str>, ms: u64) -> bool {
        let named = |v: &str| {
            self.operands.iter().any(|o| match o {
                Operand::Text(t) => t == v,
                Operand::Deployed(spans) => spans
                    .iter()
                    .any(|s| s.version_id == v && ms >= s.from_ms && ms < s.to_ms),
                _ => false,
            })
        };
        match self.operator {
            Operator::Is => value.is_some_and(named),
            Operator::IsNot => !value.is_some_and(named),
            _ => self.keyword(value),
        }
    }

    fn numbers(&self) -> impl Iterator<Item = f64> + '_ {
        self.operands.iter().filter_map(|o| match o {
            Operand::Number(n) => Some(*n),
            Operand::Json(v) => v.as_f64(),
            _ => None,
        })
    }

    fn number(&self, value: f64) -> bool {
        let first = self.numbers().next();
        match self.operator {
            Operator::Is => self.numbers().any(|n| n == value),
            Operator::IsNot => !self.numbers().any(|n| n == value),
            Operator::GreaterThan => first.is_some_and(|n| value > n),
            Operator::GreaterThanOrEqual => first.is_some_and(|n| value >= n),
            Operator::LessThan => first.is_some_and(|n| value < n),
            Operator::LessThanOrEqual => first.is_some_and(|n| value <= n),
            Operator::Between => {
                let bounds: Vec<f64> = self.numbers().collect();
                match bounds.as_slice() {
                    [a, b] => value >= a.min(*b) && value <= a.max(*b),
                    _ => false,
                }
            }
            _ => false,
        }
    }

    fn time(&self, ms: u64) -> bool {
        let times: Vec<u64> = self
            .operands
            .iter()
            .filter_map(|o| match o {
                Operand::Time(t) => Some(*t),
                _ => None,
            })
            .collect();
        match (self.operator, times.as_slice()) {
            (Operator::Before, [t]) => ms < *t,
            (Operator::After, [t]) => ms > *t,
            (Operator::Between, [a, b]) => ms >= *a.min(b) && ms <= *a.max(b),
            _ => false,
        }
    }

    fn json(&self, value: Option<&Value>) -> bool {
        let value = value.filter(|v| !is_empty(v));
        let jsons = || {
            self.operands.iter().filter_map(|o| match o {
                Operand::Json(v) => Some(v),
                _ => None,
            })
        };
        let order = |v: &Value, o: &Value| compare(v, o);
        match self.operator {
            Operator::Is => value.is_some_and(|v| jsons().any(|o| same(v, o))),
            Operator::IsNot => !value.is_some_and(|v| jsons().any(|o| same(v, o))),
            Operator::Contains | Operator::DoesNotContain => {
                let found = value.is_some_and(|v| {
                    let text = text_of(v);
                    jsons().any(|o| TextNeedle::new(&text_of(o)).is_in(&text))
                });
                (self.operator == Operator::Contains) == found
            }
            Operator::IsEmpty => value.is_none(),
            Operator::IsNotEmpty => value.is_some(),
            Operator::GreaterThan
            | Operator::GreaterThanOrEqual
            | Operator::LessThan
            | Operator::LessThanOrEqual => {
                let (Some(v), Some(o)) = (value, jsons().next()) else {
                    return false;
                };
                let Some(ordering) = order(v, o) else {
                    return false;
                };
                match self.operator {
                    Operator::GreaterThan => ordering == Ordering::Greater,
                    Operator::GreaterThanOrEqual => ordering != Ordering::Less,
                    Operator::LessThan => ordering == Ordering::Less,
                    _ => ordering != Ordering::Greater,
                }
            }
            Operator::Between => {
                let bounds: Vec<&Value> = jsons().collect();
                let (Some(v), [a, b]) = (value, bounds.as_slice()) else {
                    return false;
                };
                let (lo, hi) = match compare(a, b) {
                    Some(Ordering::Greater) => (*b, *a),
                    Some(_) => (*a, *b),
                    None => return false,
                };
                order(v, lo).is_some_and(|o| o != Ordering::Less)
                    && order(v, hi).is_some_and(|o| o != Ordering::Greater)
            }
            Operator::Before | Operator::After => false,
        }
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Equal as JSON, a number equal to its text, and text compared as it reads.
fn same(value: &Value, operand: &Value) -> bool {
    match (value, operand) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::Number(b)) | (Value::Number(b), Value::String(a)) => {
            a.parse::<f64>().ok() == b.as_f64()
        }
        (Value::Bool(a), Value::String(b)) | (Value::String(b), Value::Bool(a)) => {
            b == if *a { "true" } else { "false" }
        }
        _ => value == operand,
    }
}

/// Numbers (or numeric text) by value, text by its characters.
fn compare(value: &Value, operand: &Value) -> Option<Ordering> {
    let number = |v: &Value| match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse::<f64>().ok(),
        _ => None,
    };
    match (number(value), number(operand)) {
        (Some(a), Some(b)) => a.partial_cmp(&b),
        _ => match (value, operand) {
            (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
            _ => None,
        },
    }
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn walk<'v>(mut value: &'v Value, path: &[Step]) -> Option<&'v Value> {
    for step in path {
        value = match step {
            Step::Key(key) => value.get(key.as_str())?,
            Step::Index(i) => value.get(*i)?,
        };
    }
    Some(value)
}

/// The output as JSON: the first choice's content when it is JSON (a structured output), else
/// the arguments of its first tool call, else its text.
fn output_json(run: &RunRecord) -> Option<Value> {
    let message = &run.output.as_ref()?.choices.first()?.message;
    if let Some(content) = &message.content {
        return Some(
            serde_json::from_str(content).unwrap_or_else(|_| Value::String(content.clone())),
        );
    }
    let call = message.tool_calls.first()?;
    serde_json::from_str(&call.arguments).ok()
}

/// The texts `text` searches: the messages (rendered, else as sent), the input variables and
/// the output's text and tool arguments.
pub fn run_texts(run: &RunRecord) -> Vec<String> {
    let mut texts = Vec::new();
    match &run.rendered_messages {
        Some(messages) => texts.extend(messages.iter().map(|m| m.text())),
        None => {
            // Read whole as a `Value`: a typed read of the contents alone (cheaper) also takes
            // requests that `Value` refuses (numbers out of range, lone surrogates, arrays for
            // objects), and the texts indexed must not change with the release.
            if let Some(messages) = run
                .request
                .as_ref()
                .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
                .as_ref()
                .and_then(|r| r.get("messages"))
                .and_then(Value::as_array)
            {
                for message in messages {
                    push_content(message.get("content"), &mut texts);
                }
            }
        }
    }
    if let Some(input) = &run.input {
        texts.push(input.to_string());
    }
    if let Some(output) = &run.output {
        for choice in &output.choices {
            texts.extend(choice.message.content.clone());
            texts.extend(
                choice
                    .message
                    .tool_calls
                    .iter()
                    .map(|c| c.arguments.clone()),
            );
        }
    }
    texts
}

fn push_content(content: Option<&Value>, texts: &mut Vec<String>) {
    match content {
        Some(Value::String(s)) => texts.push(s.clone()),
        Some(Value::Array(parts)) => {
            for part in parts {
                if let Some(text) = part.get("text").and_then(Value::as_str) {
                    texts.push(text.to_string());
                }
            }
        }
        _ => {}
    }
}

/// A case-insensitive (ASCII) substring search.
pub struct TextNeedle {
    lower: Vec<u8>,
}

impl TextNeedle {
    pub fn new(needle: &str) -> TextNeedle {
        TextNeedle {
            lower: needle.as_bytes().to_ascii_lowercase(),
        }
    }

    pub fn is_in(&self, haystack: &str) -> bool {
        self.is_in_bytes(haystack.as_bytes())
    }

    /// Also for raw stored bytes, as a store's first pass before it reads a record.
    pub fn is_in_bytes(&self, haystack: &[u8]) -> bool {
        let n = &self.lower;
        if n.is_empty() {
            return true;
        }
        if haystack.len() < n.len() {
            return false;
        }
        let (first_lo, first_up) = (n[0], n[0].to_ascii_uppercase());
        // Only the room where the whole needle fits; candidates found a word at a time.
        let room = &haystack[..=haystack.len() - n.len()];
        memchr::memchr2_iter(first_lo, first_up, room).any(|i| {
            haystack[i + 1..i + n.len()]
                .iter()
                .zip(&n[1..])
                .all(|(h, c)| h.to_ascii_lowercase() == *c)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance::run;

    fn texts_of(request: &str) -> Vec<String> {
        let mut run = run("t", "a");
        run.rendered_messages = None;
        run.input = None;
        run.output = None;
        run.request = Some(serde_json::value::RawValue::from_string(request.into()).unwrap());
        run_texts(&run)
    }

    /// The messages' texts, from string contents and text parts, whatever else the request
    /// and its messages hold.
    #[test]
    fn a_requests_message_texts_are_searched() {
        let request = r#"{"model":"m","temperature":0.5,"messages":[
            {"role":"system","content":"be brief","name":"x"},
            {"role":"user","content":[{"type":"text","text":"hello"},
                {"type":"image_url","image_url":{"url":"data:,"}},{"type":"text","text":"there"}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function",
                "function":{"name":"f","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"c","content":"42"}],"metadata":{"k":"v"}}"#;
        assert_eq!(texts_of(request), ["be brief", "hello", "there", "42"]);
    }

    /// A request of another shape gives what can be read of it, and one JSON refuses (a
    /// number out of range, a lone surrogate, an array for a message) nothing.
    #[test]
    fn an_odd_request_reads_what_it_can() {
        assert_eq!(
            texts_of(r#"{"messages":["not an object",{"content":"kept"}]}"#),
            ["kept"]
        );
        assert!(texts_of(r#"{"messages":"none"}"#).is_empty());
        assert!(texts_of(r#"{"model":"m"}"#).is_empty());
        assert!(texts_of(r#"{"messages":[["hi"]]}"#).is_empty());
        assert!(texts_of(r#"{"messages":[{"content":"hi"}],"temperature":1e400}"#).is_empty());
        assert!(texts_of(r#"{"messages":[{"content":"hi"}],"user":"\ud800"}"#).is_empty());
    }
}
