//! The `openai` adapter: OpenAI's Chat Completions API and every API that copies it.

use std::collections::VecDeque;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::{timeout, Instant};

use super::http::{self, kind_for_status};
use super::sse::SseDecoder;
use super::{
    AdapterContext, AzureSettings, EventStream, OpenAiSettings, Timeouts, UpstreamRequest,
};
use crate::completion::{
    AssistantMessage, Choice, Completion, FinishReason, StreamEvent, ToolCallOut, Usage,
};
use crate::error::{ErrorKind, GatewayError};
use crate::wire::{Message, ResponseFormat, Stop, Tool, ToolChoice};

/// Upstream error bodies longer than this are cut before parsing.
const MAX_ERROR_BODY: usize = 64 * 1024;

#[derive(Debug)]
pub struct OpenAiClient {
    name: String,
    settings: OpenAiSettings,
    timeouts: Timeouts,
    endpoint: Endpoint,
    http: reqwest::Client,
}

/// Where requests go and how they authenticate.
#[derive(Debug)]
enum Endpoint {
    /// `<base_url>/chat/completions`, `Authorization: Bearer`.
    OpenAi { url: String },
    /// `<endpoint>/openai/deployments/<model>/chat/completions?api-version=…`, `api-key`.
    Azure {
        endpoint: String,
        api_version: String,
    },
}

// ---- wire types, private to this module ----

#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: &'a [Message],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptionsBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a Stop>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logit_bias: Option<&'a serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a [Tool]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'a ToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a ResponseFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'a str>,
}

#[derive(Serialize)]
struct StreamOptionsBody {
    include_usage: bool,
}

#[derive(Deserialize)]
struct ChatResponse {
    #[serde(default)]
    choices: Vec<ResponseChoice>,
    #[serde(default)]
    usage: Option<UsageBody>,
}

#[derive(Deserialize)]
struct ResponseChoice {
    #[serde(default)]
    index: u32,
    message: ResponseMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ResponseMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ResponseToolCall>>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct ResponseToolCall {
    #[serde(default)]
    id: String,
    function: ResponseFunction,
}

#[derive(Deserialize)]
struct ResponseFunction {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize, Default)]
struct UsageBody {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize, Default)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<UsageBody>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<DeltaToolCall>>,
}

#[derive(Deserialize)]
struct DeltaToolCall {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<DeltaFunction>,
}

#[derive(Deserialize)]
struct DeltaFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
}

impl From<UsageBody> for Usage {
    fn from(u: UsageBody) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            reasoning_tokens: u
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            cache_write_tokens: 0,
        }
    }
}

fn body<'a>(call: &UpstreamRequest<'a>, stream: bool) -> ChatBody<'a> {
    let r = call.request;
    ChatBody {
        model: call.model,
        messages: &r.messages,
        stream,
        stream_options: stream.then_some(StreamOptionsBody {
            include_usage: true,
        }),
        temperature: r.temperature,
        top_p: r.top_p,
        max_tokens: r.max_tokens,
        max_completion_tokens: r.max_completion_tokens,
        n: r.n,
        stop: r.stop.as_ref(),
        seed: r.seed,
        presence_penalty: r.presence_penalty,
        frequency_penalty: r.frequency_penalty,
        logit_bias: r.logit_bias.as_ref(),
        logprobs: r.logprobs,
        top_logprobs: r.top_logprobs,
        user: r.user.as_deref(),
        tools: r.tools.as_deref(),
        tool_choice: r.tool_choice.as_ref(),
        parallel_tool_calls: r.parallel_tool_calls,
        response_format: r.response_format.as_ref(),
        reasoning_effort: call.reasoning_effort.or(r.reasoning_effort.as_deref()),
    }
}

