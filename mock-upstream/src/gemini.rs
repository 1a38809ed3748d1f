//! The Gemini API / Vertex AI wire format, and Google's OAuth token endpoints.
//!
//! * `POST /v1beta/models/{model}:generateContent` — the Gemini API, authenticated by an
//!   `x-goog-api-key` header (or a `key` query parameter, which Google also accepts) — and
//!   `POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent` —
//!   Vertex AI, authenticated by `Authorization: Bearer`. `:streamGenerateContent` answers
//!   server-sent events with `?alt=sse`, and one JSON array of chunks without.
//! * Requests are checked the way Google checks them (unknown fields, empty parts, a part
//!   with two kinds of data, schema keywords outside Gemini's OpenAPI subset, function
//!   responses that do not match the calls of the previous turn, more than 5 stop
//!   sequences…) and rejected with Google's `400 INVALID_ARGUMENT`.
//! * The request is converted to the OpenAI shape for [`answer`](crate::answer::answer):
//!   `functionCallingConfig` `ANY` with one allowed name forces that function, `ANY`
//!   otherwise calls every (allowed) function, `responseSchema`/`responseJsonSchema` is a
//!   `json_schema` response format, `candidateCount` is `n`.
//! * The model path segment (URL-decoded) carries the usual [directives](crate::directives)
//!   (`gemini-2.0-flash;status=503`), errors come in Google's shape
//!   (`{"error": {"code", "message", "status"}}`, `RetryInfo` details on 429 with
//!   `retry_after`), and these Gemini-only directives apply:
//!
//! | directive | effect |
//! |---|---|
//! | `block=REASON` | no candidates, `promptFeedback.blockReason: REASON` |
//! | `finish=REASON` | the candidates' `finishReason`; content-filter reasons (`SAFETY`, …) drop the content |
//! | `thoughts=N` | a `thought: true` part before the answer and `thoughtsTokenCount: N` |
//! | `cached=N` | `cachedContentTokenCount: N` (at most the prompt) |
//! | `too_long` | 400 `INVALID_ARGUMENT`: the input token count exceeds the maximum |
//!
//! `POST /token` exchanges a service-account JWT (`grant_type` jwt-bearer, an `assertion`
//! whose claims carry `iss`, `scope`, `aud`, `iat` and `exp`; the signature is not checked)
//! for `{"access_token": "mock-token-…", "expires_in": 3599, "token_type": "Bearer"}`;
//! `GET /computeMetadata/v1/instance/service-accounts/default/token` answers the same with
//! `Metadata-Flavor: Google`.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::answer::{self, MockAnswer};
use crate::directives::Directives;
use crate::ids;
use crate::script::{self, Outcome, Piece};
use crate::state::State;

/// The body sent for the `malformed` directive: truncated JSON.
pub const MALFORMED_BODY: &str = r#"{"candidates": [{"content": {"parts": ["#;
/// The OAuth grant type of the service-account flow.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The metadata server's token path.
pub const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// Lifetime of the tokens the mock issues, in seconds.
pub const TOKEN_EXPIRES_IN: u64 = 3599;
/// Largest `candidateCount` Gemini accepts.
const MAX_CANDIDATES: u64 = 8;
/// Most stop sequences Gemini accepts.
const MAX_STOP_SEQUENCES: usize = 5;
/// The model's context window, for the `too_long` directive's message.
const CONTEXT_WINDOW: u64 = 1_048_576;
/// Finish reasons that withhold the content.
const FILTER_REASONS: &[&str] = &[
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
];

// ---- errors ----

/// A Google error body: `{"error": {"code", "message", "status"}}`.
pub fn error_body(code: u16, status: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": status}})
}

/// The canonical status name Google sends with an HTTP status.
pub fn google_status(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        c if (400..500).contains(&c) => "FAILED_PRECONDITION",
        _ => "UNKNOWN",
    }
}

/// The error body Google sends with `code` for `model` (429 carries `QuotaFailure` and, with
/// a `retry_after`, `RetryInfo` details).
pub fn status_error_body(code: u16, model: &str, retry_after: Option<f64>) -> Value {
    let message = match code {
        400 => "Request contains an invalid argument. (mock upstream)".to_string(),
        401 => "Request had invalid authentication credentials. Expected OAuth 2 access token, \
                login cookie or other valid authentication credential. (mock upstream)"
            .to_string(),
        403 => "The caller does not have permission (mock upstream)".to_string(),
        404 => format!(
            "models/{model} is not found for API version v1beta, or is not supported for \
             generateContent. (mock upstream)"
        ),
        429 => "You exceeded your current quota, please check your plan and billing details. \
                (mock upstream)"
            .to_string(),
        500 => "An internal error has occurred. Please retry or report in \
                https://developers.generativeai.google/guide/troubleshooting (mock upstream)"
            .to_string(),
        503 => "The model is overloaded. Please try again later. (mock upstream)".to_string(),
        504 => "Deadline expired before operation could complete. (mock upstream)".to_string(),
        _ => format!("Scripted error {code} (mock upstream)"),
    };
    let mut body = error_body(code, google_status(code), &message);
    if code == 429 {
        let mut details = vec![json!({
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                "quotaDimensions": {"location": "global", "model": model},
                "quotaValue": "15"
            }]
        })];
        if let Some(seconds) = retry_after {
            details.push(json!({
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": format!("{seconds}s")
            }));
        }
        body["error"]["details"] = Value::Array(details);
    }
    body
}

fn json_response(code: u16, body: &Value) -> HttpResponse {
    HttpResponse::build(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .content_type("application/json; charset=UTF-8")
        .body(body.to_string())
}

fn invalid_argument(message: &str) -> HttpResponse {
    json_response(400, &error_body(400, "INVALID_ARGUMENT", message))
}

// ---- small codecs ----

/// Decodes `%XX` escapes (invalid escapes are kept as they are).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes base64 in either alphabet (standard or URL-safe), padded or not.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    // One character alone cannot encode a byte.
    (bits < 6).then_some(out)
}

/// Whether `value` is a non-empty string.
fn is_filled(value: Option<&Value>) -> bool {
    value.and_then(Value::as_str).is_some_and(|s| !s.is_empty())
}

fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get(name).cloned())
}

/// `2025-01-02T03:04:05.678901Z` for a Unix time.
fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_micros()
    )
}

// ---- routing ----

/// Which API a path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Gemini,
    Vertex,
}

