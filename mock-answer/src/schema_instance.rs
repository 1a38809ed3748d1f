//! Generating a JSON value that validates against a JSON Schema.
//!
//! The schemas of interest are the ones Pydantic v2 (and therefore Instructor) and the
//! OpenAI SDKs emit: `type`, `properties`/`required`, `$ref` into `$defs`/`definitions`,
//! `anyOf` for `Optional[...]`/unions, `allOf`, `enum`/`const` for enums and `Literal`s,
//! string formats and the usual numeric/length constraints. The generator is best effort
//! for the exotic keywords (`pattern` is handled by a small regex walker) and never panics,
//! whatever the input.

use serde_json::{Map, Number, Value};

/// Hard cap on the nesting depth of the generated value; deeper than this yields `null`.
const MAX_DEPTH: usize = 64;
/// Cap on the number of array items / padding characters produced for huge minimums.
const MAX_REPEAT: usize = 1000;

/// The fixed UUID produced for `format: "uuid"` (a valid version-4 UUID).
pub const FIXED_UUID: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";

/// Produces a JSON value that validates against `schema`.
///
/// `$ref`s (`#/$defs/...`, `#/definitions/...`, any JSON pointer into the root, or `#`)
/// are resolved against `schema` itself. Every declared property is filled, required or
/// not; when a reference recurses into itself, the recursive occurrence is generated in a
/// "minimal" mode (optional branches become `null`/absent, arrays empty) so the result
/// stays finite.
pub fn instance_for(schema: &Value) -> Value {
    let mut generator = Generator {
        root: schema,
        // The root itself counts as being expanded, so `{"$ref": "#"}` is recursion.
        ref_stack: vec!["#"],
    };
    generator.value(schema, 0, false)
}

struct Generator<'a> {
    root: &'a Value,
    /// The `$ref`s being expanded on the current path, for recursion detection.
    ref_stack: Vec<&'a str>,
}