fn completion_from(response: ChatResponse) -> Completion {
    Completion {
        choices: response
            .choices
            .into_iter()
            .map(|c| Choice {
                index: c.index,
                finish_reason: c
                    .finish_reason
                    .as_deref()
                    .map(FinishReason::from_openai)
                    .unwrap_or_default(),
                message: AssistantMessage {
                    content: c.message.content,
                    tool_calls: c
                        .message
                        .tool_calls
                        .unwrap_or_default()
                        .into_iter()
                        .map(|t| ToolCallOut {
                            id: t.id,
                            name: t.function.name,
                            arguments: t.function.arguments,
                        })
                        .collect(),
                    refusal: c.message.refusal,
                },
            })
            .collect(),
        usage: response.usage.map(Usage::from).unwrap_or_default(),
    }
}

/// Turns one stream chunk into events; empty deltas produce none.
fn chunk_events(chunk: Chunk, out: &mut VecDeque<StreamEvent>) {
    for choice in chunk.choices {
        let delta = choice.delta.unwrap_or_default();
        if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
            out.push_back(StreamEvent::Content {
                index: choice.index,
                text,
            });
        }
        for call in delta.tool_calls.unwrap_or_default() {
            let (name, arguments) = match call.function {
                Some(f) => (f.name, f.arguments.unwrap_or_default()),
                None => (None, String::new()),
            };
            if call.id.is_none() && name.is_none() && arguments.is_empty() {
                continue;
            }
            out.push_back(StreamEvent::ToolCall {
                index: choice.index,
                call: call.index,
                id: call.id,
                name,
                arguments,
            });
        }
        if let Some(reason) = choice.finish_reason {
            out.push_back(StreamEvent::Finish {
                index: choice.index,
                reason: FinishReason::from_openai(&reason),
            });
        }
    }
    if let Some(usage) = chunk.usage {
        out.push_back(StreamEvent::Usage(usage.into()));
    }
}

impl OpenAiClient {
    pub fn new(
        name: &str,
        settings: OpenAiSettings,
        timeouts: Timeouts,
    ) -> Result<OpenAiClient, String> {
        let url = format!(
            "{}/chat/completions",
            settings.base_url.trim_end_matches('/')
        );
        Ok(OpenAiClient {
            name: name.to_string(),
            http: http::client(name, &timeouts)?,
            settings,
            timeouts,
            endpoint: Endpoint::OpenAi { url },
        })
    }

    /// Azure OpenAI: the same wire format, deployments in the URL, an `api-key` header.
    pub fn azure(ctx: AdapterContext, azure: AzureSettings) -> Result<OpenAiClient, String> {
        Ok(OpenAiClient {
            http: http::client(&ctx.name, &ctx.timeouts)?,
            name: ctx.name,
            settings: OpenAiSettings {
                base_url: azure.endpoint.clone(),
                api_key: azure.api_key,
                headers: Default::default(),
                flavor: super::OpenAiFlavor::OpenAi,
            },
            timeouts: ctx.timeouts,
            endpoint: Endpoint::Azure {
                endpoint: azure.endpoint.trim_end_matches('/').to_string(),
                api_version: azure.api_version,
            },
        })
    }

    /// Removes the provider key from text that may echo it.
    fn scrub(&self, text: &str) -> String {
        http::scrub(text, &[self.settings.api_key.as_deref().unwrap_or("")])
    }

    fn transport_error(&self, error: reqwest::Error) -> GatewayError {
        http::transport_error(
            &self.name,
            error,
            &[self.settings.api_key.as_deref().unwrap_or("")],
        )
    }

    fn timeout_error(&self, what: &str, limit: Duration) -> GatewayError {
        http::timeout_error(&self.name, what, limit)
    }

    async fn send(
        &self,
        call: &UpstreamRequest<'_>,
        stream: bool,
    ) -> Result<reqwest::Response, GatewayError> {
        let mut request = match &self.endpoint {
            Endpoint::OpenAi { url } => {
                let request = self.http.post(url);
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
                    "{endpoint}/openai/deployments/{}/chat/completions",
                    call.model
                );
                let request = self.http.post(url).query(&[("api-version", api_version)]);
                match &self.settings.api_key {
                    Some(key) => request.header("api-key", key),
                    None => request,
                }
            }
        }
        .json(&body(call, stream));
        for (name, value) in &self.settings.headers {
            request = request.header(name, value);
        }
        let limit = self.timeouts.first_byte().min(self.timeouts.total());
        let response = timeout(limit, request.send())
            .await
            .map_err(|_| self.timeout_error("with headers", limit))?
            .map_err(|e| self.transport_error(e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.status_error(response).await)
    }

