//! Version ids: a stable hash of the properties that shape the answer.

use sha2::{Digest, Sha256};

use crate::wire::ChatRequest;

/// The version of a request for a catalog model: model, message templates and the parameters
/// that change the answer. Metadata, streaming and caching options do not change it.
pub fn version_id(model_id: &str, request: &ChatRequest) -> String {
    let shaping = serde_json::json!({
        "model": model_id,
        "messages": request.messages,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens.or(request.max_completion_tokens),
        "top_p": request.top_p,
        "tools": request.tools,
        "tool_choice": request.tool_choice,
        "response_format": request.response_format,
        "reasoning_effort": request.reasoning_effort,
        "reasoning": request.reasoning,
        "provider": request.provider,
    });
    let digest = Sha256::digest(shaping.to_string().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_shape_same_version_metadata_ignored() {
        let a: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "x", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5
        }))
        .unwrap();
        let mut b = a.clone();
        b.metadata = Some(serde_json::Map::new());
        b.stream = Some(true);
        assert_eq!(version_id("m", &a), version_id("m", &b));
        b.temperature = Some(0.6);
        assert_ne!(version_id("m", &a), version_id("m", &b));
        assert_eq!(version_id("m", &a).len(), 32);
    }
}
