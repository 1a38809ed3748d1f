//! The request: OpenAI's Chat Completions body as each compatible API accepts it.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::Value;

use crate::provider::{OpenAiFlavor, UpstreamRequest};
use crate::wire::{
    ContentPart, JsonSchemaFormat, Message, MessageContent, ResponseFormat, Role, Stop, Tool,
    ToolChoice, ToolChoiceMode,
};

// ---- quirks ----

/// What one OpenAI-compatible API accepts, where it differs from OpenAI's Chat Completions.
/// Per-model differences are in [`ModelRules`] and [`reasoning_param`].
///
/// Every flavor but `openai` sends `developer` messages as `system`, and refuses PDF `file`
/// parts except `openrouter`. Then:
///
/// - `openai` (and Azure OpenAI): the reference. Reasoning models (o1/o3/o4, gpt-5) get
///   `max_completion_tokens` instead of `max_tokens` and no sampling parameters.
/// - `groq`: `n` > 1 and `input_audio` refused; `logprobs`, `top_logprobs`, `logit_bias` and
///   `messages[].name` dropped; `reasoning_effort` only for gpt-oss and qwen3, in their values.
/// - `mistral`: `seed` → `random_seed`, `max_completion_tokens` → `max_tokens`,
///   `tool_choice: required` → `any`; no `stream_options` (usage comes in the last chunk
///   anyway), `logprobs`, `logit_bias`, `user`, `reasoning_effort`, nor unknown message fields
///   (422 `extra_forbidden`): they are dropped; `name` only on tool messages.
/// - `xai`: `input_audio` refused; `reasoning_effort` only for grok-3-mini (`low`/`high`);
///   reasoning models get no penalties and refuse `stop`.
/// - `fireworks`, `together`, `ollama`: `max_completion_tokens` → `max_tokens`; `ollama`
///   refuses `input_audio`.
/// - `deepseek`: text only (image and audio parts refused); `json_schema` becomes
///   `json_object` with the schema in the system prompt; `max_completion_tokens` →
///   `max_tokens`; no `reasoning_effort`; `reasoning_content` is not replayed;
///   `deepseek-reasoner` gets no sampling parameters nor logprobs.
/// - `openrouter`: PDF and audio parts accepted; `reasoning_effort` → `reasoning: {effort}`.
/// - `vllm`: as OpenAI otherwise.
///
/// "Refused" is an `unsupported_by_model` error before any call, so the request falls back to
/// another model or provider; "dropped" leaves out a field the API rejects when its absence does
/// not change what the client gets back (flowgate returns no logprobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Quirks {
    /// Accepts the `developer` role; otherwise it is sent as `system`.
    developer_role: bool,
    /// Accepts `max_completion_tokens`; otherwise its value is sent as `max_tokens`.
    max_completion_tokens: bool,
    /// Accepts `stream_options` (the APIs that do not send usage in the last chunk anyway).
    stream_options: bool,
    /// Accepts `response_format: json_schema`; otherwise it becomes `json_object` with the
    /// schema in the system prompt.
    json_schema: bool,
    images: bool,
    /// `file` parts (PDF).
    pdf: bool,
    /// `input_audio` parts.
    audio: bool,
    /// Accepts `n` > 1.
    several_choices: bool,
    /// Accepts `logprobs` and `top_logprobs`.
    logprobs: bool,
    logit_bias: bool,
    user: bool,
    /// Calls the seed `random_seed`.
    random_seed: bool,
    /// Calls `tool_choice: "required"` `"any"`.
    tool_choice_any: bool,
    reasoning: ReasoningStyle,
    names: NamePolicy,
    extras: ExtraPolicy,
}

/// How an API takes the reasoning effort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReasoningStyle {
    /// `reasoning_effort`, passed as is.
    Effort,
    /// `reasoning: {"effort": …}` (OpenRouter).
    Object,
    /// Only some models take it, with their own values ([`reasoning_param`]).
    PerModel,
    /// Not at all: left out.
    None,
}

/// Which messages may carry `name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NamePolicy {
    All,
    ToolMessagesOnly,
    Never,
}

/// What happens to message fields flowgate does not interpret (`Message::extra`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExtraPolicy {
    Keep,
    /// These are removed (the API rejects them).
    Drop(&'static [&'static str]),
    /// Only these are kept (the API rejects unknown fields).
    KeepOnly(&'static [&'static str]),
}

pub(super) const OPENAI: Quirks = Quirks {
    developer_role: true,
    max_completion_tokens: true,
    stream_options: true,
    json_schema: true,
    images: true,
    pdf: true,
    audio: true,
    several_choices: true,
    logprobs: true,
    logit_bias: true,
    user: true,
    random_seed: false,
    tool_choice_any: false,
    reasoning: ReasoningStyle::Effort,
    names: NamePolicy::All,
    extras: ExtraPolicy::Keep,
};