/// A parsed `…/{model}:{method}` path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    api: Api,
    /// URL-decoded, directives included.
    model: String,
    stream: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let (prefix, method) = path.rsplit_once(':')?;
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return None,
    };
    let segments: Vec<&str> = prefix.trim_start_matches('/').split('/').collect();
    let api = match segments.as_slice() {
        [version, "models" | "tunedModels", _]
            if matches!(*version, "v1beta" | "v1alpha" | "v1") =>
        {
            Api::Gemini
        }
        [version, "projects", _, "locations", _, "publishers", _, "models", _]
        | [version, "projects", _, "locations", _, "endpoints", _]
            if matches!(*version, "v1" | "v1beta1") =>
        {
            Api::Vertex
        }
        _ => return None,
    };
    let model = percent_decode(segments.last()?);
    (!model.is_empty()).then_some(Target { api, model, stream })
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

pub(crate) fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = header(req, "authorization")?;
    let token = value
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("bearer "))
        .map(|_| value[7..].trim())?;
    (!token.is_empty()).then_some(token)
}

// ---- request validation ----

fn snake_to_camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Google's message for a field the API does not know.
fn unknown_field(key: &str, at: &str) -> String {
    if at.is_empty() {
        format!("Invalid JSON payload received. Unknown name \"{key}\": Cannot find field.")
    } else {
        format!(
            "Invalid JSON payload received. Unknown name \"{key}\" at '{at}': Cannot find field."
        )
    }
}

fn check_keys(object: &Map<String, Value>, known: &[&str], at: &str) -> Result<(), String> {
    match object
        .keys()
        .find(|k| !known.contains(&snake_to_camel(k).as_str()))
    {
        Some(key) => Err(unknown_field(key, at)),
        None => Ok(()),
    }
}

fn field<'a>(object: &'a Map<String, Value>, camel: &str) -> Option<&'a Value> {
    object.get(camel).or_else(|| {
        object
            .iter()
            .find(|(k, _)| snake_to_camel(k) == camel)
            .map(|(_, v)| v)
    })
}

/// Keywords of Gemini's `Schema` (the OpenAPI 3.0 subset).
const SCHEMA_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

const SCHEMA_TYPES: &[&str] = &[
    "TYPE_UNSPECIFIED",
    "STRING",
    "NUMBER",
    "INTEGER",
    "BOOLEAN",
    "ARRAY",
    "OBJECT",
    "NULL",
];

/// Checks a `Schema` (not a JSON Schema: `$ref`, `additionalProperties`… are unknown).
fn check_schema(schema: &Value, at: &str) -> Result<(), String> {
    let Some(object) = schema.as_object() else {
        return Err(format!(
            "Invalid value at '{at}' (type.googleapis.com/google.ai.generativelanguage.v1beta.Schema), {schema}"
        ));
    };
    check_keys(object, SCHEMA_KEYS, at)?;
    if let Some(t) = object.get("type") {
        let name = t.as_str().map(str::to_ascii_uppercase);
        if !name.is_some_and(|n| SCHEMA_TYPES.contains(&n.as_str())) {
            return Err(format!(
                "Invalid value at '{at}.type' (type.googleapis.com/google.ai.generativelanguage.v1beta.Type), {t}"
            ));
        }
    }
    if let Some(properties) = object.get("properties") {
        let Some(properties) = properties.as_object() else {
            return Err(format!("Invalid value at '{at}.properties'"));
        };
        for (name, property) in properties {
            check_schema(property, &format!("{at}.properties[{name:?}].value"))?;
        }
    }
    if let Some(items) = object.get("items") {
        check_schema(items, &format!("{at}.items"))?;
    }
    if let Some(any_of) = object.get("anyOf") {
        for (i, branch) in any_of.as_array().into_iter().flatten().enumerate() {
            check_schema(branch, &format!("{at}.any_of[{i}]"))?;
        }
    }
    if let Some(values) = object.get("enum") {
        if !values
            .as_array()
            .is_some_and(|v| v.iter().all(Value::is_string))
        {
            return Err(format!(
                "Invalid value at '{at}.enum' (TYPE_STRING), enum values must be strings"
            ));
        }
    }
    Ok(())
}

const PART_DATA_KEYS: &[&str] = &[
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
];

fn check_part(part: &Value, at: &str) -> Result<(), String> {
    let Some(object) = part.as_object() else {
        return Err(format!("Invalid value at '{at}' (Part), {part}"));
    };
    let mut known = PART_DATA_KEYS.to_vec();
    known.extend(["thought", "thoughtSignature", "videoMetadata"]);
    check_keys(object, &known, at)?;
    let data: Vec<&String> = object
        .keys()
        .filter(|k| PART_DATA_KEYS.contains(&snake_to_camel(k).as_str()))
        .collect();
    match data.as_slice() {
        [] => return Err(format!("* {at}.data: required oneof field 'data' must have one initialized field")),
        [_] => {}
        [_, second, ..] => {
            return Err(format!(
                "Invalid value at '{at}' (oneof), oneof field 'data' is already set. Cannot set '{second}'"
            ))
        }
    }
    if let Some(signature) = field(object, "thoughtSignature") {
        if signature.as_str().and_then(decode_base64).is_none() {
            return Err(format!(
                "Invalid value at '{at}.thought_signature' (TYPE_BYTES), Base64 decoding failed"
            ));
        }
    }
    if let Some(inline) = field(object, "inlineData") {
        let mime = inline.get("mimeType").or_else(|| inline.get("mime_type"));
        if !mime
            .and_then(Value::as_str)
            .is_some_and(|m| m.contains('/'))
        {
            return Err(format!(
                "* {at}.inline_data.mime_type: a MIME type is required"
            ));
        }
        let data = inline.get("data").and_then(Value::as_str);
        if !data.is_some_and(|d| !d.is_empty() && decode_base64(d).is_some()) {
            return Err(format!(
                "Invalid value at '{at}.inline_data.data' (TYPE_BYTES), Base64 decoding failed"
            ));
        }
    }
    if let Some(file) = field(object, "fileData") {
        let uri = file.get("fileUri").or_else(|| file.get("file_uri"));
        if !is_filled(uri) {
            return Err(format!("* {at}.file_data.file_uri: a file URI is required"));
        }
    }
    if let Some(call) = field(object, "functionCall") {
        if !is_filled(call.get("name")) {
            return Err(format!("* {at}.function_call.name: Name cannot be empty."));
        }
        if call.get("args").is_some_and(|a| !a.is_object()) {
            return Err(format!("Invalid value at '{at}.function_call.args' (type.googleapis.com/google.protobuf.Struct)"));
        }
    }
    if let Some(response) = field(object, "functionResponse") {
        if !is_filled(response.get("name")) {
            return Err(format!(
                "* {at}.function_response.name: Name cannot be empty."
            ));
        }
        if !response.get("response").is_some_and(Value::is_object) {
            return Err(format!("Invalid value at '{at}.function_response.response' (type.googleapis.com/google.protobuf.Struct)"));
        }
    }
    Ok(())
}

fn count_parts(content: &Value, key: &str) -> usize {
    content
        .get("parts")
        .and_then(Value::as_array)
        .map_or(0, |parts| {
            parts.iter().filter(|p| p.get(key).is_some()).count()
        })
}

