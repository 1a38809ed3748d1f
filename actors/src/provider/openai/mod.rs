//! The `openai` adapter: OpenAI's Chat Completions API and every API that copies it.
//!
//! The copies differ in small ways. Everything this adapter knows about those differences lives
//! in one place, [`request`]: a static `Quirks` table per `OpenAiFlavor`, a few per-model rules
//! (`ModelRules`, `reasoning_param`), and `body`, the one function that applies them to the
//! request. Responses are parsed leniently enough for all of them (content as a string or as
//! parts, usage under other names, error bodies in several shapes), and upstream errors are
//! classified by `classify` ([`response`]); [`stream`] turns chunks into events and ends at
//! `[DONE]`.

mod embeddings;
mod request;
mod response;
mod stream;

use std::collections::VecDeque;

use super::adapter::{Adapter, ErrorReply, Flow, Prepared, Secrets};
use super::driver::Driver;
use super::http::{self, HeaderMap};
use super::sse::{SseEvent, SseFraming};
use super::{
    AdapterContext, AzureSettings, OpenAiFlavor, OpenAiSettings, Timeouts, UpstreamRequest,
};
use crate::completion::{Completion, StreamEvent};
use crate::error::{ErrorKind, GatewayError};

/// An OpenAI-compatible provider's client.
pub type OpenAiClient = Driver<OpenAi>;

/// The OpenAI wire format, for one API (OpenAI, a compatible one, or Azure OpenAI).
#[derive(Debug)]
pub struct OpenAi {
    settings: OpenAiSettings,
    endpoint: Endpoint,
}

/// Where requests go and how they authenticate.
#[derive(Debug)]
enum Endpoint {
    /// `<base_url>/chat/completions`, `Authorization: Bearer`.
    /// Parsed once, not on every request.
    OpenAi { url: http::Uri },
    /// `<endpoint>/openai/deployments/<model>/chat/completions?api-version=…`, `api-key`.
    Azure {
        endpoint: String,
        api_version: String,
    },
}

/// The operation of a chat completion, in the endpoint's URL.
const CHAT_COMPLETIONS: &str = "chat/completions";

impl OpenAi {
    /// A POST of `operation` (`chat/completions`, `embeddings`) for `model`, to the endpoint
    /// and with the credential it wants: `<base_url>/<operation>` with a bearer token, or
    /// Azure's deployment URL with an `api-key`.
    fn post<'h>(
        &self,
        http: &'h http::Client,
        model: &str,
        operation: &str,
    ) -> http::RequestBuilder<'h> {
        match &self.endpoint {
            Endpoint::OpenAi { url } => {
                let request = if operation == CHAT_COMPLETIONS {
                    http.post(url)
                } else {
                    http.post(format!(
                        "{}/{operation}",
                        self.settings.base_url.trim_end_matches('/')
                    ))
                };
                match &self.settings.api_key {
                    Some(key) => request.bearer_auth(key),
                    None => request,
                }
            }
            Endpoint::Azure {
                endpoint,
                api_version,
            } => {
                let url = format!(
                    "{endpoint}/openai/deployments/{model}/{operation}?{}",
                    form_urlencoded::Serializer::new(String::new())
                        .append_pair("api-version", api_version)
                        .finish()
                );
                let request = http.post(url);
                match &self.settings.api_key {
                    Some(key) => request.header("api-key", key),
                    None => request,
                }
            }
        }
    }
}

impl Driver<OpenAi> {
    pub fn new(
        name: &str,
        settings: OpenAiSettings,
        timeouts: Timeouts,
    ) -> Result<OpenAiClient, String> {
        let url = format!(
            "{}/chat/completions",
            settings.base_url.trim_end_matches('/')
        );
        let url = http::parse_uri(&url)
            .map_err(|e| format!("provider `{name}`: `{url}` is not a URL: {e}"))?;
        let adapter = OpenAi {
            settings,
            endpoint: Endpoint::OpenAi { url },
        };
        Driver::build(name.to_string(), timeouts, adapter)
    }