impl<'a> Generator<'a> {
    fn value(&mut self, schema: &'a Value, depth: usize, minimal: bool) -> Value {
        let Value::Object(obj) = schema else {
            // `true` (anything goes), `false` (nothing validates) or garbage.
            return Value::Null;
        };
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        if let Some(reference) = obj.get("$ref").and_then(Value::as_str) {
            return self.follow_ref(reference, depth, minimal);
        }
        if let Some(constant) = obj.get("const") {
            return constant.clone();
        }
        if let Some(first) = obj
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|values| values.first())
        {
            return first.clone();
        }
        if let Some(Value::Array(parts)) = obj.get("allOf") {
            return self.all_of(obj, parts, depth, minimal);
        }
        if let Some(Value::Array(branches)) = obj.get("anyOf").or_else(|| obj.get("oneOf")) {
            if !branches.is_empty() {
                return self.any_of(branches, depth, minimal);
            }
        }
        let ty = pick_type(obj);
        if let Some(example) = usable_example(obj, ty) {
            return example;
        }
        match ty {
            Some("null") => Value::Null,
            Some("boolean") => Value::Bool(true),
            Some("integer") => integer(obj),
            Some("number") => number(obj),
            Some("string") => string(obj),
            Some("array") => self.array(obj, depth, minimal),
            Some("object") => self.object(obj, depth, minimal),
            _ => obj.get("default").cloned().unwrap_or(Value::Null),
        }
    }

    fn follow_ref(&mut self, reference: &'a str, depth: usize, minimal: bool) -> Value {
        let Some(target) = resolve_ref(self.root, reference) else {
            return Value::Null;
        };
        let recursing = self.ref_stack.contains(&reference);
        self.ref_stack.push(reference);
        let value = self.value(target, depth + 1, minimal || recursing);
        self.ref_stack.pop();
        value
    }

    /// Whether generating `schema` would immediately re-enter a `$ref` being expanded.
    fn would_recurse(&self, schema: &Value) -> bool {
        schema
            .get("$ref")
            .and_then(Value::as_str)
            .is_some_and(|r| self.ref_stack.contains(&r))
    }

    fn any_of(&mut self, branches: &'a [Value], depth: usize, minimal: bool) -> Value {
        let has_null = branches.iter().any(is_null_schema);
        if has_null && minimal {
            return Value::Null;
        }
        let candidates: Vec<&'a Value> = branches.iter().filter(|b| !is_null_schema(b)).collect();
        let chosen = candidates
            .iter()
            .find(|b| !self.would_recurse(b))
            .or_else(|| candidates.first());
        match chosen {
            Some(branch) if !(has_null && self.would_recurse(branch)) => {
                self.value(branch, depth + 1, minimal)
            }
            _ => Value::Null,
        }
    }

    fn all_of(
        &mut self,
        obj: &'a Map<String, Value>,
        parts: &'a [Value],
        depth: usize,
        minimal: bool,
    ) -> Value {
        let mut values: Vec<Value> = parts
            .iter()
            .map(|part| self.value(part, depth + 1, minimal))
            .collect();
        // Sibling keywords next to `allOf` (e.g. extra properties) contribute too.
        if obj.contains_key("properties") || obj.contains_key("type") {
            let mut rest = obj.clone();
            rest.remove("allOf");
            let rest = Value::Object(rest);
            values.push(
                Generator {
                    root: self.root,
                    ref_stack: self.ref_stack.clone(),
                }
                .value(&rest, depth + 1, minimal),
            );
        }
        values.retain(|v| !v.is_null());
        if values.iter().all(Value::is_object) && !values.is_empty() {
            let mut merged = Map::new();
            for value in values {
                if let Value::Object(map) = value {
                    for (key, v) in map {
                        merged.entry(key).or_insert(v);
                    }
                }
            }
            Value::Object(merged)
        } else {
            values.into_iter().next().unwrap_or(Value::Null)
        }
    }

    fn object(&mut self, obj: &'a Map<String, Value>, depth: usize, minimal: bool) -> Value {
        let required: Vec<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut out = Map::new();
        if let Some(Value::Object(properties)) = obj.get("properties") {
            for (name, sub) in properties {
                if minimal && !required.contains(&name.as_str()) {
                    continue;
                }
                let value = self.value(sub, depth + 1, minimal);
                out.insert(name.clone(), value);
            }
        }
        let additional = obj.get("additionalProperties");
        for name in &required {
            if !out.contains_key(*name) {
                let value = match additional {
                    Some(schema @ Value::Object(_)) => self.value(schema, depth + 1, minimal),
                    _ => Value::Null,
                };
                out.insert((*name).to_string(), value);
            }
        }
        let min_properties = as_count(obj.get("minProperties")).unwrap_or(0);
        if out.len() < min_properties && !matches!(additional, Some(Value::Bool(false))) {
            let mut i = 1;
            while out.len() < min_properties {
                let key = format!("key{i}");
                i += 1;
                if out.contains_key(&key) {
                    continue;
                }
                let value = match additional {
                    Some(schema @ Value::Object(_)) => self.value(schema, depth + 1, minimal),
                    _ => Value::Null,
                };
                out.insert(key, value);
            }
        }
        Value::Object(out)
    }

    fn array(&mut self, obj: &'a Map<String, Value>, depth: usize, minimal: bool) -> Value {
        let min_items = as_count(obj.get("minItems")).unwrap_or(0);
        let max_items = as_count(obj.get("maxItems"));
        // `prefixItems` (2020-12) or the draft-4 tuple form `items: [...]`.
        let (prefix, items): (&'a [Value], Option<&'a Value>) =
            match (obj.get("prefixItems"), obj.get("items")) {
                (Some(Value::Array(prefix)), items) => (prefix.as_slice(), items),
                (_, Some(Value::Array(tuple))) => (tuple.as_slice(), obj.get("additionalItems")),
                (_, items) => (&[], items),
            };
        let natural = if minimal {
            0
        } else if !prefix.is_empty() {
            prefix.len()
        } else {
            1
        };
        let mut count = min_items.max(natural).min(MAX_REPEAT);
        if let Some(max) = max_items {
            count = count.min(max);
        }
        if matches!(items, Some(Value::Bool(false))) {
            count = count.min(prefix.len());
        }
        let mut out: Vec<Value> = (0..count)
            .map(|i| match prefix.get(i) {
                Some(schema) => self.value(schema, depth + 1, minimal),
                None => match items {
                    Some(schema) => self.value(schema, depth + 1, minimal),
                    None => Value::Null,
                },
            })
            .collect();
        if obj.get("uniqueItems") == Some(&Value::Bool(true)) {
            make_unique(&mut out);
        }
        Value::Array(out)
    }
}

/// Resolves a local `$ref` (`#`, or a JSON pointer after `#`) against the root schema.
fn resolve_ref<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    let pointer = pointer.replace("%24", "$").replace("%25", "%");
    root.pointer(&pointer)
}

fn is_null_schema(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == "null",
        Some(Value::Array(types)) => types.iter().all(|t| t == "null") && !types.is_empty(),
        _ => schema.get("const") == Some(&Value::Null),
    }
}

