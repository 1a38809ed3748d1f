//! Which fields a search knows, which operators each accepts and what its values must be.

use serde::Serialize;
use serde_json::Value;

use super::{
    invalid, Field, FieldQueryBody, Filter, Operand, Operator, Step, MAX_PATH_STEPS,
    MAX_VALUE_BYTES,
};
use crate::error::GatewayError;

/// The kinds of fields, by what their values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One of a fixed list of values.
    Choice(&'static [&'static str]),
    /// A name or id (model, provider, version, …).
    Keyword,
    Number,
    Time,
    /// A value of the run's JSON (metadata, input, output).
    Json,
    /// Free text in the messages.
    Text,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Choice(_) => "choice",
            Kind::Keyword => "keyword",
            Kind::Number => "number",
            Kind::Time => "time",
            Kind::Json => "json",
            Kind::Text => "text",
        }
    }

    fn operators(self) -> &'static [Operator] {
        use Operator::*;
        match self {
            Kind::Choice(_) => &[Is, IsNot],
            Kind::Keyword => &[Is, IsNot, Contains, DoesNotContain, IsEmpty, IsNotEmpty],
            Kind::Number => &[
                Is,
                IsNot,
                GreaterThan,
                GreaterThanOrEqual,
                LessThan,
                LessThanOrEqual,
                Between,
            ],
            Kind::Time => &[Before, After, Between],
            Kind::Json => &[
                Is,
                IsNot,
                Contains,
                DoesNotContain,
                GreaterThan,
                GreaterThanOrEqual,
                LessThan,
                LessThanOrEqual,
                Between,
                IsEmpty,
                IsNotEmpty,
            ],
            Kind::Text => &[Contains, DoesNotContain],
        }
    }
}

pub const STATUSES: &[&str] = &["success", "error", "cancelled"];
pub const CACHE: &[&str] = &["hit", "miss", "coalesced", "bypass"];
pub const FEEDBACK: &[&str] = &["positive", "negative", "none"];
pub const SOURCES: &[&str] = &["api", "playground", "replay", "benchmark"];

/// The fields with a fixed name, in the order a UI lists them.
const NAMED: &[(&str, Kind)] = &[
    ("status", Kind::Choice(STATUSES)),
    ("model", Kind::Keyword),
    ("provider", Kind::Keyword),
    ("version", Kind::Keyword),
    ("schema", Kind::Keyword),
    ("cost_usd", Kind::Number),
    ("duration_seconds", Kind::Number),
    ("created_at", Kind::Time),
    ("cache", Kind::Choice(CACHE)),
    ("feedback", Kind::Choice(FEEDBACK)),
    ("conversation", Kind::Keyword),
    ("source", Kind::Choice(SOURCES)),
    ("text", Kind::Text),
];

/// A field as `…/runs/search/fields` describes it.
#[derive(Debug, Clone, Serialize)]
pub struct FieldInfo {
    /// The field's name; `metadata.<key>`, `input.<json path>` and `output.<json path>` are
    /// families.
    pub field: String,
    pub kind: &'static str,
    pub operators: Vec<&'static str>,
    /// For categorical fields: the values that exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// Every field a search accepts (`agent` too when it spans all agents).
pub fn field_catalog(all_agents: bool) -> Vec<FieldInfo> {
    let info = |field: &str, kind: Kind| FieldInfo {
        field: field.to_string(),
        kind: kind.name(),
        operators: kind.operators().iter().map(|o| o.as_str()).collect(),
        values: match kind {
            Kind::Choice(values) => Some(values.iter().map(|v| v.to_string()).collect()),
            _ => None,
        },
    };
    let mut fields: Vec<FieldInfo> = NAMED.iter().map(|(f, k)| info(f, *k)).collect();
    if all_agents {
        fields.insert(0, info("agent", Kind::Keyword));
    }
    for family in ["metadata.<key>", "input.<json path>", "output.<json path>"] {
        fields.push(info(family, Kind::Json));
    }
    fields
}

/// The field a name means, and its kind.
fn field_of(name: &str, all_agents: bool, at: &str) -> Result<(Field, Kind), GatewayError> {
    if name.len() > MAX_VALUE_BYTES {
        return Err(invalid(
            format!("{at}: the field name is longer than {MAX_VALUE_BYTES} bytes"),
            "field",
        ));
    }
    let named = match name {
        "status" => Some(Field::Status),
        "model" => Some(Field::Model),
        "provider" => Some(Field::Provider),
        "version" => Some(Field::Version),
        "schema" => Some(Field::Schema),
        "cost_usd" => Some(Field::CostUsd),
        "duration_seconds" => Some(Field::DurationSeconds),
        "created_at" => Some(Field::CreatedAt),
        "cache" => Some(Field::Cache),
        "feedback" => Some(Field::Feedback),
        "conversation" => Some(Field::Conversation),
        "source" => Some(Field::Source),
        "text" => Some(Field::Text),
        "agent" if all_agents => Some(Field::Agent),
        _ => None,
    };
    if let Some(field) = named {
        let kind = NAMED
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(Kind::Keyword, |(_, k)| *k);
        return Ok((field, kind));
    }
    if let Some(key) = name.strip_prefix("metadata.") {
        if key.is_empty() {
            return Err(invalid(format!("{at}: `metadata.` needs a key"), "field"));
        }
        return Ok((Field::Metadata(key.to_string()), Kind::Json));
    }
    for (prefix, make) in [
        ("input.", Field::Input as fn(Vec<Step>) -> Field),
        ("output.", Field::Output as fn(Vec<Step>) -> Field),
    ] {
        if let Some(path) = name.strip_prefix(prefix) {
            return Ok((make(parse_path(path, at)?), Kind::Json));
        }
    }
    let mut known: Vec<&str> = NAMED.iter().map(|(n, _)| *n).collect();
    if all_agents {
        known.insert(0, "agent");
    }
    Err(invalid(
        format!(
            "{at}: unknown field `{}`; the fields are {}, `metadata.<key>`, `input.<json path>` \
             and `output.<json path>`",
            crate::error::excerpt(name, 64),
            known
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "field",
    ))
}

/// `a.b[2].c` → keys and indexes.
fn parse_path(path: &str, at: &str) -> Result<Vec<Step>, GatewayError> {
    let bad = |why: &str| {
        invalid(
            format!(
                "{at}: `{}` is not a JSON path ({why}); write it as `a.b[0].c`",
                crate::error::excerpt(path, 64)
            ),
            "field",
        )
    };
    if path.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            steps.push(Step::Key(key.to_string()));
        } else if rest.is_empty() {
            return Err(bad("a step is empty"));
        }
        while !rest.is_empty() {
            let Some(end) = rest.find(']') else {
                return Err(bad("a `[` is not closed"));
            };
            let index: usize = rest[1..end]
                .parse()
                .map_err(|_| bad("an index is not a number"))?;
            steps.push(Step::Index(index));
            rest = &rest[end + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return Err(bad("text follows an index"));
            }
        }
        if steps.len() > MAX_PATH_STEPS {
            return Err(bad(&format!("more than {MAX_PATH_STEPS} steps")));
        }
    }
    Ok(steps)
}

