//! Scripting the mock through the `model` string.
//!
//! The model string has the form `base[;key=value|;flag]*`, for example
//! `gpt-4o-mini;delay_ms=50;status=500;fail_first=2`. The `base` (the text before the first
//! `;`) is the model name echoed back in responses; the rest scripts the behaviour of the
//! request. Unknown keys and unparsable values are ignored, so a directive typo never turns
//! into a mock failure of its own.
//!
//! | directive | effect |
//! |---|---|
//! | `delay_ms=N` | wait N ms before sending the response headers (any response) |
//! | `status=N` | answer with HTTP status N (≥ 400) and the provider's error body |
//! | `retry_after=S` | add `Retry-After: S` to error responses (seconds, may be fractional) |
//! | `fail_first=N` | only the first N requests carrying this exact model string fail (with `status`, or 500 when no status is given); later ones succeed |
//! | `hang` | never answer (sleep an hour before anything is sent) |
//! | `malformed` | 200 with `content-type: application/json` and a body that is not JSON |
//! | `cut_after=N` | streaming: abort the connection after N content chunks, without the finish chunk, usage or `[DONE]`; non-streaming: send half of the body, then abort |
//! | `chunk_delay_ms=N` | streaming: delay between chunks |
//! | `ttfb_ms=N` | streaming: delay after the headers, before the first chunk |
//! | `chunk_chars=N` | streaming: characters of content per chunk (default 8) |
//! | `bad_json_first=N` | the first N structured answers for this exact model string are malformed JSON (see below) |
//! | `invalid_first=N` | the next N structured answers (after the `bad_json_first` ones) are JSON that violates the schema |
//! | `call_tools` | with `tool_choice` `auto` (or absent) and tools declared, call every declared tool, as `required` does (only the first with `parallel_tool_calls: false`) |
//! | `prose_json` | structured content answers (not tool calls) come wrapped in prose and a ` ```json ` fence, as chatty models write them |
//!
//! `bad_json_first` and `invalid_first` apply to structured answers only (a forced tool
//! call's arguments, a `json_schema` or `json_object` content, an instance of a schema found
//! in the system prompt), on every route whose request reaches [`crate::answer::answer`] with
//! the full model string. They share one counter per exact model string, kept apart from the
//! `fail_first` one: answer `k` (from 0) is malformed when `k < bad_json_first`, violates the
//! schema when `k < bad_json_first + invalid_first`, and is a valid instance after that.
//! A malformed answer is the instance with an unquoted key added, a trailing comma and no
//! closing brace (`{mock: bad_json, "age":0,`): no JSON parser, lenient or not, reads it. A
//! violating answer lacks the schema's first required property (or has a property of the
//! wrong type when nothing is required).

use std::time::Duration;

/// Characters of content (or tool-call arguments) per streamed chunk by default.
pub const DEFAULT_CHUNK_CHARS: usize = 8;

/// The behaviour scripted by a model string; see the [module documentation](self).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Directives {
    /// The model name (text before the first `;`), echoed back in responses.
    pub base: String,
    /// `delay_ms=N`: milliseconds to wait before the response headers.
    pub delay_ms: Option<u64>,
    /// `status=N`: the HTTP status to fail with (only values ≥ 400 make the request fail).
    pub status: Option<u16>,
    /// `retry_after=S`: the `Retry-After` header value, in seconds, on error responses.
    pub retry_after: Option<f64>,
    /// `fail_first=N`: only the first N requests with this exact model string fail.
    pub fail_first: Option<u64>,
    /// `hang`: never answer.
    pub hang: bool,
    /// `malformed`: answer 200 with a body that is not valid JSON.
    pub malformed: bool,
    /// `cut_after=N`: abort the response after N content chunks.
    pub cut_after: Option<usize>,
    /// `chunk_delay_ms=N`: milliseconds between streamed chunks.
    pub chunk_delay_ms: Option<u64>,
    /// `ttfb_ms=N`: milliseconds between the headers and the first streamed chunk.
    pub ttfb_ms: Option<u64>,
    /// `chunk_chars=N`: characters per streamed content chunk (≥ 1).
    pub chunk_chars: Option<usize>,
    /// `bad_json_first=N`: the first N structured answers are malformed JSON.
    pub bad_json_first: Option<u64>,
    /// `invalid_first=N`: the N structured answers after the malformed ones violate the
    /// schema.
    pub invalid_first: Option<u64>,
    /// `call_tools`: `tool_choice: auto` calls every declared tool.
    pub call_tools: bool,
    /// `prose_json`: structured content answers come in prose and a code fence.
    pub prose_json: bool,
    /// `forget=WORD`: the echoed answer leaves WORD out (a model that gets some items wrong).
    pub forget: Option<String>,
    /// `judge`: answers as a reviewer: `{"verdict", "reason"}`, positive when the text after
    /// `OUTPUT:` holds the text after `EXPECTED:` in the last user message.
    pub judge: bool,
}

