//! OpenAI's embeddings API (`POST <base>/embeddings`), as OpenAI, Azure OpenAI and the
//! compatible APIs (Mistral, Voyage, Together, …) serve it. Vectors come as floats (every one
//! of them defaults to it; Voyage refuses `encoding_format: "float"`, so none is sent); the
//! door encodes them as the client asked. Voyage counts `total_tokens` only.

use serde::{Deserialize, Serialize};

use super::OpenAiClient;
use crate::embeddings::{EmbedCall, Embedded, EmbeddingInput};
use crate::error::GatewayError;
use crate::provider::adapter::malformed;

#[derive(Serialize)]
struct EmbeddingsRequest<'a> {
    model: &'a str,
    input: Input<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Input<'a> {
    Texts(&'a [String]),
    Tokens(&'a [Vec<u32>]),
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<Datum>,
    #[serde(default)]
    usage: Option<ResponseUsage>,
}

#[derive(Deserialize)]
struct Datum {
    #[serde(default)]
    index: Option<usize>,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct ResponseUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
}

impl OpenAiClient {
    /// One embeddings call.
    pub async fn embed(&self, call: EmbedCall<'_>) -> Result<Embedded, GatewayError> {
        let adapter = self.adapter();
        let http = self.http();
        let request = adapter.post(http, call.model, "embeddings");
        let mut request = request.json(&EmbeddingsRequest {
            model: call.model,
            input: match call.input {
                EmbeddingInput::Texts(texts) => Input::Texts(texts),
                EmbeddingInput::Tokens(tokens) => Input::Tokens(tokens),
            },
            dimensions: call.dimensions,
        });
        for (name, value) in &adapter.settings.headers {
            request = request.header(name, value);
        }
        let answer: EmbeddingsResponse = self.send_json(request, &()).await?;
        vectors(self.name(), answer, call.input.len())
    }
}

/// The vectors in input order (by `index` when the API gives it), one per input.
fn vectors(
    name: &str,
    answer: EmbeddingsResponse,
    inputs: usize,
) -> Result<Embedded, GatewayError> {
    if answer.data.len() != inputs {
        return Err(malformed(
            name,
            format_args!("{} embeddings for {inputs} inputs", answer.data.len()),
        ));
    }
    let mut data = answer.data;
    data.sort_by_key(|d| d.index.unwrap_or(usize::MAX));
    Ok(Embedded {
        vectors: data.into_iter().map(|d| d.embedding).collect(),
        prompt_tokens: answer
            .usage
            .and_then(|u| u.prompt_tokens.or(u.total_tokens))
            .unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_request_is_openais_and_the_answer_is_read_in_index_order() {
        let texts = vec!["a".to_string(), "b".to_string()];
        let body = serde_json::to_value(EmbeddingsRequest {
            model: "text-embedding-3-small",
            input: Input::Texts(&texts),
            dimensions: Some(256),
        })
        .unwrap();
        assert_eq!(
            body,
            json!({"model": "text-embedding-3-small", "input": ["a", "b"],
                   "dimensions": 256})
        );
        let answer: EmbeddingsResponse = serde_json::from_value(json!({
            "object": "list", "model": "m",
            "data": [{"object": "embedding", "index": 1, "embedding": [0.5]},
                     {"object": "embedding", "index": 0, "embedding": [0.25]}],
            "usage": {"prompt_tokens": 4, "total_tokens": 4}
        }))
        .unwrap();
        let embedded = vectors("p", answer, 2).unwrap();
        assert_eq!(embedded.vectors, vec![vec![0.25], vec![0.5]]);
        assert_eq!(embedded.prompt_tokens, 4);
        let short: EmbeddingsResponse =
            serde_json::from_value(json!({"data": [{"embedding": [1.0]}]})).unwrap();
        assert!(vectors("p", short, 2).is_err());
        // Voyage's usage.
        let voyage: EmbeddingsResponse = serde_json::from_value(json!({
            "object": "list", "data": [{"object": "embedding", "embedding": [1.0], "index": 0}],
            "model": "voyage-3.5", "usage": {"total_tokens": 9}
        }))
        .unwrap();
        assert_eq!(vectors("p", voyage, 1).unwrap().prompt_tokens, 9);
    }
}
