//! The OpenAI Chat Completions wire format: `POST /v1/chat/completions` (JSON and SSE),
//! `GET /v1/models`, and OpenAI-style error bodies.
//!
//! The JSON builders are public so that an in-process mock can produce byte-for-byte the
//! same objects as the HTTP mock.

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::answer::{self, MockAnswer};
use crate::directives::Directives;
use crate::ids;
use crate::script::{self, Outcome, Piece};
use crate::state::State;

/// The `system_fingerprint` of every response.
pub const SYSTEM_FINGERPRINT: &str = "fp_f3a1b2c4d5";
/// The body sent for the `malformed` directive: truncated JSON.
pub const MALFORMED_BODY: &str = r#"{"id": "chatcmpl-x", "choices": ["#;
/// The last SSE event of a stream.
pub const DONE_EVENT: &str = "data: [DONE]\n\n";
/// Largest `n` honoured (larger values are clamped).
pub const MAX_CHOICES: usize = 128;

/// An OpenAI error body: `{"error":{"message","type","param","code"}}`.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({
        "error": {
            "message": message,
            "type": kind,
            "param": param,
            "code": code,
        }
    })
}

/// The error body OpenAI sends with `status`: 429 → type `requests` / code
/// `rate_limit_exceeded`, 5xx → `server_error`, 401 → `invalid_api_key`, 404 →
/// `model_not_found`, other 4xx → `invalid_request_error`.
pub fn status_error_body(status: u16, model: &str) -> Value {
    match status {
        429 => error_body(
            &format!(
                "Rate limit reached for {model} on requests per min (RPM): Limit 3, Used 3, \
                 Requested 1. Please try again in 20s. (mock upstream)"
            ),
            "requests",
            None,
            Some("rate_limit_exceeded"),
        ),
        401 => error_body(
            "Incorrect API key provided: sk-mock***. You can find your API key at \
             https://platform.openai.com/account/api-keys. (mock upstream)",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        ),
        404 => error_body(
            &format!(
                "The model `{model}` does not exist or you do not have access to it. \
                 (mock upstream)"
            ),
            "invalid_request_error",
            None,
            Some("model_not_found"),
        ),
        500..=599 => error_body(
            "The server had an error while processing your request. Sorry about that! \
             (mock upstream)",
            "server_error",
            None,
            None,
        ),
        _ => error_body(
            &format!("Scripted error {status} (mock upstream)"),
            "invalid_request_error",
            None,
            None,
        ),
    }
}

/// The `usage` object for `answer` repeated over `n` choices.
pub fn usage(answer: &MockAnswer, n: usize) -> Value {
    let completion = answer.completion_tokens * n as u64;
    json!({
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": answer.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

fn tool_calls_json(answer: &MockAnswer) -> Value {
    answer
        .tool_calls
        .iter()
        .map(|call| {
            json!({
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments}
            })
        })
        .collect()
}

/// The non-streaming `chat.completion` object, with `n` identical choices.
pub fn completion_body(
    answer: &MockAnswer,
    id: &str,
    created: u64,
    model: &str,
    n: usize,
) -> Value {
    let mut message = json!({
        "role": "assistant",
        "content": answer.content,
        "refusal": null,
        "annotations": [],
    });
    if !answer.tool_calls.is_empty() {
        message["tool_calls"] = tool_calls_json(answer);
    }
    let choices: Vec<Value> = (0..n.max(1))
        .map(|index| {
            json!({
                "index": index,
                "message": message,
                "logprobs": null,
                "finish_reason": answer.finish_reason,
            })
        })
        .collect();
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(answer, n.max(1)),
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    })
}

/// Parameters of a streamed answer.
#[derive(Debug, Clone, Copy)]
pub struct StreamSpec<'a> {
    /// The completion id (`chatcmpl-…`), shared by all chunks.
    pub id: &'a str,
    /// Unix seconds, shared by all chunks.
    pub created: u64,
    /// The model name echoed back.
    pub model: &'a str,
    /// Number of choices.
    pub n: usize,
    /// `stream_options.include_usage`: add `"usage": null` to every chunk and a final
    /// usage chunk with `choices: []`.
    pub include_usage: bool,
    /// Characters of content / arguments per chunk.
    pub chunk_chars: usize,
}

/// The `chat.completion.chunk` objects of a streamed answer, in order (without the final
/// `[DONE]` event): the role chunk, content (or tool-call) chunks, the finish chunk and,
/// with `include_usage`, the usage chunk.
pub fn stream_chunks(answer: &MockAnswer, spec: &StreamSpec<'_>) -> Vec<Value> {
    stream_pieces(answer, spec)
        .into_iter()
        .map(|(_, chunk)| chunk)
        .collect()
}

