//! The `bedrock` adapter: Amazon Bedrock's Converse and ConverseStream APIs, signed with
//! AWS Signature Version 4, for Claude, Nova, Llama and Mistral models alike.
//!
//! * [`request`] translates the OpenAI request (system prompts, merged alternating turns,
//!   tool calls and results, images and documents as bytes, inference settings, tools and
//!   tool choice per model family, structured output through a forced tool, Claude's
//!   extended thinking);
//! * [`response`] maps the answer back (text, tool calls, finish reason, usage with prompt
//!   cache reads and writes) and turns ConverseStream's event-stream messages into events;
//! * [`sign`] builds the request path and the SigV4 headers;
//! * [`stream`] cuts ConverseStream bodies into event-stream messages for the driver.

mod embeddings;
mod request;
mod response;
mod sign;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::time::SystemTime;

use aws_smithy_types::event_stream::Message;
use serde::Deserialize;

use super::adapter::{self, Adapter, ErrorReply, Flow, Prepared, Secrets};
use super::driver::Driver;
use super::http::{self, HeaderMap};
use super::media::{MediaData, MediaFetcher};
use super::{AdapterContext, BedrockSettings, UpstreamRequest};
use crate::completion::{Completion, StreamEvent};
use crate::error::{ErrorKind, GatewayError};

use request::Translated;
use response::{ConverseResponse, EventMapper};
use sign::Credentials;
use stream::EventStreamFraming;

/// The content type of ConverseStream responses.
const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

/// A Bedrock provider's client.
pub type BedrockClient = Driver<Bedrock>;

/// The Converse wire format, signed with SigV4.
pub struct Bedrock {
    /// The provider's name, for messages.
    name: String,
    settings: BedrockSettings,
    /// `base_url` without a trailing `/`.
    base_url: String,
    media: MediaFetcher,
}

/// What a call keeps: the structured-output tool it added.
pub struct BedrockCall {
    output_tool: Option<String>,
}

impl std::fmt::Debug for Bedrock {
    /// Without the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bedrock")
            .field("name", &self.name)
            .field("region", &self.settings.region)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default, alias = "Message")]
    message: Option<String>,
    /// `com.amazon.coral.service#UnrecognizedClientException`, when the header is missing.
    #[serde(default, rename = "__type")]
    error_type: Option<String>,
}

/// The error type of `x-amzn-ErrorType: ThrottlingException:http://…` or of a body's
/// `__type` (`…#ThrottlingException`).
fn error_type(headers: &http::header::HeaderMap, body: Option<&ErrorBody>) -> String {
    headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(':').next().unwrap_or(v).trim().to_string())
        .filter(|t| !t.is_empty())
        .or_else(|| {
            body.and_then(|b| b.error_type.as_deref())
                .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
        })
        .unwrap_or_default()
}

impl Driver<Bedrock> {
    pub fn new(ctx: AdapterContext, settings: BedrockSettings) -> Result<Self, String> {
        if settings.region.trim().is_empty() {
            return Err(format!("provider `{}`: `region` is empty", ctx.name));
        }
        let adapter = Bedrock {
            base_url: settings.base_url.trim_end_matches('/').to_string(),
            name: ctx.name.clone(),
            settings,
            media: ctx.media,
        };
        Driver::build(ctx.name, ctx.timeouts, adapter)
    }
}

impl Bedrock {
    fn secrets(&self) -> [&str; 3] {
        [
            self.settings.secret_access_key.as_deref().unwrap_or(""),
            self.settings.session_token.as_deref().unwrap_or(""),
            self.settings.access_key_id.as_deref().unwrap_or(""),
        ]
    }

    /// Removes the credentials from text that may echo them.
    fn scrub(&self, text: &str) -> String {
        http::scrub(text, &self.secrets())
    }

    fn credentials(&self) -> Result<Credentials<'_>, GatewayError> {
        match (
            self.settings.access_key_id.as_deref(),
            self.settings.secret_access_key.as_deref(),
        ) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
                access_key_id,
                secret_access_key,
                session_token: self.settings.session_token.as_deref(),
            }),
            _ => Err(GatewayError::new(
                ErrorKind::UpstreamAuth,
                format!("provider `{}` has no AWS credentials", self.name),
            )),
        }
    }

    /// Loads the request's media, then translates it.
    async fn translate(&self, call: &UpstreamRequest<'_>) -> Result<Translated, GatewayError> {
        let urls = request::media_urls(call.request);
        let loaded = futures::future::try_join_all(urls.iter().map(|u| self.media.load(u))).await?;
        let media: HashMap<String, MediaData> = urls.into_iter().zip(loaded).collect();
        request::translate(call.request, call.model, call.reasoning_effort, &media)
    }

    /// The signed request, ready to send.
    fn signed_request<'c>(
        &self,
        http: &'c http::Client,
        model: &str,
        body: Vec<u8>,
        stream: bool,
        time: SystemTime,
    ) -> Result<http::RequestBuilder<'c>, GatewayError> {
        let accept = if stream {
            EVENT_STREAM
        } else {
            "application/json"
        };
        self.signed_post(http, &sign::model_path(model, stream), body, accept, time)
    }

    /// A signed `POST` of a JSON `body` to `path` (percent-encoded).
    fn signed_post<'c>(
        &self,
        http: &'c http::Client,
        path: &str,
        body: Vec<u8>,
        accept: &str,
        time: SystemTime,
    ) -> Result<http::RequestBuilder<'c>, GatewayError> {
        let url = format!("{}{path}", self.base_url);
        let headers = sign::sigv4_headers(
            "POST",
            &url,
            &[("content-type", "application/json")],
            &body,
            self.credentials()?,
            &self.settings.region,
            time,
        )
        .map_err(|e| {
            GatewayError::internal(format!("provider `{}`: {}", self.name, self.scrub(&e)))
        })?;
        let mut request = http
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, accept);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        Ok(request.body(body))
    }
}

