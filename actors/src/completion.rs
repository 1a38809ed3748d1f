//! Provider-independent results: what every adapter turns its provider's answer into, and what
//! the HTTP layer renders back as OpenAI JSON.

use serde::{Deserialize, Serialize};

use crate::catalog::Prices;

/// A complete (non-streamed) answer from one upstream call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Completion {
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: FinishReason,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct AssistantMessage {
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolCallOut {
    pub id: String,
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    #[default]
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }

    /// Maps OpenAI-style finish reason strings; unknown ones are treated as `stop`.
    pub fn from_openai(reason: &str) -> Self {
        match reason {
            "length" => FinishReason::Length,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            _ => FinishReason::Stop,
        }
    }
}

/// Token counts as the provider reported them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Part of `prompt_tokens` served from the provider's prompt cache.
    #[serde(default)]
    pub cached_tokens: u64,
    /// Part of `completion_tokens` spent on reasoning.
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// Part of `prompt_tokens` written to the provider's prompt cache (Anthropic).
    #[serde(default)]
    pub cache_write_tokens: u64,
}

impl Usage {
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cached_tokens += other.cached_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
    }

    /// The price of this usage at the given per-million-token prices. Above a long-context
    /// threshold, the long-context tier prices the whole call.
    pub fn cost_usd(&self, prices: &Prices) -> f64 {
        let (input, output, cached_price) = match prices.long_context {
            Some(tier) if self.prompt_tokens > tier.threshold_tokens => (
                tier.input_per_mtok,
                tier.output_per_mtok,
                tier.cached_input_per_mtok
                    .or(prices.cached_input_per_mtok)
                    .unwrap_or(tier.input_per_mtok),
            ),
            _ => (
                prices.input_per_mtok,
                prices.output_per_mtok,
                prices
                    .cached_input_per_mtok
                    .unwrap_or(prices.input_per_mtok),
            ),
        };
        let cached = self.cached_tokens.min(self.prompt_tokens);
        let written = self.cache_write_tokens.min(self.prompt_tokens - cached);
        let uncached = self.prompt_tokens - cached - written;
        let write_price = prices.cache_write_per_mtok.unwrap_or(input);
        (uncached as f64 * input
            + cached as f64 * cached_price
            + written as f64 * write_price
            + self.completion_tokens as f64 * output)
            / 1_000_000.0
    }

    /// The OpenAI `usage` object.
    pub fn to_openai(self) -> serde_json::Value {
        serde_json::json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens(),
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        })
    }
}

/// One event of a streamed answer. Adapters emit no event for empty deltas, so the first event
/// of a stream is real content (or the end): fallback before it is invisible to the client.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// Text for choice `index`.
    Content {
        index: u32,
        text: String,
    },
    /// A tool call fragment: `id` and `name` arrive with the first fragment of call `call`.
    ToolCall {
        index: u32,
        call: u32,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
    Finish {
        index: u32,
        reason: FinishReason,
    },
    Usage(Usage),
}

/// Builds the whole answer out of stream events, for the run record.
#[derive(Debug, Default, Clone)]
pub struct CompletionAccumulator {
    choices: Vec<Choice>,
    pub usage: Option<Usage>,
}

impl CompletionAccumulator {
    fn choice(&mut self, index: u32) -> &mut Choice {
        let position = match self.choices.iter().position(|c| c.index == index) {
            Some(position) => position,
            None => {
                self.choices.push(Choice {
                    index,
                    message: AssistantMessage::default(),
                    finish_reason: FinishReason::Stop,
                });
                self.choices.len() - 1
            }
        };
        &mut self.choices[position]
    }

