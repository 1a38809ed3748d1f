//! Message templates: with `input` in the request, the text of the system, developer and user
//! messages is a Jinja2 template (minijinja, strict undefined) rendered with the input's
//! variables before the request goes upstream.
//!
//! Rendering is bounded so that a hostile template costs little: the template source, the
//! rendered output, the instructions executed (fuel, shared by every message of a request) and
//! the recursion depth all have limits, and the builtins that grow a string by a factor the
//! template chooses (`indent`, `replace`) are capped. Intermediate values (`"x" * 10**8 ~ …`)
//! cannot be bounded from outside minijinja, so the gateway renders in [`sandbox`] worker
//! processes with a memory and a time limit: a template that blows either kills its worker,
//! never the gateway. Every failure is a 400 that says where (message, line, column) and what
//! (syntax, the missing variable, a limit).

pub mod sandbox;

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use minijinja::{AutoEscape, Environment, ErrorKind as JinjaErrorKind, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map};

use crate::error::{ErrorKind, GatewayError};
use crate::wire::{ContentPart, Message, MessageContent, Role};

/// How much rendering one request may cost.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Limits {
    /// Source of one template.
    pub max_template_bytes: usize,
    /// Rendered text of every message of the request together.
    pub max_output_bytes: usize,
    /// Instructions executed by every template of the request together.
    pub fuel: u64,
    /// Nesting of loops, conditionals and macro calls.
    pub recursion: usize,
    /// Width of `indent`.
    pub max_indent: usize,
    /// Memory of the worker process that renders (sandboxed rendering only).
    pub max_memory_bytes: u64,
    /// Wall-clock time one request's rendering may take (sandboxed rendering only).
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_template_bytes: 1024 * 1024,
            max_output_bytes: 8 * 1024 * 1024,
            fuel: 200_000,
            recursion: 64,
            max_indent: 256,
            max_memory_bytes: 256 * 1024 * 1024,
            timeout: Duration::from_secs(2),
        }
    }
}

/// Renders templates within [`Limits`]: in worker processes when a [`sandbox::Sandbox`] is
/// given (the gateway), else in this thread (tests, tools).
#[derive(Clone, Default)]
pub struct Renderer {
    pub limits: Limits,
    sandbox: Option<Arc<sandbox::Sandbox>>,
}

impl Renderer {
    /// Renders in the calling thread: fuel, recursion and output are bounded, memory is not.
    pub fn in_process(limits: Limits) -> Renderer {
        Renderer {
            limits,
            sandbox: None,
        }
    }

    /// Renders in `sandbox`'s worker processes, which bound memory and time too.
    pub fn sandboxed(limits: Limits, sandbox: Arc<sandbox::Sandbox>) -> Renderer {
        Renderer {
            limits,
            sandbox: Some(sandbox),
        }
    }

    /// [`render`], where this renderer runs template code. Compiling a template runs code
    /// too (minijinja folds constant expressions such as `"x" * 100000000`), so a sandboxed
    /// renderer hands over any message with template syntax, even just to check it.
    pub fn render(
        &self,
        messages: &[Message],
        input: &Map<String, serde_json::Value>,
        require_variables: bool,
    ) -> Result<Vec<Message>, TemplateError> {
        match &self.sandbox {
            Some(sandbox) if !template_slots(messages).is_empty() => sandbox.run(
                sandbox::Job::Render {
                    messages,
                    input,
                    require_variables,
                },
                &self.limits,
            ),
            _ => render(messages, input, &self.limits, require_variables),
        }
    }

    /// [`check_without_input`], where this renderer runs template code.
    pub fn check_without_input(&self, messages: &[Message]) -> Result<(), TemplateError> {
        match &self.sandbox {
            Some(sandbox) if !template_slots(prompt(messages)).is_empty() => sandbox
                .run(sandbox::Job::Check { messages }, &self.limits)
                .map(drop),
            _ => check_without_input(messages, &self.limits),
        }
    }
}

/// What went wrong with a template; the HTTP error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TemplateErrorKind {
    /// The template does not parse.
    Syntax,
    /// The template uses a variable (or attribute) that `input` does not have.
    MissingVariable,
    /// `input` was sent but no message uses a variable.
    InputWithoutTemplate,
    /// A message uses variables but the request has no `input`.
    TemplateWithoutInput,
    /// The template or its output is larger than allowed.
    TooLarge,
    /// Rendering needs more steps or recursion than allowed.
    TooComplex,
    /// Rendering needs more memory than its worker may use.
    MemoryLimit,
    /// Rendering takes longer than allowed.
    TimeLimit,
    /// Every render worker is busy for longer than the time limit (503, not the client's fault).
    Busy,
    /// Another rendering failure (a filter given the wrong type, …).
    Render,
}