/// Checks one field query; `i` is its position, for messages.
pub(super) fn check(
    query: FieldQueryBody,
    all_agents: bool,
    i: usize,
) -> Result<Filter, GatewayError> {
    let at = format!("field_queries[{i}]");
    let (field, kind) = field_of(&query.field, all_agents, &at)?;
    let allowed = kind.operators();
    let listed = || {
        allowed
            .iter()
            .map(|o| format!("`{}`", o.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(operator) = Operator::parse(&query.operator) else {
        return Err(invalid(
            format!(
                "{at}: unknown operator `{}`; `{}` accepts {}",
                crate::error::excerpt(&query.operator, 64),
                query.field,
                listed()
            ),
            "operator",
        ));
    };
    if !allowed.contains(&operator) {
        return Err(invalid(
            format!(
                "{at}: `{}` does not accept `{}`; it accepts {}",
                query.field,
                operator.as_str(),
                listed()
            ),
            "operator",
        ));
    }
    let (min, max) = operator.arity();
    let n = query.values.len();
    if n < min || n > max {
        let wanted = match (min, max) {
            (0, 0) => "no value".to_string(),
            (a, b) if a == b => format!("{a} value{}", if a == 1 { "" } else { "s" }),
            (a, b) => format!("{a} to {b} values"),
        };
        return Err(invalid(
            format!("{at}: `{}` takes {wanted}, not {n}", operator.as_str()),
            "values",
        ));
    }
    let operands = query
        .values
        .into_iter()
        .map(|value| operand(kind, value, &at, &query.field))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Filter {
        field,
        operator,
        operands,
    })
}

fn operand(kind: Kind, value: Value, at: &str, field: &str) -> Result<Operand, GatewayError> {
    let wrong = |what: &str| {
        invalid(
            format!(
                "{at}: `{field}` takes {what}, not `{}`",
                crate::error::excerpt(&value.to_string(), 64)
            ),
            "values",
        )
    };
    let size = match &value {
        Value::String(s) => s.len(),
        Value::Array(_) | Value::Object(_) => value.to_string().len(),
        _ => 0,
    };
    if size > MAX_VALUE_BYTES {
        return Err(invalid(
            format!("{at}: a value is {size} bytes long, more than the limit of {MAX_VALUE_BYTES}"),
            "values",
        ));
    }
    Ok(match kind {
        Kind::Choice(choices) => match value.as_str() {
            Some(s) if choices.contains(&s) => Operand::Text(s.to_string()),
            _ => {
                let list = choices
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(wrong(&format!("one of {list}")));
            }
        },
        Kind::Keyword => match &value {
            Value::String(s) => Operand::Text(s.clone()),
            // Schema ids are numbers.
            Value::Number(n) => Operand::Text(n.to_string()),
            _ => return Err(wrong("a string")),
        },
        Kind::Text => match value.as_str() {
            Some(s) if !s.trim().is_empty() => Operand::Text(s.to_string()),
            _ => return Err(wrong("a non-empty string")),
        },
        Kind::Number => match value.as_f64() {
            Some(n) if n.is_finite() => Operand::Number(n),
            _ => return Err(wrong("a number")),
        },
        Kind::Time => match time_of(&value) {
            Some(ms) => Operand::Time(ms),
            None => {
                return Err(wrong(
                    "a time: RFC 3339 text (`2026-12-01T00:00:00Z`) or Unix seconds",
                ))
            }
        },
        Kind::Json => Operand::Json(value),
    })
}

/// RFC 3339 text or Unix seconds, in milliseconds.
fn time_of(value: &Value) -> Option<u64> {
    match value {
        Value::String(s) => humantime::parse_rfc3339_weak(s)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64),
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e13)
            .map(|s| (s * 1000.0) as u64),
        _ => None,
    }
}