/// The type to generate: the declared one (the first non-null one for a type array), or
/// one inferred from the keywords present.
fn pick_type(obj: &Map<String, Value>) -> Option<&str> {
    match obj.get("type") {
        Some(Value::String(t)) => return Some(t.as_str()),
        Some(Value::Array(types)) => {
            let mut names = types.iter().filter_map(Value::as_str);
            let has_null = types.iter().any(|t| t == "null");
            return names
                .find(|t| *t != "null")
                .or(if has_null { Some("null") } else { None });
        }
        _ => {}
    }
    let has = |keys: &[&str]| keys.iter().any(|k| obj.contains_key(*k));
    if has(&[
        "properties",
        "additionalProperties",
        "required",
        "patternProperties",
        "minProperties",
    ]) {
        Some("object")
    } else if has(&["items", "prefixItems", "minItems", "maxItems"]) {
        Some("array")
    } else if has(&["minLength", "maxLength", "pattern", "format"]) {
        Some("string")
    } else if has(&[
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
    ]) {
        Some("number")
    } else {
        None
    }
}

/// The first of `examples` (or OpenAPI's `example`) when it is a scalar of the right type
/// and fits the length constraints.
fn usable_example(obj: &Map<String, Value>, ty: Option<&str>) -> Option<Value> {
    let example = match obj.get("examples") {
        Some(Value::Array(examples)) => examples.first(),
        _ => obj.get("example"),
    }?;
    let fits = match (ty?, example) {
        ("string", Value::String(s)) => {
            let len = s.chars().count();
            as_count(obj.get("minLength")).is_none_or(|min| len >= min)
                && as_count(obj.get("maxLength")).is_none_or(|max| len <= max)
        }
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
        ("number", Value::Number(_)) | ("boolean", Value::Bool(_)) => true,
        _ => false,
    };
    fits.then(|| example.clone())
}

fn as_count(value: Option<&Value>) -> Option<usize> {
    let v = value?;
    let n = v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f.ceil() as u64)
    })?;
    Some(usize::try_from(n).unwrap_or(usize::MAX))
}

/// A numeric bound: `(value, exclusive)`.
type Bound = Option<(f64, bool)>;

/// Lower/upper bounds of a numeric schema. Handles both the
/// draft-6+ numeric `exclusiveMinimum` and the draft-4 boolean form.
fn bounds(obj: &Map<String, Value>) -> (Bound, Bound) {
    let f = |key: &str| obj.get(key).and_then(Value::as_f64);
    let bound = |inclusive: &str, exclusive: &str| -> Bound {
        let plain = f(inclusive);
        match obj.get(exclusive) {
            Some(Value::Bool(true)) => plain.map(|v| (v, true)),
            Some(Value::Number(n)) => {
                let ex = n.as_f64()?;
                match plain {
                    // Both present: keep the tighter one (decided by the caller's direction).
                    Some(p)
                        if (inclusive == "minimum" && p > ex)
                            || (inclusive == "maximum" && p < ex) =>
                    {
                        Some((p, false))
                    }
                    _ => Some((ex, true)),
                }
            }
            _ => plain.map(|v| (v, false)),
        }
    };
    (
        bound("minimum", "exclusiveMinimum"),
        bound("maximum", "exclusiveMaximum"),
    )
}

fn multiple_of(obj: &Map<String, Value>) -> Option<f64> {
    obj.get("multipleOf")
        .and_then(Value::as_f64)
        .filter(|m| m.is_finite() && *m > 0.0)
}

fn integer(obj: &Map<String, Value>) -> Value {
    let (lower, upper) = bounds(obj);
    let lo = lower.map(
        |(v, exclusive)| {
            if exclusive {
                v.floor() + 1.0
            } else {
                v.ceil()
            }
        },
    );
    let hi = upper.map(
        |(v, exclusive)| {
            if exclusive {
                v.ceil() - 1.0
            } else {
                v.floor()
            }
        },
    );
    let mut candidate = 0.0_f64;
    if let Some(lo) = lo {
        candidate = candidate.max(lo);
    }
    if let Some(hi) = hi {
        candidate = candidate.min(hi);
    }
    if let Some(m) = multiple_of(obj) {
        let m = if m.fract() == 0.0 { m } else { m.ceil() };
        let up = (candidate / m).ceil() * m;
        candidate = if hi.is_none_or(|hi| up <= hi) {
            up
        } else {
            (candidate / m).floor() * m
        };
    }
    if candidate.is_finite() && candidate.abs() < 9.0e15 {
        Value::Number(Number::from(candidate as i64))
    } else {
        Value::Number(Number::from(0))
    }
}

