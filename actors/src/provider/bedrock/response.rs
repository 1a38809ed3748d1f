//! Converse responses and ConverseStream events mapped back to flowgate's completion types,
//! and Bedrock's error types mapped to error kinds.

use std::collections::{HashMap, VecDeque};

use aws_smithy_types::event_stream::Message;
use serde::Deserialize;
use serde_json::Value;

use super::super::http::kind_for_status;
use crate::completion::{
    AssistantMessage, Choice, Completion, FinishReason, StreamEvent, ToolCallOut, Usage,
};
use crate::error::ErrorKind;

// ---- wire types ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConverseResponse {
    #[serde(default)]
    output: Option<Output>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<UsageBody>,
}

#[derive(Debug, Deserialize)]
struct Output {
    #[serde(default)]
    message: Option<OutputMessage>,
}

#[derive(Debug, Deserialize)]
struct OutputMessage {
    #[serde(default)]
    content: Vec<OutputBlock>,
}

/// A response content block; kinds other than text and tool use (reasoning, citations) are
/// ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutputBlock {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<OutputToolUse>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutputToolUse {
    #[serde(default)]
    tool_use_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    input: Value,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct UsageBody {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_write_input_tokens: u64,
}

impl From<UsageBody> for Usage {
    /// Bedrock's `inputTokens` leaves out the tokens read from or written to the prompt
    /// cache; flowgate's `prompt_tokens` counts them all.
    fn from(u: UsageBody) -> Usage {
        Usage {
            prompt_tokens: u.input_tokens + u.cache_read_input_tokens + u.cache_write_input_tokens,
            completion_tokens: u.output_tokens,
            cached_tokens: u.cache_read_input_tokens,
            reasoning_tokens: 0,
            cache_write_tokens: u.cache_write_input_tokens,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockStart {
    #[serde(default)]
    content_block_index: u64,
    #[serde(default)]
    start: Option<StartBody>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartBody {
    #[serde(default)]
    tool_use: Option<StartToolUse>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartToolUse {
    #[serde(default)]
    tool_use_id: String,
    #[serde(default)]
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockDelta {
    #[serde(default)]
    content_block_index: u64,
    #[serde(default)]
    delta: Option<DeltaBody>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeltaBody {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<DeltaToolUse>,
}

#[derive(Debug, Deserialize)]
struct DeltaToolUse {
    #[serde(default)]
    input: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageStop {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    #[serde(default)]
    usage: Option<UsageBody>,
}

#[derive(Debug, Deserialize)]
struct ExceptionBody {
    #[serde(default, alias = "Message")]
    message: Option<String>,
}

// ---- mapping ----

/// Bedrock's `stopReason` as a finish reason.
pub(super) fn finish_reason(stop_reason: &str) -> FinishReason {
    match stop_reason {
        "tool_use" => FinishReason::ToolCalls,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "guardrail_intervened" | "content_filtered" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

fn arguments(input: &Value) -> String {
    match input {
        Value::Null => "{}".to_string(),
        input => input.to_string(),
    }
}

/// The completion of a Converse response. `output_tool` is the tool standing in for a
/// `json_schema` response format: its input becomes the content. `Err` names what is missing.
pub(super) fn completion_from(
    response: ConverseResponse,
    output_tool: Option<&str>,
) -> Result<Completion, &'static str> {
    let message = response
        .output
        .and_then(|o| o.message)
        .ok_or("a response with no output message")?;
    let mut text = String::new();
    let mut structured = None;
    let mut tool_calls = Vec::new();
    for block in message.content {
        if let Some(t) = block.text {
            text.push_str(&t);
        }
        if let Some(tool_use) = block.tool_use {
            if output_tool == Some(tool_use.name.as_str()) && structured.is_none() {
                structured = Some(arguments(&tool_use.input));
            } else {
                tool_calls.push(ToolCallOut {
                    id: tool_use.tool_use_id,
                    name: tool_use.name,
                    arguments: arguments(&tool_use.input),
                });
            }
        }
    }
    let mut finish = response
        .stop_reason
        .as_deref()
        .map(finish_reason)
        .unwrap_or_default();
    if finish == FinishReason::ToolCalls && tool_calls.is_empty() {
        finish = FinishReason::Stop;
    }
    let content = match structured {
        Some(json) => Some(json),
        None if text.is_empty() && !tool_calls.is_empty() => None,
        None => Some(text),
    };
    Ok(Completion {
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                content,
                tool_calls,
                refusal: None,
            },
            finish_reason: finish,
        }],
        usage: response.usage.map(Usage::from).unwrap_or_default(),
    })
}

/// Whether an error message says the prompt does not fit the model.
fn says_too_long(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "too long",
        "too many tokens",
        "too many input tokens",
        "context window",
        "context length",
        "maximum context",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

/// The error kind of a Bedrock error type (`ThrottlingException`, or `throttlingException`
/// in a stream), its HTTP status and message.
pub(super) fn error_kind(error_type: &str, status: u16, message: &str) -> ErrorKind {
    match error_type.to_ascii_lowercase().as_str() {
        "throttlingexception" | "toomanyrequestsexception" | "servicequotaexceededexception" => {
            ErrorKind::RateLimited
        }
        "serviceunavailableexception" | "modelnotreadyexception" => ErrorKind::Overloaded,
        "validationexception" if says_too_long(message) => ErrorKind::ContextTooLong,
        "validationexception" | "resourcenotfoundexception" | "serializationexception" => {
            ErrorKind::UpstreamBadRequest
        }
        "accessdeniedexception"
        | "unrecognizedclientexception"
        | "invalidsignatureexception"
        | "incompletesignatureexception"
        | "expiredtokenexception"
        | "missingauthenticationtokenexception"
        | "invalidclienttokenid"
        | "signaturedoesnotmatch" => ErrorKind::UpstreamAuth,
        "modeltimeoutexception" => ErrorKind::Timeout,
        "modelerrorexception" | "modelstreamerrorexception" | "internalserverexception" => {
            ErrorKind::UpstreamServer
        }
        _ => match status {
            503 => ErrorKind::Overloaded,
            400 | 413 if says_too_long(message) => ErrorKind::ContextTooLong,
            0 => ErrorKind::UpstreamServer,
            status => kind_for_status(status),
        },
    }
}

/// The HTTP status Bedrock documents for a stream exception type.
pub(super) fn exception_status(exception_type: &str) -> u16 {
    match exception_type.to_ascii_lowercase().as_str() {
        "throttlingexception" => 429,
        "validationexception" => 400,
        "modelstreamerrorexception" => 424,
        "serviceunavailableexception" => 503,
        "modeltimeoutexception" => 408,
        _ => 500,
    }
}

/// A stream that cannot go on: an exception frame, or an event that cannot be read.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StreamFailure {
    pub kind: ErrorKind,
    /// The status Bedrock documents for the exception; `None` for unreadable events.
    pub status: Option<u16>,
    pub message: String,
}

fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
}

#[derive(Debug, Clone, Copy)]
enum BlockKind {
    /// A tool call, numbered from 0 in order of appearance.
    Call(u32),
    /// The structured-output tool: its input is content.
    Output,
}

/// Turns ConverseStream messages into stream events.
#[derive(Debug, Default)]
pub struct EventMapper {
    output_tool: Option<String>,
    blocks: HashMap<u64, BlockKind>,
    next_call: u32,
    /// `messageStop` was seen: the end of the body is not a cut.
    pub stopped: bool,
}

impl EventMapper {
    pub(super) fn new(output_tool: Option<String>) -> EventMapper {
        EventMapper {
            output_tool,
            ..EventMapper::default()
        }
    }

    fn parse<T: for<'de> Deserialize<'de>>(
        event_type: &str,
        message: &Message,
    ) -> Result<T, StreamFailure> {
        serde_json::from_slice(message.payload()).map_err(|e| StreamFailure {
            kind: ErrorKind::UpstreamMalformed,
            status: None,
            message: format!("a malformed `{event_type}` event: {e}"),
        })
    }

    fn new_call(&mut self, index: u64) -> u32 {
        let call = self.next_call;
        self.next_call += 1;
        self.blocks.insert(index, BlockKind::Call(call));
        call
    }

    /// Maps one event-stream message, pushing the events it makes.
    pub(super) fn on_message(
        &mut self,
        message: &Message,
        out: &mut VecDeque<StreamEvent>,
    ) -> Result<(), StreamFailure> {
        match header(message, ":message-type").unwrap_or("event") {
            "event" => {}
            "exception" => {
                let exception_type = header(message, ":exception-type")
                    .or_else(|| header(message, ":event-type"))
                    .unwrap_or("internalServerException");
                let text = serde_json::from_slice::<ExceptionBody>(message.payload())
                    .ok()
                    .and_then(|b| b.message)
                    .unwrap_or_default();
                let status = exception_status(exception_type);
                return Err(StreamFailure {
                    kind: error_kind(exception_type, status, &text),
                    status: Some(status),
                    message: format!("{exception_type}: {text}"),
                });
            }
            other => {
                let code = header(message, ":error-code").unwrap_or(other);
                let text = header(message, ":error-message").unwrap_or("");
                return Err(StreamFailure {
                    kind: error_kind(code, 0, text),
                    status: None,
                    message: format!("{code}: {text}"),
                });
            }
        }
        let event_type = header(message, ":event-type").unwrap_or("");
        match event_type {
            "contentBlockStart" => {
                let start: BlockStart = Self::parse(event_type, message)?;
                let Some(tool_use) = start.start.and_then(|s| s.tool_use) else {
                    return Ok(());
                };
                if self.output_tool.as_deref() == Some(tool_use.name.as_str()) {
                    self.blocks
                        .insert(start.content_block_index, BlockKind::Output);
                } else {
                    let call = self.new_call(start.content_block_index);
                    out.push_back(StreamEvent::ToolCall {
                        index: 0,
                        call,
                        id: Some(tool_use.tool_use_id),
                        name: Some(tool_use.name),
                        arguments: String::new(),
                    });
                }
            }
            "contentBlockDelta" => {
                let delta: BlockDelta = Self::parse(event_type, message)?;
                let Some(body) = delta.delta else {
                    return Ok(());
                };
                if let Some(text) = body.text.filter(|t| !t.is_empty()) {
                    out.push_back(StreamEvent::Content { index: 0, text });
                }
                if let Some(input) = body
                    .tool_use
                    .and_then(|t| t.input)
                    .filter(|i| !i.is_empty())
                {
                    let kind = match self.blocks.get(&delta.content_block_index) {
                        Some(kind) => *kind,
                        None => BlockKind::Call(self.new_call(delta.content_block_index)),
                    };
                    out.push_back(match kind {
                        BlockKind::Output => StreamEvent::Content {
                            index: 0,
                            text: input,
                        },
                        BlockKind::Call(call) => StreamEvent::ToolCall {
                            index: 0,
                            call,
                            id: None,
                            name: None,
                            arguments: input,
                        },
                    });
                }
            }
            "messageStop" => {
                let stop: MessageStop = Self::parse(event_type, message)?;
                let mut reason = stop
                    .stop_reason
                    .as_deref()
                    .map(finish_reason)
                    .unwrap_or_default();
                if reason == FinishReason::ToolCalls && self.next_call == 0 {
                    reason = FinishReason::Stop;
                }
                self.stopped = true;
                out.push_back(StreamEvent::Finish { index: 0, reason });
            }
            "metadata" => {
                let metadata: Metadata = Self::parse(event_type, message)?;
                if let Some(usage) = metadata.usage {
                    out.push_back(StreamEvent::Usage(usage.into()));
                }
            }
            // messageStart, contentBlockStop, and events this adapter does not know.
            _ => {}
        }
        Ok(())
    }
}