/// Parses a model string into its [`Directives`]; never fails.
pub fn parse(model: &str) -> Directives {
    Directives::parse(model)
}

impl Directives {
    /// Parses a model string into its [`Directives`]; never fails.
    pub fn parse(model: &str) -> Directives {
        let mut parts = model.split(';');
        let mut d = Directives {
            base: parts.next().unwrap_or_default().trim().to_string(),
            ..Directives::default()
        };
        for part in parts {
            let part = part.trim();
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (part, None),
            };
            let num = || value.and_then(|v| v.parse::<u64>().ok());
            match key {
                "delay_ms" => d.delay_ms = num().or(d.delay_ms),
                "status" => {
                    d.status = value
                        .and_then(|v| v.parse::<u16>().ok())
                        .filter(|s| (100..=999).contains(s))
                        .or(d.status)
                }
                "retry_after" => {
                    d.retry_after = value
                        .and_then(|v| v.parse::<f64>().ok())
                        .filter(|s| s.is_finite() && *s >= 0.0)
                        .or(d.retry_after)
                }
                "fail_first" => d.fail_first = num().or(d.fail_first),
                "hang" => d.hang = value.is_none_or(truthy),
                "malformed" => d.malformed = value.is_none_or(truthy),
                "cut_after" => {
                    d.cut_after = num()
                        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                        .or(d.cut_after)
                }
                "chunk_delay_ms" => d.chunk_delay_ms = num().or(d.chunk_delay_ms),
                "ttfb_ms" => d.ttfb_ms = num().or(d.ttfb_ms),
                "chunk_chars" => {
                    d.chunk_chars = num()
                        .filter(|n| *n > 0)
                        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                        .or(d.chunk_chars)
                }
                "bad_json_first" => d.bad_json_first = num().or(d.bad_json_first),
                "invalid_first" => d.invalid_first = num().or(d.invalid_first),
                "call_tools" => d.call_tools = value.is_none_or(truthy),
                "prose_json" => d.prose_json = value.is_none_or(truthy),
                "forget" => d.forget = value.filter(|v| !v.is_empty()).map(str::to_string),
                "judge" => d.judge = value.is_none_or(truthy),
                _ => {}
            }
        }
        d
    }

    /// Whether structured answers are scripted to go wrong (`bad_json_first` or
    /// `invalid_first` given), so that they need the per-model answer counter.
    pub fn scripts_structured_faults(&self) -> bool {
        self.bad_json_first.is_some_and(|n| n > 0) || self.invalid_first.is_some_and(|n| n > 0)
    }

    /// Whether the model string carried no directive at all.
    pub fn is_plain(&self) -> bool {
        *self
            == Directives {
                base: self.base.clone(),
                ..Directives::default()
            }
    }

    /// The error status this request fails with when it fails: `status` when it is ≥ 400,
    /// else 500 when `fail_first` is given, else none. Whether a `fail_first` request
    /// actually fails depends on the per-model counter kept by the server.
    pub fn error_status(&self) -> Option<u16> {
        match self.status {
            Some(status) if status >= 400 => Some(status),
            Some(_) => None,
            None => self.fail_first.map(|_| 500),
        }
    }

    /// The `Retry-After` header value, formatted (`2`, `0.5`).
    pub fn retry_after_header(&self) -> Option<String> {
        self.retry_after.map(|s| format!("{s}"))
    }

    /// `delay_ms` as a duration.
    pub fn delay(&self) -> Option<Duration> {
        self.delay_ms.map(Duration::from_millis)
    }

    /// `ttfb_ms` as a duration.
    pub fn ttfb(&self) -> Option<Duration> {
        self.ttfb_ms.map(Duration::from_millis)
    }

    /// `chunk_delay_ms` as a duration.
    pub fn chunk_delay(&self) -> Option<Duration> {
        self.chunk_delay_ms.map(Duration::from_millis)
    }

    /// Characters per streamed chunk (`chunk_chars`, default [`DEFAULT_CHUNK_CHARS`]).
    pub fn chunk_chars(&self) -> usize {
        self.chunk_chars.unwrap_or(DEFAULT_CHUNK_CHARS)
    }
}