impl Adapter for Bedrock {
    type Call = BedrockCall;
    type Response = ConverseResponse;
    type Framing = EventStreamFraming;
    type Stream = EventMapper;

    const END_MARK: &'static str = "messageStop";

    async fn prepare<'c>(
        &'c self,
        http: &'c http::Client,
        _name: &'c str,
        call: UpstreamRequest<'c>,
        stream: bool,
    ) -> Result<Prepared<'c, BedrockCall>, GatewayError> {
        let translated = self.translate(&call).await?;
        let body = serde_json::to_vec(&translated.body)
            .map_err(|e| GatewayError::internal(format!("cannot encode the request: {e}")))?;
        let request = self.signed_request(http, call.model, body, stream, SystemTime::now())?;
        Ok(Prepared {
            request,
            call: BedrockCall {
                output_tool: translated.output_tool,
            },
        })
    }

    fn secrets<'a>(&'a self, _call: &'a BedrockCall) -> Secrets<'a> {
        self.secrets()
    }

    fn error_reply(
        &self,
        _call: &BedrockCall,
        status: u16,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> ErrorReply {
        let (body, text) = match body {
            Some(cut) => {
                let body = serde_json::from_slice::<ErrorBody>(cut).ok();
                let text = body
                    .as_ref()
                    .and_then(|b| b.message.clone())
                    .unwrap_or_else(|| String::from_utf8_lossy(cut).chars().take(500).collect());
                (body, text)
            }
            None => (None, String::new()),
        };
        let error_type = error_type(headers, body.as_ref());
        let kind = response::error_kind(&error_type, status, &text);
        // Auth messages may quote the key or the account: the driver never passes them on.
        ErrorReply::new(kind, Some(error_type).filter(|t| !t.is_empty()), text)
    }

    fn completion(
        &self,
        name: &str,
        call: &BedrockCall,
        response: ConverseResponse,
    ) -> Result<Completion, GatewayError> {
        response::completion_from(response, call.output_tool.as_deref())
            .map_err(|what| adapter::malformed(name, what))
    }

    fn open_stream(
        &self,
        _name: &str,
        call: BedrockCall,
        _headers: &HeaderMap,
    ) -> Result<EventMapper, GatewayError> {
        Ok(EventMapper::new(call.output_tool))
    }

    fn on_frame(
        name: &str,
        mapper: &mut EventMapper,
        message: Message,
        out: &mut VecDeque<StreamEvent>,
    ) -> Result<Flow, GatewayError> {
        stream::on_message(name, mapper, message, out)
    }

    fn ended_cleanly(mapper: &EventMapper) -> bool {
        mapper.stopped
    }
}

#[cfg(test)]
mod tests {
    use super::request::{document_name, media_urls, translate, Family};
    use super::response::{completion_from, error_kind, finish_reason};
    use super::*;
    use crate::completion::{FinishReason, Usage};
    use crate::provider::media::{decode_data_uri, MediaSettings};
    use crate::provider::Timeouts;
    use crate::wire::ChatRequest;
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    use bytes::Bytes;
    use futures::StreamExt;
    use serde_json::{json, Value};
    use std::time::Duration;
    use tokio::time::Instant;

    const PNG: &str = "data:image/png;base64,iVBORw0KGgo=";
    const PDF: &str = "data:application/pdf;base64,JVBERi0xLjQK";

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    /// The Converse JSON for a request, media decoded from data URIs.
    fn converse(body: Value, model: &str, effort: Option<&str>) -> Result<Value, GatewayError> {
        converse_with_output(body, model, effort).map(|(json, _)| json)
    }

    fn converse_with_output(
        body: Value,
        model: &str,
        effort: Option<&str>,
    ) -> Result<(Value, Option<String>), GatewayError> {
        let request = request(body);
        let media: HashMap<String, MediaData> = media_urls(&request)
            .into_iter()
            .map(|url| {
                let data = decode_data_uri(&url).unwrap();
                (url, data)
            })
            .collect();
        let translated = translate(&request, model, effort, &media)?;
        Ok((
            serde_json::to_value(&translated.body).unwrap(),
            translated.output_tool,
        ))
    }

