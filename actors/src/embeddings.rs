//! Embeddings, provider-independent: what the `/v1/embeddings` door asks of an embedding
//! model's provider, and what every adapter answers with.

/// The inputs to embed: texts, or token arrays (OpenAI's tokenizer's ids).
#[derive(Debug, Clone, PartialEq)]
pub enum EmbeddingInput {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::Texts(texts) => texts.len(),
            EmbeddingInput::Tokens(tokens) => tokens.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One call to a provider's embeddings API.
#[derive(Debug, Clone, Copy)]
pub struct EmbedCall<'a> {
    /// The provider's id for the model.
    pub model: &'a str,
    pub input: &'a EmbeddingInput,
    /// Shorter vectors, for the models that can give them.
    pub dimensions: Option<u32>,
}

/// A provider's answer: one vector per input, in order, and the tokens it counted.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: u64,
}

/// Tokens of a text when the provider does not count them (Gemini's embedding API returns no
/// usage): about four characters a token, as the mock upstream and tiktoken's rule of thumb.
pub fn estimated_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

/// The built-in `mock` provider's vector for a text: deterministic (the same text always gets
/// the same vector), unit length, `dimensions` long. Not a semantic embedding: a stand-in that
/// lets the laptop default answer without a key.
pub fn mock_vector(text: &str, dimensions: u32) -> Vec<f32> {
    // FNV-1a of the text seeds a xorshift generator.
    let mut state = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) | 1;
    let mut vector: Vec<f32> = (0..dimensions)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // In [-1, 1).
            ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

/// A vector as OpenAI's `encoding_format: "base64"` sends it: its little-endian `f32`s,
/// base64-encoded.
pub fn base64_of(vector: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32s() {
        assert_eq!(base64_of(&[1.0]), "AACAPw==");
        assert_eq!(base64_of(&[]), "");
    }

    #[test]
    fn mock_vectors_are_deterministic_unit_vectors_of_the_asked_length() {
        let a = mock_vector("hello", 64);
        assert_eq!(a.len(), 64);
        assert_eq!(a, mock_vector("hello", 64));
        assert_ne!(a, mock_vector("hello!", 64));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert!(a.iter().all(|x| x.is_finite()));
        assert_eq!(estimated_tokens("abcdefghi"), 3);
        assert_eq!(estimated_tokens(""), 1);
    }
}
