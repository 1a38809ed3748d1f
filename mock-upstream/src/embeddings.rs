//! Embeddings in two wire formats: OpenAI's `POST /v1/embeddings` (also what Mistral and
//! Voyage serve) and the Gemini API's `POST /v1beta/models/{model}:batchEmbedContents`.
//! Vectors are deterministic (a text always gets the same one) and of unit length; their
//! length is the request's `dimensions` / `outputDimensionality`, else the model's own.
//! Tokens are `max(1, ceil(chars / 4))` per text, one per id of a token array.

use actix_web::{HttpRequest, HttpResponse};
use serde_json::{json, Value};

/// The length of `model`'s vectors when the request asks for none.
fn model_dimensions(model: &str) -> usize {
    match model {
        m if m.contains("text-embedding-3-large") || m.contains("gemini-embedding") => 3072,
        m if m.contains("text-embedding-3-small") || m.contains("ada-002") => 1536,
        m if m.contains("text-embedding-004") => 768,
        _ => 1024,
    }
}

/// A deterministic unit vector for `text`.
fn vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut state = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) | 1;
    let mut v: Vec<f32> = (0..dimensions)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

fn error(status: u16, message: &str) -> HttpResponse {
    HttpResponse::build(
        actix_web::http::StatusCode::from_u16(status)
            .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST),
    )
    .json(json!({"error": {"message": message, "type": "invalid_request_error", "code": null}}))
}

/// `POST /v1/embeddings`.
pub(crate) fn openai(req: &HttpRequest, body: &Value) -> HttpResponse {
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "));
    if !authorized {
        return error(401, "You didn't provide an API key.");
    }
    let model = body["model"].as_str().unwrap_or_default();
    let dimensions = body["dimensions"]
        .as_u64()
        .map_or_else(|| model_dimensions(model), |d| d as usize);
    // Texts, or token arrays (one, or several).
    let inputs: Vec<(String, u64)> = match &body["input"] {
        Value::String(text) => vec![(text.clone(), tokens(text))],
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|t| (t.to_string(), tokens(t)))
            .collect(),
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            vec![(Value::Array(items.clone()).to_string(), items.len() as u64)]
        }
        Value::Array(items) if items.iter().all(Value::is_array) => items
            .iter()
            .map(|ids| {
                let n = ids.as_array().map_or(0, Vec::len) as u64;
                (ids.to_string(), n)
            })
            .collect(),
        _ => return error(400, "'input' must be a string or an array"),
    };
    if inputs.is_empty() {
        return error(400, "'input' must not be empty");
    }
    let prompt_tokens: u64 = inputs.iter().map(|(_, n)| n).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, (text, _))| {
            json!({"object": "embedding", "index": index, "embedding": vector(text, dimensions)})
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
}

/// `POST /v1beta/models/{model}:batchEmbedContents`.
pub(crate) fn gemini_batch(req: &HttpRequest, body: &Value) -> HttpResponse {
    if req.headers().get("x-goog-api-key").is_none() {
        return HttpResponse::Forbidden().json(json!({"error": {"code": 403,
            "message": "Method doesn't allow unregistered callers", "status": "PERMISSION_DENIED"}}));
    }
    let Some(requests) = body["requests"].as_array().filter(|r| !r.is_empty()) else {
        return HttpResponse::BadRequest().json(json!({"error": {"code": 400,
            "message": "* BatchEmbedContentsRequest.requests: contents is not specified",
            "status": "INVALID_ARGUMENT"}}));
    };
    let embeddings: Vec<Value> = requests
        .iter()
        .map(|r| {
            let model = r["model"].as_str().unwrap_or_default();
            let dimensions = r["outputDimensionality"]
                .as_u64()
                .map_or_else(|| model_dimensions(model), |d| d as usize);
            let text: String = r["content"]["parts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(" ");
            json!({"values": vector(&text, dimensions)})
        })
        .collect();
    HttpResponse::Ok().json(json!({ "embeddings": embeddings }))
}

/// Bedrock `POST /model/{id}/invoke` for its embedding models: Titan (`inputText`, one text;
/// `dimensions` for V2) and Cohere Embed (`texts`), SigV4-signed.
pub(crate) fn bedrock_invoke(req: &HttpRequest, body: &Value) -> HttpResponse {
    if let Err(denied) = crate::bedrock::check_auth(req) {
        return *denied;
    }
    let model = req
        .path()
        .strip_prefix("/model/")
        .and_then(|p| p.strip_suffix("/invoke"))
        .and_then(crate::bedrock::percent_decode)
        .unwrap_or_default();
    let invalid = |message: &str| {
        HttpResponse::BadRequest()
            .insert_header(("x-amzn-errortype", "ValidationException"))
            .json(json!({ "message": message }))
    };
    if model.contains("titan-embed") {
        let Some(text) = body["inputText"].as_str() else {
            return invalid("Malformed input request: required key [inputText] not found");
        };
        let dimensions = body["dimensions"].as_u64().unwrap_or(1024) as usize;
        if ![256, 512, 1024].contains(&dimensions) {
            return invalid("Malformed input request: dimensions must be 256, 512 or 1024");
        }
        return HttpResponse::Ok().json(json!({
            "embedding": vector(text, dimensions),
            "inputTextTokenCount": tokens(text),
        }));
    }
    if model.contains("cohere.embed") {
        let Some(texts) = body["texts"]
            .as_array()
            .filter(|t| !t.is_empty() && t.len() <= 96)
        else {
            return invalid("Malformed input request: texts must hold 1 to 96 strings");
        };
        let embeddings: Vec<Vec<f32>> = texts
            .iter()
            .map(|t| vector(t.as_str().unwrap_or_default(), 1024))
            .collect();
        return HttpResponse::Ok().json(json!({
            "id": "mock", "response_type": "embeddings_floats", "embeddings": embeddings,
            "texts": texts,
        }));
    }
    invalid("The provided model does not support InvokeModel in this mock")
}