/// The common case of an OpenAI-compatible server: no `developer` role, no PDF parts.
pub(super) const COMPATIBLE: Quirks = Quirks {
    developer_role: false,
    pdf: false,
    ..OPENAI
};

impl Quirks {
    const fn of(flavor: OpenAiFlavor) -> Quirks {
        match flavor {
            OpenAiFlavor::OpenAi => OPENAI,
            // console.groq.com/docs/openai: logprobs, logit_bias, top_logprobs, messages[].name
            // and n ≠ 1 are rejected with a 400. No audio input in chat.
            OpenAiFlavor::Groq => Quirks {
                audio: false,
                several_choices: false,
                logprobs: false,
                logit_bias: false,
                reasoning: ReasoningStyle::PerModel,
                names: NamePolicy::Never,
                ..COMPATIBLE
            },
            // Mistral rejects unknown fields (422 extra_forbidden), sends usage in the last
            // chunk without `stream_options`, and spells a few things its own way.
            OpenAiFlavor::Mistral => Quirks {
                max_completion_tokens: false,
                stream_options: false,
                logprobs: false,
                logit_bias: false,
                user: false,
                random_seed: true,
                tool_choice_any: true,
                reasoning: ReasoningStyle::None,
                names: NamePolicy::ToolMessagesOnly,
                extras: ExtraPolicy::KeepOnly(&["prefix"]),
                ..COMPATIBLE
            },
            // docs.x.ai: text and image input only; `reasoning_effort` only on grok-3-mini.
            OpenAiFlavor::Xai => Quirks {
                audio: false,
                reasoning: ReasoningStyle::PerModel,
                ..COMPATIBLE
            },
            OpenAiFlavor::Fireworks | OpenAiFlavor::Together => Quirks {
                max_completion_tokens: false,
                ..COMPATIBLE
            },
            // api-docs.deepseek.com: text only, JSON output is `json_object` only,
            // `reasoning_content` in input messages is a 400.
            OpenAiFlavor::DeepSeek => Quirks {
                max_completion_tokens: false,
                json_schema: false,
                images: false,
                audio: false,
                reasoning: ReasoningStyle::None,
                extras: ExtraPolicy::Drop(&["reasoning_content"]),
                ..COMPATIBLE
            },
            // openrouter.ai/docs: PDFs as `file` parts and `input_audio` are accepted and routed.
            OpenAiFlavor::OpenRouter => Quirks {
                pdf: true,
                reasoning: ReasoningStyle::Object,
                ..COMPATIBLE
            },
            // docs.ollama.com/api/openai-compatibility: text and image content only.
            OpenAiFlavor::Ollama => Quirks {
                max_completion_tokens: false,
                audio: false,
                ..COMPATIBLE
            },
            OpenAiFlavor::Vllm => COMPATIBLE,
        }
    }
}

/// Quirks that depend on the model as well as on the API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ModelRules {
    /// OpenAI reasoning models: `max_tokens` is refused, `max_completion_tokens` is the limit.
    completion_tokens_only: bool,
    /// `temperature`, `top_p` and the penalties are refused (or ignored): left out.
    drop_sampling: bool,
    /// `presence_penalty` and `frequency_penalty` are refused: left out.
    drop_penalties: bool,
    /// `logprobs` and `top_logprobs` are refused: left out.
    drop_logprobs: bool,
    /// `stop` is refused. Leaving it out would change the answer, so the request is refused.
    refuses_stop: bool,
}

impl ModelRules {
    fn of(flavor: OpenAiFlavor, model: &str, effort: Option<&str>) -> ModelRules {
        match flavor {
            // o1/o3/o4 and gpt-5: only the default sampling; logprobs unsupported. gpt-5.1 and
            // later accept sampling parameters again with `reasoning_effort: none`.
            OpenAiFlavor::OpenAi if is_openai_reasoning_model(model) => ModelRules {
                completion_tokens_only: true,
                drop_sampling: effort != Some("none"),
                drop_logprobs: true,
                ..ModelRules::default()
            },
            // docs.x.ai/docs/guides/reasoning: presencePenalty, frequencyPenalty and stop are an
            // error on reasoning models.
            OpenAiFlavor::Xai if is_grok_reasoning_model(model) => ModelRules {
                drop_penalties: true,
                refuses_stop: true,
                ..ModelRules::default()
            },
            // deepseek-reasoner: sampling parameters have no effect, logprobs are an error.
            OpenAiFlavor::DeepSeek if model.contains("reasoner") => ModelRules {
                drop_sampling: true,
                drop_logprobs: true,
                ..ModelRules::default()
            },
            _ => ModelRules::default(),
        }
    }
}

