//! The `anthropic` adapter: Anthropic's Messages API (`POST <base_url>/v1/messages`), and
//! Claude on Vertex AI, which speaks the same format (see [`AnthropicClient::vertex`]).
//!
//! The OpenAI-shaped request is translated into a Messages request, and the answer back:
//!
//! | OpenAI | Anthropic |
//! |---|---|
//! | `system` / `developer` messages (anywhere) | top-level `system`, joined by blank lines |
//! | `user` / `assistant` messages | turns; consecutive turns of one role merged |
//! | assistant `tool_calls` | `tool_use` blocks (`input` = the parsed arguments) |
//! | `tool` messages | `tool_result` blocks in a user turn, before any text of that turn |
//! | `image_url` data URI / `https://` URL | `image` with a `base64` / `url` source |
//! | `image_url` `http://` URL | downloaded under the media guard, sent as `base64` |
//! | `file` part with a PDF (or plain-text) data URI | `document` block |
//! | `input_audio`, `file_id`, `n > 1` | refused: [`ErrorKind::UnsupportedByModel`] |
//! | `max_completion_tokens` / `max_tokens` | `max_tokens` (required; default 8192, capped per model) |
//! | `temperature` (0–2) | `temperature`, clamped to 1 |
//! | `stop` | `stop_sequences` |
//! | `user` | `metadata.user_id` |
//! | `tools`, `tool_choice`, `parallel_tool_calls: false` | `tools` with `input_schema`, `tool_choice` auto/any/tool/none, `disable_parallel_tool_use` |
//! | `response_format` | see [`apply_response_format`] |
//! | `reasoning_effort` low/medium/high | `thinking` with a 1024/4096/16384 token budget |
//! | `seed`, penalties, `logit_bias`, `logprobs` | dropped (Anthropic has no equivalent) |
//!
//! Answers: `text` blocks are the content, `tool_use` blocks the tool calls, `thinking` blocks
//! are not shown (their tokens are part of `output_tokens`). Usage: `prompt_tokens` is
//! `input_tokens + cache_read_input_tokens + cache_creation_input_tokens`, of which the cache
//! reads are `cached_tokens` and the cache writes `cache_write_tokens`.
//!
//! On Vertex AI (a `vertex` provider's `claude-…` models) only three things differ: the URL
//! (`POST {base}/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:rawPredict`,
//! `:streamRawPredict` to stream), the credentials (`Authorization: Bearer <OAuth token>` from
//! the provider's [`TokenSource`]), and the body, which names no `model` and carries
//! `"anthropic_version": "vertex-2023-10-16"` instead of the `anthropic-version` header.
//!
//! [`request`] builds the body, [`response`] maps answers and errors, [`stream`] the events.

mod request;
mod response;
mod stream;

use std::collections::VecDeque;
use std::sync::Arc;

use super::adapter::{self, Adapter, ErrorReply, Flow, Prepared, Secrets};
use super::driver::Driver;
use super::google_auth::{TokenSource, VertexEndpoint};
use super::http::{self, encode_segment, HeaderMap};
use super::media;
use super::sse::{SseEvent, SseFraming};
use super::{AdapterContext, AnthropicSettings, UpstreamRequest, VertexSettings};
use crate::completion::{Completion, StreamEvent};
use crate::error::GatewayError;

use request::{inline_block, is_https, translate, Block, MessagesBody, Source};
use response::{completion_from, error_event, error_kind, ErrorEnvelope, MessageResponse};
use stream::AnthropicStream;

pub use request::VERTEX_ANTHROPIC_VERSION;

/// An Anthropic provider's client (or a Vertex AI provider's Claude client).
pub type AnthropicClient = Driver<Anthropic>;

/// The Messages API wire format, on Anthropic's API or on Vertex AI.
#[derive(Debug)]
pub struct Anthropic {
    media: media::MediaFetcher,
    endpoint: Endpoint,
}

/// What a call keeps: the answer tool it added, and on Vertex AI the token it was sent with.
pub struct AnthropicCall {
    answer_tool: Option<String>,
    token: Option<Arc<str>>,
}

/// Where requests go and how they authenticate.
enum Endpoint {
    /// Anthropic's API: `<base_url>/v1/messages`, `x-api-key` and `anthropic-version` headers.
    Anthropic {
        url: String,
        settings: AnthropicSettings,
    },
    /// Claude on Vertex AI: `{base}/projects/{project}/locations/{region}/publishers/anthropic/
    /// models/{model}:rawPredict` (base ends in `/v1`), `Authorization: Bearer <oauth token>`.
    Vertex(VertexEndpoint),
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Anthropic { url, settings } => f
                .debug_struct("Anthropic")
                .field("url", url)
                .field("api_key", &settings.api_key.as_ref().map(|_| "***"))
                .field("version", &settings.version)
                .finish_non_exhaustive(),
            Endpoint::Vertex(vertex) => vertex.fmt(f),
        }
    }
}