impl TemplateErrorKind {
    /// The error `code` a client sees.
    pub fn code(self) -> &'static str {
        match self {
            TemplateErrorKind::Syntax => "template_syntax_error",
            TemplateErrorKind::MissingVariable => "template_variable_missing",
            TemplateErrorKind::InputWithoutTemplate => "input_without_template",
            TemplateErrorKind::TemplateWithoutInput => "template_without_input",
            TemplateErrorKind::TooLarge => "template_too_large",
            TemplateErrorKind::TooComplex => "template_too_complex",
            TemplateErrorKind::MemoryLimit => "template_memory_limit",
            TemplateErrorKind::TimeLimit => "template_time_limit",
            TemplateErrorKind::Busy => "template_workers_busy",
            TemplateErrorKind::Render => "template_render_error",
        }
    }
}

/// A template failure, located in the request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateError {
    pub kind: TemplateErrorKind,
    pub message: String,
    /// Index in `messages`.
    pub message_index: Option<usize>,
    /// Index in the message's content parts, for multi-part content.
    pub part_index: Option<usize>,
    /// 1-based, in the template.
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    /// The missing variables, for `MissingVariable` and `TemplateWithoutInput`.
    pub variables: Vec<String>,
}

impl TemplateError {
    pub(crate) fn new(kind: TemplateErrorKind, message: impl Into<String>) -> Self {
        TemplateError {
            kind,
            message: message.into(),
            message_index: None,
            part_index: None,
            line: None,
            column: None,
            variables: Vec::new(),
        }
    }

    fn at(mut self, slot: &Slot) -> Self {
        self.message_index = Some(slot.message);
        self.part_index = slot.part;
        self
    }

    /// The request field at fault: `messages[0].content` or `messages[0].content[1].text`.
    pub fn param(&self) -> String {
        match (self.message_index, self.part_index) {
            (Some(m), Some(p)) => format!("messages[{m}].content[{p}].text"),
            (Some(m), None) => format!("messages[{m}].content"),
            _ => match self.kind {
                TemplateErrorKind::InputWithoutTemplate => "input".to_string(),
                _ => "messages".to_string(),
            },
        }
    }
}

impl From<TemplateError> for GatewayError {
    fn from(e: TemplateError) -> GatewayError {
        let param = e.param();
        let mut where_ = String::new();
        if e.message_index.is_some() {
            where_.push_str(&format!("`{param}`"));
            if let Some(line) = e.line {
                where_.push_str(&format!(", line {line}"));
                if let Some(column) = e.column {
                    where_.push_str(&format!(", column {column}"));
                }
            }
        }
        let message = if where_.is_empty() {
            e.message.clone()
        } else {
            format!("template error in {where_}: {}", e.message)
        };
        let kind = match e.kind {
            TemplateErrorKind::Busy => ErrorKind::Overloaded,
            _ => ErrorKind::InvalidRequest,
        };
        let retry_after = (e.kind == TemplateErrorKind::Busy).then(|| Duration::from_secs(1));
        GatewayError::new(kind, message)
            .with_retry_after(retry_after)
            .with_param(param)
            .with_code(e.kind.code())
            .with_extra(json!({
                "template": {
                    "message_index": e.message_index,
                    "part_index": e.part_index,
                    "line": e.line,
                    "column": e.column,
                    "variables": e.variables,
                }
            }))
    }
}

/// Whether the text contains Jinja syntax at all; text without it is never touched.
pub fn has_template_syntax(text: &str) -> bool {
    // One pass from brace to brace (`find` of a char is a memchr), not three searches.
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find('{') {
        let next = from + at + 1;
        if matches!(bytes.get(next), Some(b'{' | b'%' | b'#')) {
            return true;
        }
        from = next;
    }
    false
}

/// Messages whose text is a template: what the caller writes, not what a model or tool said.
fn is_templated_role(role: Role) -> bool {
    matches!(role, Role::System | Role::Developer | Role::User)
}

/// Where a template sits in the messages.
#[derive(Debug, Clone, Copy)]
struct Slot {
    message: usize,
    part: Option<usize>,
}