fn number(obj: &Map<String, Value>) -> Value {
    let (lower, upper) = bounds(obj);
    let mut candidate = 0.0_f64;
    if let Some((lo, exclusive)) = lower {
        if candidate < lo || (exclusive && candidate <= lo) {
            candidate = if exclusive {
                match upper {
                    Some((hi, hi_exclusive))
                        if lo + 1.0 > hi || (hi_exclusive && lo + 1.0 >= hi) =>
                    {
                        (lo + hi) / 2.0
                    }
                    _ => lo + 1.0,
                }
            } else {
                lo
            };
        }
    }
    if let Some((hi, exclusive)) = upper {
        if candidate > hi || (exclusive && candidate >= hi) {
            candidate = if exclusive {
                match lower {
                    Some((lo, lo_exclusive))
                        if hi - 1.0 < lo || (lo_exclusive && hi - 1.0 <= lo) =>
                    {
                        (lo + hi) / 2.0
                    }
                    _ => hi - 1.0,
                }
            } else {
                hi
            };
        }
    }
    if let Some(m) = multiple_of(obj) {
        let mut up = (candidate / m).ceil() * m;
        if matches!(lower, Some((lo, true)) if up <= lo) {
            up += m;
        }
        let fits_upper = match upper {
            Some((hi, true)) => up < hi,
            Some((hi, false)) => up <= hi,
            None => true,
        };
        candidate = if fits_upper {
            up
        } else {
            (candidate / m).floor() * m
        };
    }
    Number::from_f64(candidate)
        .map(Value::Number)
        .unwrap_or_else(|| Value::Number(Number::from(0)))
}

fn string(obj: &Map<String, Value>) -> Value {
    let format = obj.get("format").and_then(Value::as_str);
    let mut s = format
        .and_then(format_example)
        .map(str::to_string)
        .or_else(|| {
            obj.get("pattern")
                .and_then(Value::as_str)
                .and_then(pattern_example)
        })
        .unwrap_or_else(|| "string".to_string());
    let len = s.chars().count();
    if let Some(min) = as_count(obj.get("minLength")) {
        let min = min.min(MAX_REPEAT.max(len));
        s.extend(std::iter::repeat_n('x', min.saturating_sub(len)));
    }
    if let Some(max) = as_count(obj.get("maxLength")) {
        if s.chars().count() > max {
            s = s.chars().take(max).collect();
        }
    }
    Value::String(s)
}

fn format_example(format: &str) -> Option<&'static str> {
    Some(match format {
        "date" => "2024-01-01",
        "date-time" => "2024-01-01T00:00:00Z",
        "time" => "00:00:00",
        "duration" => "P1D",
        "email" | "idn-email" => "user@example.com",
        "uri" | "url" | "iri" | "uri-reference" | "iri-reference" | "uri-template" => {
            "https://example.com"
        }
        "uuid" | "uuid1" | "uuid3" | "uuid4" | "uuid5" => FIXED_UUID,
        "ipv4" => "127.0.0.1",
        "ipv6" => "::1",
        "ipvanyaddress" => "127.0.0.1",
        "hostname" | "idn-hostname" => "example.com",
        "json-pointer" => "/",
        "relative-json-pointer" => "0",
        "regex" => ".*",
        "byte" | "base64" => "YQ==",
        "binary" => "a",
        "password" => "password",
        "json-string" => "{}",
        "path" | "file-path" | "directory-path" => "/tmp",
        _ => return None,
    })
}

/// Makes string/number items of an array pairwise distinct (for `uniqueItems`).
fn make_unique(items: &mut [Value]) {
    for i in 1..items.len() {
        if items[..i].contains(&items[i]) {
            items[i] = match &items[i] {
                Value::String(s) => Value::String(format!("{s}{i}")),
                Value::Number(n) => match n.as_i64() {
                    Some(v) => Value::Number(Number::from(v.saturating_add(i as i64))),
                    None => Number::from_f64(n.as_f64().unwrap_or(0.0) + i as f64)
                        .map(Value::Number)
                        .unwrap_or(Value::Null),
                },
                other => other.clone(),
            };
        }
    }
}

/// Produces a string matching a (simple) regular expression, or `None` when the pattern
/// uses syntax this little walker does not understand.
///
/// Supported: literals, `.`, escapes (`\d \w \s` and their negations, `\b`, `\uXXXX`...),
/// character classes with ranges and negation, groups (capturing, `(?:`, named, look-around
/// which produces nothing), alternation (the first branch is used) and the quantifiers
/// `* + ? {n} {n,} {n,m}` (the minimum count is always used).
pub fn pattern_example(pattern: &str) -> Option<String> {
    let mut walker = PatternWalker {
        chars: pattern.chars().collect(),
        pos: 0,
        depth: 0,
    };
    let out = walker.alternation()?;
    if walker.pos == walker.chars.len() {
        Some(out)
    } else {
        None
    }
}

