//! The `gemini` and `vertex` adapters: Google's Gemini API and Gemini on Vertex AI. (Being
//! written.)

use super::{AdapterContext, EventStream, GeminiSettings, UpstreamRequest, VertexSettings};
use crate::completion::Completion;
use crate::error::{ErrorKind, GatewayError};

#[derive(Debug)]
pub struct GeminiClient {
    ctx: AdapterContext,
}

impl GeminiClient {
    pub fn gemini(ctx: AdapterContext, _settings: GeminiSettings) -> Result<Self, String> {
        Ok(GeminiClient { ctx })
    }

    pub fn vertex(ctx: AdapterContext, _settings: VertexSettings) -> Result<Self, String> {
        Ok(GeminiClient { ctx })
    }

    fn unavailable(&self) -> GatewayError {
        GatewayError::new(
            ErrorKind::UpstreamServer,
            format!(
                "provider `{}`: the gemini adapter is not built yet",
                self.ctx.name
            ),
        )
    }

    pub async fn complete(&self, _call: UpstreamRequest<'_>) -> Result<Completion, GatewayError> {
        Err(self.unavailable())
    }

    pub async fn stream(&self, _call: UpstreamRequest<'_>) -> Result<EventStream, GatewayError> {
        Err(self.unavailable())
    }
}
