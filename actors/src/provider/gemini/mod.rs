//! The `gemini` and `vertex` adapters: Google's Gemini API (`x-goog-api-key`) and Gemini on
//! Vertex AI (OAuth bearer tokens, see [`google_auth`](super::google_auth)). Both speak the
//! same `generateContent` wire format; only the URL and the credentials differ.
//!
//! A `vertex` provider also serves Anthropic's Claude models, in Anthropic's own format:
//! [`VertexClient`](super::vertex::VertexClient) sends `claude-…` models to the Anthropic adapter in its Vertex mode and
//! every other model to the [`GeminiClient`], both with the provider's one OAuth token cache.
//!
//! The OpenAI request is translated both ways:
//!
//! * `system`/`developer` messages → `systemInstruction`; `user`/`assistant` turns →
//!   `contents` with roles `user`/`model`, consecutive turns of one role merged; assistant
//!   `tool_calls` → `functionCall` parts; `tool` messages → `functionResponse` parts named
//!   after the call they answer;
//! * images, PDFs and audio → `inlineData` (data URIs as they are, `http(s)` URLs downloaded
//!   through the guarded [`MediaFetcher`]), `gs://` URIs → `fileData`;
//! * tools → `functionDeclarations` with parameters converted to Gemini's OpenAPI schema
//!   subset ([`json_schema_to_gemini_schema`]); `tool_choice` → `functionCallingConfig`;
//!   `response_format` → `responseMimeType`/`responseSchema`; sampling options and
//!   `reasoning_effort` → `generationConfig`.
//!
//! Answers come back as text (thought parts skipped), tool calls with generated ids, finish
//! reasons and usage; streams use `:streamGenerateContent?alt=sse`.
//!
//! [`request`] builds the body, [`response`] maps answers and errors, [`stream`] the events.

mod embeddings;
mod request;
mod response;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::adapter::{Adapter, ErrorReply, Flow, Prepared, Secrets};
use super::driver::Driver;
use super::google_auth::{TokenSource, VertexEndpoint};
use super::http::{self, encode_segment, versioned_base, HeaderMap};
use super::media::{MediaData, MediaFetcher};
use super::sse::{SseEvent, SseFraming};
use super::{AdapterContext, GeminiSettings, UpstreamRequest, VertexSettings};
use crate::completion::{Completion, StreamEvent};
use crate::error::{ErrorKind, GatewayError};
use crate::wire::ChatRequest;

use request::{remote_media_urls, request_body};
use response::{completion_from, error_kind, parse_error_body, retry_delay, GenerateResponse};
use stream::GeminiStream;

pub use request::json_schema_to_gemini_schema;

/// A Gemini provider's client (or a Vertex AI provider's Gemini client).
pub type GeminiClient = Driver<Gemini>;

/// The `generateContent` wire format, on the Gemini API or on Vertex AI.
#[derive(Debug)]
pub struct Gemini {
    media: MediaFetcher,
    endpoint: Endpoint,
}

/// What a call keeps: on Vertex AI, the token it was sent with.
pub struct GeminiCall {
    token: Option<Arc<str>>,
}

/// Where requests go and how they authenticate.
enum Endpoint {
    /// `{base}/models/{model}:generateContent` (base ends in `/v1beta`), `x-goog-api-key`.
    Gemini {
        base: String,
        api_key: Option<String>,
    },
    /// `{base}/projects/{project}/locations/{region}/publishers/google/models/{model}:…`
    /// (base ends in `/v1`), `Authorization: Bearer <oauth token>`.
    /// Shared tokens with the provider's Claude client (see [`VertexClient`]).
    Vertex(VertexEndpoint),
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Gemini { base, api_key } => f
                .debug_struct("Gemini")
                .field("base", base)
                .field("api_key", &api_key.as_ref().map(|_| "***"))
                .finish(),
            Endpoint::Vertex(vertex) => vertex.fmt(f),
        }
    }
}