/// The texts of the templated messages that contain Jinja syntax.
fn template_slots(messages: &[Message]) -> Vec<(Slot, &str)> {
    let mut slots = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        if !is_templated_role(message.role) {
            continue;
        }
        match &message.content {
            Some(MessageContent::Text(text)) if has_template_syntax(text) => slots.push((
                Slot {
                    message: i,
                    part: None,
                },
                text.as_str(),
            )),
            Some(MessageContent::Parts(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    if let ContentPart::Text { text } = part {
                        if has_template_syntax(text) {
                            slots.push((
                                Slot {
                                    message: i,
                                    part: Some(j),
                                },
                                text.as_str(),
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    slots
}

/// 1-based column of a byte offset.
fn column_of(source: &str, offset: usize) -> usize {
    let offset = offset.min(source.len());
    let mut start = offset;
    while !source.is_char_boundary(start) {
        start -= 1;
    }
    let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
    source[line_start..start].chars().count() + 1
}

/// Maps a minijinja error to ours, with line and column.
fn jinja_error(e: &minijinja::Error, source: &str, limits: &Limits) -> TemplateError {
    let line = e.line();
    let column = e.range().map(|r| column_of(source, r.start));
    let snippet = e
        .range()
        .and_then(|r| source.get(r))
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 120);
    let detail = e.detail().unwrap_or("").to_string();
    let (kind, message) = match e.kind() {
        JinjaErrorKind::SyntaxError | JinjaErrorKind::BadEscape | JinjaErrorKind::UnknownBlock => (
            TemplateErrorKind::Syntax,
            format!("syntax error: {}", non_empty(&detail, "invalid syntax")),
        ),
        JinjaErrorKind::UndefinedError => (
            TemplateErrorKind::MissingVariable,
            match snippet {
                Some(expr) => format!("`{expr}` is undefined: `input` has no such value"),
                None => "a value the template uses is undefined in `input`".to_string(),
            },
        ),
        JinjaErrorKind::OutOfFuel => (
            TemplateErrorKind::TooComplex,
            format!(
                "rendering needs more than {} steps: loops or recursion are too deep",
                limits.fuel
            ),
        ),
        JinjaErrorKind::WriteFailure => (
            TemplateErrorKind::TooLarge,
            format!(
                "the rendered messages are larger than {} bytes",
                limits.max_output_bytes
            ),
        ),
        JinjaErrorKind::InvalidOperation if detail.contains("recursion") => (
            TemplateErrorKind::TooComplex,
            format!(
                "templates nest deeper than {} levels: {detail}",
                limits.recursion
            ),
        ),
        _ => (
            TemplateErrorKind::Render,
            match snippet {
                Some(expr) => format!("{} (in `{expr}`)", non_empty(&detail, &e.to_string())),
                None => non_empty(&detail, &e.to_string()).to_string(),
            },
        ),
    };
    let mut error = TemplateError::new(kind, message);
    error.line = line;
    error.column = column;
    error
}

fn non_empty<'a>(text: &'a str, fallback: &'a str) -> &'a str {
    if text.is_empty() {
        fallback
    } else {
        text
    }
}

/// The environment every template renders in: Jinja2 semantics, strict undefined, no HTML
/// escaping, trailing newlines kept (a prompt is text, not a page), bounded builtins.
fn environment(limits: &Limits) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_keep_trailing_newline(true);
    env.set_recursion_limit(limits.recursion);
    // `debug()` dumps the whole context: nothing a prompt needs.
    env.remove_global("debug");
    let max_indent = limits.max_indent;
    let max_output = limits.max_output_bytes;
    env.add_filter(
        "indent",
        move |value: String,
              width: Option<usize>,
              first: Option<bool>,
              blank: Option<bool>|
              -> Result<String, minijinja::Error> {
            indent(&value, width.unwrap_or(4), first, blank, max_indent)
        },
    );
    env.add_filter(
        "replace",
        move |value: String,
              from: String,
              to: String,
              count: Option<usize>|
              -> Result<String, minijinja::Error> {
            replace(&value, &from, &to, count, max_output)
        },
    );
    env.set_unknown_method_callback(python_methods);
    env
}

fn indent(
    value: &str,
    width: usize,
    first: Option<bool>,
    blank: Option<bool>,
    max: usize,
) -> Result<String, minijinja::Error> {
    if width > max {
        return Err(minijinja::Error::new(
            JinjaErrorKind::InvalidOperation,
            format!("indent width {width} is larger than {max}"),
        ));
    }
    let pad = " ".repeat(width);
    let mut out = String::with_capacity(value.len());
    for (i, line) in value.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let indent_this = (i > 0 || first.unwrap_or(false))
            && (!line.trim().is_empty() || blank.unwrap_or(false));
        if indent_this {
            out.push_str(&pad);
        }
        out.push_str(line);
    }
    Ok(out)
}

fn replace(
    value: &str,
    from: &str,
    to: &str,
    count: Option<usize>,
    max: usize,
) -> Result<String, minijinja::Error> {
    let occurrences = if from.is_empty() {
        value.chars().count() + 1
    } else {
        value.matches(from).count()
    };
    let occurrences = count.map_or(occurrences, |c| c.min(occurrences));
    let grown = occurrences.saturating_mul(to.len());
    if value.len().saturating_add(grown) > max {
        return Err(minijinja::Error::new(
            JinjaErrorKind::InvalidOperation,
            format!("`replace` would produce more than {max} bytes"),
        ));
    }
    Ok(match count {
        Some(n) => value.replacen(from, to, n),
        None => value.replace(from, to),
    })
}

/// The Python methods Jinja2 templates commonly call on strings and dicts (`d.items()`,
/// `s.upper()`), mapped to minijinja's filters.
fn python_methods(
    state: &minijinja::State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, minijinja::Error> {
    use minijinja::value::ValueKind;
    let unknown = || {
        minijinja::Error::new(
            JinjaErrorKind::UnknownMethod,
            format!("{} has no method named {method}", value.kind()),
        )
    };
    match value.kind() {
        ValueKind::Map => match method {
            "items" => state.apply_filter("items", std::slice::from_ref(value)),
            "keys" => Ok(Value::from(value.try_iter()?.collect::<Vec<_>>())),
            "values" => {
                let mut out = Vec::new();
                for key in value.try_iter()? {
                    out.push(value.get_item(&key)?);
                }
                Ok(Value::from(out))
            }
            "get" => {
                let key = args.first().ok_or_else(unknown)?;
                let found = value.get_item(key)?;
                Ok(if found.is_undefined() {
                    args.get(1).cloned().unwrap_or(Value::from(()))
                } else {
                    found
                })
            }
            _ => Err(unknown()),
        },
        ValueKind::String => {
            let text = value.as_str().unwrap_or_default();
            let arg = |i: usize| args.get(i).and_then(Value::as_str).unwrap_or_default();
            match method {
                "upper" | "lower" | "title" | "capitalize" => {
                    state.apply_filter(method, std::slice::from_ref(value))
                }
                "strip" => Ok(Value::from(text.trim())),
                "lstrip" => Ok(Value::from(text.trim_start())),
                "rstrip" => Ok(Value::from(text.trim_end())),
                "startswith" => Ok(Value::from(text.starts_with(arg(0)))),
                "endswith" => Ok(Value::from(text.ends_with(arg(0)))),
                "replace" | "split" => {
                    let mut filter_args = vec![value.clone()];
                    filter_args.extend(args.iter().cloned());
                    state.apply_filter(method, &filter_args)
                }
                "join" => {
                    let items = args.first().ok_or_else(unknown)?;
                    state.apply_filter("join", &[items.clone(), value.clone()])
                }
                _ => Err(unknown()),
            }
        }
        _ => Err(unknown()),
    }
}

/// Writes into a buffer, failing once the request's output budget is spent.
struct Bounded<'a> {
    out: Vec<u8>,
    remaining: &'a mut usize,
}

impl io::Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() > *self.remaining {
            return Err(io::Error::other("output limit"));
        }
        *self.remaining -= buf.len();
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The variables the templated messages use (top-level names, globals such as `range`
/// excluded). A template that does not parse is a syntax error, with its line and column.
pub fn variables(messages: &[Message], limits: &Limits) -> Result<BTreeSet<String>, TemplateError> {
    let mut names = BTreeSet::new();
    let slots = template_slots(messages);
    if slots.is_empty() {
        return Ok(names);
    }
    let env = environment(limits);
    for (slot, source) in slots {
        check_size(source, limits).map_err(|e| e.at(&slot))?;
        let template = env
            .template_from_str(source)
            .map_err(|e| jinja_error(&e, source, limits).at(&slot))?;
        names.extend(
            template
                .undeclared_variables(false)
                .into_iter()
                .filter(|name| env.globals().all(|(global, _)| global != name)),
        );
    }
    Ok(names)
}

fn check_size(source: &str, limits: &Limits) -> Result<(), TemplateError> {
    if source.len() > limits.max_template_bytes {
        return Err(TemplateError::new(
            TemplateErrorKind::TooLarge,
            format!(
                "the template is {} bytes, more than the limit of {}",
                source.len(),
                limits.max_template_bytes
            ),
        ));
    }
    Ok(())
}

/// For a request without `input`: a message of the prompt (before any assistant turn) that
/// uses template variables is an error, since nothing would fill them. Text that merely looks
/// like Jinja but does not parse is left alone, and so is the conversation after the first
/// assistant turn (answers may well contain template code).
pub fn check_without_input(messages: &[Message], limits: &Limits) -> Result<(), TemplateError> {
    let slots = template_slots(prompt(messages));
    if slots.is_empty() {
        return Ok(());
    }
    let env = environment(limits);
    for (slot, source) in slots {
        let Ok(template) = env.template_from_str(source) else {
            continue;
        };
        let used: Vec<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|name| env.globals().all(|(global, _)| global != name))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !used.is_empty() {
            let listed = used
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut error = TemplateError::new(
                TemplateErrorKind::TemplateWithoutInput,
                format!(
                    "the message uses the template variable(s) {listed} but the request has no \
                     `input`: send them in `input` (the OpenAI SDK's extra_body={{\"input\": {{…}}}}), \
                     or wrap literal braces in {{% raw %}}…{{% endraw %}}"
                ),
            )
            .at(&slot);
            error.variables = used;
            return Err(error);
        }
    }
    Ok(())
}

/// The messages before the first assistant turn.
fn prompt(messages: &[Message]) -> &[Message] {
    let prompt_len = messages
        .iter()
        .position(|m| m.role == Role::Assistant)
        .unwrap_or(messages.len());
    &messages[..prompt_len]
}

/// Renders the templated messages with `input`. Messages without Jinja syntax, and assistant
/// and tool messages, are returned unchanged. The template code runs in this thread.
///
/// `require_variables`: `input` that no template uses is an error (the client meant to send a
/// template and did not).
pub fn render(
    messages: &[Message],
    input: &Map<String, serde_json::Value>,
    limits: &Limits,
    require_variables: bool,
) -> Result<Vec<Message>, TemplateError> {
    let used = variables(messages, limits)?;
    if require_variables && used.is_empty() && !input.is_empty() {
        let keys = input
            .keys()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(TemplateError::new(
            TemplateErrorKind::InputWithoutTemplate,
            format!(
                "`input` was sent ({keys}) but no message is a template that uses it: put \
                 placeholders such as {{{{ {} }}}} in the messages",
                input.keys().next().map_or("name", String::as_str)
            ),
        ));
    }
    let missing: Vec<String> = used
        .iter()
        .filter(|name| !input.contains_key(name.as_str()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        // Name the first template that uses one.
        let slots = template_slots(messages);
        let env = environment(limits);
        let at = slots.iter().find(|(_, source)| {
            env.template_from_str(source).is_ok_and(|t| {
                t.undeclared_variables(false)
                    .iter()
                    .any(|v| missing.contains(v))
            })
        });
        let listed = missing
            .iter()
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let known = if input.is_empty() {
            "`input` is empty".to_string()
        } else {
            format!(
                "`input` has {}",
                input
                    .keys()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut error = TemplateError::new(
            TemplateErrorKind::MissingVariable,
            format!("the template uses {listed}, which `input` does not define ({known})"),
        );
        if let Some((slot, _)) = at {
            error = error.at(slot);
        }
        error.variables = missing;
        return Err(error);
    }

    let slots = template_slots(messages);
    if slots.is_empty() {
        return Ok(messages.to_vec());
    }
    let texts = render_slots(&slots, input, limits)?;
    let mut out = messages.to_vec();
    for ((slot, _), text) in slots.iter().zip(texts) {
        let message = &mut out[slot.message];
        match (&mut message.content, slot.part) {
            (Some(MessageContent::Text(t)), None) => *t = text,
            (Some(MessageContent::Parts(parts)), Some(j)) => {
                if let Some(ContentPart::Text { text: t }) = parts.get_mut(j) {
                    *t = text;
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Renders each templated slot with `input`, sharing the fuel and the output budget of
/// `limits` between them.
fn render_slots(
    slots: &[(Slot, &str)],
    input: &Map<String, serde_json::Value>,
    limits: &Limits,
) -> Result<Vec<String>, TemplateError> {
    let mut env = environment(limits);
    let context = Value::from_serialize(input);
    let mut fuel = limits.fuel;
    let mut remaining = limits.max_output_bytes;
    let mut texts = Vec::with_capacity(slots.len());
    for (slot, source) in slots {
        check_size(source, limits).map_err(|e| e.at(slot))?;
        env.set_fuel(Some(fuel));
        let template = env
            .template_from_str(source)
            .map_err(|e| jinja_error(&e, source, limits).at(slot))?;
        let mut writer = Bounded {
            out: Vec::with_capacity(source.len()),
            remaining: &mut remaining,
        };
        let captured = template
            .render_captured_to(&context, &mut writer)
            .map_err(|e| jinja_error(&e, source, limits).at(slot))?;
        if let Some((consumed, _)) = captured.state().fuel_levels() {
            fuel = fuel.saturating_sub(consumed);
        }
        drop(captured);
        let text = String::from_utf8(writer.out).map_err(|_| {
            TemplateError::new(TemplateErrorKind::Render, "the output is not UTF-8").at(slot)
        })?;
        texts.push(text);
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages(value: serde_json::Value) -> Vec<Message> {
        serde_json::from_value(value).unwrap()
    }

    fn input(value: serde_json::Value) -> Map<String, serde_json::Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn template_syntax_is_a_brace_before_a_brace_a_percent_or_a_hash() {
        for text in [
            "{{ x }}",
            "a {% if y %}",
            "{# note #}",
            "{ \"json\": {{ v }} }",
            "é{{x",
        ] {
            assert!(has_template_syntax(text), "{text}");
        }
        for text in [
            "",
            "{",
            "plain",
            "{ \"json\": 1 }",
            "}}{",
            "{ {",
            "x {",
            "%{ #{",
        ] {
            assert!(!has_template_syntax(text), "{text}");
        }
    }

    fn text(m: &Message) -> String {
        m.text()
    }

    #[test]
    fn renders_variables_conditionals_loops_filters_and_methods() {
        let msgs = messages(json!([
            {"role": "system", "content": "Classify {{ email | lower }}.{% if strict %} Be strict.{% endif %}"},
            {"role": "user", "content": [
                {"type": "text", "text": "{% for t in tags %}{{ loop.index }}={{ t.upper() }}{% if not loop.last %},{% endif %}{% endfor %}"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
            ]},
            {"role": "assistant", "content": "I keep {{ braces }} as they are"},
            {"role": "user", "content": "{% for k, v in meta.items() %}{{ k }}:{{ v }} {% endfor %}{{ meta | tojson }}\n"}
        ]));
        let out = render(
            &msgs,
            &input(
                json!({"email": "A@B.COM", "strict": true, "tags": ["x", "y"], "meta": {"a": 1}}),
            ),
            &Limits::default(),
            true,
        )
        .unwrap();
        assert_eq!(text(&out[0]), "Classify a@b.com. Be strict.");
        assert_eq!(text(&out[1]), "1=X,2=Y");
        // Non-text parts and assistant turns are untouched.
        assert_eq!(out[1].content, {
            let mut m = msgs[1].clone();
            if let Some(MessageContent::Parts(p)) = &mut m.content {
                p[0] = ContentPart::Text {
                    text: "1=X,2=Y".into(),
                };
            }
            m.content
        });
        assert_eq!(text(&out[2]), "I keep {{ braces }} as they are");
        // Trailing newline kept: a prompt is text.
        assert_eq!(text(&out[3]), "a:1 {\"a\":1}\n");
    }

    #[test]
    fn text_without_syntax_is_returned_byte_for_byte() {
        let msgs = messages(
            json!([{"role": "user", "content": "{{ x }}"}, {"role": "user", "content": "plain\n"}]),
        );
        let out = render(&msgs, &input(json!({"x": 1})), &Limits::default(), true).unwrap();
        assert_eq!(text(&out[1]), "plain\n");
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let msgs = messages(json!([
            {"role": "system", "content": "ok"},
            {"role": "user", "content": "line one\n  {% if x %}unclosed"}
        ]));
        let e = render(&msgs, &input(json!({"x": 1})), &Limits::default(), true).unwrap_err();
        assert_eq!(e.kind, TemplateErrorKind::Syntax);
        assert_eq!(e.message_index, Some(1));
        assert_eq!(e.line, Some(2));
        assert!(e.column.is_some());
        let g = GatewayError::from(e);
        assert_eq!(g.param.as_deref(), Some("messages[1].content"));
        assert_eq!(g.code.as_deref(), Some("template_syntax_error"));
        assert!(g.message.contains("line 2"), "{}", g.message);

        let msgs = messages(json!([{"role": "user", "content": "Hi {{ name }"}]));
        let e = render(&msgs, &input(json!({"name": 1})), &Limits::default(), true).unwrap_err();
        assert_eq!(e.kind, TemplateErrorKind::Syntax);
        assert_eq!(e.line, Some(1));
        assert!(e.column.unwrap() >= 4, "{e:?}");
    }

    #[test]
    fn missing_variables_are_named() {
        let msgs = messages(json!([
            {"role": "system", "content": "static"},
            {"role": "user", "content": "{{ name }} is {{ age }}"}
        ]));
        let e = render(
            &msgs,
            &input(json!({"name": "Ann"})),
            &Limits::default(),
            true,
        )
        .unwrap_err();
        assert_eq!(e.kind, TemplateErrorKind::MissingVariable);
        assert_eq!(e.variables, vec!["age".to_string()]);
        assert_eq!(e.message_index, Some(1));
        assert!(e.message.contains("`age`"), "{}", e.message);

        // A missing attribute is found while rendering, with its expression.
        let msgs = messages(json!([{"role": "user", "content": "Dear {{ user.name }}"}]));
        let e = render(
            &msgs,
            &input(json!({"user": {"first": "A"}})),
            &Limits::default(),
            true,
        )
        .unwrap_err();
        assert_eq!(e.kind, TemplateErrorKind::MissingVariable);
        assert!(e.message.contains("user.name"), "{}", e.message);
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn input_without_template_and_template_without_input() {
        let msgs = messages(json!([{"role": "user", "content": "no placeholders"}]));
        let e = render(&msgs, &input(json!({"x": 1})), &Limits::default(), true).unwrap_err();
        assert_eq!(e.kind, TemplateErrorKind::InputWithoutTemplate);
        assert_eq!(e.param(), "input");
        // Not an error when the caller says so (a deployment brings its own templates).
        assert!(render(&msgs, &input(json!({"x": 1})), &Limits::default(), false).is_ok());

        let msgs = messages(json!([{"role": "user", "content": "Hello {{ who }}"}]));
        let e = check_without_input(&msgs, &Limits::default()).unwrap_err();
        assert_eq!(e.kind, TemplateErrorKind::TemplateWithoutInput);
        assert_eq!(e.variables, vec!["who".to_string()]);
        // Braces that do not parse, and later turns of a conversation, are plain text.
        let msgs = messages(json!([
            {"role": "user", "content": "const o = {{a: 1}"},
            {"role": "assistant", "content": "use {{ x }}"},
            {"role": "user", "content": "and {{ y }}?"}
        ]));
        assert!(check_without_input(&msgs, &Limits::default()).is_ok());
    }

    #[test]
    fn hostile_templates_hit_limits() {
        let limits = Limits::default();
        // An endless amount of work.
        let msgs = messages(json!([{"role": "user", "content":
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}{{ x }}"}]));
        let e = render(&msgs, &input(json!({"x": 1})), &limits, true).unwrap_err();
        assert_eq!(e.kind, TemplateErrorKind::TooComplex, "{e:?}");
        // A huge output.
        let msgs = messages(json!([{"role": "user", "content":
            "{% for a in range(100000) %}{{ x * 1000 }}{% endfor %}"}]));
        let e = render(&msgs, &input(json!({"x": "y"})), &limits, true).unwrap_err();
        assert!(
            matches!(
                e.kind,
                TemplateErrorKind::TooLarge | TemplateErrorKind::TooComplex
            ),
            "{e:?}"
        );
        let small = Limits {
            max_output_bytes: 10,
            ..limits
        };
        let msgs = messages(json!([{"role": "user", "content": "{{ x }}"}]));
        let e = render(&msgs, &input(json!({"x": "01234567890"})), &small, true).unwrap_err();
        assert_eq!(e.kind, TemplateErrorKind::TooLarge, "{e:?}");
        // Deep recursion.
        let msgs = messages(json!([{"role": "user", "content":
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(x) }}"}]));
        let e = render(&msgs, &input(json!({"x": 0})), &limits, true).unwrap_err();
        assert_eq!(e.kind, TemplateErrorKind::TooComplex, "{e:?}");
        // Amplifying filters are capped.
        let msgs = messages(json!([{"role": "user", "content": "{{ x | indent(100000000) }}"}]));
        let e = render(&msgs, &input(json!({"x": "a\nb"})), &limits, true).unwrap_err();
        assert_eq!(e.kind, TemplateErrorKind::Render, "{e:?}");
        let msgs = messages(json!([{"role": "user", "content": "{{ x | replace('', y) }}"}]));
        let big = "z".repeat(100_000);
        let e = render(&msgs, &input(json!({"x": big, "y": big})), &limits, true).unwrap_err();
        assert_eq!(e.kind, TemplateErrorKind::Render, "{e:?}");
        // The template source itself.
        let msgs = messages(
            json!([{"role": "user", "content": format!("{{{{ x }}}}{}", " ".repeat(2 * 1024 * 1024))}]),
        );
        let e = render(&msgs, &input(json!({"x": 1})), &limits, true).unwrap_err();
        assert_eq!(e.kind, TemplateErrorKind::TooLarge, "{e:?}");
    }

    #[test]
    fn fuel_is_shared_by_all_messages_of_a_request() {
        let limits = Limits {
            fuel: 2_000,
            ..Limits::default()
        };
        let one =
            json!({"role": "user", "content": "{% for a in range(300) %}{{ x }}{% endfor %}"});
        let e = render(
            &messages(json!([one.clone(), one.clone(), one.clone(), one])),
            &input(json!({"x": 1})),
            &limits,
            true,
        )
        .unwrap_err();
        assert_eq!(e.kind, TemplateErrorKind::TooComplex);
        assert!(e.message_index.unwrap() > 0);
    }

    #[test]
    fn variables_exclude_globals_and_locals() {
        let msgs = messages(json!([{"role": "user", "content":
            "{% set n = 3 %}{% for i in range(n) %}{{ i }}{{ item }}{% endfor %}{{ dict(a=1) }}"}]));
        let vars = variables(&msgs, &Limits::default()).unwrap();
        assert_eq!(
            vars.into_iter().collect::<Vec<_>>(),
            vec!["item".to_string()]
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Template text made of Jinja's pieces, small numbers only (memory is the sandbox's
        /// business; this checks that nothing panics).
        fn arb_template() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof![
                    Just("{{"),
                    Just("}}"),
                    Just("{%"),
                    Just("%}"),
                    Just("{#"),
                    Just("#}"),
                    Just(" x "),
                    Just(" y "),
                    Just(" for "),
                    Just(" in "),
                    Just(" if "),
                    Just(" else "),
                    Just(" endif "),
                    Just(" endfor "),
                    Just(" set "),
                    Just(" = "),
                    Just("|"),
                    Just("length"),
                    Just("upper"),
                    Just("join"),
                    Just("indent(3)"),
                    Just("replace('a', 'bb')"),
                    Just("range(7)"),
                    Just("("),
                    Just(")"),
                    Just("["),
                    Just("]"),
                    Just(","),
                    Just("."),
                    Just("*"),
                    Just("~"),
                    Just("+"),
                    Just("-"),
                    Just("'a'"),
                    Just("3"),
                    Just("macro"),
                    Just("endmacro"),
                    Just("f"),
                    Just("raw"),
                    Just("endraw"),
                    Just("items()"),
                    Just("\n"),
                    Just("é"),
                    Just("}"),
                    Just("{"),
                ],
                0..40,
            )
            .prop_map(|parts| parts.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: ProptestConfig::default().cases.max(512), ..ProptestConfig::default() })]

            #[test]
            fn any_template_renders_or_is_a_located_error(
                template in arb_template(),
                text in ".{0,40}",
            ) {
                let limits = Limits { fuel: 20_000, max_output_bytes: 64 * 1024, ..Limits::default() };
                let msgs = messages(json!([
                    {"role": "user", "content": template},
                    {"role": "user", "content": text}
                ]));
                let input = input(json!({"x": "ab", "y": [1, 2]}));
                match render(&msgs, &input, &limits, false) {
                    Ok(out) => prop_assert_eq!(out.len(), 2),
                    Err(e) => {
                        let g = GatewayError::from(e);
                        prop_assert!(g.status_code().is_client_error(), "{g:?}");
                    }
                }
                let _ = check_without_input(&msgs, &limits);
                let _ = variables(&msgs, &limits);
            }
        }
    }
}