fn check_contents(contents: Option<&Value>) -> Result<(), String> {
    let contents = match contents.and_then(Value::as_array) {
        Some(contents) if !contents.is_empty() => contents,
        _ => return Err("* GenerateContentRequest.contents: contents is not specified".into()),
    };
    for (i, content) in contents.iter().enumerate() {
        let at = format!("contents[{i}]");
        let Some(object) = content.as_object() else {
            return Err(format!("Invalid value at '{at}' (Content), {content}"));
        };
        check_keys(object, &["role", "parts"], &at)?;
        if let Some(role) = object.get("role") {
            if !matches!(role.as_str(), Some("user" | "model" | "function" | "")) {
                return Err(format!(
                    "Please use a valid role: user, model. (got {role} at {at})"
                ));
            }
        }
        let parts = match object.get("parts").and_then(Value::as_array) {
            Some(parts) if !parts.is_empty() => parts,
            _ => {
                return Err(format!(
                    "* GenerateContentRequest.{at}.parts: contents.parts must not be empty."
                ))
            }
        };
        for (j, part) in parts.iter().enumerate() {
            check_part(part, &format!("{at}.parts[{j}]"))?;
        }
        // Function responses answer the calls of the turn just before, one for one.
        let responses = count_parts(content, "functionResponse");
        if responses > 0 {
            let calls = i
                .checked_sub(1)
                .map_or(0, |p| count_parts(&contents[p], "functionCall"));
            if calls != responses {
                return Err(
                    "Please ensure that the number of function response parts is equal to the \
                     number of function call parts of the function call turn."
                        .into(),
                );
            }
        }
        let calls = count_parts(content, "functionCall");
        if calls > 0 {
            if object.get("role").and_then(Value::as_str) != Some("model") {
                return Err(format!(
                    "Please ensure that function call turn comes immediately after a user turn \
                     or after a function response turn. ({at} is not a model turn)"
                ));
            }
            if let Some(next) = contents.get(i + 1) {
                if count_parts(next, "functionResponse") != calls {
                    return Err(
                        "Please ensure that function response turn comes immediately after a \
                         function call turn."
                            .into(),
                    );
                }
            }
        }
    }
    Ok(())
}

fn function_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn check_tools(body: &Map<String, Value>) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let Some(tools) = field(body, "tools") else {
        return Ok(names);
    };
    let Some(tools) = tools.as_array() else {
        return Err("Invalid value at 'tools' (type.googleapis.com/google.ai.generativelanguage.v1beta.Tool)".into());
    };
    for (i, tool) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        let Some(tool) = tool.as_object() else {
            return Err(format!("Invalid value at '{at}' (Tool)"));
        };
        check_keys(
            tool,
            &[
                "functionDeclarations",
                "googleSearch",
                "googleSearchRetrieval",
                "codeExecution",
                "urlContext",
                "retrieval",
            ],
            &at,
        )?;
        let declarations = field(tool, "functionDeclarations")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (j, declaration) in declarations.iter().enumerate() {
            let at = format!("{at}.function_declarations[{j}]");
            let Some(declaration) = declaration.as_object() else {
                return Err(format!("Invalid value at '{at}' (FunctionDeclaration)"));
            };
            check_keys(
                declaration,
                &[
                    "name",
                    "description",
                    "parameters",
                    "parametersJsonSchema",
                    "response",
                    "responseJsonSchema",
                    "behavior",
                ],
                &at,
            )?;
            let name = declaration
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !function_name_ok(name) {
                return Err(format!(
                    "* GenerateContentRequest.{at}.name: Invalid function name. Must start with \
                     a letter or an underscore. Must be alphameric (a-z, A-Z, 0-9), underscores \
                     (_), dots (.) or dashes (-), with a maximum length of 64."
                ));
            }
            let parameters = field(declaration, "parameters");
            if parameters.is_some() && field(declaration, "parametersJsonSchema").is_some() {
                return Err(format!(
                    "* GenerateContentRequest.{at}: parameters and parameters_json_schema are \
                     mutually exclusive"
                ));
            }
            if let Some(parameters) = parameters {
                check_schema(parameters, &format!("{at}.parameters"))?;
                let is_object = parameters
                    .get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.eq_ignore_ascii_case("object"));
                let has_properties = parameters
                    .get("properties")
                    .and_then(Value::as_object)
                    .is_some_and(|p| !p.is_empty());
                if is_object && !has_properties {
                    return Err(format!(
                        "* GenerateContentRequest.{at}.parameters.properties: should be \
                         non-empty for OBJECT type"
                    ));
                }
            }
            names.push(name.to_string());
        }
    }
    Ok(names)
}

fn check_tool_config(body: &Map<String, Value>, names: &[String]) -> Result<(), String> {
    let Some(config) = field(body, "toolConfig") else {
        return Ok(());
    };
    let Some(config) = config.as_object() else {
        return Err("Invalid value at 'tool_config' (ToolConfig)".into());
    };
    check_keys(
        config,
        &["functionCallingConfig", "retrievalConfig"],
        "tool_config",
    )?;
    let Some(calling) = field(config, "functionCallingConfig").and_then(Value::as_object) else {
        return Ok(());
    };
    check_keys(
        calling,
        &["mode", "allowedFunctionNames"],
        "tool_config.function_calling_config",
    )?;
    let mode = calling
        .get("mode")
        .and_then(Value::as_str)
        .unwrap_or("AUTO");
    if !matches!(
        mode,
        "AUTO" | "ANY" | "NONE" | "VALIDATED" | "MODE_UNSPECIFIED"
    ) {
        return Err(format!(
            "Invalid value at 'tool_config.function_calling_config.mode' \
             (type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), \"{mode}\""
        ));
    }
    if let Some(allowed) = field(calling, "allowedFunctionNames") {
        if mode != "ANY" && mode != "VALIDATED" {
            return Err(
                "* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: \
                 allowed_function_names may be set only when the mode is ANY."
                    .into(),
            );
        }
        for name in allowed.as_array().into_iter().flatten() {
            if !name.as_str().is_some_and(|n| names.iter().any(|d| d == n)) {
                return Err(format!(
                    "* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: \
                     {name} is not a declared function"
                ));
            }
        }
    }
    Ok(())
}

const GENERATION_CONFIG_KEYS: &[&str] = &[
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "enableEnhancedCivicAnswers",
    "speechConfig",
    "thinkingConfig",
    "mediaResolution",
    "routingConfig",
    "audioTimestamp",
    "imageConfig",
];