/// The model id without a routing prefix (`openai/o3` → `o3`).
pub(super) fn base_model(model: &str) -> &str {
    model.rsplit('/').next().unwrap_or(model)
}

/// o1, o3, o4-mini, gpt-5…, but not the `-chat` gpt-5 models.
pub(super) fn is_openai_reasoning_model(model: &str) -> bool {
    let m = base_model(model).to_ascii_lowercase();
    let o_series = m.len() > 1 && m.starts_with('o') && m.as_bytes()[1].is_ascii_digit();
    o_series || (m.starts_with("gpt-5") && !m.contains("-chat"))
}

/// grok-3-mini, grok-4 and its variants except the `non-reasoning` ones, grok-code.
pub(super) fn is_grok_reasoning_model(model: &str) -> bool {
    let m = base_model(model).to_ascii_lowercase();
    !m.contains("non-reasoning")
        && (m.starts_with("grok-3-mini") || m.starts_with("grok-4") || m.starts_with("grok-code"))
}

/// How the reasoning effort is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReasoningParam<'a> {
    Omit,
    /// `reasoning_effort: …`
    Effort(&'a str),
    /// `reasoning: {"effort": …}`
    Object(&'a str),
}

/// The reasoning effort `effort` as `flavor` takes it for `model`.
pub(super) fn reasoning_param<'a>(
    flavor: OpenAiFlavor,
    model: &str,
    effort: &'a str,
) -> ReasoningParam<'a> {
    let m = base_model(model).to_ascii_lowercase();
    match Quirks::of(flavor).reasoning {
        ReasoningStyle::Effort => ReasoningParam::Effort(effort),
        ReasoningStyle::Object => ReasoningParam::Object(effort),
        ReasoningStyle::None => ReasoningParam::Omit,
        ReasoningStyle::PerModel => match flavor {
            // console.groq.com/docs/reasoning: gpt-oss takes low/medium/high, qwen3 none/default.
            OpenAiFlavor::Groq if m.contains("gpt-oss") => ReasoningParam::Effort(match effort {
                "none" | "minimal" | "low" => "low",
                "medium" => "medium",
                _ => "high",
            }),
            OpenAiFlavor::Groq if m.contains("qwen3") => {
                ReasoningParam::Effort(if effort == "none" { "none" } else { "default" })
            }
            // docs.x.ai: only grok-3-mini takes it, and only low or high; later models that
            // take it (grok-4.3, the multi-agent model) get it as is.
            OpenAiFlavor::Xai if m.starts_with("grok-3-mini") => {
                ReasoningParam::Effort(match effort {
                    "none" | "minimal" | "low" => "low",
                    _ => "high",
                })
            }
            OpenAiFlavor::Xai if m.starts_with("grok-4.3") || m.contains("multi-agent") => {
                ReasoningParam::Effort(effort)
            }
            _ => ReasoningParam::Omit,
        },
    }
}

/// The input part a message list carries that the API does not accept, named for the error.
pub(super) fn unsupported_part(messages: &[Message], quirks: &Quirks) -> Option<&'static str> {
    messages
        .iter()
        .filter_map(|m| match &m.content {
            Some(MessageContent::Parts(parts)) => Some(parts),
            _ => None,
        })
        .flatten()
        .find_map(|part| match part {
            ContentPart::ImageUrl { .. } if !quirks.images => {
                Some("image input (`image_url` parts)")
            }
            ContentPart::File { .. } if !quirks.pdf => Some("PDF input (`file` parts)"),
            ContentPart::InputAudio { .. } if !quirks.audio => {
                Some("audio input (`input_audio` parts)")
            }
            _ => None,
        })
}

/// The system-prompt instruction that replaces a `json_schema` response format.
pub(super) fn schema_instruction(format: &JsonSchemaFormat) -> String {
    match &format.schema {
        Some(schema) => format!(
            "Respond only with a JSON object that validates against this JSON Schema \
             (`{}`):\n{schema}",
            format.name
        ),
        None => "Respond only with a JSON object.".to_string(),
    }
}