impl Driver<Anthropic> {
    /// Anthropic's Messages API with an API key.
    pub fn new(ctx: AdapterContext, settings: AnthropicSettings) -> Result<Self, String> {
        let base = settings.base_url.trim_end_matches('/');
        let url = if base.ends_with("/v1") {
            format!("{base}/messages")
        } else {
            format!("{base}/v1/messages")
        };
        let adapter = Anthropic {
            media: ctx.media,
            endpoint: Endpoint::Anthropic { url, settings },
        };
        Driver::build(ctx.name, ctx.timeouts, adapter)
    }

    /// Claude on Vertex AI, with OAuth tokens from the provider's token source (the one its
    /// Gemini models use too).
    pub fn vertex(
        ctx: AdapterContext,
        settings: VertexSettings,
        tokens: Arc<TokenSource>,
    ) -> Result<Self, String> {
        let adapter = Anthropic {
            media: ctx.media,
            endpoint: Endpoint::Vertex(VertexEndpoint::new(&settings, tokens)),
        };
        Driver::build(ctx.name, ctx.timeouts, adapter)
    }
}

impl Anthropic {
    /// The URL of one call to `model`.
    fn url(&self, model: &str, stream: bool) -> String {
        match &self.endpoint {
            Endpoint::Anthropic { url, .. } => url.clone(),
            Endpoint::Vertex(vertex) => format!(
                "{}/publishers/anthropic/models/{}:{}",
                vertex.location(),
                encode_segment(model),
                if stream {
                    "streamRawPredict"
                } else {
                    "rawPredict"
                }
            ),
        }
    }

    /// The body as this endpoint wants it: on Vertex AI the URL names the model and the API
    /// version goes in the body.
    fn adapt_body(&self, body: &mut MessagesBody) {
        if let Endpoint::Vertex(_) = self.endpoint {
            body.model = None;
            body.anthropic_version = Some(VERTEX_ANTHROPIC_VERSION);
        }
    }

    /// The secret of one call, never to be shown: the API key, or the OAuth token.
    fn secret<'a>(&'a self, token: Option<&'a str>) -> &'a str {
        match &self.endpoint {
            Endpoint::Anthropic { settings, .. } => settings.api_key.as_deref().unwrap_or(""),
            Endpoint::Vertex(_) => token.unwrap_or(""),
        }
    }

    /// The translated request, with `http://` images downloaded.
    async fn translated(
        &self,
        name: &str,
        call: &UpstreamRequest<'_>,
        stream: bool,
    ) -> Result<request::Prepared, GatewayError> {
        let mut prepared = translate(call, stream).map_err(|mut e| {
            e.message = format!("provider `{name}`: {}", e.message);
            e
        })?;
        self.adapt_body(&mut prepared.body);
        self.resolve_media(&mut prepared.body).await?;
        Ok(prepared)
    }

    /// Anthropic fetches `https://` images itself; plain `http://` ones are downloaded here,
    /// under the media guard, and sent inline.
    async fn resolve_media(&self, body: &mut MessagesBody) -> Result<(), GatewayError> {
        let mut blocks: Vec<&mut Block> = Vec::new();
        for turn in &mut body.messages {
            for block in &mut turn.content {
                match block {
                    Block::ToolResult { content, .. } => blocks.extend(content.iter_mut()),
                    other => blocks.push(other),
                }
            }
        }
        for block in blocks {
            let url = match block {
                Block::Image {
                    source: Source::Url { url },
                } if !is_https(url) => url.clone(),
                _ => continue,
            };
            let media = self.media.load(&url).await?;
            *block = inline_block(&media.mime, &media.base64(), None)?;
        }
        Ok(())
    }
}

impl Adapter for Anthropic {
    type Call = AnthropicCall;
    type Response = MessageResponse;
    type Framing = SseFraming;
    type Stream = AnthropicStream;

    const END_MARK: &'static str = "message_stop";