fn stream_pieces(answer: &MockAnswer, spec: &StreamSpec<'_>) -> Vec<(Piece, Value)> {
    let n = spec.n.max(1);
    let chunk = |choices: Value| {
        let mut chunk = json!({
            "id": spec.id,
            "object": "chat.completion.chunk",
            "created": spec.created,
            "model": spec.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        });
        if spec.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let choice = |index: usize, delta: Value, finish: Option<&str>| {
        json!([{
            "index": index,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish,
        }])
    };
    let mut pieces = Vec::new();
    for index in 0..n {
        let delta = json!({"role": "assistant", "content": "", "refusal": null});
        pieces.push((Piece::Head, chunk(choice(index, delta, None))));
    }
    for index in 0..n {
        if let Some(content) = &answer.content {
            for piece in answer::chunks(content, spec.chunk_chars) {
                let delta = json!({ "content": piece });
                pieces.push((Piece::Content, chunk(choice(index, delta, None))));
            }
        }
        for (i, call) in answer.tool_calls.iter().enumerate() {
            let delta = json!({"tool_calls": [{
                "index": i,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""}
            }]});
            pieces.push((Piece::Content, chunk(choice(index, delta, None))));
            for piece in answer::chunks(&call.arguments, spec.chunk_chars) {
                let delta = json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]});
                pieces.push((Piece::Content, chunk(choice(index, delta, None))));
            }
        }
    }
    for index in 0..n {
        let finish = choice(index, json!({}), Some(answer.finish_reason));
        pieces.push((Piece::Tail, chunk(finish)));
    }
    if spec.include_usage {
        let mut last = chunk(json!([]));
        last["usage"] = usage(answer, n);
        pieces.push((Piece::Tail, last));
    }
    pieces
}

/// One SSE event: `data: {json}\n\n`.
pub fn sse_event(chunk: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    // Serializing a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, chunk);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn error_response(status: u16, body: &Value, retry_after: Option<String>) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::build(status);
    response.insert_header(("x-request-id", ids::with_prefix("req_")));
    if let Some(retry_after) = retry_after {
        response.insert_header(("retry-after", retry_after));
    }
    response.json(body)
}

/// OpenAI authenticates with `Authorization: Bearer`; Azure OpenAI with an `api-key` header.
fn has_credentials(req: &HttpRequest) -> bool {
    if req.path().starts_with("/openai/deployments/") {
        return req
            .headers()
            .get("api-key")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|key| !key.trim().is_empty());
    }
    has_bearer_token(req)
}

fn has_bearer_token(req: &HttpRequest) -> bool {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.get(..7)
                .filter(|p| p.eq_ignore_ascii_case("bearer "))
                .map(|_| &v[7..])
        })
        .is_some_and(|token| !token.trim().is_empty())
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    req: &HttpRequest,
    body: Value,
    state: &State,
) -> HttpResponse {
    if !has_credentials(req) {
        let body = error_body(
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). \
             (mock upstream)",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        );
        return error_response(401, &body, None);
    }
    if !body.is_object() {
        let body = error_body(
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, \
             but what was sent was not valid JSON.) (mock upstream)",
            "invalid_request_error",
            None,
            None,
        );
        return error_response(400, &body, None);
    }
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        let body = error_body(
            "you must provide a model parameter",
            "invalid_request_error",
            None,
            None,
        );
        return error_response(400, &body, None);
    };
    if !body.get("messages").is_some_and(Value::is_array) {
        let body = error_body(
            "Missing required parameter: 'messages'.",
            "invalid_request_error",
            Some("messages"),
            Some("missing_required_parameter"),
        );
        return error_response(400, &body, None);
    }

    let d = Directives::parse(model);
    match script::run(&d, model, state).await {
        Outcome::Fail(status) => {
            let body = status_error_body(status, &d.base);
            return error_response(status, &body, d.retry_after_header());
        }
        Outcome::Malformed => {
            return HttpResponse::Ok()
                .content_type("application/json")
                .body(MALFORMED_BODY);
        }
        Outcome::Proceed => {}
    }

    let answer = answer::answer(&body);
    let id = ids::with_prefix("chatcmpl-");
    let created = unix_now();
    let n = body.get("n").and_then(Value::as_u64).map_or(1, |n| {
        usize::try_from(n)
            .unwrap_or(MAX_CHOICES)
            .clamp(1, MAX_CHOICES)
    });
    let request_id = ids::with_prefix("req_");

    if body.get("stream") == Some(&Value::Bool(true)) {
        let spec = StreamSpec {
            id: &id,
            created,
            model: &d.base,
            n,
            include_usage: body.pointer("/stream_options/include_usage")
                == Some(&Value::Bool(true)),
            chunk_chars: d.chunk_chars(),
        };
        let mut pieces: Vec<(Piece, Bytes)> = stream_pieces(&answer, &spec)
            .into_iter()
            .map(|(kind, chunk)| (kind, sse_event(&chunk)))
            .collect();
        pieces.push((Piece::Tail, Bytes::from_static(DONE_EVENT.as_bytes())));
        return HttpResponse::Ok()
            .content_type("text/event-stream; charset=utf-8")
            .insert_header(("cache-control", "no-cache"))
            .insert_header(("x-request-id", request_id))
            .streaming(script::paced_body(pieces, &d));
    }

    let completion = completion_body(&answer, &id, created, &d.base, n);
    let bytes = Bytes::from(completion.to_string());
    let mut response = HttpResponse::Ok();
    response
        .content_type("application/json")
        .insert_header(("x-request-id", request_id));
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

/// `GET /v1/models`.
pub(crate) fn models() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "object": "list",
        "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]
    }))
}

/// Any other route: OpenAI's `Invalid URL` 404.
pub(crate) fn not_found(req: &HttpRequest) -> HttpResponse {
    let message = format!("Invalid URL ({} {})", req.method(), req.path());
    let body = error_body(&message, "invalid_request_error", None, None);
    error_response(404, &body, None)
}