fn truthy(value: &str) -> bool {
    !matches!(value, "0" | "false" | "no" | "off")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_directives() {
        let d = parse(
            "gpt-4o-mini;delay_ms=50;status=429;retry_after=2;fail_first=1;hang;malformed;\
             cut_after=3;chunk_delay_ms=5;ttfb_ms=7;chunk_chars=2",
        );
        assert_eq!(d.base, "gpt-4o-mini");
        assert_eq!(d.delay_ms, Some(50));
        assert_eq!(d.status, Some(429));
        assert_eq!(d.retry_after_header().as_deref(), Some("2"));
        assert_eq!(d.fail_first, Some(1));
        assert!(d.hang && d.malformed);
        assert_eq!(d.cut_after, Some(3));
        assert_eq!(d.chunk_delay_ms, Some(5));
        assert_eq!(d.ttfb_ms, Some(7));
        assert_eq!(d.chunk_chars(), 2);
        assert_eq!(d.error_status(), Some(429));
        assert!(!d.is_plain());
    }

    #[test]
    fn plain_and_garbage() {
        let d = parse("gpt-4o");
        assert_eq!(d.base, "gpt-4o");
        assert!(d.is_plain());
        assert_eq!(d.error_status(), None);
        assert_eq!(d.chunk_chars(), DEFAULT_CHUNK_CHARS);

        let d = parse("m; status=abc ;delay_ms=-1;nonsense=3;;chunk_chars=0;retry_after=0.5");
        assert_eq!(d.base, "m");
        assert_eq!(d.status, None);
        assert_eq!(d.delay_ms, None);
        assert_eq!(d.chunk_chars, None);
        assert_eq!(d.retry_after_header().as_deref(), Some("0.5"));

        assert_eq!(parse("m;fail_first=2").error_status(), Some(500));
        assert_eq!(parse("m;status=200").error_status(), None);
        assert_eq!(parse("").base, "");
    }

    #[test]
    fn structured_fault_directives() {
        let d = parse("gpt-4o-mini;bad_json_first=2;invalid_first=3;call_tools;prose_json");
        assert!(d.prose_json);
        assert_eq!(d.bad_json_first, Some(2));
        assert_eq!(d.invalid_first, Some(3));
        assert!(d.call_tools && d.scripts_structured_faults() && !d.is_plain());
        // They do not make the request fail.
        assert_eq!(d.error_status(), None);

        let d = parse("m;bad_json_first=x;invalid_first=0;call_tools=off");
        assert_eq!(d.bad_json_first, None);
        assert_eq!(d.invalid_first, Some(0));
        assert!(!d.call_tools && !d.scripts_structured_faults());
        assert!(parse("m;invalid_first=1").scripts_structured_faults());
    }
}
