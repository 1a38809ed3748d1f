//! The `bedrock` adapter: Amazon Bedrock Converse API. (Being written.)

use super::{AdapterContext, BedrockSettings, EventStream, UpstreamRequest};
use crate::completion::Completion;
use crate::error::{ErrorKind, GatewayError};

#[derive(Debug)]
pub struct BedrockClient {
    ctx: AdapterContext,
    #[allow(dead_code)]
    settings: BedrockSettings,
}

impl BedrockClient {
    pub fn new(ctx: AdapterContext, settings: BedrockSettings) -> Result<Self, String> {
        Ok(BedrockClient { ctx, settings })
    }

    fn unavailable(&self) -> GatewayError {
        GatewayError::new(
            ErrorKind::UpstreamServer,
            format!(
                "provider `{}`: the bedrock adapter is not built yet",
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