    async fn status_error(&self, response: reqwest::Response) -> GatewayError {
        let status = response.status().as_u16();
        let retry_after = http::retry_after(response.headers());
        let kind = kind_for_status(status);
        let text = match timeout(Duration::from_secs(5), response.bytes()).await {
            Ok(Ok(bytes)) => {
                let cut = &bytes[..bytes.len().min(MAX_ERROR_BODY)];
                serde_json::from_slice::<ErrorEnvelope>(cut)
                    .ok()
                    .and_then(|e| e.error.message)
                    .unwrap_or_else(|| String::from_utf8_lossy(cut).chars().take(500).collect())
            }
            _ => String::new(),
        };
        let message = if kind == ErrorKind::UpstreamAuth {
            // Auth messages may quote the key: never pass them on.
            format!(
                "provider `{}` rejected its credentials ({status})",
                self.name
            )
        } else {
            format!(
                "provider `{}` answered {status}: {}",
                self.name,
                self.scrub(&text)
            )
        };
        GatewayError::new(kind, message)
            .with_retry_after(retry_after)
            .with_upstream_status(status)
    }

    pub async fn complete(&self, call: UpstreamRequest<'_>) -> Result<Completion, GatewayError> {
        let started = Instant::now();
        let response = self.send(&call, false).await?;
        let remaining = self.timeouts.total().saturating_sub(started.elapsed());
        let bytes = timeout(remaining, response.bytes())
            .await
            .map_err(|_| self.timeout_error("its whole body", self.timeouts.total()))?
            .map_err(|e| self.transport_error(e))?;
        let parsed: ChatResponse = serde_json::from_slice(&bytes).map_err(|e| {
            GatewayError::new(
                ErrorKind::UpstreamMalformed,
                format!("provider `{}` sent a malformed response: {e}", self.name),
            )
            .with_upstream_status(200)
        })?;
        if parsed.choices.is_empty() {
            return Err(GatewayError::new(
                ErrorKind::UpstreamMalformed,
                format!("provider `{}` sent a response with no choices", self.name),
            ));
        }
        Ok(completion_from(parsed))
    }

    pub async fn stream(&self, call: UpstreamRequest<'_>) -> Result<EventStream, GatewayError> {
        let started = Instant::now();
        let response = self.send(&call, true).await?;
        let state = StreamState {
            name: self.name.clone(),
            body: response.bytes_stream().boxed(),
            decoder: SseDecoder::new(),
            pending: VecDeque::new(),
            finished: false,
            clean_end: false,
            idle: self.timeouts.idle(),
            deadline: started + self.timeouts.total(),
        };
        Ok(futures::stream::unfold(state, next_event).boxed())
    }
}

struct StreamState {
    name: String,
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    decoder: SseDecoder,
    pending: VecDeque<StreamEvent>,
    finished: bool,
    /// `[DONE]` or a finish reason was seen: the end of the body is not a cut.
    clean_end: bool,
    idle: Duration,
    deadline: Instant,
}