fn check_generation_config(body: &Map<String, Value>) -> Result<(), String> {
    let Some(config) = field(body, "generationConfig") else {
        return Ok(());
    };
    let Some(config) = config.as_object() else {
        return Err("Invalid value at 'generation_config' (GenerationConfig)".into());
    };
    check_keys(config, GENERATION_CONFIG_KEYS, "generation_config")?;
    if let Some(stops) = field(config, "stopSequences") {
        let count = stops.as_array().map_or(usize::MAX, Vec::len);
        if count > MAX_STOP_SEQUENCES {
            return Err(format!(
                "* GenerateContentRequest.generation_config.stop_sequences: at most \
                 {MAX_STOP_SEQUENCES} stop sequences are allowed"
            ));
        }
    }
    if let Some(count) = field(config, "candidateCount") {
        if !count
            .as_u64()
            .is_some_and(|n| (1..=MAX_CANDIDATES).contains(&n))
        {
            return Err(format!(
                "* GenerateContentRequest.generation_config.candidate_count: must be between 1 \
                 and {MAX_CANDIDATES}"
            ));
        }
    }
    let schema = field(config, "responseSchema");
    let json_schema = field(config, "responseJsonSchema");
    if schema.is_some() && json_schema.is_some() {
        return Err(
            "* GenerateContentRequest.generation_config.response_schema: response_schema and \
             response_json_schema are mutually exclusive"
                .into(),
        );
    }
    let mime = field(config, "responseMimeType").and_then(Value::as_str);
    if let Some(mime) = mime {
        if !matches!(
            mime,
            "text/plain"
                | "application/json"
                | "text/x.enum"
                | "application/xml"
                | "application/yaml"
        ) {
            return Err(format!(
                "* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes \
                 are `text/plain`, `application/json`, `application/xml`, `application/yaml` and \
                 `text/x.enum`. (got {mime})"
            ));
        }
    }
    if (schema.is_some() || json_schema.is_some())
        && !matches!(mime, Some("application/json" | "text/x.enum"))
    {
        return Err(
            "* GenerateContentRequest.generation_config.response_mime_type: \
             response_mime_type must be set to `application/json` when a response schema is \
             given"
                .into(),
        );
    }
    if let Some(schema) = schema {
        check_schema(schema, "generation_config.response_schema")?;
    }
    if let Some(thinking) = field(config, "thinkingConfig") {
        let Some(thinking) = thinking.as_object() else {
            return Err("Invalid value at 'generation_config.thinking_config'".into());
        };
        check_keys(
            thinking,
            &["thinkingBudget", "includeThoughts", "thinkingLevel"],
            "generation_config.thinking_config",
        )?;
        if let Some(budget) = field(thinking, "thinkingBudget") {
            if !budget.as_i64().is_some_and(|b| (-1..=32_768).contains(&b)) {
                return Err(
                    "* GenerateContentRequest.generation_config.thinking_config.thinking_budget: \
                            must be between -1 and 32768"
                        .into(),
                );
            }
        }
    }
    Ok(())
}

/// Checks a `generateContent` body the way Google does; the error is the 400 message.
fn check_request(body: &Value) -> Result<(), String> {
    let Some(object) = body.as_object() else {
        return Err("Invalid JSON payload received. Expected an object.".into());
    };
    check_keys(
        object,
        &[
            "contents",
            "systemInstruction",
            "tools",
            "toolConfig",
            "generationConfig",
            "safetySettings",
            "cachedContent",
            "labels",
            "model",
        ],
        "",
    )?;
    check_contents(field(object, "contents"))?;
    if let Some(system) = field(object, "systemInstruction") {
        let parts = system.get("parts").and_then(Value::as_array);
        let Some(parts) = parts.filter(|p| !p.is_empty()) else {
            return Err(
                "* GenerateContentRequest.system_instruction.parts: contents.parts must not be empty."
                    .into(),
            );
        };
        for (j, part) in parts.iter().enumerate() {
            check_part(part, &format!("system_instruction.parts[{j}]"))?;
        }
    }
    let names = check_tools(object)?;
    check_tool_config(object, &names)?;
    check_generation_config(object)
}

// ---- Gemini → OpenAI ----

/// Converts a Gemini `Schema` to JSON Schema: lower-case type names, `nullable` dropped.
fn schema_to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(object) => Value::Object(
            object
                .iter()
                .filter(|(k, _)| k.as_str() != "nullable" && k.as_str() != "propertyOrdering")
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("type", Value::String(t)) => Value::String(t.to_ascii_lowercase()),
                        ("properties", Value::Object(props)) => Value::Object(
                            props
                                .iter()
                                .map(|(name, p)| (name.clone(), schema_to_json_schema(p)))
                                .collect(),
                        ),
                        ("items", items) => schema_to_json_schema(items),
                        ("anyOf", Value::Array(branches)) => {
                            Value::Array(branches.iter().map(schema_to_json_schema).collect())
                        }
                        (_, v) => v.clone(),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn part_text(part: &Value) -> Option<&str> {
    if part.get("thought") == Some(&Value::Bool(true)) {
        return None;
    }
    part.get("text").and_then(Value::as_str)
}

/// The OpenAI chat-completions request equivalent to a `generateContent` body.
pub fn openai_request(body: &Value, model: &str) -> Value {
    let object = body.as_object().cloned().unwrap_or_default();
    let mut messages = Vec::new();
    if let Some(system) = field(&object, "systemInstruction") {
        let text: Vec<&str> = system
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(part_text)
            .collect();
        messages.push(json!({"role": "system", "content": text.join("\n")}));
    }
    let mut call_ids: Vec<String> = Vec::new();
    for content in field(&object, "contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let parts: &[Value] = content
            .get("parts")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice);
        let texts: Vec<Value> = parts
            .iter()
            .filter_map(part_text)
            .map(|t| json!({"type": "text", "text": t}))
            .collect();
        let images = parts.iter().filter_map(|p| {
            let inline = p.get("inlineData")?;
            Some(json!({"type": "image_url", "image_url": {"url": format!(
                "data:{};base64,{}",
                inline.get("mimeType")?.as_str()?,
                inline.get("data")?.as_str()?
            )}}))
        });
        if content.get("role").and_then(Value::as_str) == Some("model") {
            call_ids.clear();
            let calls: Vec<Value> = parts
                .iter()
                .filter_map(|p| p.get("functionCall"))
                .map(|call| {
                    let id = answer::new_tool_call_id();
                    call_ids.push(id.clone());
                    json!({"id": id, "type": "function", "function": {
                        "name": call.get("name").cloned().unwrap_or(Value::Null),
                        "arguments": call.get("args").cloned().unwrap_or_else(|| json!({})).to_string()
                    }})
                })
                .collect();
            let mut message = json!({"role": "assistant", "content": texts});
            if !calls.is_empty() {
                message["tool_calls"] = Value::Array(calls);
            }
            messages.push(message);
        } else {
            for (k, response) in parts
                .iter()
                .filter_map(|p| p.get("functionResponse"))
                .enumerate()
            {
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": call_ids.get(k).cloned().unwrap_or_default(),
                    "content": response.get("response").cloned().unwrap_or(Value::Null).to_string()
                }));
            }
            let mut user_parts: Vec<Value> = texts;
            user_parts.extend(images);
            if !user_parts.is_empty() {
                messages.push(json!({"role": "user", "content": user_parts}));
            }
        }
    }

    let mut request = json!({"model": model, "messages": messages});
    let calling = field(&object, "toolConfig")
        .and_then(|c| c.get("functionCallingConfig"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let allowed: Option<Vec<&str>> = calling
        .get("allowedFunctionNames")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect());
    let mode = calling
        .get("mode")
        .and_then(Value::as_str)
        .unwrap_or("AUTO");
    let tools: Vec<Value> = field(&object, "tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("functionDeclarations").and_then(Value::as_array))
        .flatten()
        .filter(|d| {
            // `ANY` with allowed names calls only those.
            mode != "ANY"
                || allowed.as_ref().is_none_or(|names| {
                    d.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| names.contains(&n))
                })
        })
        .map(|d| {
            let parameters = d
                .get("parametersJsonSchema")
                .cloned()
                .or_else(|| d.get("parameters").map(schema_to_json_schema));
            let mut function = json!({"name": d.get("name").cloned().unwrap_or(Value::Null)});
            if let Some(parameters) = parameters {
                function["parameters"] = parameters;
            }
            json!({"type": "function", "function": function})
        })
        .collect();
    if !tools.is_empty() {
        request["tool_choice"] = match (mode, allowed.as_deref()) {
            ("ANY", Some([one])) => json!({"type": "function", "function": {"name": one}}),
            ("ANY", _) => json!("required"),
            ("NONE", _) => json!("none"),
            _ => json!("auto"),
        };
        request["tools"] = Value::Array(tools);
    }

    let config = field(&object, "generationConfig")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let schema = field(&config, "responseJsonSchema")
        .cloned()
        .or_else(|| field(&config, "responseSchema").map(schema_to_json_schema));
    if let Some(schema) = schema {
        request["response_format"] =
            json!({"type": "json_schema", "json_schema": {"name": "response", "schema": schema}});
    } else if field(&config, "responseMimeType").and_then(Value::as_str) == Some("application/json")
    {
        request["response_format"] = json!({"type": "json_object"});
    }
    if let Some(n) = field(&config, "candidateCount").and_then(Value::as_u64) {
        request["n"] = json!(n.clamp(1, MAX_CANDIDATES));
    }
    request
}

