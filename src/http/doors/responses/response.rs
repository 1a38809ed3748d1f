//! The engine's answer as an OpenAI `response` object: output items (`message` with
//! `output_text`, `function_call`), status, usage, and the request's parameters echoed back
//! as the Responses API does.

use flowgate_actors::completion::{AssistantMessage, FinishReason, Usage};
use serde_json::{json, Map, Value};

use super::request::{ResponsesRequest, TextFormat};

/// The fields of a `response` object that echo its request, written once per request.
pub(in crate::http) fn echo(request: &ResponsesRequest) -> Map<String, Value> {
    let format = match request.text.as_ref().and_then(|t| t.format.as_ref()) {
        Some(format) => serde_json::to_value(format).unwrap_or(Value::Null),
        None => serde_json::to_value(TextFormat::Text).unwrap_or(Value::Null),
    };
    let tools: Vec<Value> = request
        .tools
        .iter()
        .flatten()
        .filter_map(|t| serde_json::to_value(t).ok())
        .collect();
    let mut echo = Map::new();
    echo.insert("instructions".into(), json!(request.instructions));
    echo.insert("max_output_tokens".into(), json!(request.max_output_tokens));
    echo.insert(
        "parallel_tool_calls".into(),
        json!(request.parallel_tool_calls.unwrap_or(true)),
    );
    echo.insert(
        "previous_response_id".into(),
        json!(request.previous_response_id),
    );
    echo.insert(
        "reasoning".into(),
        json!({"effort": request.reasoning.as_ref().and_then(|r| r.effort.clone()), "summary": null}),
    );
    echo.insert("store".into(), json!(true));
    echo.insert(
        "temperature".into(),
        json!(request.temperature.unwrap_or(1.0)),
    );
    echo.insert("text".into(), json!({ "format": format }));
    echo.insert(
        "tool_choice".into(),
        request.tool_choice.clone().unwrap_or_else(|| json!("auto")),
    );
    echo.insert("tools".into(), Value::Array(tools));
    echo.insert("top_p".into(), json!(request.top_p.unwrap_or(1.0)));
    echo.insert("truncation".into(), json!("disabled"));
    echo.insert("user".into(), json!(request.user));
    echo.insert(
        "metadata".into(),
        Value::Object(request.metadata.clone().unwrap_or_default()),
    );
    echo
}

/// The ids of a response's output items: one text message, function calls by their order.
pub(in crate::http) fn message_item_id(response_hex: &str) -> String {
    format!("msg_{response_hex}")
}

pub(in crate::http) fn call_item_id(response_hex: &str, call: usize) -> String {
    format!("fc_{response_hex}_{call}")
}

/// `status` and `incomplete_details` for how the answer finished.
pub(in crate::http) fn status(reason: FinishReason) -> (&'static str, Value) {
    match reason {
        FinishReason::Stop | FinishReason::ToolCalls => ("completed", Value::Null),
        FinishReason::Length => ("incomplete", json!({"reason": "max_output_tokens"})),
        FinishReason::ContentFilter => ("incomplete", json!({"reason": "content_filter"})),
    }
}

/// A `message` output item holding `text` (or a refusal).
pub(in crate::http) fn message_item(id: &str, text: &str, refusal: bool, status: &str) -> Value {
    let part = if refusal {
        json!({"type": "refusal", "refusal": text})
    } else {
        json!({"type": "output_text", "text": text, "annotations": []})
    };
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": [part]})
}

/// A `function_call` output item.
pub(in crate::http) fn call_item(
    id: &str,
    call_id: &str,
    name: &str,
    arguments: &str,
    status: &str,
) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
           "arguments": arguments, "status": status})
}

