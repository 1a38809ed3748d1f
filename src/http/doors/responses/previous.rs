//! `previous_response_id`: the conversation of a recorded run, so a request can continue it.
//! flowgate keeps no conversation state of its own: the run's record has the messages it sent
//! and the answer it got, which is all a continuation needs. As in the Responses API, the
//! earlier `instructions` are not carried over (the run's leading system messages, for a run
//! that came through this door).

use flowgate_actors::error::{excerpt, ErrorKind, GatewayError};
use flowgate_actors::recorder::run::{Door, RunRecord};
use flowgate_actors::wire::{ChatRequest, FunctionCall, Message, MessageContent, Role, ToolCall};
use serde_json::Map;
use uuid::Uuid;

/// Longest `previous_response_id` looked at.
const MAX_ID_BYTES: usize = 128;

/// The run id a response id names: `resp_<hex>` as this door answers, or a bare run id.
pub(in crate::http) fn run_id_of(id: &str) -> Result<Uuid, GatewayError> {
    let bad = || {
        GatewayError::invalid(format!(
            "`previous_response_id` `{}` is not the id of a response of this gateway",
            excerpt(id, 64)
        ))
        .with_param("previous_response_id")
    };
    if id.len() > MAX_ID_BYTES {
        return Err(bad());
    }
    let bare = id.strip_prefix("resp_").unwrap_or(id);
    let bare = bare.rsplit('/').next().unwrap_or(bare);
    Uuid::try_parse(bare).map_err(|_| bad())
}

/// The messages of `run` and its answer, in the order a continuation sends them.
pub(in crate::http) fn conversation(run: &RunRecord) -> Result<Vec<Message>, GatewayError> {
    let no_answer = || {
        GatewayError::invalid(format!(
            "previous response `{}` has no answer to continue (its run ended with status `{}`)",
            run.id,
            run.status.as_str()
        ))
        .with_param("previous_response_id")
    };
    let answer = run
        .output
        .as_ref()
        .and_then(|o| o.choices.first())
        .ok_or_else(no_answer)?;
    let mut messages = match &run.rendered_messages {
        Some(sent) => sent.clone(),
        None => {
            let raw = run.request.as_ref().ok_or_else(no_answer)?;
            serde_json::from_str::<ChatRequest>(raw.get())
                .map_err(|e| {
                    GatewayError::new(
                        ErrorKind::Internal,
                        format!("the request of run `{}` cannot be read: {e}", run.id),
                    )
                })?
                .messages
        }
    };
    if run.door == Door::Responses {
        let instructions = messages
            .iter()
            .take_while(|m| m.role == Role::System)
            .count();
        messages.drain(..instructions);
    }
    let calls: Vec<ToolCall> = answer
        .message
        .tool_calls
        .iter()
        .map(|call| ToolCall {
            id: call.id.clone(),
            kind: "function".into(),
            function: FunctionCall {
                name: call.name.clone(),
                arguments: call.arguments.clone(),
            },
        })
        .collect();
    messages.push(Message {
        role: Role::Assistant,
        content: answer.message.content.clone().map(MessageContent::Text),
        name: None,
        tool_calls: (!calls.is_empty()).then_some(calls),
        tool_call_id: None,
        extra: Map::new(),
    });
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(door: &str, request: serde_json::Value, output: serde_json::Value) -> RunRecord {
        let mut run = json!({
            "id": Uuid::now_v7(), "tenant": "t", "agent": "a",
            "created_at": "2026-01-01T00:00:00.000Z", "status": "success",
            "requested_model": "m", "model": "m", "provider": "p", "provider_model": "pm",
            "version_id": null, "stream": false, "request": request, "input": null,
            "output": output, "attempts": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            "cost_usd": 0.0, "duration_seconds": 1.0, "cache": "bypass", "error": null,
            "metadata": null, "feedback_token": "x", "source_run_id": null
        });
        if !door.is_empty() {
            run["door"] = json!(door);
        }
        serde_json::from_str(&run.to_string()).unwrap()
    }

    #[test]
    fn a_run_continues_with_its_messages_and_answer_without_its_instructions() {
        let run = record(
            "responses",
            json!({"model": "m", "messages": [
                {"role": "system", "content": "old instructions"},
                {"role": "user", "content": "weather?"}]}),
            json!({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "content": null,
                "tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": "{}"}]}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
        );
        let messages = serde_json::to_value(conversation(&run).unwrap()).unwrap();
        assert_eq!(
            messages,
            json!([
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"}}]}
            ])
        );
        // A Chat Completions run keeps its system message: it was part of its conversation.
        let run = record(
            "",
            json!({"model": "m", "messages": [
                {"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]}),
            json!({"choices": [{"index": 0, "finish_reason": "stop",
                "message": {"content": "hello"}}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
        );
        let messages = conversation(&run).unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[2].text(), "hello");
    }

    #[test]
    fn ids_are_checked() {
        let id = Uuid::now_v7();
        assert_eq!(run_id_of(&format!("resp_{}", id.simple())).unwrap(), id);
        assert_eq!(run_id_of(&id.to_string()).unwrap(), id);
        assert!(run_id_of("resp_nope").is_err());
        assert!(run_id_of(&"x".repeat(500)).is_err());
    }
}