// ---- OpenAI answer → Gemini ----

/// The Gemini-only directives of a model string (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GeminiDirectives {
    pub block: Option<String>,
    pub finish: Option<String>,
    pub thoughts: u64,
    pub cached: u64,
    pub too_long: bool,
}

impl GeminiDirectives {
    pub fn parse(model: &str) -> GeminiDirectives {
        let mut d = GeminiDirectives::default();
        for part in model.split(';').skip(1) {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (part.trim(), None),
            };
            let number = || value.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            match key {
                "block" => d.block = value.filter(|v| !v.is_empty()).map(str::to_string),
                "finish" => d.finish = value.filter(|v| !v.is_empty()).map(str::to_string),
                "thoughts" => d.thoughts = number(),
                "cached" => d.cached = number(),
                "too_long" => d.too_long = true,
                _ => {}
            }
        }
        d
    }

    fn filtered(&self) -> bool {
        self.finish
            .as_deref()
            .is_some_and(|f| FILTER_REASONS.contains(&f))
    }
}

/// Everything the response builders need.
#[derive(Debug, Clone)]
pub struct Reply<'a> {
    pub answer: &'a MockAnswer,
    pub n: usize,
    pub extra: &'a GeminiDirectives,
    /// `modelVersion`.
    pub model: &'a str,
    pub response_id: &'a str,
    /// Vertex AI responses also carry `createTime`.
    pub create_time: Option<&'a str>,
}

impl Reply<'_> {
    fn finish_reason(&self) -> &str {
        self.extra.finish.as_deref().unwrap_or("STOP")
    }

    /// The `usageMetadata`; `complete` false gives the prompt-only counts of early chunks.
    fn usage(&self, complete: bool) -> Value {
        let prompt = self.answer.prompt_tokens;
        let mut usage = json!({
            "promptTokenCount": prompt,
            "totalTokenCount": prompt,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
        });
        if complete {
            let candidates = self.answer.completion_tokens * self.n as u64;
            usage["candidatesTokenCount"] = json!(candidates);
            usage["totalTokenCount"] = json!(prompt + candidates + self.extra.thoughts);
            if self.extra.thoughts > 0 {
                usage["thoughtsTokenCount"] = json!(self.extra.thoughts);
            }
            let cached = self.extra.cached.min(prompt);
            if cached > 0 {
                usage["cachedContentTokenCount"] = json!(cached);
                usage["cacheTokensDetails"] = json!([{"modality": "TEXT", "tokenCount": cached}]);
            }
        }
        usage
    }

    fn envelope(&self, mut body: Value) -> Value {
        body["modelVersion"] = json!(self.model);
        body["responseId"] = json!(self.response_id);
        if let Some(time) = self.create_time {
            body["createTime"] = json!(time);
        }
        body
    }

    fn thought_part() -> Value {
        json!({"text": "**Considering the request**\n\nThe user wants an answer.", "thought": true})
    }

    fn call_parts(&self) -> Vec<Value> {
        self.answer
            .tool_calls
            .iter()
            .map(|call| {
                let args: Value =
                    serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
                json!({"functionCall": {"name": call.name, "args": args}})
            })
            .collect()
    }

    fn blocked(&self) -> Option<Value> {
        let reason = self.extra.block.as_deref()?;
        Some(self.envelope(json!({
            "promptFeedback": {
                "blockReason": reason,
                "safetyRatings": [
                    {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
                    {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
                    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}
                ]
            },
            "usageMetadata": self.usage(false),
        })))
    }

    fn finished_candidate(&self, index: usize, parts: Vec<Value>) -> Value {
        let mut candidate = json!({"finishReason": self.finish_reason(), "index": index});
        if self.extra.filtered() {
            candidate["safetyRatings"] = json!([
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}
            ]);
        } else {
            candidate["content"] = json!({"parts": parts, "role": "model"});
        }
        candidate
    }
}

/// The non-streaming `GenerateContentResponse`.
pub fn response_body(reply: &Reply<'_>) -> Value {
    if let Some(blocked) = reply.blocked() {
        return blocked;
    }
    let candidates: Vec<Value> = (0..reply.n.max(1))
        .map(|index| {
            let mut parts = Vec::new();
            if reply.extra.thoughts > 0 {
                parts.push(Reply::thought_part());
            }
            if let Some(content) = &reply.answer.content {
                parts.push(json!({ "text": content }));
            }
            parts.extend(reply.call_parts());
            reply.finished_candidate(index, parts)
        })
        .collect();
    reply.envelope(json!({
        "candidates": candidates,
        "usageMetadata": reply.usage(true),
    }))
}