    /// Azure OpenAI: the same wire format, deployments in the URL, an `api-key` header.
    pub fn azure(ctx: AdapterContext, azure: AzureSettings) -> Result<OpenAiClient, String> {
        let adapter = OpenAi {
            settings: OpenAiSettings {
                base_url: azure.endpoint.clone(),
                api_key: azure.api_key,
                headers: Default::default(),
                flavor: OpenAiFlavor::OpenAi,
            },
            endpoint: Endpoint::Azure {
                endpoint: azure.endpoint.trim_end_matches('/').to_string(),
                api_version: azure.api_version,
            },
        };
        Driver::build(ctx.name, ctx.timeouts, adapter)
    }
}

impl OpenAi {
    /// The API's name in messages: its flavor, or `azure`.
    fn api_name(&self) -> &'static str {
        match (&self.endpoint, self.settings.flavor) {
            (Endpoint::Azure { .. }, _) => "azure",
            (_, OpenAiFlavor::OpenAi) => "openai",
            (_, OpenAiFlavor::Groq) => "groq",
            (_, OpenAiFlavor::Mistral) => "mistral",
            (_, OpenAiFlavor::Xai) => "xai",
            (_, OpenAiFlavor::Fireworks) => "fireworks",
            (_, OpenAiFlavor::Together) => "together",
            (_, OpenAiFlavor::DeepSeek) => "deepseek",
            (_, OpenAiFlavor::OpenRouter) => "openrouter",
            (_, OpenAiFlavor::Ollama) => "ollama",
            (_, OpenAiFlavor::Vllm) => "vllm",
        }
    }
}

impl Adapter for OpenAi {
    type Call = ();
    type Response = response::ChatResponse;
    type Framing = SseFraming;
    type Stream = stream::OpenAiStream;

    const END_MARK: &'static str = "[DONE]";

    async fn prepare<'c>(
        &'c self,
        http: &'c http::Client,
        name: &'c str,
        call: UpstreamRequest<'c>,
        stream: bool,
    ) -> Result<Prepared<'c, ()>, GatewayError> {
        let body = request::body(&call, stream, self.settings.flavor).map_err(|refused| {
            GatewayError::new(
                ErrorKind::UnsupportedByModel,
                format!(
                    "provider `{name}` does not accept {} (the {} API); choose a model served \
                     by a provider that does",
                    refused.what,
                    self.api_name()
                ),
            )
            .with_param(refused.param)
        })?;
        let mut request = self.post(http, call.model, CHAT_COMPLETIONS).json(&body);
        for (name, value) in &self.settings.headers {
            request = request.header(name, value);
        }
        Ok(Prepared { request, call: () })
    }

    fn secrets<'a>(&'a self, _call: &'a ()) -> Secrets<'a> {
        [self.settings.api_key.as_deref().unwrap_or(""), "", ""]
    }

    fn error_reply(
        &self,
        _call: &(),
        status: u16,
        _headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> ErrorReply {
        response::error_reply(status, body)
    }

    fn completion(
        &self,
        name: &str,
        _call: &(),
        response: response::ChatResponse,
    ) -> Result<Completion, GatewayError> {
        response::completion(name, response)
    }

    fn open_stream(
        &self,
        _name: &str,
        _call: (),
        _headers: &HeaderMap,
    ) -> Result<stream::OpenAiStream, GatewayError> {
        Ok(stream::OpenAiStream::default())
    }

    fn on_frame(
        name: &str,
        stream: &mut stream::OpenAiStream,
        event: SseEvent,
        out: &mut VecDeque<StreamEvent>,
    ) -> Result<Flow, GatewayError> {
        stream::on_event(name, stream, event, out)
    }

    fn ended_cleanly(stream: &stream::OpenAiStream) -> bool {
        stream.clean_end
    }
}