    pub fn push(&mut self, event: &StreamEvent) {
        match event {
            StreamEvent::Content { index, text } => {
                let message = &mut self.choice(*index).message;
                message
                    .content
                    .get_or_insert_with(String::new)
                    .push_str(text);
            }
            StreamEvent::ToolCall {
                index,
                call,
                id,
                name,
                arguments,
            } => {
                let calls = &mut self.choice(*index).message.tool_calls;
                while calls.len() <= *call as usize {
                    calls.push(ToolCallOut {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    });
                }
                let slot = &mut calls[*call as usize];
                if let Some(id) = id {
                    slot.id.clone_from(id);
                }
                if let Some(name) = name {
                    slot.name.clone_from(name);
                }
                slot.arguments.push_str(arguments);
            }
            StreamEvent::Finish { index, reason } => self.choice(*index).finish_reason = *reason,
            StreamEvent::Usage(usage) => self.usage = Some(*usage),
        }
    }

    pub fn finish(mut self) -> Completion {
        self.choices.sort_by_key(|c| c.index);
        Completion {
            choices: self.choices,
            usage: self.usage.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_uses_cached_price_for_cached_tokens() {
        let usage = Usage {
            prompt_tokens: 1_000,
            completion_tokens: 500,
            cached_tokens: 200,
            ..Usage::default()
        };
        let prices = Prices {
            input_per_mtok: 0.15,
            output_per_mtok: 0.60,
            cached_input_per_mtok: Some(0.075),
            ..Prices::default()
        };
        // 800 * 0.15 + 200 * 0.075 + 500 * 0.60 = 120 + 15 + 300 = 435 per 1M
        assert!((usage.cost_usd(&prices) - 0.000435).abs() < 1e-12);
    }

    #[test]
    fn cost_prices_cache_writes_and_long_context_tiers() {
        use crate::catalog::LongContextPrices;
        // Anthropic-style: 100 uncached, 300 read from cache, 600 written to it.
        let usage = Usage {
            prompt_tokens: 1_000,
            completion_tokens: 100,
            cached_tokens: 300,
            cache_write_tokens: 600,
            ..Usage::default()
        };
        let prices = Prices {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
            cached_input_per_mtok: Some(0.30),
            cache_write_per_mtok: Some(3.75),
            long_context: Some(LongContextPrices {
                threshold_tokens: 200_000,
                input_per_mtok: 6.0,
                output_per_mtok: 22.5,
                cached_input_per_mtok: Some(0.60),
            }),
        };
        // 100*3 + 300*0.30 + 600*3.75 + 100*15 = 300 + 90 + 2250 + 1500 = 4140 per 1M
        assert!((usage.cost_usd(&prices) - 0.004140).abs() < 1e-12);
        // Over the threshold the whole call is priced at the tier.
        let long = Usage {
            prompt_tokens: 250_000,
            completion_tokens: 1_000,
            ..Usage::default()
        };
        // 250000*6 + 1000*22.5 = 1_522_500 per 1M
        assert!((long.cost_usd(&prices) - 1.5225).abs() < 1e-9);
    }

    #[test]
    fn accumulator_rebuilds_tool_calls() {
        let mut acc = CompletionAccumulator::default();
        for event in [
            StreamEvent::ToolCall {
                index: 0,
                call: 0,
                id: Some("call_1".into()),
                name: Some("f".into()),
                arguments: String::new(),
            },
            StreamEvent::ToolCall {
                index: 0,
                call: 0,
                id: None,
                name: None,
                arguments: "{\"a\":".into(),
            },
            StreamEvent::ToolCall {
                index: 0,
                call: 0,
                id: None,
                name: None,
                arguments: "1}".into(),
            },
            StreamEvent::Finish {
                index: 0,
                reason: FinishReason::ToolCalls,
            },
        ] {
            acc.push(&event);
        }
        let completion = acc.finish();
        let call = &completion.choices[0].message.tool_calls[0];
        assert_eq!(call.arguments, "{\"a\":1}");
        assert_eq!(call.name, "f");
        assert_eq!(completion.choices[0].finish_reason, FinishReason::ToolCalls);
    }
}
