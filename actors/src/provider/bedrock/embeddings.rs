//! Bedrock's embedding models, each in its own `InvokeModel` format (`POST
//! /model/{id}/invoke`, SigV4-signed): Amazon Titan Text Embeddings (one text per call, its
//! token count in the answer; V2 takes `dimensions`) and Cohere Embed (up to 96 texts per call,
//! no token count: estimated from the texts). Token-array inputs have no Bedrock form.

use std::time::SystemTime;

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::{sign, BedrockCall, BedrockClient};
use crate::embeddings::{estimated_tokens, EmbedCall, Embedded, EmbeddingInput};
use crate::error::{ErrorKind, GatewayError};

/// Titan calls in flight at once for one request.
const TITAN_CONCURRENCY: usize = 8;
/// Cohere's limit of texts per call.
const COHERE_BATCH: usize = 96;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TitanRequest<'a> {
    input_text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    normalize: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TitanResponse {
    embedding: Vec<f32>,
    #[serde(default)]
    input_text_token_count: Option<u64>,
}

#[derive(Serialize)]
struct CohereRequest<'a> {
    texts: &'a [String],
    input_type: &'static str,
}

#[derive(Deserialize)]
struct CohereResponse {
    embeddings: Vec<Vec<f32>>,
}

/// The request body of one Titan call. V1 has no `dimensions` nor `normalize`.
fn titan_body(model: &str, text: &str, dimensions: Option<u32>) -> Vec<u8> {
    let v2 = model.contains("titan-embed-text-v2");
    serde_json::to_vec(&TitanRequest {
        input_text: text,
        dimensions: dimensions.filter(|_| v2),
        normalize: v2.then_some(true),
    })
    .unwrap_or_default()
}

impl BedrockClient {
    /// One embeddings request (several calls for Titan, one per 96 texts for Cohere).
    pub async fn embed(&self, call: EmbedCall<'_>) -> Result<Embedded, GatewayError> {
        let EmbeddingInput::Texts(texts) = call.input else {
            return Err(GatewayError::new(
                ErrorKind::UnsupportedByModel,
                format!(
                    "provider `{}` (Bedrock) embeds texts, not token arrays",
                    self.name()
                ),
            )
            .with_param("input"));
        };
        let family = if call.model.contains("titan-embed") {
            Family::Titan
        } else if call.model.contains("cohere.embed") {
            Family::Cohere
        } else {
            return Err(GatewayError::new(
                ErrorKind::UnsupportedByModel,
                format!(
                    "provider `{}`: `{}` is not a Titan or Cohere embedding model",
                    self.name(),
                    call.model
                ),
            ));
        };
        let path = sign::invoke_path(call.model);
        let adapter = self.adapter();
        let no_call = BedrockCall { output_tool: None };
        match family {
            Family::Titan => {
                let answers: Vec<TitanResponse> = futures::stream::iter(texts.iter())
                    .map(|text| {
                        let body = titan_body(call.model, text, call.dimensions);
                        let no_call = &no_call;
                        let path = &path;
                        async move {
                            let request = adapter.signed_post(
                                self.http(),
                                path,
                                body,
                                "application/json",
                                SystemTime::now(),
                            )?;
                            self.send_json::<TitanResponse>(request, no_call).await
                        }
                    })
                    .buffered(TITAN_CONCURRENCY)
                    .try_collect()
                    .await?;
                let prompt_tokens = answers
                    .iter()
                    .zip(texts)
                    .map(|(a, t)| {
                        a.input_text_token_count
                            .unwrap_or_else(|| estimated_tokens(t))
                    })
                    .sum();
                Ok(Embedded {
                    vectors: answers.into_iter().map(|a| a.embedding).collect(),
                    prompt_tokens,
                })
            }
            Family::Cohere => {
                let mut vectors = Vec::with_capacity(texts.len());
                for batch in texts.chunks(COHERE_BATCH) {
                    let body = serde_json::to_vec(&CohereRequest {
                        texts: batch,
                        input_type: "search_document",
                    })
                    .unwrap_or_default();
                    let request = adapter.signed_post(
                        self.http(),
                        &path,
                        body,
                        "application/json",
                        SystemTime::now(),
                    )?;
                    let answer: CohereResponse = self.send_json(request, &no_call).await?;
                    vectors.extend(answer.embeddings);
                }
                Ok(Embedded {
                    vectors,
                    prompt_tokens: texts.iter().map(|t| estimated_tokens(t)).sum(),
                })
            }
        }
    }
}

enum Family {
    Titan,
    Cohere,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn titan_and_cohere_bodies_are_theirs() {
        let v2: Value =
            serde_json::from_slice(&titan_body("amazon.titan-embed-text-v2:0", "hi", Some(256)))
                .unwrap();
        assert_eq!(
            v2,
            json!({"inputText": "hi", "dimensions": 256, "normalize": true})
        );
        let v1: Value =
            serde_json::from_slice(&titan_body("amazon.titan-embed-text-v1", "hi", Some(256)))
                .unwrap();
        assert_eq!(v1, json!({"inputText": "hi"}));
        let texts = vec!["a".to_string()];
        let cohere = serde_json::to_value(CohereRequest {
            texts: &texts,
            input_type: "search_document",
        })
        .unwrap();
        assert_eq!(
            cohere,
            json!({"texts": ["a"], "input_type": "search_document"})
        );
        let answer: TitanResponse =
            serde_json::from_value(json!({"embedding": [0.5], "inputTextTokenCount": 3})).unwrap();
        assert_eq!(answer.input_text_token_count, Some(3));
    }
}