/// The messages as the API takes them: borrowed when nothing needs to change.
pub(super) fn adapt_messages<'a>(
    messages: &'a [Message],
    quirks: &Quirks,
    instruction: Option<String>,
) -> Cow<'a, [Message]> {
    let keeps = |m: &Message| {
        (quirks.developer_role || m.role != Role::Developer)
            && match quirks.names {
                NamePolicy::All => true,
                NamePolicy::ToolMessagesOnly => m.name.is_none() || m.role == Role::Tool,
                NamePolicy::Never => m.name.is_none(),
            }
            && match quirks.extras {
                ExtraPolicy::Keep => true,
                ExtraPolicy::Drop(drop) => !drop.iter().any(|k| m.extra.contains_key(*k)),
                ExtraPolicy::KeepOnly(keep) => m.extra.keys().all(|k| keep.contains(&k.as_str())),
            }
    };
    if instruction.is_none() && messages.iter().all(keeps) {
        return Cow::Borrowed(messages);
    }
    let mut out = messages.to_vec();
    for m in &mut out {
        if !quirks.developer_role && m.role == Role::Developer {
            m.role = Role::System;
        }
        match quirks.names {
            NamePolicy::All => {}
            NamePolicy::ToolMessagesOnly if m.role == Role::Tool => {}
            NamePolicy::ToolMessagesOnly | NamePolicy::Never => m.name = None,
        }
        match quirks.extras {
            ExtraPolicy::Keep => {}
            ExtraPolicy::Drop(drop) => m.extra.retain(|k, _| !drop.contains(&k.as_str())),
            ExtraPolicy::KeepOnly(keep) => m.extra.retain(|k, _| keep.contains(&k.as_str())),
        }
    }
    if let Some(instruction) = instruction {
        match out.iter_mut().find(|m| m.role == Role::System) {
            Some(system) => {
                let text = system.text();
                let text = if text.is_empty() {
                    instruction
                } else {
                    format!("{text}\n\n{instruction}")
                };
                system.content = Some(MessageContent::Text(text));
            }
            None => out.insert(
                0,
                Message {
                    role: Role::System,
                    content: Some(MessageContent::Text(instruction)),
                    name: None,
                    tool_calls: None,
                    tool_call_id: None,
                    extra: Default::default(),
                },
            ),
        }
    }
    Cow::Owned(out)
}

/// What an API cannot take, for an `unsupported_by_model` error: a description and the request
/// field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refused {
    pub(super) what: String,
    pub(super) param: &'static str,
}

impl Refused {
    fn new(what: impl Into<String>, param: &'static str) -> Refused {
        Refused {
            what: what.into(),
            param,
        }
    }
}

/// The request body for `flavor`, or what the API cannot take.
pub(super) fn body<'a>(
    call: &UpstreamRequest<'a>,
    stream: bool,
    flavor: OpenAiFlavor,
) -> Result<ChatBody<'a>, Refused> {
    let r = call.request;
    let quirks = Quirks::of(flavor);
    if let Some(part) = unsupported_part(&r.messages, &quirks) {
        return Err(Refused::new(part, "messages"));
    }
    if !quirks.several_choices && r.n.is_some_and(|n| n > 1) {
        return Err(Refused::new("several choices (`n` > 1)", "n"));
    }
    let effort = call.reasoning_effort.or(r.reasoning_effort.as_deref());
    let rules = ModelRules::of(flavor, call.model, effort);
    if rules.refuses_stop && r.stop.is_some() {
        return Err(Refused::new(
            format!("stop sequences (`stop`) with `{}`", call.model),
            "stop",
        ));
    }

    let (max_tokens, max_completion_tokens) = if rules.completion_tokens_only {
        (None, r.max_completion_tokens.or(r.max_tokens))
    } else if quirks.max_completion_tokens {
        (r.max_tokens, r.max_completion_tokens)
    } else {
        (r.max_completion_tokens.or(r.max_tokens), None)
    };
    let sampling = !rules.drop_sampling;
    let penalties = sampling && !rules.drop_penalties;
    let logprobs = quirks.logprobs && !rules.drop_logprobs;
    let (reasoning_effort, reasoning) = match effort.map(|e| reasoning_param(flavor, call.model, e))
    {
        Some(ReasoningParam::Effort(e)) => (Some(e), None),
        Some(ReasoningParam::Object(effort)) => (None, Some(ReasoningBody { effort })),
        Some(ReasoningParam::Omit) | None => (None, None),
    };
    let tool_choice = r.tool_choice.as_ref().map(|choice| match choice {
        ToolChoice::Mode(ToolChoiceMode::Required) if quirks.tool_choice_any => {
            ToolChoiceBody::Mode("any")
        }
        choice => ToolChoiceBody::Client(choice),
    });
    let (response_format, instruction) = match &r.response_format {
        Some(ResponseFormat::JsonSchema { json_schema }) if !quirks.json_schema => (
            Some(Cow::Owned(ResponseFormat::JsonObject)),
            Some(schema_instruction(json_schema)),
        ),
        format => (format.as_ref().map(Cow::Borrowed), None),
    };

    Ok(ChatBody {
        model: call.model,
        messages: adapt_messages(&r.messages, &quirks, instruction),
        stream,
        stream_options: (stream && quirks.stream_options).then_some(StreamOptionsBody {
            include_usage: true,
        }),
        temperature: r.temperature.filter(|_| sampling),
        top_p: r.top_p.filter(|_| sampling),
        max_tokens,
        max_completion_tokens,
        n: r.n,
        stop: r.stop.as_ref(),
        seed: r.seed.filter(|_| !quirks.random_seed),
        random_seed: r.seed.filter(|_| quirks.random_seed),
        presence_penalty: r.presence_penalty.filter(|_| penalties),
        frequency_penalty: r.frequency_penalty.filter(|_| penalties),
        logit_bias: r.logit_bias.as_ref().filter(|_| quirks.logit_bias),
        logprobs: r.logprobs.filter(|_| logprobs),
        top_logprobs: r.top_logprobs.filter(|_| logprobs),
        user: r.user.as_deref().filter(|_| quirks.user),
        tools: r.tools.as_deref(),
        tool_choice,
        parallel_tool_calls: r.parallel_tool_calls,
        response_format,
        reasoning_effort,
        reasoning,
    })
}