    fn weather_tool() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
    }

    const CLAUDE: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";
    const CLAUDE_THINKING: &str = "us.anthropic.claude-sonnet-4-20250514-v1:0";
    const LLAMA: &str = "meta.llama3-1-8b-instruct-v1:0";
    const NOVA: &str = "amazon.nova-lite-v1:0";
    const MISTRAL: &str = "mistral.mistral-large-2407-v1:0";

    #[test]
    fn request_translates_roles_tools_media_and_settings() {
        let json = converse(
            json!({
                "model": "x",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Weather in Paris? See the picture."},
                        {"type": "image_url", "image_url": {"url": PNG}},
                        {"type": "file", "file": {"file_data": PDF, "filename": "Q3 report_v2.final.pdf"}}
                    ]},
                    {"role": "assistant", "content": "Let me check.", "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call.2", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
                    {"role": "tool", "tool_call_id": "call.2", "content": "sunny"},
                    {"role": "user", "content": "Thanks!"}
                ],
                "temperature": 1.5,
                "top_p": 0.9,
                "max_tokens": 100,
                "max_completion_tokens": 200,
                "stop": "END",
                "tools": [weather_tool()],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "seed": 3,
                "metadata": {"a": "b"}
            }),
            CLAUDE,
            None,
        )
        .unwrap();
        assert_eq!(
            json,
            json!({
                "messages": [
                    {"role": "user", "content": [
                        {"text": "Weather in Paris? See the picture."},
                        {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
                        {"document": {"format": "pdf", "name": "Q3 report v2 final", "source": {"bytes": "JVBERi0xLjQK"}}}
                    ]},
                    {"role": "assistant", "content": [
                        {"text": "Let me check."},
                        {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}},
                        {"toolUse": {"toolUseId": "call_2", "name": "get_weather", "input": {}}}
                    ]},
                    {"role": "user", "content": [
                        {"toolResult": {"toolUseId": "call_1", "content": [{"json": {"temp": 21}}]}},
                        {"toolResult": {"toolUseId": "call_2", "content": [{"text": "sunny"}]}},
                        {"text": "Thanks!"}
                    ]}
                ],
                "system": [{"text": "Be brief."}, {"text": "Use metric."}],
                "inferenceConfig": {"maxTokens": 200, "temperature": 1.0, "topP": 0.9, "stopSequences": ["END"]},
                "toolConfig": {
                    "tools": [{"toolSpec": {"name": "get_weather", "description": "Weather",
                        "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}}],
                    "toolChoice": {"tool": {"name": "get_weather"}}
                }
            })
        );
    }

    #[test]
    fn turns_alternate_and_start_with_the_user() {
        let json = converse(
            json!({"model": "x", "messages": [
                {"role": "assistant", "content": "Hello! "},
                {"role": "user", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "text", "text": "  "}]},
                {"role": "assistant", "content": ""},
                {"role": "assistant", "content": "Sure, "}
            ]}),
            LLAMA,
            None,
        )
        .unwrap();
        assert_eq!(
            json["messages"],
            json!([
                {"role": "user", "content": [{"text": "."}]},
                {"role": "assistant", "content": [{"text": "Hello! "}]},
                {"role": "user", "content": [{"text": "a"}, {"text": "b"}]},
                {"role": "assistant", "content": [{"text": "Sure,"}]}
            ])
        );
        assert!(json.get("system").is_none() && json.get("inferenceConfig").is_none());
        let err = converse(
            json!({"model": "x", "messages": [{"role": "system", "content": "only"}]}),
            LLAMA,
            None,
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest);
    }

    #[test]
    fn tool_choice_follows_the_model_family() {
        let body = |choice: Value| {
            json!({"model": "x", "messages": [{"role": "user", "content": "hi"}],
                "tools": [weather_tool(), {"type": "function", "function": {"name": "other"}}],
                "tool_choice": choice})
        };
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        let choice = |model: &str, choice: Value| {
            let json = converse(body(choice), model, None).unwrap();
            let names: Vec<String> = json["toolConfig"]["tools"]
                .as_array()
                .map(|tools| {
                    tools
                        .iter()
                        .map(|t| t["toolSpec"]["name"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default();
            (json["toolConfig"]["toolChoice"].clone(), names)
        };
        assert_eq!(
            choice(CLAUDE, json!("required")),
            (
                json!({"any": {}}),
                vec!["get_weather".into(), "other".into()]
            )
        );
        assert_eq!(choice(CLAUDE, json!("auto")).0, Value::Null);
        assert_eq!(
            choice(NOVA, named.clone()),
            (
                json!({"tool": {"name": "get_weather"}}),
                vec!["get_weather".into(), "other".into()]
            )
        );
        assert_eq!(
            choice(MISTRAL, named.clone()),
            (json!({"any": {}}), vec!["get_weather".into()])
        );
        assert_eq!(
            choice(LLAMA, named),
            (Value::Null, vec!["get_weather".into()])
        );
        assert_eq!(
            choice(LLAMA, json!("required")),
            (Value::Null, vec!["get_weather".into(), "other".into()])
        );
        // none: no tools at all…
        let json = converse(body(json!("none")), CLAUDE, None).unwrap();
        assert!(json.get("toolConfig").is_none());
        // …unless the conversation holds tool blocks, which need a toolConfig.
        let json = converse(
            json!({"model": "x", "tool_choice": "none", "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"}
            ]}),
            CLAUDE,
            None,
        )
        .unwrap();
        assert_eq!(json["toolConfig"]["tools"][0]["toolSpec"]["name"], "lookup");
        assert!(json["toolConfig"].get("toolChoice").is_none());
        assert!(json["system"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Do not call any tool"));
        // Tool results that are not JSON objects are text.
        assert_eq!(
            json["messages"][2]["content"][0]["toolResult"]["content"],
            json!([{"text": "42"}])
        );
    }

    #[test]
    fn response_formats_become_a_forced_tool_or_an_instruction() {
        let schema = json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]});
        let body = json!({"model": "x", "messages": [{"role": "user", "content": "Jason"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "User.Detail", "schema": schema}}});
        let (json, output) = converse_with_output(body.clone(), CLAUDE, None).unwrap();
        assert_eq!(output.as_deref(), Some("User_Detail"));
        assert_eq!(
            json["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"],
            schema
        );
        assert_eq!(
            json["toolConfig"]["toolChoice"],
            json!({"tool": {"name": "User_Detail"}})
        );
        // With the caller's tools: some tool must be called, the output tool among them.
        let mut with_tools = body.clone();
        with_tools["tools"] = json!([weather_tool()]);
        let (json, _) = converse_with_output(with_tools, NOVA, None).unwrap();
        assert_eq!(json["toolConfig"]["toolChoice"], json!({"any": {}}));
        assert_eq!(json["toolConfig"]["tools"].as_array().unwrap().len(), 2);
        // Llama cannot be forced: the schema goes into the system prompt.
        let (json, output) = converse_with_output(body, LLAMA, None).unwrap();
        assert_eq!(output, None);
        assert!(json.get("toolConfig").is_none());
        let system = json["system"][0]["text"].as_str().unwrap();
        assert!(system.contains("\"required\":[\"name\"]"), "{system}");
        let json = converse(
            json!({"model": "x", "messages": [{"role": "user", "content": "hi"}],
                "response_format": {"type": "json_object"}}),
            NOVA,
            None,
        )
        .unwrap();
        assert!(json["system"][0]["text"]
            .as_str()
            .unwrap()
            .contains("JSON object"));
    }

    #[test]
    fn reasoning_effort_turns_on_claude_thinking() {
        let body = json!({"model": "x", "messages": [{"role": "user", "content": "think"}],
            "temperature": 0.2, "top_p": 0.5});
        let json = converse(body.clone(), CLAUDE_THINKING, Some("medium")).unwrap();
        assert_eq!(
            json["additionalModelRequestFields"],
            json!({"thinking": {"type": "enabled", "budget_tokens": 8192}})
        );
        assert_eq!(json["inferenceConfig"], json!({"maxTokens": 16384}));
        let mut limited = body.clone();
        limited["max_completion_tokens"] = json!(3000);
        limited["reasoning_effort"] = json!("high");
        let json = converse(limited, "anthropic.claude-3-7-sonnet-20250219-v1:0", None).unwrap();
        assert_eq!(
            json["additionalModelRequestFields"]["thinking"]["budget_tokens"],
            2999
        );
        assert_eq!(json["inferenceConfig"]["maxTokens"], 3000);
        // Models without thinking keep their settings.
        for model in [CLAUDE, NOVA, LLAMA] {
            let json = converse(body.clone(), model, Some("high")).unwrap();
            assert!(
                json.get("additionalModelRequestFields").is_none(),
                "{model}"
            );
            assert_eq!(json["inferenceConfig"]["temperature"], 0.2);
        }
    }

    #[test]
    fn unsupported_inputs_are_refused() {
        let with_part =
            |part: Value| json!({"model": "x", "messages": [{"role": "user", "content": [part]}]});
        let err = converse(
            with_part(
                json!({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}),
            ),
            CLAUDE,
            None,
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UnsupportedByModel);
        assert_eq!(err.param.as_deref(), Some("messages[0].content[0]"));
        let err = converse(
            with_part(
                json!({"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}),
            ),
            CLAUDE,
            None,
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UnsupportedByModel);
        let err = converse(
            with_part(json!({"type": "file", "file": {"file_id": "file-1"}})),
            CLAUDE,
            None,
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UnsupportedByModel);
        let mut two = with_part(json!({"type": "text", "text": "x"}));
        two["n"] = json!(2);
        assert_eq!(
            converse(two, CLAUDE, None).unwrap_err().kind,
            ErrorKind::UnsupportedByModel
        );
        // Raw base64 file data with a file name, and an octet-stream image sniffed.
        let json = converse(
            json!({"model": "x", "messages": [{"role": "user", "content": [
                {"type": "file", "file": {"file_data": "JVBERi0xLjQK", "filename": "a.pdf"}},
                {"type": "file", "file": {"file_data": "JVBERi0xLjQK", "filename": "a.pdf"}},
                {"type": "image_url", "image_url": {"url": "data:application/octet-stream;base64,/9j/4AAQ"}}
            ]}]}),
            CLAUDE,
            None,
        )
        .unwrap();
        let content = &json["messages"][0]["content"];
        assert_eq!(content[0]["document"]["name"], "a");
        assert_eq!(content[1]["document"]["name"], "a (2)");
        assert_eq!(content[2]["image"]["format"], "jpeg");
    }

    #[test]
    fn document_names_follow_bedrock_rules() {
        assert_eq!(document_name(Some("report.pdf")), "report");
        assert_eq!(
            document_name(Some("  My  file_(v2) [draft]!!.pdf")),
            "My file (v2) [draft]"
        );
        assert_eq!(document_name(Some("über.pdf")), "ber");
        assert_eq!(document_name(Some("...")), "document");
        assert_eq!(document_name(None), "document");
        assert_eq!(document_name(Some(&"x".repeat(300))).len(), 200);
    }

    #[test]
    fn families_are_recognised() {
        assert_eq!(Family::of(CLAUDE), Family::Claude);
        assert_eq!(Family::of(CLAUDE_THINKING), Family::Claude);
        assert_eq!(Family::of(NOVA), Family::Nova);
        assert_eq!(Family::of("eu.amazon.nova-pro-v1:0"), Family::Nova);
        assert_eq!(Family::of("amazon.titan-text-express-v1"), Family::Other);
        assert_eq!(Family::of(LLAMA), Family::Llama);
        assert_eq!(Family::of(MISTRAL), Family::Mistral);
        assert_eq!(
            Family::of("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-2-11b-instruct-v1:0"),
            Family::Llama
        );
    }

    #[test]
    fn response_maps_text_tool_calls_and_usage() {
        let response: ConverseResponse = serde_json::from_value(json!({
            "output": {"message": {"role": "assistant", "content": [
                {"text": "Checking "}, {"text": "now."},
                {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "s"}}},
                {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}}
            ]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 45,
                "cacheReadInputTokens": 20, "cacheWriteInputTokens": 10},
            "metrics": {"latencyMs": 123}
        }))
        .unwrap();
        let c = completion_from(response, None).unwrap();
        let choice = &c.choices[0];
        assert_eq!(choice.message.content.as_deref(), Some("Checking now."));
        assert_eq!(choice.message.tool_calls[0].id, "tooluse_1");
        assert_eq!(
            choice.message.tool_calls[0].arguments,
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(choice.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            c.usage,
            Usage {
                prompt_tokens: 40,
                completion_tokens: 5,
                cached_tokens: 20,
                cache_write_tokens: 10,
                reasoning_tokens: 0,
            }
        );

        // The structured-output tool's input is the content.
        let response: ConverseResponse = serde_json::from_value(json!({
            "output": {"message": {"content": [{"toolUse": {"toolUseId": "t", "name": "User", "input": {"name": "Jason"}}}]}},
            "stopReason": "tool_use", "usage": {"inputTokens": 1, "outputTokens": 2}
        }))
        .unwrap();
        let c = completion_from(response, Some("User")).unwrap();
        assert_eq!(
            c.choices[0].message.content.as_deref(),
            Some("{\"name\":\"Jason\"}")
        );
        assert!(c.choices[0].message.tool_calls.is_empty());
        assert_eq!(c.choices[0].finish_reason, FinishReason::Stop);

        let response: ConverseResponse =
            serde_json::from_value(json!({"stopReason": "end_turn"})).unwrap();
        assert!(completion_from(response, None).is_err());
        for (reason, expected) in [
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("guardrail_intervened", FinishReason::ContentFilter),
            ("content_filtered", FinishReason::ContentFilter),
            ("tool_use", FinishReason::ToolCalls),
        ] {
            assert_eq!(finish_reason(reason), expected, "{reason}");
        }
    }

    #[test]
    fn errors_map_to_kinds() {
        for (error_type, status, message, kind) in [
            (
                "ThrottlingException",
                429,
                "Too many requests",
                ErrorKind::RateLimited,
            ),
            (
                "ServiceUnavailableException",
                503,
                "",
                ErrorKind::Overloaded,
            ),
            ("ModelNotReadyException", 429, "", ErrorKind::Overloaded),
            (
                "ValidationException",
                400,
                "Input is too long for requested model.",
                ErrorKind::ContextTooLong,
            ),
            (
                "ValidationException",
                400,
                "prompt is too long: 300000 tokens",
                ErrorKind::ContextTooLong,
            ),
            (
                "ValidationException",
                400,
                "Malformed input request",
                ErrorKind::UpstreamBadRequest,
            ),
            ("AccessDeniedException", 403, "", ErrorKind::UpstreamAuth),
            (
                "UnrecognizedClientException",
                403,
                "",
                ErrorKind::UpstreamAuth,
            ),
            (
                "ResourceNotFoundException",
                404,
                "",
                ErrorKind::UpstreamBadRequest,
            ),
            ("ModelErrorException", 424, "", ErrorKind::UpstreamServer),
            (
                "InternalServerException",
                500,
                "",
                ErrorKind::UpstreamServer,
            ),
            (
                "modelStreamErrorException",
                424,
                "",
                ErrorKind::UpstreamServer,
            ),
            ("throttlingException", 429, "", ErrorKind::RateLimited),
            ("", 503, "", ErrorKind::Overloaded),
            ("", 502, "", ErrorKind::UpstreamServer),
        ] {
            assert_eq!(
                error_kind(error_type, status, message),
                kind,
                "{error_type} {status}"
            );
        }
    }

    // ---- the client: signing, paths, errors, streams ----

    fn client(base_url: &str, session_token: Option<&str>) -> BedrockClient {
        BedrockClient::new(
            AdapterContext {
                name: "aws".into(),
                timeouts: Timeouts::default(),
                media: MediaFetcher::new(MediaSettings::default()),
            },
            BedrockSettings {
                region: "us-east-1".into(),
                access_key_id: Some("AKIDEXAMPLE".into()),
                secret_access_key: Some("bedrock-secret".into()),
                session_token: session_token.map(str::to_string),
                base_url: base_url.into(),
            },
        )
        .unwrap()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn sha256(data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(data).to_vec()
    }

    fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut block = [0u8; 64];
        if key.len() > 64 {
            block[..32].copy_from_slice(&sha256(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let inner: Vec<u8> = block
            .iter()
            .map(|b| b ^ 0x36)
            .chain(data.iter().copied())
            .collect();
        let outer: Vec<u8> = block
            .iter()
            .map(|b| b ^ 0x5c)
            .chain(sha256(&inner))
            .collect();
        sha256(&outer)
    }

    #[test]
    fn paths_encode_model_ids() {
        assert_eq!(
            sign::model_path("anthropic.claude-3-5-sonnet-20240620-v1:0", false),
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
        );
        assert_eq!(
            sign::model_path("arn:aws:bedrock:us-east-1:1:inference-profile/us.x-v1:0", true),
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x-v1%3A0/converse-stream"
        );
        assert_eq!(sign::encode_segment("m;status=429"), "m%3Bstatus%3D429");
    }

    #[test]
    fn requests_carry_a_valid_sigv4_signature() {
        let client = client("http://127.0.0.1:9/", None);
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200); // 2024-01-01
        let body = br#"{"messages":[]}"#.to_vec();
        let http = http::client("aws", &Timeouts::default()).unwrap();
        let request = client
            .adapter()
            .signed_request(
                &http,
                "anthropic.claude-3-5-sonnet-20240620-v1:0",
                body.clone(),
                false,
                time,
            )
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            request.uri().to_string(),
            "http://127.0.0.1:9/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
        );
        let headers = request.headers();
        assert_eq!(headers["x-amz-date"], "20240101T000000Z");
        assert_eq!(headers["content-type"], "application/json");
        assert!(headers.get("x-amz-security-token").is_none());
        let auth = headers["authorization"].to_str().unwrap();
        let prefix =
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/bedrock/aws4_request, \
                      SignedHeaders=content-type;host;x-amz-date, Signature=";
        assert!(auth.starts_with(prefix), "{auth}");
        assert!(!auth.contains("bedrock-secret"));

        // The signature, recomputed independently: Bedrock wants the path encoded twice.
        let canonical = format!(
            "POST\n/model/anthropic.claude-3-5-sonnet-20240620-v1%253A0/converse\n\n\
             content-type:application/json\nhost:127.0.0.1:9\nx-amz-date:20240101T000000Z\n\n\
             content-type;host;x-amz-date\n{}",
            hex(&sha256(&body))
        );
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n20240101T000000Z\n20240101/us-east-1/bedrock/aws4_request\n{}",
            hex(&sha256(canonical.as_bytes()))
        );
        let mut key = hmac(b"AWS4bedrock-secret", b"20240101");
        for part in ["us-east-1", "bedrock", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        assert_eq!(&auth[prefix.len()..], hex(&hmac(&key, to_sign.as_bytes())));

        // With a session token, it is sent and signed.
        let client = super::tests::client("http://127.0.0.1:9", Some("session-token-xyz"));
        let request = client
            .adapter()
            .signed_request(&http, NOVA, body, true, time)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            request.headers()["x-amz-security-token"],
            "session-token-xyz"
        );
        assert_eq!(request.headers()["accept"], EVENT_STREAM);
        let auth = request.headers()["authorization"].to_str().unwrap();
        assert!(auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token"));
        assert!(request
            .uri()
            .path()
            .ends_with("/amazon.nova-lite-v1%3A0/converse-stream"));
        assert!(!format!("{client:?}").contains("bedrock-secret"));
    }

    fn frame(headers: &[(&'static str, &str)], payload: Value) -> Vec<u8> {
        let message = headers.iter().fold(
            Message::new(payload.to_string().into_bytes()),
            |message, (name, value)| {
                message.add_header(Header::new(
                    *name,
                    HeaderValue::String(value.to_string().into()),
                ))
            },
        );
        let mut out = Vec::new();
        aws_smithy_eventstream::frame::write_message_to(&message, &mut out).unwrap();
        out
    }

    fn event(event_type: &'static str, payload: Value) -> Vec<u8> {
        frame(
            &[
                (":event-type", event_type),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload,
        )
    }

    /// Feeds `bytes` to a stream state in pieces of `piece` bytes; collects what comes out.
    async fn run_stream(
        bytes: Vec<u8>,
        piece: usize,
        output_tool: Option<&str>,
    ) -> Vec<Result<StreamEvent, GatewayError>> {
        let chunks: Vec<Result<Bytes, http::Error>> = bytes
            .chunks(piece)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        crate::provider::driver::events::<Bedrock>(
            "aws".into(),
            futures::stream::iter(chunks).boxed(),
            EventMapper::new(output_tool.map(str::to_string)),
            Duration::from_secs(5),
            Instant::now() + Duration::from_secs(5),
        )
        .collect()
        .await
    }

    fn full_stream() -> Vec<u8> {
        [
            event("messageStart", json!({"role": "assistant", "p": "abc"})),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "lo"}}),
            ),
            event("contentBlockStop", json!({"contentBlockIndex": 0})),
            event(
                "contentBlockStart",
                json!({"contentBlockIndex": 1,
                "start": {"toolUse": {"toolUseId": "tooluse_9", "name": "get_weather"}}}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"city\":"}}}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"Paris\"}"}}}),
            ),
            event("contentBlockStop", json!({"contentBlockIndex": 1})),
            event("messageStop", json!({"stopReason": "tool_use"})),
            event(
                "metadata",
                json!({"usage": {"inputTokens": 7, "outputTokens": 3, "totalTokens": 12,
                "cacheReadInputTokens": 2}, "metrics": {"latencyMs": 40}}),
            ),
        ]
        .concat()
    }

    #[actix_rt::test]
    async fn stream_frames_become_events_whatever_the_chunking() {
        for piece in [1, 7, 100, 100_000] {
            let events: Vec<StreamEvent> = run_stream(full_stream(), piece, None)
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
            assert_eq!(
                events,
                vec![
                    StreamEvent::Content {
                        index: 0,
                        text: "Hel".into()
                    },
                    StreamEvent::Content {
                        index: 0,
                        text: "lo".into()
                    },
                    StreamEvent::ToolCall {
                        index: 0,
                        call: 0,
                        id: Some("tooluse_9".into()),
                        name: Some("get_weather".into()),
                        arguments: String::new(),
                    },
                    StreamEvent::ToolCall {
                        index: 0,
                        call: 0,
                        id: None,
                        name: None,
                        arguments: "{\"city\":".into()
                    },
                    StreamEvent::ToolCall {
                        index: 0,
                        call: 0,
                        id: None,
                        name: None,
                        arguments: "\"Paris\"}".into()
                    },
                    StreamEvent::Finish {
                        index: 0,
                        reason: FinishReason::ToolCalls
                    },
                    StreamEvent::Usage(Usage {
                        prompt_tokens: 9,
                        completion_tokens: 3,
                        cached_tokens: 2,
                        ..Usage::default()
                    }),
                ],
                "piece {piece}"
            );
        }
        // The structured-output tool streams as content and finishes with `stop`.
        let events: Vec<StreamEvent> = run_stream(full_stream(), 50, Some("get_weather"))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let content: String = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Content { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(content, "Hello{\"city\":\"Paris\"}");
        assert!(events.contains(&StreamEvent::Finish {
            index: 0,
            reason: FinishReason::Stop
        }));
        assert!(!events
            .iter()
            .any(|e| matches!(e, StreamEvent::ToolCall { .. })));
    }

    #[actix_rt::test]
    async fn stream_exceptions_bad_frames_and_cuts_are_errors() {
        // An exception after some content: the content, then the error, mapped by type.
        let bytes = [
            event("messageStart", json!({"role": "assistant"})),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
            ),
            frame(
                &[
                    (":exception-type", "throttlingException"),
                    (":content-type", "application/json"),
                    (":message-type", "exception"),
                ],
                json!({"message": "Too many tokens per minute"}),
            ),
        ]
        .concat();
        let out = run_stream(bytes, 100_000, None).await;
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], Ok(StreamEvent::Content { text, .. }) if text == "Hi"));
        let err = out[1].as_ref().unwrap_err();
        assert_eq!(err.kind, ErrorKind::RateLimited);
        assert_eq!(err.upstream_status, Some(429));
        assert!(
            err.message.contains("throttlingException"),
            "{}",
            err.message
        );

        let bytes = frame(
            &[
                (":exception-type", "modelStreamErrorException"),
                (":message-type", "exception"),
            ],
            json!({"message": "boom"}),
        );
        let out = run_stream(bytes, 10, None).await;
        assert_eq!(out[0].as_ref().unwrap_err().kind, ErrorKind::UpstreamServer);

        // A corrupted CRC.
        let mut bytes = event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "x"}}),
        );
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let out = run_stream(bytes, 100_000, None).await;
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].as_ref().unwrap_err().kind,
            ErrorKind::UpstreamMalformed
        );

        // Cut before messageStop, or mid-frame.
        let mut cut = full_stream();
        cut.truncate(cut.len() - 10);
        let out = run_stream(cut, 64, None).await;
        let err = out.last().unwrap().as_ref().unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamConnection);
        // After messageStop, a metadata frame cut right after its prelude.
        let metadata = event("metadata", json!({"usage": {"inputTokens": 1}}));
        let bytes = [
            event("messageStop", json!({"stopReason": "end_turn"})),
            metadata[..12].to_vec(),
        ]
        .concat();
        let out = run_stream(bytes, 100_000, None).await;
        assert!(matches!(out[0], Ok(StreamEvent::Finish { .. })));
        assert_eq!(
            out[1].as_ref().unwrap_err().kind,
            ErrorKind::UpstreamConnection
        );
        // A frame length over the limit.
        let mut huge = vec![0u8; 16];
        huge[..4].fill(0xff);
        let out = run_stream(huge, 100_000, None).await;
        assert_eq!(
            out[0].as_ref().unwrap_err().kind,
            ErrorKind::UpstreamMalformed
        );
        let bytes = event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "x"}}),
        );
        let out = run_stream(bytes, 100_000, None).await;
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[1].as_ref().unwrap_err().kind,
            ErrorKind::UpstreamConnection
        );
    }

    #[actix_rt::test]
    async fn http_errors_are_mapped_and_never_echo_credentials() {
        let upstream = flowgate_mock_upstream::MockUpstream::start();
        let client = client(&upstream.url(), Some("session-token-xyz"));
        let request =
            request(json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]}));
        let call = |model: &'static str| UpstreamRequest {
            request: &request,
            model,
            reasoning_effort: None,
        };
        let err = client
            .complete(call(
                "anthropic.claude-3-5-haiku-20241022-v1:0;status=429;retry_after=3",
            ))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::RateLimited);
        assert_eq!(err.upstream_status, Some(429));
        assert_eq!(err.retry_after, Some(Duration::from_secs(3)));
        assert!(
            err.message.contains("ThrottlingException"),
            "{}",
            err.message
        );
        let err = client
            .complete(call("anthropic.claude-3-5-haiku-20241022-v1:0;status=413"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ContextTooLong);
        let err = client
            .stream(call("amazon.nova-lite-v1:0;status=403"))
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind, ErrorKind::UpstreamAuth);
        assert!(!err.message.contains("AKIDEXAMPLE") && !err.message.contains("bedrock-secret"));
        let err = client
            .complete(call("amazon.nova-lite-v1:0;malformed"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamMalformed);

        let answer = client.complete(call(NOVA)).await.unwrap();
        assert_eq!(answer.choices[0].message.content.as_deref(), Some("hi"));
        let sent = &upstream.requests()[4];
        assert_eq!(sent.path, "/model/amazon.nova-lite-v1%3A0/converse");
        assert_eq!(sent.headers["x-amz-security-token"], "session-token-xyz");
        assert_eq!(sent.body["messages"][0]["content"][0]["text"], "hi");
    }

    mod decoding_properties {
        use super::*;
        use proptest::prelude::*;

        fn decode(bytes: Vec<u8>, piece: usize) -> Vec<Result<StreamEvent, GatewayError>> {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
                .block_on(run_stream(bytes, piece, None))
        }

        proptest! {
            // Arbitrary bytes: no panic, and the stream ends (an error, never a hang).
            #[test]
            fn arbitrary_bytes_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                piece in 1usize..64,
            ) {
                let out = decode(bytes, piece);
                prop_assert!(out.len() <= 2048);
            }

            // A valid stream with bytes flipped, cut or with a forged length: the events
            // before the damage, then at most one error.
            #[test]
            fn damaged_streams_end_with_one_error(
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
                cut in any::<prop::sample::Index>(),
                piece in 1usize..97,
            ) {
                let mut bytes = full_stream();
                for (at, value) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] ^= value;
                }
                bytes.truncate(cut.index(bytes.len() + 1));
                let out = decode(bytes, piece);
                let errors = out.iter().filter(|r| r.is_err()).count();
                prop_assert!(errors <= 1, "{out:?}");
                if errors == 1 {
                    prop_assert!(out.last().unwrap().is_err(), "{out:?}");
                }
            }

            // The same stream in any piece size decodes the same.
            #[test]
            fn piece_size_does_not_matter(piece in 1usize..300) {
                let whole = format!("{:?}", decode(full_stream(), usize::MAX));
                prop_assert_eq!(format!("{:?}", decode(full_stream(), piece)), whole);
            }
        }
    }
}