/// The chunks of a streamed answer, with their role for `cut_after`: a thought (with
/// `thoughts=N`), text pieces of `chunk_chars` characters, one chunk per function call, then
/// a closing chunk with the finish reason, an empty text part and the complete usage.
fn stream_pieces(reply: &Reply<'_>, chunk_chars: usize) -> Vec<(Piece, Value)> {
    if let Some(blocked) = reply.blocked() {
        return vec![(Piece::Tail, blocked)];
    }
    let n = reply.n.max(1);
    let chunk = |index: usize, parts: Vec<Value>| {
        reply.envelope(json!({
            "candidates": [{"content": {"parts": parts, "role": "model"}, "index": index}],
            "usageMetadata": reply.usage(false),
        }))
    };
    let mut pieces = Vec::new();
    if !reply.extra.filtered() {
        for index in 0..n {
            if reply.extra.thoughts > 0 {
                pieces.push((Piece::Head, chunk(index, vec![Reply::thought_part()])));
            }
            if let Some(content) = &reply.answer.content {
                for piece in answer::chunks(content, chunk_chars) {
                    pieces.push((Piece::Content, chunk(index, vec![json!({ "text": piece })])));
                }
            }
            for call in reply.call_parts() {
                pieces.push((Piece::Content, chunk(index, vec![call])));
            }
        }
    }
    let closing: Vec<Value> = (0..n)
        .map(|index| reply.finished_candidate(index, vec![json!({"text": ""})]))
        .collect();
    pieces.push((
        Piece::Tail,
        reply.envelope(json!({"candidates": closing, "usageMetadata": reply.usage(true)})),
    ));
    pieces
}

/// One SSE event as Google frames it: `data: {json}\r\n\r\n`.
pub fn sse_event(chunk: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    // Serializing a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, chunk);
    out.extend_from_slice(b"\r\n\r\n");
    Bytes::from(out)
}

// ---- handlers ----

/// `POST …/models/{model}:generateContent` and `:streamGenerateContent`.
pub(crate) async fn generate(req: &HttpRequest, body: Value, state: &State) -> HttpResponse {
    let Some(target) = parse_path(req.path()) else {
        let message = format!(
            "The requested URL {} was not found on this server. (mock upstream)",
            req.path()
        );
        return json_response(404, &error_body(404, "NOT_FOUND", &message));
    };
    match target.api {
        Api::Gemini => {
            if header(req, "x-goog-api-key").is_none() && query_param(req, "key").is_none() {
                let body = error_body(
                    403,
                    "PERMISSION_DENIED",
                    "Method doesn't allow unregistered callers (callers without established \
                     identity). Please use API Key or other form of API consumer identity to \
                     call this API. (mock upstream)",
                );
                return json_response(403, &body);
            }
        }
        Api::Vertex => {
            if bearer_token(req).is_none() {
                let body = error_body(
                    401,
                    "UNAUTHENTICATED",
                    "Request is missing required authentication credential. Expected OAuth 2 \
                     access token, login cookie or other valid authentication credential. \
                     (mock upstream)",
                );
                return json_response(401, &body);
            }
        }
    }
    if let Err(message) = check_request(&body) {
        return invalid_argument(&message);
    }

    let d = Directives::parse(&target.model);
    let extra = GeminiDirectives::parse(&target.model);
    match script::run(&d, &target.model, state).await {
        Outcome::Fail(code) => {
            return json_response(code, &status_error_body(code, &d.base, d.retry_after));
        }
        Outcome::Malformed => {
            return HttpResponse::Ok()
                .content_type("application/json; charset=UTF-8")
                .body(MALFORMED_BODY);
        }
        Outcome::Proceed => {}
    }

    let request = openai_request(&body, &d.base);
    let answer = answer::answer(&request);
    if extra.too_long {
        let message = format!(
            "The input token count ({}) exceeds the maximum number of tokens allowed \
             ({CONTEXT_WINDOW}). (mock upstream)",
            CONTEXT_WINDOW + answer.prompt_tokens
        );
        return invalid_argument(&message);
    }
    let n = request
        .get("n")
        .and_then(Value::as_u64)
        .map_or(1, |n| n as usize);
    let response_id = ids::unique_token();
    let create_time = (target.api == Api::Vertex).then(|| rfc3339(SystemTime::now()));
    let reply = Reply {
        answer: &answer,
        n,
        extra: &extra,
        model: &d.base,
        response_id: &response_id,
        create_time: create_time.as_deref(),
    };

    if target.stream {
        let sse = query_param(req, "alt").as_deref() == Some("sse");
        let chunks = stream_pieces(&reply, d.chunk_chars());
        let count = chunks.len();
        let pieces: Vec<(Piece, Bytes)> = chunks
            .into_iter()
            .enumerate()
            .map(|(i, (kind, chunk))| {
                let bytes = if sse {
                    sse_event(&chunk)
                } else {
                    // One JSON array, streamed element by element.
                    let open = if i == 0 { "[" } else { ",\r\n" };
                    let close = if i + 1 == count { "]" } else { "" };
                    Bytes::from(format!("{open}{chunk}{close}"))
                };
                (kind, bytes)
            })
            .collect();
        let content_type = if sse {
            "text/event-stream"
        } else {
            "application/json; charset=UTF-8"
        };
        return HttpResponse::Ok()
            .content_type(content_type)
            .insert_header(("cache-control", "no-cache"))
            .streaming(script::paced_body(pieces, &d));
    }

    let bytes = Bytes::from(response_body(&reply).to_string());
    let mut response = HttpResponse::Ok();
    response.content_type("application/json; charset=UTF-8");
    if d.cut_after.is_some() {
        // Half of the JSON, then an aborted connection.
        let half = bytes.len() / 2;
        let pieces = vec![
            (Piece::Head, bytes.slice(..half)),
            (Piece::Tail, bytes.slice(half..)),
        ];
        response.streaming(script::paced_body(pieces, &d))
    } else {
        response.body(bytes)
    }
}

fn oauth_error(error: &str, description: &str) -> HttpResponse {
    json_response(
        400,
        &json!({"error": error, "error_description": description}),
    )
}

fn issued_token() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json; charset=utf-8")
        .insert_header((
            "cache-control",
            "no-cache, no-store, max-age=0, must-revalidate",
        ))
        .insert_header(("metadata-flavor", "Google"))
        .body(
            json!({
                "access_token": ids::with_prefix("mock-token-"),
                "expires_in": TOKEN_EXPIRES_IN,
                "token_type": "Bearer",
            })
            .to_string(),
        )
}

