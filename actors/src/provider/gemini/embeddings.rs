//! The Gemini API's embeddings (`POST …/models/{model}:batchEmbedContents`, one request per
//! input). The API returns no token count: it is estimated from the texts. Token-array inputs
//! have no Gemini form and are refused.

use serde::{Deserialize, Serialize};

use super::{encode_path, Endpoint, GeminiCall, GeminiClient};
use crate::embeddings::{estimated_tokens, EmbedCall, Embedded, EmbeddingInput};
use crate::error::{ErrorKind, GatewayError};
use crate::provider::adapter::malformed;
use crate::provider::http::encode_segment;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchRequest<'a> {
    requests: Vec<EmbedRequest<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EmbedRequest<'a> {
    model: &'a str,
    content: Content<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimensionality: Option<u32>,
}

#[derive(Serialize)]
struct Content<'a> {
    parts: [Part<'a>; 1],
}

#[derive(Serialize)]
struct Part<'a> {
    text: &'a str,
}

#[derive(Deserialize)]
struct BatchResponse {
    #[serde(default)]
    embeddings: Vec<Values>,
}

#[derive(Deserialize)]
struct Values {
    values: Vec<f32>,
}

/// `models/{model}`, as the batch's requests name it.
fn model_name(model: &str) -> String {
    if model.contains('/') {
        model.to_string()
    } else {
        format!("models/{model}")
    }
}

fn batch<'a>(model: &'a str, texts: &'a [String], dimensions: Option<u32>) -> BatchRequest<'a> {
    BatchRequest {
        requests: texts
            .iter()
            .map(|text| EmbedRequest {
                model,
                content: Content {
                    parts: [Part { text }],
                },
                output_dimensionality: dimensions,
            })
            .collect(),
    }
}

impl GeminiClient {
    /// One embeddings call.
    pub async fn embed(&self, call: EmbedCall<'_>) -> Result<Embedded, GatewayError> {
        let texts = match call.input {
            EmbeddingInput::Texts(texts) => texts,
            EmbeddingInput::Tokens(_) => {
                return Err(GatewayError::new(
                    ErrorKind::UnsupportedByModel,
                    format!(
                        "provider `{}` (Gemini) embeds texts, not token arrays",
                        self.name()
                    ),
                )
                .with_param("input"))
            }
        };
        let Endpoint::Gemini { base, api_key } = &self.adapter().endpoint else {
            return Err(GatewayError::new(
                ErrorKind::UnsupportedByModel,
                format!(
                    "provider `{}` (Vertex AI) does not serve embeddings in flowgate yet",
                    self.name()
                ),
            ));
        };
        let url = if call.model.contains('/') {
            format!("{base}/{}:batchEmbedContents", encode_path(call.model))
        } else {
            format!(
                "{base}/models/{}:batchEmbedContents",
                encode_segment(call.model)
            )
        };
        let name = model_name(call.model);
        let mut request = self
            .http()
            .post(url)
            .json(&batch(&name, texts, call.dimensions));
        if let Some(key) = api_key {
            request = request.header("x-goog-api-key", key);
        }
        let answer: BatchResponse = self.send_json(request, &GeminiCall { token: None }).await?;
        if answer.embeddings.len() != texts.len() {
            return Err(malformed(
                self.name(),
                format_args!(
                    "{} embeddings for {} inputs",
                    answer.embeddings.len(),
                    texts.len()
                ),
            ));
        }
        Ok(Embedded {
            vectors: answer.embeddings.into_iter().map(|e| e.values).collect(),
            prompt_tokens: texts.iter().map(|t| estimated_tokens(t)).sum(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_batch_names_the_model_in_each_request() {
        let texts = vec!["a".to_string(), "bb".to_string()];
        let name = model_name("text-embedding-004");
        let body = serde_json::to_value(batch(&name, &texts, Some(128))).unwrap();
        assert_eq!(
            body,
            json!({"requests": [
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]},
                 "outputDimensionality": 128},
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "bb"}]},
                 "outputDimensionality": 128}
            ]})
        );
        let answer: BatchResponse =
            serde_json::from_value(json!({"embeddings": [{"values": [0.1, 0.2]}]})).unwrap();
        assert_eq!(answer.embeddings[0].values, vec![0.1, 0.2]);
    }
}