/// Deepest group nesting the pattern walker accepts (it recurses per group).
const MAX_GROUP_DEPTH: usize = 64;

struct PatternWalker {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

enum ClassItem {
    Char(char),
    Range(char, char),
    Digit(bool),
    Word(bool),
    Space(bool),
}

impl ClassItem {
    fn matches(&self, c: char) -> bool {
        match *self {
            ClassItem::Char(x) => c == x,
            ClassItem::Range(a, b) => a <= c && c <= b,
            ClassItem::Digit(neg) => c.is_ascii_digit() != neg,
            ClassItem::Word(neg) => (c.is_alphanumeric() || c == '_') != neg,
            ClassItem::Space(neg) => c.is_whitespace() != neg,
        }
    }

    fn representative(&self) -> char {
        match *self {
            ClassItem::Char(c) | ClassItem::Range(c, _) => c,
            ClassItem::Digit(false) => '0',
            ClassItem::Word(false) => 'a',
            ClassItem::Space(false) => ' ',
            ClassItem::Digit(true) | ClassItem::Word(true) | ClassItem::Space(true) => '-',
        }
    }
}

impl PatternWalker {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn alternation(&mut self) -> Option<String> {
        let first = self.sequence()?;
        while self.eat('|') {
            self.sequence()?;
        }
        Some(first)
    }

    fn sequence(&mut self) -> Option<String> {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom()?;
            let count = self.quantifier()?;
            for _ in 0..count {
                out.push_str(&atom);
            }
            if out.len() > 10 * MAX_REPEAT {
                return None;
            }
        }
        Some(out)
    }

    fn atom(&mut self) -> Option<String> {
        let c = self.next()?;
        Some(match c {
            '^' | '$' => String::new(),
            '.' => "a".to_string(),
            '(' => {
                let mut lookaround = false;
                if self.eat('?') {
                    match self.next()? {
                        ':' => {}
                        '=' | '!' => lookaround = true,
                        'P' | '<' => {
                            if self.chars.get(self.pos - 1) == Some(&'P') && !self.eat('<') {
                                return None;
                            }
                            if self.eat('=') || self.eat('!') {
                                lookaround = true;
                            } else {
                                while self.next()? != '>' {}
                            }
                        }
                        _ => return None,
                    }
                }
                if self.depth >= MAX_GROUP_DEPTH {
                    return None;
                }
                self.depth += 1;
                let inner = self.alternation()?;
                self.depth -= 1;
                if !self.eat(')') {
                    return None;
                }
                if lookaround {
                    String::new()
                } else {
                    inner
                }
            }
            '[' => self.class()?.to_string(),
            '\\' => self.escape()?,
            '*' | '+' | '?' | '{' | ')' | '|' => return None,
            c => c.to_string(),
        })
    }

    fn escape(&mut self) -> Option<String> {
        let c = self.next()?;
        Some(match c {
            'd' => "0".into(),
            'D' | 'w' | 'S' => "a".into(),
            'W' => "-".into(),
            's' => " ".into(),
            'b' | 'B' | 'A' | 'z' | 'Z' | 'G' => String::new(),
            'n' => "\n".into(),
            't' => "\t".into(),
            'r' => "\r".into(),
            'f' => "\u{c}".into(),
            'v' => "\u{b}".into(),
            'u' => self.hex_char(4)?.to_string(),
            'x' => self.hex_char(2)?.to_string(),
            '1'..='9' => return None,
            c => c.to_string(),
        })
    }

    fn hex_char(&mut self, digits: usize) -> Option<char> {
        let end = self.pos.checked_add(digits)?;
        let hex: String = self.chars.get(self.pos..end)?.iter().collect();
        self.pos = end;
        char::from_u32(u32::from_str_radix(&hex, 16).ok()?)
    }

    fn class(&mut self) -> Option<char> {
        let negated = self.eat('^');
        let mut items = Vec::new();
        let mut first = true;
        loop {
            let c = self.next()?;
            if c == ']' && !first {
                break;
            }
            first = false;
            let item = if c == '\\' {
                match self.next()? {
                    'd' => ClassItem::Digit(false),
                    'D' => ClassItem::Digit(true),
                    'w' => ClassItem::Word(false),
                    'W' => ClassItem::Word(true),
                    's' => ClassItem::Space(false),
                    'S' => ClassItem::Space(true),
                    'n' => ClassItem::Char('\n'),
                    't' => ClassItem::Char('\t'),
                    'u' => ClassItem::Char(self.hex_char(4)?),
                    'x' => ClassItem::Char(self.hex_char(2)?),
                    other => ClassItem::Char(other),
                }
            } else {
                ClassItem::Char(c)
            };
            // A range `a-z` (but not a trailing `-`).
            if let ClassItem::Char(start) = item {
                if self.peek() == Some('-') && self.chars.get(self.pos + 1) != Some(&']') {
                    self.pos += 1;
                    let mut end = self.next()?;
                    if end == '\\' {
                        end = self.next()?;
                    }
                    if end < start {
                        return None;
                    }
                    items.push(ClassItem::Range(start, end));
                    continue;
                }
            }
            items.push(item);
        }
        if negated {
            "aA0_-x ."
                .chars()
                .find(|c| !items.iter().any(|i| i.matches(*c)))
        } else {
            items.first().map(ClassItem::representative)
        }
    }