fn decode_segment(segment: &str) -> Option<Value> {
    serde_json::from_slice(&decode_base64(segment)?).ok()
}

/// Checks a service-account assertion (not its signature); returns its claims.
pub fn check_assertion(assertion: &str) -> Result<Value, String> {
    let segments: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = segments.as_slice() else {
        return Err("Invalid JWT: the assertion is not a JWS".into());
    };
    let header = decode_segment(header).ok_or("Invalid JWT: the header is not base64url JSON")?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err("Invalid JWT: unsupported algorithm (expected RS256)".into());
    }
    let claims = decode_segment(claims).ok_or("Invalid JWT: the claims are not base64url JSON")?;
    for name in ["iss", "scope", "aud"] {
        if !is_filled(claims.get(name)) {
            return Err(format!("Invalid JWT: missing claim `{name}`"));
        }
    }
    let (Some(iat), Some(exp)) = (
        claims.get("iat").and_then(Value::as_u64),
        claims.get("exp").and_then(Value::as_u64),
    ) else {
        return Err("Invalid JWT: `iat` and `exp` are required".into());
    };
    if exp <= iat || exp - iat > 3600 {
        return Err(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable \
             timeframe. Check your iat and exp values in the JWT claim."
                .into(),
        );
    }
    if decode_base64(signature).is_none_or(|s| s.is_empty()) {
        return Err("Invalid JWT Signature.".into());
    }
    Ok(claims)
}

/// `POST /token`: the OAuth token exchange for a service-account JWT.
pub(crate) fn token(req: &HttpRequest, body: &Bytes) -> HttpResponse {
    let form_type = header(req, "content-type")
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return oauth_error(
            "invalid_request",
            "Invalid Content-Type: expected application/x-www-form-urlencoded",
        );
    }
    let text = String::from_utf8_lossy(body);
    let Ok(form) = web::Query::<HashMap<String, String>>::from_query(&text) else {
        return oauth_error("invalid_request", "Malformed form body");
    };
    match form.get("grant_type").map(String::as_str) {
        Some(JWT_BEARER_GRANT) => {}
        Some(other) => {
            return oauth_error(
                "unsupported_grant_type",
                &format!("Invalid grant_type: {other}"),
            )
        }
        None => return oauth_error("invalid_request", "Missing required parameter: grant_type"),
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error("invalid_request", "Missing required parameter: assertion");
    };
    match check_assertion(assertion) {
        Ok(claims) => {
            let aud = claims.get("aud").and_then(Value::as_str).unwrap_or("");
            if !aud.ends_with(req.path()) {
                return oauth_error(
                    "invalid_grant",
                    "Invalid JWT: the audience is not this token endpoint",
                );
            }
            issued_token()
        }
        Err(description) => oauth_error("invalid_grant", &description),
    }
}