// ---- wire types ----

#[derive(Serialize)]
pub(super) struct ChatBody<'a> {
    model: &'a str,
    messages: Cow<'a, [Message]>,
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
    random_seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logit_bias: Option<&'a serde_json::Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a [Tool]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Cow<'a, ResponseFormat>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<ReasoningBody<'a>>,
}

#[derive(Serialize)]
pub(super) struct StreamOptionsBody {
    include_usage: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum ToolChoiceBody<'a> {
    /// The client's choice, as sent.
    Client(&'a ToolChoice),
    /// A mode under the API's own name (Mistral's `any`).
    Mode(&'static str),
}

#[derive(Serialize)]
pub(super) struct ReasoningBody<'a> {
    effort: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ChatRequest;
    use serde_json::json;

    fn request(value: Value) -> ChatRequest {
        serde_json::from_value(value).unwrap()
    }

    /// The body `flavor` gets for `request`, as JSON.
    fn wire(
        flavor: OpenAiFlavor,
        model: &str,
        effort: Option<&str>,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<Value, Refused> {
        let call = UpstreamRequest {
            request,
            model,
            reasoning_effort: effort,
        };
        body(&call, stream, flavor).map(|b| serde_json::to_value(b).unwrap())
    }

    #[test]
    fn request_body_keeps_openai_fields_and_drops_flowgate_extras() {
        let request = request(json!({
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
        }));
        let json = wire(
            OpenAiFlavor::OpenAi,
            "gpt-4o-mini-2024-07-18",
            None,
            &request,
            true,
        )
        .unwrap();
        assert_eq!(
            json,
            json!({
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

    /// Every OpenAI field a client can send, for the "what is dropped" tests.
    fn everything() -> ChatRequest {
        request(json!({
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "hi", "name": "jo"},
                {"role": "assistant", "content": "yo", "refusal": null, "reasoning_content": "hmm", "prefix": true},
                {"role": "tool", "content": "42", "tool_call_id": "call_1", "name": "f"}
            ],
            "temperature": 0.5, "top_p": 0.9, "max_tokens": 100, "max_completion_tokens": 200,
            "n": 1, "stop": ["END"], "seed": 7, "presence_penalty": 0.1, "frequency_penalty": 0.2,
            "logit_bias": {"50256": -100}, "logprobs": true, "top_logprobs": 2, "user": "u-1",
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "required", "parallel_tool_calls": false,
            "reasoning_effort": "medium"
        }))
    }

    #[test]
    fn openai_passes_everything_through_unchanged() {
        let request = everything();
        let json = wire(OpenAiFlavor::OpenAi, "gpt-4o", None, &request, false).unwrap();
        let mut sent = serde_json::to_value(&request).unwrap();
        sent["model"] = json!("gpt-4o");
        assert_eq!(json, sent);
    }

    #[test]
    fn openai_reasoning_models_take_max_completion_tokens_and_default_sampling() {
        let request = request(json!({
            "model": "m", "messages": [{"role": "developer", "content": "Be brief."}],
            "max_tokens": 100, "temperature": 0.2, "top_p": 0.5, "presence_penalty": 0.1,
            "logprobs": true, "seed": 1
        }));
        for model in [
            "o1",
            "o3-mini",
            "o4-mini-2025-04-16",
            "gpt-5",
            "gpt-5-mini",
            "gpt-5.1",
        ] {
            let json = wire(OpenAiFlavor::OpenAi, model, Some("high"), &request, false).unwrap();
            assert_eq!(json["max_completion_tokens"], 100, "{model}");
            for gone in [
                "max_tokens",
                "temperature",
                "top_p",
                "presence_penalty",
                "logprobs",
            ] {
                assert!(json.get(gone).is_none(), "{model}: {gone}");
            }
            assert_eq!(json["reasoning_effort"], "high");
            assert_eq!(json["seed"], 1);
            assert_eq!(json["messages"][0]["role"], "developer");
        }
        // gpt-5.1 without reasoning takes sampling parameters again.
        let json = wire(
            OpenAiFlavor::OpenAi,
            "gpt-5.1",
            Some("none"),
            &request,
            false,
        )
        .unwrap();
        assert_eq!(json["temperature"], 0.2);
        assert_eq!(json["max_completion_tokens"], 100);
        // Not reasoning models: unchanged.
        for model in [
            "gpt-4o",
            "gpt-4.1-mini",
            "gpt-5-chat-latest",
            "omni-moderation",
        ] {
            let json = wire(OpenAiFlavor::OpenAi, model, None, &request, false).unwrap();
            assert_eq!(json["max_tokens"], 100, "{model}");
            assert_eq!(json["temperature"], 0.2, "{model}");
            assert!(json.get("max_completion_tokens").is_none(), "{model}");
        }
        // An explicit max_completion_tokens wins.
        let both = request_with(&request, json!({"max_completion_tokens": 300}));
        let json = wire(OpenAiFlavor::OpenAi, "o3", None, &both, false).unwrap();
        assert_eq!(json["max_completion_tokens"], 300);
    }

    fn request_with(base: &ChatRequest, patch: Value) -> ChatRequest {
        let mut value = serde_json::to_value(base).unwrap();
        for (k, v) in patch.as_object().unwrap() {
            value[k] = v.clone();
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn mistral_spells_things_its_own_way_and_gets_no_unknown_fields() {
        let json = wire(
            OpenAiFlavor::Mistral,
            "mistral-small-latest",
            None,
            &everything(),
            true,
        )
        .unwrap();
        assert_eq!(json["random_seed"], 7);
        assert!(json.get("seed").is_none());
        assert_eq!(
            json["max_tokens"], 200,
            "max_completion_tokens is the limit"
        );
        assert!(json.get("max_completion_tokens").is_none());
        assert!(json.get("stream_options").is_none());
        assert_eq!(json["stream"], true);
        assert_eq!(json["tool_choice"], "any");
        for gone in [
            "logit_bias",
            "logprobs",
            "top_logprobs",
            "user",
            "reasoning_effort",
        ] {
            assert!(json.get(gone).is_none(), "{gone}");
        }
        for kept in [
            "temperature",
            "top_p",
            "n",
            "stop",
            "presence_penalty",
            "parallel_tool_calls",
        ] {
            assert!(json.get(kept).is_some(), "{kept}");
        }
        let messages = json["messages"].as_array().unwrap();
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(messages[1], json!({"role": "user", "content": "hi"}));
        assert_eq!(
            messages[2],
            json!({"role": "assistant", "content": "yo", "prefix": true})
        );
        assert_eq!(messages[3]["name"], "f", "tool messages keep their name");
        // A named tool choice passes as is.
        let named = request_with(
            &everything(),
            json!({"tool_choice": {"type": "function", "function": {"name": "f"}}}),
        );
        let json = wire(OpenAiFlavor::Mistral, "m", None, &named, false).unwrap();
        assert_eq!(json["tool_choice"]["function"]["name"], "f");
    }

    #[test]
    fn groq_refuses_several_choices_and_drops_what_it_rejects() {
        let json = wire(
            OpenAiFlavor::Groq,
            "llama-3.3-70b-versatile",
            None,
            &everything(),
            true,
        )
        .unwrap();
        for gone in ["logit_bias", "logprobs", "top_logprobs", "reasoning_effort"] {
            assert!(json.get(gone).is_none(), "{gone}");
        }
        assert_eq!(json["max_completion_tokens"], 200);
        assert_eq!(json["max_tokens"], 100);
        assert_eq!(json["stream_options"]["include_usage"], true);
        assert_eq!(json["tool_choice"], "required");
        assert_eq!(json["messages"][0]["role"], "system");
        assert!(json["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m.get("name").is_none()));

        let several = request_with(&everything(), json!({"n": 2}));
        let err = wire(OpenAiFlavor::Groq, "m", None, &several, false).unwrap_err();
        assert!(err.what.contains("`n` > 1"), "{err:?}");
        assert_eq!(err.param, "n");

        let effort = |model: &str, effort: &str| {
            wire(
                OpenAiFlavor::Groq,
                model,
                Some(effort),
                &everything(),
                false,
            )
            .unwrap()["reasoning_effort"]
                .clone()
        };
        assert_eq!(effort("openai/gpt-oss-120b", "minimal"), "low");
        assert_eq!(effort("openai/gpt-oss-20b", "medium"), "medium");
        assert_eq!(effort("qwen/qwen3-32b", "high"), "default");
        assert_eq!(effort("qwen/qwen3-32b", "none"), "none");
        assert_eq!(effort("llama-3.1-8b-instant", "high"), Value::Null);
    }

    fn with_part(part: Value) -> ChatRequest {
        request(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "look"}, part]}]}),
        )
    }

    #[test]
    fn input_parts_are_refused_only_where_the_api_documents_no_support() {
        use OpenAiFlavor::*;
        let image =
            with_part(json!({"type": "image_url", "image_url": {"url": "https://x/y.png"}}));
        let pdf = with_part(
            json!({"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA", "filename": "a.pdf"}}),
        );
        let audio = with_part(
            json!({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}),
        );
        let all = [
            OpenAi, Groq, Mistral, Xai, Fireworks, Together, DeepSeek, OpenRouter, Ollama, Vllm,
        ];
        let accepts = |request: &ChatRequest| -> Vec<OpenAiFlavor> {
            all.into_iter()
                .filter(|f| wire(*f, "m", None, request, false).is_ok())
                .collect()
        };
        assert_eq!(
            accepts(&image),
            vec![OpenAi, Groq, Mistral, Xai, Fireworks, Together, OpenRouter, Ollama, Vllm]
        );
        assert_eq!(accepts(&pdf), vec![OpenAi, OpenRouter]);
        assert_eq!(
            accepts(&audio),
            vec![OpenAi, Mistral, Fireworks, Together, OpenRouter, Vllm]
        );
        let err = wire(DeepSeek, "deepseek-chat", None, &image, false).unwrap_err();
        assert!(err.what.contains("image"), "{err:?}");
        let err = wire(Groq, "m", None, &pdf, false).unwrap_err();
        assert!(err.what.contains("PDF"), "{err:?}");
        let err = wire(Xai, "m", None, &audio, false).unwrap_err();
        assert!(err.what.contains("audio"), "{err:?}");
        // Accepted parts pass unchanged.
        let json = wire(OpenRouter, "m", None, &pdf, false).unwrap();
        assert_eq!(
            json["messages"][0]["content"][1]["file"]["filename"],
            "a.pdf"
        );
    }

    #[test]
    fn xai_reasoning_models_take_effort_only_where_documented() {
        let plain = request(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "presence_penalty": 0.5, "frequency_penalty": 0.5}),
        );
        let json = wire(
            OpenAiFlavor::Xai,
            "grok-3-mini",
            Some("medium"),
            &plain,
            false,
        )
        .unwrap();
        assert_eq!(json["reasoning_effort"], "high");
        assert!(json.get("presence_penalty").is_none());
        assert!(json.get("frequency_penalty").is_none());
        let json = wire(
            OpenAiFlavor::Xai,
            "grok-3-mini-fast",
            Some("minimal"),
            &plain,
            false,
        )
        .unwrap();
        assert_eq!(json["reasoning_effort"], "low");
        let json = wire(
            OpenAiFlavor::Xai,
            "grok-4-0709",
            Some("high"),
            &plain,
            false,
        )
        .unwrap();
        assert!(json.get("reasoning_effort").is_none());
        assert!(json.get("presence_penalty").is_none());
        let json = wire(OpenAiFlavor::Xai, "grok-4.3", Some("medium"), &plain, false).unwrap();
        assert_eq!(json["reasoning_effort"], "medium");
        // Not a reasoning model: penalties and stop pass.
        let stop = request_with(&plain, json!({"stop": "END"}));
        let json = wire(
            OpenAiFlavor::Xai,
            "grok-4-fast-non-reasoning",
            None,
            &stop,
            false,
        )
        .unwrap();
        assert_eq!(json["presence_penalty"], 0.5);
        assert_eq!(json["stop"], "END");
        // A reasoning model refuses stop sequences.
        let err = wire(OpenAiFlavor::Xai, "grok-4", None, &stop, false).unwrap_err();
        assert!(err.what.contains("stop"), "{err:?}");
    }

    #[test]
    fn deepseek_gets_json_object_with_the_schema_in_the_system_prompt() {
        let schema = json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]});
        let request = request(json!({
            "model": "m",
            "messages": [{"role": "developer", "content": "Extract."}, {"role": "user", "content": "Jo"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "User", "schema": schema, "strict": true}},
            "max_completion_tokens": 50
        }));
        let json = wire(
            OpenAiFlavor::DeepSeek,
            "deepseek-chat",
            Some("high"),
            &request,
            false,
        )
        .unwrap();
        assert_eq!(json["response_format"], json!({"type": "json_object"}));
        assert_eq!(json["max_tokens"], 50);
        assert!(json.get("max_completion_tokens").is_none());
        assert!(json.get("reasoning_effort").is_none());
        let system = &json["messages"][0];
        assert_eq!(system["role"], "system");
        let text = system["content"].as_str().unwrap();
        assert!(text.starts_with("Extract.\n\n"), "{text}");
        assert!(text.contains("JSON") && text.contains("`User`"), "{text}");
        let embedded: Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
        assert_eq!(embedded, schema);

        // Without a system message, one is added in front.
        let no_system = request_with(
            &request,
            json!({"messages": [{"role": "user", "content": "Jo"}]}),
        );
        let json = wire(
            OpenAiFlavor::DeepSeek,
            "deepseek-chat",
            None,
            &no_system,
            false,
        )
        .unwrap();
        assert_eq!(json["messages"].as_array().unwrap().len(), 2);
        assert_eq!(json["messages"][0]["role"], "system");
        assert_eq!(json["messages"][1]["content"], "Jo");

        // Other flavors keep json_schema.
        let json = wire(OpenAiFlavor::Fireworks, "m", None, &request, false).unwrap();
        assert_eq!(json["response_format"]["type"], "json_schema");
        assert_eq!(json["messages"][0]["content"], "Extract.");
    }

    #[test]
    fn deepseek_reasoner_loses_what_it_refuses_and_reasoning_content_is_not_replayed() {
        let json = wire(
            OpenAiFlavor::DeepSeek,
            "deepseek-reasoner",
            None,
            &everything(),
            false,
        )
        .unwrap();
        for gone in [
            "temperature",
            "top_p",
            "presence_penalty",
            "frequency_penalty",
            "logprobs",
            "top_logprobs",
        ] {
            assert!(json.get(gone).is_none(), "{gone}");
        }
        assert!(json["messages"][2].get("reasoning_content").is_none());
        assert_eq!(json["messages"][2]["prefix"], true);
        let json = wire(
            OpenAiFlavor::DeepSeek,
            "deepseek-chat",
            None,
            &everything(),
            false,
        )
        .unwrap();
        assert_eq!(json["temperature"], 0.5);
        assert_eq!(json["logprobs"], true);
    }

    #[test]
    fn openrouter_and_the_self_hosted_servers() {
        let json = wire(
            OpenAiFlavor::OpenRouter,
            "openai/o3",
            Some("low"),
            &everything(),
            true,
        )
        .unwrap();
        assert_eq!(json["reasoning"], json!({"effort": "low"}));
        assert!(json.get("reasoning_effort").is_none());
        assert_eq!(json["messages"][0]["role"], "system");
        assert_eq!(json["max_tokens"], 100);
        assert_eq!(json["max_completion_tokens"], 200);

        for flavor in [
            OpenAiFlavor::Ollama,
            OpenAiFlavor::Fireworks,
            OpenAiFlavor::Together,
        ] {
            let json = wire(flavor, "m", Some("low"), &everything(), true).unwrap();
            assert_eq!(json["max_tokens"], 200, "{flavor:?}");
            assert!(json.get("max_completion_tokens").is_none(), "{flavor:?}");
            assert_eq!(json["reasoning_effort"], "low", "{flavor:?}");
            assert_eq!(json["stream_options"]["include_usage"], true, "{flavor:?}");
            assert_eq!(json["messages"][0]["role"], "system", "{flavor:?}");
        }
        let json = wire(OpenAiFlavor::Vllm, "m", None, &everything(), true).unwrap();
        assert_eq!(json["max_completion_tokens"], 200);
        assert_eq!(json["messages"][0]["role"], "system");
    }

    #[test]
    fn messages_are_borrowed_when_nothing_changes() {
        let request = request(
            json!({"model": "m", "messages": [{"role": "system", "content": "s"},
            {"role": "user", "content": "hi"}]}),
        );
        let call = UpstreamRequest {
            request: &request,
            model: "m",
            reasoning_effort: None,
        };
        for flavor in [
            OpenAiFlavor::OpenAi,
            OpenAiFlavor::Mistral,
            OpenAiFlavor::DeepSeek,
            OpenAiFlavor::Groq,
        ] {
            let body = body(&call, false, flavor).unwrap();
            assert!(matches!(body.messages, Cow::Borrowed(_)), "{flavor:?}");
        }
    }

    #[test]
    fn model_families() {
        for m in [
            "o1",
            "o1-preview",
            "o3-mini",
            "o4-mini",
            "gpt-5",
            "gpt-5.1-codex",
            "openai/o3",
        ] {
            assert!(is_openai_reasoning_model(m), "{m}");
        }
        for m in [
            "gpt-4o",
            "omni-moderation-latest",
            "gpt-5-chat-latest",
            "o",
            "chatgpt-4o-latest",
        ] {
            assert!(!is_openai_reasoning_model(m), "{m}");
        }
        for m in [
            "grok-3-mini",
            "grok-4",
            "grok-4-1-fast-reasoning",
            "grok-code-fast-1",
        ] {
            assert!(is_grok_reasoning_model(m), "{m}");
        }
        for m in ["grok-3", "grok-4-fast-non-reasoning", "grok-2-vision-1212"] {
            assert!(!is_grok_reasoning_model(m), "{m}");
        }
    }
}