    /// Parses an optional quantifier and returns how many times to repeat the atom.
    fn quantifier(&mut self) -> Option<usize> {
        let count = match self.peek() {
            Some('*') | Some('?') => {
                self.pos += 1;
                0
            }
            Some('+') => {
                self.pos += 1;
                1
            }
            Some('{') => {
                let start = self.pos;
                self.pos += 1;
                let mut digits = String::new();
                while let Some(c) = self.peek().filter(char::is_ascii_digit) {
                    digits.push(c);
                    self.pos += 1;
                }
                if digits.is_empty() {
                    self.pos = start;
                    return None;
                }
                if self.eat(',') {
                    while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                        self.pos += 1;
                    }
                }
                if !self.eat('}') {
                    return None;
                }
                digits.parse::<usize>().ok()?.min(MAX_REPEAT)
            }
            _ => return Some(1),
        };
        // Lazy / possessive modifiers do not change the minimum.
        if !self.eat('?') {
            self.eat('+');
        }
        Some(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A tiny JSON Schema validator covering the keywords the generator supports, so the
    /// tests check validity rather than exact output.
    fn validates(root: &Value, schema: &Value, value: &Value) -> bool {
        let Some(obj) = schema.as_object() else {
            return schema != &Value::Bool(false);
        };
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            return validates(root, resolve_ref(root, r).expect("ref resolves"), value);
        }
        if let Some(c) = obj.get("const") {
            if c != value {
                return false;
            }
        }
        if let Some(Value::Array(e)) = obj.get("enum") {
            if !e.contains(value) {
                return false;
            }
        }
        if let Some(Value::Array(b)) = obj.get("anyOf").or_else(|| obj.get("oneOf")) {
            if !b.iter().any(|s| validates(root, s, value)) {
                return false;
            }
        }
        if let Some(Value::Array(b)) = obj.get("allOf") {
            if !b.iter().all(|s| validates(root, s, value)) {
                return false;
            }
        }
        let type_ok = |t: &str| match t {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "string" => value.is_string(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => false,
        };
        match obj.get("type") {
            Some(Value::String(t)) if !type_ok(t) => return false,
            Some(Value::Array(ts)) if !ts.iter().filter_map(Value::as_str).any(type_ok) => {
                return false
            }
            _ => {}
        }
        if let Value::String(s) = value {
            let len = s.chars().count() as u64;
            if obj
                .get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| len < m)
                || obj
                    .get("maxLength")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| len > m)
            {
                return false;
            }
        }
        if let Some(n) = value.as_f64() {
            let f = |k: &str| obj.get(k).and_then(Value::as_f64);
            if f("minimum").is_some_and(|m| n < m)
                || f("maximum").is_some_and(|m| n > m)
                || f("exclusiveMinimum").is_some_and(|m| n <= m)
                || f("exclusiveMaximum").is_some_and(|m| n >= m)
                || f("multipleOf").is_some_and(|m| (n / m).fract().abs() > 1e-9)
            {
                return false;
            }
        }
        if let Value::Array(items) = value {
            let n = items.len() as u64;
            if obj
                .get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n < m)
                || obj
                    .get("maxItems")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| n > m)
            {
                return false;
            }
            let prefix = obj.get("prefixItems").and_then(Value::as_array);
            for (i, item) in items.iter().enumerate() {
                let schema = prefix.and_then(|p| p.get(i)).or_else(|| obj.get("items"));
                if let Some(s) = schema {
                    if !validates(root, s, item) {
                        return false;
                    }
                }
            }
        }
        if let Value::Object(map) = value {
            if let Some(Value::Array(req)) = obj.get("required") {
                if !req
                    .iter()
                    .filter_map(Value::as_str)
                    .all(|k| map.contains_key(k))
                {
                    return false;
                }
            }
            let props = obj.get("properties").and_then(Value::as_object);
            for (k, v) in map {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => {
                        if !validates(root, s, v) {
                            return false;
                        }
                    }
                    None => match obj.get("additionalProperties") {
                        Some(Value::Bool(false)) => return false,
                        Some(s @ Value::Object(_)) if !validates(root, s, v) => return false,
                        _ => {}
                    },
                }
            }
        }
        true
    }

    fn check(schema: Value) -> Value {
        let value = instance_for(&schema);
        assert!(
            validates(&schema, &schema, &value),
            "{value} does not validate against {schema}"
        );
        value
    }

    #[test]
    fn nested_pydantic_schema_with_defs() {
        // class Role(str, Enum): admin/user
        // class Address(BaseModel): street: str; zip: str = Field(pattern=r"^\d{5}$")
        // class User(BaseModel):
        //     name: str; age: int = Field(ge=18); role: Role; kind: Literal["user"]
        //     email: str = Field(format email); address: Address
        //     nickname: Optional[str] = None; tags: list[str]; friends: list[Address] = []
        //     score: float = Field(gt=0, le=1); birthday: date; id: UUID; homepage: HttpUrl
        //     status: Literal["active"] (enum with one value)
        let schema = json!({
            "$defs": {
                "Address": {
                    "properties": {
                        "street": {"title": "Street", "type": "string"},
                        "zip": {"pattern": "^\\d{5}$", "title": "Zip", "type": "string"}
                    },
                    "required": ["street", "zip"],
                    "title": "Address",
                    "type": "object"
                },
                "Role": {"enum": ["admin", "user"], "title": "Role", "type": "string"}
            },
            "properties": {
                "name": {"title": "Name", "type": "string"},
                "age": {"minimum": 18, "title": "Age", "type": "integer"},
                "role": {"$ref": "#/$defs/Role"},
                "kind": {"const": "user", "title": "Kind", "type": "string"},
                "status": {"enum": ["active"], "title": "Status", "type": "string"},
                "email": {"format": "email", "title": "Email", "type": "string"},
                "address": {"$ref": "#/$defs/Address"},
                "nickname": {
                    "anyOf": [{"type": "string"}, {"type": "null"}],
                    "default": null,
                    "title": "Nickname"
                },
                "tags": {"items": {"type": "string"}, "title": "Tags", "type": "array"},
                "friends": {
                    "default": [],
                    "items": {"$ref": "#/$defs/Address"},
                    "title": "Friends",
                    "type": "array"
                },
                "score": {"exclusiveMinimum": 0, "maximum": 1, "title": "Score", "type": "number"},
                "birthday": {"format": "date", "title": "Birthday", "type": "string"},
                "created": {"format": "date-time", "title": "Created", "type": "string"},
                "id": {"format": "uuid", "title": "Id", "type": "string"},
                "homepage": {"format": "uri", "maxLength": 2083, "minLength": 1, "title": "Homepage", "type": "string"}
            },
            "required": ["name", "age", "role", "kind", "status", "email", "address", "tags", "score", "birthday", "created", "id", "homepage"],
            "title": "User",
            "type": "object"
        });
        let v = check(schema);
        assert_eq!(v["age"], json!(18));
        assert_eq!(v["role"], json!("admin"));
        assert_eq!(v["kind"], json!("user"));
        assert_eq!(v["status"], json!("active"));
        assert_eq!(v["email"], json!("user@example.com"));
        assert_eq!(v["address"]["zip"], json!("00000"));
        assert!(v["address"]["street"].is_string());
        assert!(v["nickname"].is_string(), "first non-null branch preferred");
        assert_eq!(v["tags"].as_array().map(Vec::len), Some(1));
        assert_eq!(v["friends"][0]["zip"], json!("00000"));
        assert_eq!(v["score"], json!(1.0));
        assert_eq!(v["birthday"], json!("2024-01-01"));
        assert_eq!(v["created"], json!("2024-01-01T00:00:00Z"));
        assert_eq!(v["id"], json!(FIXED_UUID));
        assert_eq!(v["homepage"], json!("https://example.com"));
    }

    #[test]
    fn recursive_schema_terminates() {
        // class Node(BaseModel): value: int; children: list["Node"] = []; parent: Optional["Node"]
        let schema = json!({
            "$defs": {
                "Node": {
                    "properties": {
                        "value": {"type": "integer"},
                        "children": {"items": {"$ref": "#/$defs/Node"}, "type": "array", "default": []},
                        "parent": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                        "next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}], "default": null}
                    },
                    "required": ["value", "parent"],
                    "type": "object"
                }
            },
            "$ref": "#/$defs/Node"
        });
        let v = check(schema);
        assert_eq!(v["parent"], Value::Null);
        assert_eq!(v["children"][0]["value"], json!(0));
        // The recursive child only carries the required fields.
        assert_eq!(v["children"][0]["parent"], Value::Null);
        assert!(v["children"][0].get("children").is_none());

        // The legacy `definitions` spelling and a self-reference through `#`.
        let schema = json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "sub": {"items": {"$ref": "#"}, "type": "array"}},
            "required": ["name", "sub"],
            "definitions": {}
        });
        let v = check(schema);
        assert_eq!(v["sub"][0]["sub"], json!([]));
    }

    #[test]
    fn definitions_and_all_of() {
        let schema = json!({
            "definitions": {
                "Base": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                "Ext": {"type": "object", "properties": {"b": {"type": "boolean"}}, "required": ["b"]}
            },
            "allOf": [{"$ref": "#/definitions/Base"}, {"$ref": "#/definitions/Ext"}]
        });
        let v = check(schema);
        assert_eq!(v, json!({"a": 0, "b": true}));
    }

    #[test]
    fn optional_literal_and_type_arrays() {
        let v = check(json!({"anyOf": [{"type": "null"}, {"const": "x"}]}));
        assert_eq!(v, json!("x"));
        let v = check(json!({"type": ["null", "integer"], "minimum": 3}));
        assert_eq!(v, json!(3));
        let v = check(json!({"type": "null"}));
        assert_eq!(v, Value::Null);
        let v = check(json!({"enum": ["only"]}));
        assert_eq!(v, json!("only"));
        let v = check(json!({"oneOf": [{"type": "number", "multipleOf": 0.5, "minimum": 1.2}]}));
        assert_eq!(v, json!(1.5));
    }

    #[test]
    fn default_is_not_trusted_but_examples_are() {
        let v = check(json!({"type": "integer", "default": "not an int"}));
        assert_eq!(v, json!(0));
        let v = check(json!({"type": "string", "examples": ["Paris", "Rome"]}));
        assert_eq!(v, json!("Paris"));
        let v = check(json!({"type": "integer", "examples": ["nope"]}));
        assert_eq!(v, json!(0));
    }

    #[test]
    fn strings_numbers_arrays() {
        assert_eq!(
            check(json!({"type": "string", "minLength": 10})),
            json!("stringxxxx")
        );
        assert_eq!(
            check(json!({"type": "string", "maxLength": 3})),
            json!("str")
        );
        assert_eq!(
            check(json!({"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"})),
            json!("AA-000")
        );
        assert_eq!(
            check(json!({"type": "string", "pattern": "^(?:foo|bar)+[^a-z]?x*$"})),
            json!("foo")
        );
        assert_eq!(
            check(json!({"type": "integer", "exclusiveMinimum": 5})),
            json!(6)
        );
        assert_eq!(check(json!({"type": "integer", "maximum": -3})), json!(-3));
        assert_eq!(
            check(json!({"type": "integer", "minimum": 7, "multipleOf": 5})),
            json!(10)
        );
        assert_eq!(
            check(json!({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.5})),
            json!(0.25)
        );
        assert_eq!(
            check(
                json!({"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 5})
            ),
            json!([0, 0, 0])
        );
        assert_eq!(
            check(json!({"type": "array", "items": {"type": "integer"}, "maxItems": 0})),
            json!([])
        );
        assert_eq!(
            check(
                json!({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2, "maxItems": 2})
            ),
            json!([0, "string"])
        );
        assert_eq!(
            check(
                json!({"type": "array", "items": {"type": "string"}, "minItems": 2, "uniqueItems": true})
            ),
            json!(["string", "string1"])
        );
        assert_eq!(check(json!({"type": "object"})), json!({}));
        assert_eq!(
            check(json!({"type": "object", "additionalProperties": {"type": "integer"}})),
            json!({})
        );
        assert_eq!(check(json!({"type": "boolean"})), json!(true));
        assert_eq!(check(json!({})), Value::Null);
    }

    #[test]
    fn garbage_does_not_panic() {
        for schema in [
            json!(null),
            json!(42),
            json!({"$ref": "#/$defs/Missing"}),
            json!({"$ref": "http://example.com/x"}),
            json!({"type": "string", "pattern": "(unclosed"}),
            json!({"type": "string", "pattern": "[z-a]"}),
            json!({"type": "string", "pattern": "(".repeat(100_000) + &")".repeat(100_000)}),
            json!({"type": "array", "minItems": 1e20}),
            json!({"type": "integer", "minimum": 1e300}),
            json!({"type": "number", "multipleOf": -1}),
            json!({"anyOf": []}),
            json!({"$defs": {"A": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"}),
        ] {
            let _ = instance_for(&schema);
        }
    }
}