    async fn prepare<'c>(
        &'c self,
        http: &'c http::Client,
        name: &'c str,
        call: UpstreamRequest<'c>,
        stream: bool,
    ) -> Result<Prepared<'c, AnthropicCall>, GatewayError> {
        let translated = self.translated(name, &call, stream).await?;
        let body = &translated.body;
        let mut request = http.post(self.url(call.model, body.stream)).json(body);
        let token = match &self.endpoint {
            Endpoint::Anthropic { settings, .. } => {
                request = request.header("anthropic-version", &settings.version);
                if let Some(key) = &settings.api_key {
                    request = request.header("x-api-key", key);
                }
                for (name, value) in &settings.headers {
                    request = request.header(name, value);
                }
                None
            }
            Endpoint::Vertex(vertex) => {
                let token = vertex.tokens.token().await?;
                request = request.bearer_auth(&*token);
                Some(token)
            }
        };
        Ok(Prepared {
            request,
            call: AnthropicCall {
                answer_tool: translated.answer_tool,
                token,
            },
        })
    }

    fn secrets<'a>(&'a self, call: &'a AnthropicCall) -> Secrets<'a> {
        [self.secret(call.token.as_deref()), "", ""]
    }

    fn error_reply(
        &self,
        call: &AnthropicCall,
        status: u16,
        _headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> ErrorReply {
        let (error_type, text) = match body {
            // Anthropic's `{"error": {"type", "message"}}`; Vertex AI's own errors are
            // `{"error": {"code", "message", "status"}}` and parse too (no type).
            Some(cut) => match serde_json::from_slice::<ErrorEnvelope>(cut) {
                Ok(envelope) => (
                    envelope.error.kind,
                    envelope.error.message.unwrap_or_default(),
                ),
                Err(_) => (
                    None,
                    String::from_utf8_lossy(cut).chars().take(500).collect(),
                ),
            },
            None => (None, String::new()),
        };
        let kind = error_kind(Some(status), error_type.as_deref(), &text);
        let mut reply = ErrorReply::new(kind, error_type, text);
        if reply.credentials_rejected {
            // A rejected token is dropped: the next call fetches another.
            if let (Endpoint::Vertex(vertex), Some(token)) = (&self.endpoint, &call.token) {
                vertex.tokens.invalidate(token);
            }
            // The message names the status only.
            reply.label = None;
        }
        reply
    }

    fn completion(
        &self,
        _name: &str,
        call: &AnthropicCall,
        response: MessageResponse,
    ) -> Result<Completion, GatewayError> {
        Ok(completion_from(response, call.answer_tool.as_deref()))
    }

    /// An error object sent with a 200 is that error; anything else is malformed.
    fn unreadable(
        &self,
        name: &str,
        call: &AnthropicCall,
        body: &[u8],
        error: serde_json::Error,
    ) -> GatewayError {
        match serde_json::from_slice::<ErrorEnvelope>(body) {
            Ok(envelope) => error_event(
                name,
                &[self.secret(call.token.as_deref())],
                envelope.error,
                "instead of a message",
            )
            .with_upstream_status(200),
            Err(_) => adapter::malformed(name, format_args!("a malformed response: {error}")),
        }
    }

    fn open_stream(
        &self,
        name: &str,
        call: AnthropicCall,
        headers: &HeaderMap,
    ) -> Result<AnthropicStream, GatewayError> {
        let is_json = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if is_json {
            return Err(adapter::malformed(name, "JSON instead of an event stream"));
        }
        Ok(AnthropicStream::new(
            self.secret(call.token.as_deref()).to_string(),
            call.answer_tool,
        ))
    }

    fn on_frame(
        name: &str,
        stream: &mut AnthropicStream,
        event: SseEvent,
        out: &mut VecDeque<StreamEvent>,
    ) -> Result<Flow, GatewayError> {
        stream.on_event(name, event, out)
    }

    fn ended_cleanly(stream: &AnthropicStream) -> bool {
        stream.stopped()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use serde_json::{json, Value};

    use super::*;
    use crate::completion::FinishReason;
    use crate::error::ErrorKind;
    use crate::provider::VertexCredentials;
    use crate::wire::ChatRequest;

    fn request(value: Value) -> ChatRequest {
        serde_json::from_value(value).unwrap()
    }

    fn client_for(base_url: String) -> AnthropicClient {
        AnthropicClient::new(
            AdapterContext {
                name: "claude".into(),
                timeouts: crate::provider::Timeouts {
                    idle_seconds: 2.0,
                    ..Default::default()
                },
                media: media::MediaFetcher::new(media::MediaSettings::default()),
            },
            AnthropicSettings {
                base_url,
                api_key: Some("sk-ant-test-secret".into()),
                version: "2023-06-01".into(),
                headers: [("anthropic-beta".to_string(), "x-1".to_string())].into(),
            },
        )
        .unwrap()
    }

    fn vertex_client(base_url: &str, region: &str) -> AnthropicClient {
        let ctx = AdapterContext {
            name: "vertex".into(),
            timeouts: crate::provider::Timeouts::default(),
            media: media::MediaFetcher::new(media::MediaSettings::default()),
        };
        let credentials = VertexCredentials::AccessToken("ya29.vertex-secret".into());
        let tokens = TokenSource::for_provider(&ctx, &credentials).unwrap();
        let settings = VertexSettings {
            project: "my-project".into(),
            region: region.into(),
            base_url: base_url.into(),
            credentials,
        };
        AnthropicClient::vertex(ctx, settings, tokens).unwrap()
    }

    #[actix_rt::test]
    async fn vertex_urls_and_body_name_the_model_once() {
        let regional = vertex_client("https://us-east5-aiplatform.googleapis.com/", "us-east5");
        assert_eq!(
            regional.adapter().url("claude-3-7-sonnet@20250219", false),
            "https://us-east5-aiplatform.googleapis.com/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/claude-3-7-sonnet@20250219:rawPredict"
        );
        assert_eq!(
            regional.adapter().url("claude-3-7-sonnet@20250219", true),
            "https://us-east5-aiplatform.googleapis.com/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/claude-3-7-sonnet@20250219:streamRawPredict"
        );
        let global = vertex_client("https://aiplatform.googleapis.com/v1", "global");
        assert_eq!(
            global.adapter().url("claude sonnet/4", false),
            "https://aiplatform.googleapis.com/v1/projects/my-project/locations/global/publishers/anthropic/models/claude%20sonnet%2F4:rawPredict"
        );
        assert!(!format!("{global:?}").contains("ya29"));

        let r = request(json!({"model": "x", "stream": true, "max_tokens": 300,
            "messages": [{"role": "user", "content": "Hi"}]}));
        let call = UpstreamRequest {
            request: &r,
            model: "claude-3-7-sonnet@20250219",
            reasoning_effort: None,
        };
        let body = serde_json::to_value(
            regional
                .adapter()
                .translated("vertex", &call, true)
                .await
                .unwrap()
                .body,
        )
        .unwrap();
        assert_eq!(
            body,
            json!({
                "anthropic_version": "vertex-2023-10-16",
                "max_tokens": 300,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                "stream": true
            })
        );
        // Anthropic's own API: the model in the body, no version in it.
        let direct = client_for("https://api.anthropic.com".into());
        let body = serde_json::to_value(
            direct
                .adapter()
                .translated("claude", &call, false)
                .await
                .unwrap()
                .body,
        )
        .unwrap();
        assert_eq!(body["model"], "claude-3-7-sonnet@20250219");
        assert!(body.get("anthropic_version").is_none());
        assert_eq!(
            direct.adapter().url("claude-x", true),
            "https://api.anthropic.com/v1/messages"
        );
        assert!(!format!("{direct:?}").contains("sk-ant"));
    }

    #[actix_rt::test]
    async fn vertex_against_the_mock_raw_predict() {
        let mock = flowgate_mock_upstream::MockUpstream::start();
        let client = vertex_client(&mock.url(), "us-east5");
        let r = request(
            json!({"model": "x", "messages": [{"role": "user", "content": "Hello Vertex"}]}),
        );
        let call = |model| UpstreamRequest {
            request: &r,
            model,
            reasoning_effort: None,
        };
        let c = client
            .complete(call("claude-3-7-sonnet@20250219"))
            .await
            .unwrap();
        assert_eq!(
            c.choices[0].message.content.as_deref(),
            Some("Hello Vertex")
        );
        assert!(c.usage.prompt_tokens > 0 && c.usage.completion_tokens > 0);
        let sent = &mock.requests()[0];
        assert_eq!(
            sent.path,
            "/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/claude-3-7-sonnet@20250219:rawPredict"
        );
        assert_eq!(sent.headers["authorization"], "Bearer ya29.vertex-secret");
        assert!(!sent.headers.contains_key("x-api-key"));
        assert!(!sent.headers.contains_key("anthropic-version"));
        assert_eq!(sent.body["anthropic_version"], "vertex-2023-10-16");
        assert!(sent.body.get("model").is_none());

        let mut stream = client
            .stream(call("claude-3-7-sonnet@20250219;chunk_chars=3"))
            .await
            .unwrap();
        let mut text = String::new();
        while let Some(event) = stream.next().await {
            if let StreamEvent::Content { text: t, .. } = event.unwrap() {
                text.push_str(&t);
            }
        }
        assert_eq!(text, "Hello Vertex");
        let sent = mock.requests().pop().unwrap();
        assert!(sent.path.ends_with(":streamRawPredict"), "{}", sent.path);
        assert_eq!(sent.body["stream"], true);

        let e = client
            .complete(call("claude-3-7-sonnet@20250219;status=529"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.upstream_status),
            (ErrorKind::Overloaded, Some(529))
        );
        let e = client
            .complete(call("claude-3-7-sonnet@20250219;status=401"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::UpstreamAuth);
        assert!(!e.message.contains("ya29"), "{}", e.message);
    }

    #[actix_rt::test]
    async fn against_the_mock_messages_api() {
        let mock = flowgate_mock_upstream::MockUpstream::start();
        let client = client_for(format!("{}/", mock.url()));
        let r = request(json!({"model": "x", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello Claude"}]}));
        let call = |model| UpstreamRequest {
            request: &r,
            model,
            reasoning_effort: None,
        };
        let c = client.complete(call("claude-sonnet-4-5")).await.unwrap();
        assert_eq!(
            c.choices[0].message.content.as_deref(),
            Some("Hello Claude")
        );
        assert_eq!(c.choices[0].finish_reason, FinishReason::Stop);
        assert!(c.usage.prompt_tokens > 0 && c.usage.completion_tokens > 0);
        let sent = &mock.requests()[0];
        assert_eq!(sent.path, "/v1/messages");
        assert_eq!(sent.headers["x-api-key"], "sk-ant-test-secret");
        assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
        assert_eq!(sent.headers["anthropic-beta"], "x-1");
        assert_eq!(sent.body["max_tokens"], 8192);

        let mut stream = client
            .stream(call("claude-sonnet-4-5;chunk_chars=3"))
            .await
            .unwrap();
        let mut text = String::new();
        let mut tail = Vec::new();
        while let Some(event) = stream.next().await {
            match event.unwrap() {
                StreamEvent::Content { text: t, .. } => text.push_str(&t),
                other => tail.push(other),
            }
        }
        assert_eq!(text, "Hello Claude");
        assert!(matches!(
            tail[0],
            StreamEvent::Finish {
                reason: FinishReason::Stop,
                ..
            }
        ));
        assert!(matches!(tail[1], StreamEvent::Usage(u) if u.completion_tokens > 0));

        // Errors: kinds, retry-after, status, no key in messages.
        let e = client
            .complete(call("claude;status=529"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.upstream_status),
            (ErrorKind::Overloaded, Some(529))
        );
        let e = client
            .complete(call("claude;status=429;retry_after=3"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        let e = client
            .complete(call("claude;status=401"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::UpstreamAuth);
        assert!(!e.message.contains("sk-ant-test-secret"));
        let e = client
            .complete(call("claude;prompt_too_long"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::ContextTooLong);
        let e = client.complete(call("claude;malformed")).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::UpstreamMalformed);
        let Err(e) = client.stream(call("claude;malformed")).await else {
            panic!("a JSON body is not a stream");
        };
        assert_eq!(e.kind, ErrorKind::UpstreamMalformed);

        // A stream cut after content, and an error event mid-stream.
        let mut stream = client
            .stream(call("claude;cut_after=1;chunk_chars=2"))
            .await
            .unwrap();
        assert!(matches!(
            stream.next().await,
            Some(Ok(StreamEvent::Content { .. }))
        ));
        let e = stream.next().await.unwrap().unwrap_err();
        assert_eq!(e.kind, ErrorKind::UpstreamConnection);
        assert!(stream.next().await.is_none());
        let mut stream = client
            .stream(call("claude;stream_error=1;chunk_chars=2"))
            .await
            .unwrap();
        assert!(matches!(
            stream.next().await,
            Some(Ok(StreamEvent::Content { .. }))
        ));
        let e = stream.next().await.unwrap().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Overloaded);

        // A stalled stream times out on the idle limit.
        let started = std::time::Instant::now();
        let mut stream = client
            .stream(call("claude;chunk_delay_ms=5000"))
            .await
            .unwrap();
        let e = loop {
            match stream.next().await.unwrap() {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(e.kind, ErrorKind::Timeout);
        assert!(started.elapsed() < Duration::from_secs(5));

        // An http:// image is downloaded under the guard (loopback is refused by default).
        let r = request(
            json!({"model": "x", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": format!("{}/cat.png", mock.url())}}]}]}),
        );
        let e = client
            .complete(UpstreamRequest {
                request: &r,
                model: "claude",
                reasoning_effort: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code.as_deref(), Some("media_url_refused"));
    }
}
