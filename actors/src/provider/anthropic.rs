//! The `anthropic` adapter: Anthropic's Messages API. (Being written.)

use super::{AdapterContext, AnthropicSettings, EventStream, UpstreamRequest};
use crate::completion::Completion;
use crate::error::{ErrorKind, GatewayError};

#[derive(Debug)]
pub struct AnthropicClient {
    ctx: AdapterContext,
    #[allow(dead_code)]
    settings: AnthropicSettings,
}

impl AnthropicClient {
    pub fn new(ctx: AdapterContext, settings: AnthropicSettings) -> Result<Self, String> {
        Ok(AnthropicClient { ctx, settings })
    }

    fn unavailable(&self) -> GatewayError {
        GatewayError::new(
            ErrorKind::UpstreamServer,
            format!(
                "provider `{}`: the anthropic adapter is not built yet",
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