fn encode_path(path: &str) -> String {
    path.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

impl Driver<Gemini> {
    /// The Gemini API (`generativelanguage.googleapis.com`) with an API key.
    pub fn gemini(ctx: AdapterContext, settings: GeminiSettings) -> Result<Self, String> {
        let adapter = Gemini {
            media: ctx.media,
            endpoint: Endpoint::Gemini {
                base: versioned_base(&settings.base_url, "v1beta"),
                api_key: settings.api_key.filter(|k| !k.is_empty()),
            },
        };
        Driver::build(ctx.name, ctx.timeouts, adapter)
    }

    /// Gemini on Vertex AI, with OAuth tokens from the provider's token source.
    pub fn vertex(
        ctx: AdapterContext,
        settings: VertexSettings,
        tokens: Arc<TokenSource>,
    ) -> Result<Self, String> {
        let adapter = Gemini {
            media: ctx.media,
            endpoint: Endpoint::Vertex(VertexEndpoint::new(&settings, tokens)),
        };
        Driver::build(ctx.name, ctx.timeouts, adapter)
    }
}

impl Gemini {
    /// The URL of one call. The API key never goes in it.
    fn url(&self, model: &str, stream: bool) -> String {
        let method = if stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        match &self.endpoint {
            Endpoint::Gemini { base, .. } => {
                if model.contains('/') {
                    // `models/…` or `tunedModels/…`, as given.
                    format!("{base}/{}:{method}", encode_path(model))
                } else {
                    format!("{base}/models/{}:{method}", encode_segment(model))
                }
            }
            Endpoint::Vertex(vertex) => {
                let location = vertex.location();
                if model.starts_with("projects/") {
                    format!("{}/{}:{method}", vertex.base, encode_path(model))
                } else if model.contains('/') {
                    // `publishers/{p}/models/{m}` or `endpoints/{id}`.
                    format!("{location}/{}:{method}", encode_path(model))
                } else {
                    format!(
                        "{location}/publishers/google/models/{}:{method}",
                        encode_segment(model)
                    )
                }
            }
        }
    }

    /// Downloads the request's remote media, concurrently.
    async fn fetch_media(
        &self,
        request: &ChatRequest,
    ) -> Result<HashMap<String, MediaData>, GatewayError> {
        let urls = remote_media_urls(request);
        if urls.is_empty() {
            return Ok(HashMap::new());
        }
        let fetched =
            futures::future::try_join_all(urls.iter().map(|url| self.media.load(url))).await?;
        Ok(urls
            .into_iter()
            .map(String::from)
            .zip(fetched)
            .collect::<HashMap<_, _>>())
    }
}

impl Adapter for Gemini {
    type Call = GeminiCall;
    type Response = GenerateResponse;
    type Framing = SseFraming;
    type Stream = GeminiStream;

    const END_MARK: &'static str = "its finish reason";

    async fn prepare<'c>(
        &'c self,
        http: &'c http::Client,
        _name: &'c str,
        call: UpstreamRequest<'c>,
        stream: bool,
    ) -> Result<Prepared<'c, GeminiCall>, GatewayError> {
        let media = self.fetch_media(call.request).await?;
        let body = request_body(&call, &media)?;
        drop(media);
        let request = http.post(self.url(call.model, stream)).json(&body);
        drop(body);
        let (request, token) = match &self.endpoint {
            Endpoint::Gemini { api_key, .. } => (
                match api_key {
                    Some(key) => request.header("x-goog-api-key", key),
                    None => request,
                },
                None,
            ),
            Endpoint::Vertex(vertex) => {
                let token = vertex.tokens.token().await?;
                (request.bearer_auth(&*token), Some(token))
            }
        };
        Ok(Prepared {
            request,
            call: GeminiCall { token },
        })
    }

    /// The API key and the call's token.
    fn secrets<'a>(&'a self, call: &'a GeminiCall) -> Secrets<'a> {
        let key = match &self.endpoint {
            Endpoint::Gemini {
                api_key: Some(key), ..
            } => key.as_str(),
            _ => "",
        };
        [key, call.token.as_deref().unwrap_or(""), ""]
    }

    fn error_reply(
        &self,
        call: &GeminiCall,
        status: u16,
        _headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> ErrorReply {
        let (body, raw) = match body {
            Some(cut) => (
                parse_error_body(cut),
                String::from_utf8_lossy(cut).chars().take(500).collect(),
            ),
            None => (None, String::new()),
        };
        let body = body.unwrap_or_default();
        let message = body.message.unwrap_or(raw);
        let kind = error_kind(status, body.status.as_deref(), &message, &body.details);
        // Billing, region or API-enablement problems say what to fix and quote no secret.
        let precondition = body.status.as_deref() == Some("FAILED_PRECONDITION");
        let credentials_rejected = kind == ErrorKind::UpstreamAuth && !precondition;
        if credentials_rejected {
            if let (Endpoint::Vertex(vertex), Some(token)) = (&self.endpoint, &call.token) {
                vertex.tokens.invalidate(token);
            }
        }
        ErrorReply {
            kind,
            label: body.status,
            text: message,
            retry_after: retry_delay(&body.details),
            credentials_rejected,
        }
    }

    fn completion(
        &self,
        name: &str,
        _call: &GeminiCall,
        response: GenerateResponse,
    ) -> Result<Completion, GatewayError> {
        completion_from(name, response)
    }

    fn open_stream(
        &self,
        _name: &str,
        _call: GeminiCall,
        _headers: &HeaderMap,
    ) -> Result<GeminiStream, GatewayError> {
        Ok(GeminiStream::default())
    }

    fn on_frame(
        name: &str,
        stream: &mut GeminiStream,
        event: SseEvent,
        out: &mut VecDeque<StreamEvent>,
    ) -> Result<Flow, GatewayError> {
        stream.on_event(name, event, out)
    }

    fn ended_cleanly(stream: &GeminiStream) -> bool {
        stream.finish_seen()
    }

    fn on_end(stream: &mut GeminiStream, out: &mut VecDeque<StreamEvent>) {
        stream.on_end(out);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use serde_json::{json, Value};

    use super::*;
    use crate::completion::FinishReason;
    use crate::provider::media::MediaSettings;
    use crate::provider::{Timeouts, VertexCredentials};

    fn request(value: Value) -> ChatRequest {
        serde_json::from_value(value).unwrap()
    }

    fn ctx() -> AdapterContext {
        AdapterContext {
            name: "google".into(),
            timeouts: Timeouts::default(),
            media: MediaFetcher::new(MediaSettings::default()),
        }
    }

    #[actix_rt::test]
    async fn loopback_media_urls_are_refused_before_any_call() {
        let client = GeminiClient::gemini(
            ctx(),
            GeminiSettings {
                base_url: "http://127.0.0.1:9".into(),
                api_key: Some("k".into()),
            },
        )
        .unwrap();
        let r = request(
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}
            ]}]}),
        );
        let err = client
            .complete(UpstreamRequest {
                request: &r,
                model: "gemini-2.0-flash",
                reasoning_effort: None,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code.as_deref(), Some("media_url_refused"));
    }

    #[actix_rt::test]
    async fn client_round_trips_with_the_mock_upstream() {
        let mock = flowgate_mock_upstream::MockUpstream::start();
        let gemini = GeminiClient::gemini(
            ctx(),
            GeminiSettings {
                base_url: mock.url(),
                api_key: Some("gemini-secret".into()),
            },
        )
        .unwrap();
        let r = request(json!({"model": "m", "messages": [
            {"role": "system", "content": "Extract."},
            {"role": "user", "content": "Jason is 25"}],
            "tools": [{"type": "function", "function": {"name": "User", "parameters": {"type": "object",
                "additionalProperties": false, "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "required": ["name", "age"]}}}],
            "tool_choice": {"type": "function", "function": {"name": "User"}}}));
        let call = |model: &'static str| UpstreamRequest {
            request: &r,
            model,
            reasoning_effort: None,
        };
        let c = gemini.complete(call("gemini-2.0-flash")).await.unwrap();
        let tool_call = &c.choices[0].message.tool_calls[0];
        assert_eq!(tool_call.name, "User");
        assert_eq!(tool_call.arguments, "{\"age\":0,\"name\":\"string\"}");
        assert_eq!(c.choices[0].finish_reason, FinishReason::ToolCalls);
        // 19 prompt characters, 25 of arguments.
        assert_eq!((c.usage.prompt_tokens, c.usage.completion_tokens), (5, 7));
        let sent = &mock.requests()[0];
        assert_eq!(sent.headers["x-goog-api-key"], "gemini-secret");
        assert!(!sent.headers.contains_key("authorization"));

        let events: Vec<StreamEvent> = gemini
            .stream(call("gemini-2.0-flash"))
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        assert!(matches!(&events[0], StreamEvent::ToolCall { name: Some(n), .. } if n == "User"));
        assert!(matches!(
            events[1],
            StreamEvent::Finish {
                reason: FinishReason::ToolCalls,
                ..
            }
        ));
        assert!(matches!(events[2], StreamEvent::Usage(u) if u.completion_tokens == 7));

        let err = gemini
            .complete(call("gemini-2.0-flash;status=429;retry_after=7"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::RateLimited);
        assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(err.upstream_status, Some(429));
        let err = gemini
            .stream(call("gemini-2.0-flash;status=503"))
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind, ErrorKind::Overloaded);
        assert!(err.message.contains("503 UNAVAILABLE"), "{}", err.message);
        let err = gemini
            .complete(call("gemini-2.0-flash;malformed"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamMalformed);

        let err = gemini
            .complete(call("gemini-2.0-flash;status=412"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamAuth);
        assert!(
            err.message.contains("412 FAILED_PRECONDITION: Scripted"),
            "{}",
            err.message
        );

        let keyless = GeminiClient::gemini(
            ctx(),
            GeminiSettings {
                base_url: mock.url(),
                api_key: None,
            },
        )
        .unwrap();
        let err = keyless
            .complete(call("gemini-2.0-flash"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamAuth);

        let settings = VertexSettings {
            project: "p".into(),
            region: "us-central1".into(),
            base_url: mock.url(),
            credentials: VertexCredentials::MetadataServer(mock.url()),
        };
        let tokens = TokenSource::for_provider(&ctx(), &settings.credentials).unwrap();
        let vertex = GeminiClient::vertex(ctx(), settings, tokens).unwrap();
        mock.clear();
        for _ in 0..3 {
            vertex.complete(call("gemini-2.5-pro")).await.unwrap();
        }
        let requests = mock.requests();
        let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/computeMetadata/v1/instance/service-accounts/default/token",
                "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
                "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
                "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
            ]
        );
        let bearer = &requests[1].headers["authorization"];
        assert!(bearer.starts_with("Bearer mock-token-"), "{bearer}");
        assert!(requests[2..]
            .iter()
            .all(|r| &r.headers["authorization"] == bearer));
        // A rejected token is dropped: the next call fetches another.
        let err = vertex
            .complete(call("gemini-2.5-pro;status=401"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamAuth);
        assert!(!err.message.contains("mock-token"), "{}", err.message);
        vertex.complete(call("gemini-2.5-pro")).await.unwrap();
        let requests = mock.requests();
        assert_eq!(
            requests
                .iter()
                .filter(|r| r.path.starts_with("/computeMetadata"))
                .count(),
            2
        );
        assert_ne!(&requests.last().unwrap().headers["authorization"], bearer);
    }

    #[test]
    fn urls_carry_the_model_but_never_the_key() {
        let gemini = GeminiClient::gemini(
            ctx(),
            GeminiSettings {
                base_url: "https://generativelanguage.googleapis.com/".into(),
                api_key: Some("AIza-secret".into()),
            },
        )
        .unwrap();
        assert_eq!(
            gemini.adapter().url("gemini-2.0-flash", false),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"
        );
        assert_eq!(
            gemini.adapter().url("gemini-2.0-flash;status=503", true),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash;status=503:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            gemini.adapter().url("tunedModels/my model", false),
            "https://generativelanguage.googleapis.com/v1beta/tunedModels/my%20model:generateContent"
        );
        assert!(!gemini.adapter().url("m", true).contains("AIza"));
        assert!(!format!("{gemini:?}").contains("AIza"));
        let pinned = GeminiClient::gemini(
            ctx(),
            GeminiSettings {
                base_url: "http://127.0.0.1:1/v1alpha".into(),
                api_key: None,
            },
        )
        .unwrap();
        assert_eq!(
            pinned.adapter().url("m", false),
            "http://127.0.0.1:1/v1alpha/models/m:generateContent"
        );

        let settings = VertexSettings {
            project: "my-project".into(),
            region: "europe-west4".into(),
            base_url: "https://europe-west4-aiplatform.googleapis.com".into(),
            credentials: VertexCredentials::AccessToken("ya29.token".into()),
        };
        let tokens = TokenSource::for_provider(&ctx(), &settings.credentials).unwrap();
        let vertex = GeminiClient::vertex(ctx(), settings, tokens).unwrap();
        assert_eq!(
            vertex.adapter().url("gemini-2.5-pro", false),
            "https://europe-west4-aiplatform.googleapis.com/v1/projects/my-project/locations/europe-west4/publishers/google/models/gemini-2.5-pro:generateContent"
        );
        assert_eq!(
            vertex.adapter().url("endpoints/123", true),
            "https://europe-west4-aiplatform.googleapis.com/v1/projects/my-project/locations/europe-west4/endpoints/123:streamGenerateContent?alt=sse"
        );
        assert!(!format!("{vertex:?}").contains("ya29"));
        let bad =
            TokenSource::for_provider(&ctx(), &VertexCredentials::ServiceAccount("{}".into()))
                .unwrap_err();
        assert!(bad.contains("provider `google`"), "{bad}");
    }
}