async fn next_event(
    mut s: StreamState,
) -> Option<(Result<StreamEvent, GatewayError>, StreamState)> {
    loop {
        if let Some(event) = s.pending.pop_front() {
            if matches!(event, StreamEvent::Finish { .. }) {
                s.clean_end = true;
            }
            return Some((Ok(event), s));
        }
        if s.finished {
            return None;
        }
        let wait = s
            .idle
            .min(s.deadline.saturating_duration_since(Instant::now()));
        let fail = |s: &mut StreamState, kind: ErrorKind, message: String| {
            s.finished = true;
            Err(GatewayError::new(kind, message))
        };
        match timeout(wait, s.body.next()).await {
            Err(_) => {
                let message = format!(
                    "provider `{}` stream stalled for {:.1}s",
                    s.name,
                    wait.as_secs_f64()
                );
                let err = fail(&mut s, ErrorKind::Timeout, message);
                return Some((err, s));
            }
            Ok(None) => {
                s.finished = true;
                if !s.clean_end {
                    let message = format!("provider `{}` stream ended before [DONE]", s.name);
                    let err = fail(&mut s, ErrorKind::UpstreamConnection, message);
                    return Some((err, s));
                }
            }
            Ok(Some(Err(e))) => {
                let message = format!("provider `{}` stream broke: {}", s.name, e.without_url());
                let err = fail(&mut s, ErrorKind::UpstreamConnection, message);
                return Some((err, s));
            }
            Ok(Some(Ok(bytes))) => {
                for event in s.decoder.push(&bytes) {
                    if event.data == "[DONE]" {
                        s.clean_end = true;
                        s.finished = true;
                        break;
                    }
                    match serde_json::from_str::<Chunk>(&event.data) {
                        Ok(Chunk {
                            error: Some(error), ..
                        }) => {
                            let message = format!(
                                "provider `{}` sent an error mid-stream: {}",
                                s.name,
                                error.message.unwrap_or_default()
                            );
                            let err = fail(&mut s, ErrorKind::UpstreamServer, message);
                            return Some((err, s));
                        }
                        Ok(chunk) => chunk_events(chunk, &mut s.pending),
                        Err(e) => {
                            let message =
                                format!("provider `{}` sent a malformed chunk: {e}", s.name);
                            let err = fail(&mut s, ErrorKind::UpstreamMalformed, message);
                            return Some((err, s));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ChatRequest;

    #[test]
    fn request_body_keeps_openai_fields_and_drops_flowgate_extras() {
        let request: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "agent/gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.2,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "response_format": {"type": "json_object"},
            "stream_options": {"valid_json_chunks": true},
            "input": {"x": 1},
            "use_fallback": "never",
            "metadata": {"a": "b"}
        }))
        .unwrap();
        let call = UpstreamRequest {
            request: &request,
            model: "gpt-4o-mini-2024-07-18",
            reasoning_effort: None,
        };
        let json = serde_json::to_value(body(&call, true)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "model": "gpt-4o-mini-2024-07-18",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": true,
                "stream_options": {"include_usage": true},
                "temperature": 0.2,
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                "tool_choice": "required",
                "response_format": {"type": "json_object"}
            })
        );
    }

    #[test]
    fn response_maps_tool_calls_and_usage() {
        let response: ChatResponse = serde_json::from_value(serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 2}}
        }))
        .unwrap();
        let c = completion_from(response);
        assert_eq!(c.choices[0].finish_reason, FinishReason::ToolCalls);
        assert_eq!(c.choices[0].message.tool_calls[0].arguments, "{\"a\":1}");
        assert_eq!(
            c.usage,
            Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                cached_tokens: 4,
                reasoning_tokens: 2,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn chunks_become_events_and_empty_deltas_vanish() {
        let mut out = VecDeque::new();
        let chunk: Chunk = serde_json::from_value(serde_json::json!({
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]
        }))
        .unwrap();
        chunk_events(chunk, &mut out);
        assert!(out.is_empty());
        let chunk: Chunk = serde_json::from_value(serde_json::json!({
            "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "f", "arguments": ""}}]}, "finish_reason": null}]
        }))
        .unwrap();
        chunk_events(chunk, &mut out);
        let chunk: Chunk = serde_json::from_value(serde_json::json!({
            "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}
        }))
        .unwrap();
        chunk_events(chunk, &mut out);
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], StreamEvent::ToolCall { id: Some(id), .. } if id == "call_1"));
        assert!(matches!(&out[1], StreamEvent::Usage(u) if u.prompt_tokens == 3));
    }
}