/// The output items of an assistant message: its text, then its function calls.
pub(in crate::http) fn output_items(message: &AssistantMessage, response_hex: &str) -> Vec<Value> {
    let mut items = Vec::with_capacity(1 + message.tool_calls.len());
    match (&message.content, &message.refusal) {
        (Some(text), _) if !text.is_empty() => items.push(message_item(
            &message_item_id(response_hex),
            text,
            false,
            "completed",
        )),
        (_, Some(refusal)) => items.push(message_item(
            &message_item_id(response_hex),
            refusal,
            true,
            "completed",
        )),
        _ => {}
    }
    for (i, call) in message.tool_calls.iter().enumerate() {
        items.push(call_item(
            &call_item_id(response_hex, i),
            &call.id,
            &call.name,
            &call.arguments,
            "completed",
        ));
    }
    items
}

/// The Responses API's `usage`.
pub(in crate::http) fn usage(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens(),
    })
}

/// What a `response` object says besides its echoed request.
pub(in crate::http) struct ResponseState<'a> {
    pub(in crate::http) id: &'a str,
    pub(in crate::http) created_at: u64,
    pub(in crate::http) model: &'a str,
    pub(in crate::http) status: &'a str,
    pub(in crate::http) incomplete_details: Value,
    pub(in crate::http) error: Value,
    pub(in crate::http) output: Vec<Value>,
    pub(in crate::http) usage: Value,
}

/// A whole `response` object.
pub(in crate::http) fn response(echo: &Map<String, Value>, state: ResponseState<'_>) -> Value {
    let mut body = Map::with_capacity(echo.len() + 10);
    body.insert("id".into(), json!(state.id));
    body.insert("object".into(), json!("response"));
    body.insert("created_at".into(), json!(state.created_at));
    body.insert("status".into(), json!(state.status));
    body.insert("error".into(), state.error);
    body.insert("incomplete_details".into(), state.incomplete_details);
    body.insert("model".into(), json!(state.model));
    body.insert("output".into(), Value::Array(state.output));
    body.insert("usage".into(), state.usage);
    for (key, value) in echo {
        body.insert(key.clone(), value.clone());
    }
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_actors::completion::ToolCallOut;

    #[test]
    fn text_and_calls_become_output_items() {
        let message = AssistantMessage {
            content: Some("Hello".into()),
            tool_calls: vec![ToolCallOut {
                id: "call_1".into(),
                name: "f".into(),
                arguments: "{\"a\":1}".into(),
            }],
            refusal: None,
        };
        assert_eq!(
            Value::Array(output_items(&message, "abc")),
            json!([
                {"type": "message", "id": "msg_abc", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": "Hello", "annotations": []}]},
                {"type": "function_call", "id": "fc_abc_0", "call_id": "call_1", "name": "f",
                 "arguments": "{\"a\":1}", "status": "completed"}
            ])
        );
        assert_eq!(status(FinishReason::Length).0, "incomplete");
    }

    #[test]
    fn the_response_echoes_its_request() {
        let request: ResponsesRequest = serde_json::from_value(json!({
            "model": "m", "input": "x", "instructions": "I", "temperature": 0.3,
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "text": {"format": {"type": "json_schema", "name": "S", "schema": {"type": "object"}}}
        }))
        .unwrap();
        let body = response(
            &echo(&request),
            ResponseState {
                id: "resp_1",
                created_at: 7,
                model: "m-latest",
                status: "completed",
                incomplete_details: Value::Null,
                error: Value::Null,
                output: vec![],
                usage: usage(&Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2,
                    ..Usage::default()
                }),
            },
        );
        assert_eq!(body["object"], "response");
        assert_eq!(body["instructions"], "I");
        assert_eq!(body["temperature"], 0.3);
        assert_eq!(body["tool_choice"], "auto");
        assert_eq!(body["tools"][0]["name"], "f");
        assert_eq!(
            body["text"]["format"],
            json!({"type": "json_schema", "name": "S", "schema": {"type": "object"}})
        );
        assert_eq!(body["usage"]["total_tokens"], 5);
        assert_eq!(body["metadata"], json!({}));
    }
}