/// `GET /computeMetadata/v1/instance/service-accounts/default/token`.
pub(crate) fn metadata_token(req: &HttpRequest) -> HttpResponse {
    if header(req, "metadata-flavor") != Some("Google") {
        return HttpResponse::Forbidden()
            .content_type("text/html; charset=UTF-8")
            .insert_header(("metadata-flavor", "Google"))
            .body("Missing Metadata-Flavor:Google header.");
    }
    if req.path() != METADATA_TOKEN_PATH {
        return HttpResponse::NotFound()
            .content_type("text/html; charset=UTF-8")
            .insert_header(("metadata-flavor", "Google"))
            .body("Not Found");
    }
    issued_token()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_api_and_the_decoded_model() {
        assert_eq!(
            parse_path("/v1beta/models/gemini-2.0-flash;status=503:streamGenerateContent"),
            Some(Target {
                api: Api::Gemini,
                model: "gemini-2.0-flash;status=503".into(),
                stream: true
            })
        );
        assert_eq!(
            parse_path("/v1beta/models/gemini%202;status%3D429:generateContent")
                .unwrap()
                .model,
            "gemini 2;status=429"
        );
        let vertex = parse_path(
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
        )
        .unwrap();
        assert_eq!(vertex.api, Api::Vertex);
        assert_eq!(vertex.model, "gemini-2.5-pro");
        assert_eq!(parse_path("/v1beta/models/x:countTokens"), None);
        assert_eq!(parse_path("/v2/models/x:generateContent"), None);
        assert_eq!(parse_path("/v1/projects/p/models/x:generateContent"), None);
    }

    #[test]
    fn codecs() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64("-_8").unwrap(), [0xfb, 0xff]);
        assert!(decode_base64("a").is_none());
        assert!(decode_base64("a b").is_none());
        assert!(decode_base64("skip_thought_signature_validator").is_some());
        assert_eq!(percent_decode("a%3Bb%zz%4"), "a;b%zz%4");
        let t = UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123456Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn requests_are_checked_like_google_does() {
        let ok = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
        assert_eq!(check_request(&ok), Ok(()));
        let snake = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "system_instruction": {"parts": [{"text": "be nice"}]},
            "generation_config": {"max_output_tokens": 5}});
        assert_eq!(check_request(&snake), Ok(()));
        let cases = [
            (json!({"contents": []}), "contents is not specified"),
            (
                json!({"contents": [{"role": "user", "parts": []}]}),
                "must not be empty",
            ),
            (
                json!({"contents": [{"role": "user", "parts": [{"text": "a", "inlineData": {"mimeType": "image/png", "data": "aGk="}}]}]}),
                "oneof",
            ),
            (
                json!({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "!!"}}]}]}),
                "Base64",
            ),
            (
                json!({"contents": [{"role": "assistant", "parts": [{"text": "a"}]}]}),
                "valid role",
            ),
            (
                json!({"contents": [{"role": "user", "parts": [{"text": "a"}]}], "temperature": 1}),
                "Unknown name \"temperature\"",
            ),
            (
                json!({"contents": [{"role": "user", "parts": [{"text": "a"}]}],
                "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "OBJECT",
                    "properties": {"a": {"type": "STRING"}}, "additionalProperties": false}}]}]}),
                "additionalProperties",
            ),
            (
                json!({"contents": [{"role": "user", "parts": [{"text": "a"}]}],
                "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "object", "properties": {}}}]}]}),
                "non-empty for OBJECT",
            ),
            (
                json!({"contents": [{"role": "user", "parts": [{"text": "a"}]}],
                "tools": [{"functionDeclarations": [{"name": "f"}]}],
                "toolConfig": {"functionCallingConfig": {"mode": "AUTO", "allowedFunctionNames": ["f"]}}}),
                "only when the mode is ANY",
            ),
            (
                json!({"contents": [{"role": "user", "parts": [{"text": "a"}]}],
                "generationConfig": {"stopSequences": ["1", "2", "3", "4", "5", "6"]}}),
                "at most 5",
            ),
            (
                json!({"contents": [{"role": "user", "parts": [{"text": "a"}]}],
                "generationConfig": {"responseSchema": {"type": "OBJECT", "properties": {"a": {"$ref": "#/x"}}}, "responseMimeType": "application/json"}}),
                "$ref",
            ),
            (
                json!({"contents": [{"role": "user", "parts": [{"text": "a"}]}],
                "generationConfig": {"responseSchema": {"type": "STRING"}}}),
                "response_mime_type",
            ),
            (
                json!({"contents": [
                    {"role": "user", "parts": [{"text": "a"}]},
                    {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}, {"functionCall": {"name": "g", "args": {}}}]},
                    {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}
                ]}),
                "function response",
            ),
            (
                json!({"contents": [
                    {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"result": 1}}}]}
                ]}),
                "number of function response parts",
            ),
        ];
        for (body, expected) in cases {
            let err = check_request(&body).unwrap_err();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }

    #[test]
    fn gemini_requests_convert_to_openai_requests() {
        let body = json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Weather?"}, {"inlineData": {"mimeType": "image/png", "data": "aGk="}}]},
                {"role": "model", "parts": [{"text": "thinking", "thought": true}, {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}]}
            ],
            "tools": [{"functionDeclarations": [
                {"name": "get_weather", "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING", "nullable": true}}, "required": ["city"]}},
                {"name": "other", "parametersJsonSchema": {"type": "object"}}
            ]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
            "generationConfig": {"candidateCount": 2, "responseMimeType": "application/json",
                "responseSchema": {"type": "OBJECT", "properties": {"a": {"type": "INTEGER"}}}}
        });
        let request = openai_request(&body, "gemini-2.0-flash");
        let messages = request["messages"].as_array().unwrap();
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(messages[1]["role"], "user");
        assert_eq!(
            messages[1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,aGk="
        );
        assert_eq!(messages[2]["role"], "assistant");
        assert_eq!(messages[2]["content"], json!([]));
        let call_id = messages[2]["tool_calls"][0]["id"].as_str().unwrap();
        assert_eq!(messages[3]["tool_call_id"], call_id);
        assert_eq!(messages[3]["content"], "{\"temp\":21}");
        assert_eq!(
            request["tool_choice"],
            json!({"type": "function", "function": {"name": "get_weather"}})
        );
        assert_eq!(request["tools"].as_array().unwrap().len(), 1);
        assert_eq!(
            request["tools"][0]["function"]["parameters"],
            json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
        );
        assert_eq!(request["n"], 2);
        assert_eq!(
            request["response_format"]["json_schema"]["schema"],
            json!({"type": "object", "properties": {"a": {"type": "integer"}}})
        );
        let a = answer::answer(&request);
        assert_eq!(a.tool_calls[0].name, "get_weather");
    }

    fn stream_chunks(reply: &Reply<'_>, chunk_chars: usize) -> Vec<Value> {
        stream_pieces(reply, chunk_chars)
            .into_iter()
            .map(|(_, chunk)| chunk)
            .collect()
    }

    #[test]
    fn answers_take_gemini_shapes() {
        let answer =
            answer::answer(&json!({"messages": [{"role": "user", "content": "Hello there"}]}));
        let extra = GeminiDirectives::parse("m;thoughts=5;cached=2;finish=MAX_TOKENS");
        let reply = Reply {
            answer: &answer,
            n: 1,
            extra: &extra,
            model: "gemini-2.0-flash",
            response_id: "r1",
            create_time: None,
        };
        let body = response_body(&reply);
        assert_eq!(
            body["candidates"][0]["content"]["parts"][1],
            json!({"text": "Hello there"})
        );
        assert_eq!(
            body["candidates"][0]["content"]["parts"][0]["thought"],
            true
        );
        assert_eq!(body["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert_eq!(
            body["usageMetadata"],
            json!({"promptTokenCount": 3, "candidatesTokenCount": 3, "thoughtsTokenCount": 5,
                "cachedContentTokenCount": 2, "totalTokenCount": 11,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 3}],
                "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 2}]})
        );
        assert_eq!(body["modelVersion"], "gemini-2.0-flash");
        assert_eq!(body["responseId"], "r1");

        let chunks = stream_chunks(&reply, 4);
        // thought, "Hell", "o th", "ere", closing
        assert_eq!(chunks.len(), 5);
        assert!(chunks[1]["usageMetadata"]
            .get("candidatesTokenCount")
            .is_none());
        assert_eq!(chunks[4]["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert_eq!(chunks[4]["usageMetadata"]["totalTokenCount"], 11);

        let blocked = GeminiDirectives::parse("m;block=SAFETY");
        let reply = Reply {
            extra: &blocked,
            ..reply.clone()
        };
        let body = response_body(&reply);
        assert!(body.get("candidates").is_none());
        assert_eq!(body["promptFeedback"]["blockReason"], "SAFETY");
        assert_eq!(stream_chunks(&reply, 4).len(), 1);

        let filtered = GeminiDirectives::parse("m;finish=SAFETY");
        let reply = Reply {
            extra: &filtered,
            ..reply
        };
        let body = response_body(&reply);
        assert!(body["candidates"][0].get("content").is_none());
        assert_eq!(stream_chunks(&reply, 4).len(), 1);
    }

    #[test]
    fn assertions_need_the_service_account_claims() {
        let seg = |v: Value| {
            let text = v.to_string();
            let mut out = String::new();
            // A tiny URL-safe encoder for the test.
            const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            for chunk in text.as_bytes().chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                for i in 0..=chunk.len() {
                    out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
                }
            }
            out
        };
        let header = seg(json!({"alg": "RS256", "typ": "JWT"}));
        let claims = seg(
            json!({"iss": "a@b", "scope": "s", "aud": "http://x/token", "iat": 10, "exp": 3610}),
        );
        let jwt = format!("{header}.{claims}.c2ln");
        assert_eq!(check_assertion(&jwt).unwrap()["iss"], "a@b");
        let long = seg(json!({"iss": "a@b", "scope": "s", "aud": "x", "iat": 10, "exp": 7300}));
        assert!(check_assertion(&format!("{header}.{long}.c2ln"))
            .unwrap_err()
            .contains("short-lived"));
        let no_scope = seg(json!({"iss": "a@b", "aud": "x", "iat": 10, "exp": 20}));
        assert!(check_assertion(&format!("{header}.{no_scope}.c2ln"))
            .unwrap_err()
            .contains("scope"));
        let hs = seg(json!({"alg": "HS256"}));
        assert!(check_assertion(&format!("{hs}.{claims}.c2ln")).is_err());
        assert!(check_assertion("not-a-jwt").is_err());
        assert!(check_assertion(&format!("{header}.{claims}.")).is_err());
    }
}
