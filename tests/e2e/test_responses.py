"""`POST /v1/responses` through the official `openai` SDK's `client.responses`: plain, streamed,
a function tool round trip (stateless and through `previous_response_id`), a JSON schema via
`text.format`, and bad input; against models behind the OpenAI-, Anthropic- and Gemini-format
mock upstreams."""

from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest

from conftest import API_KEY, DOOR_MODELS, expected_cost

MODELS = list(DOOR_MODELS)

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def run_id_of(response_id: str) -> str:
    assert response_id.startswith("resp_"), response_id
    return str(uuid.UUID(hex=response_id.removeprefix("resp_")))


def upstream_bodies_containing(mock_upstream, marker: str) -> list[dict]:
    return [r for r in mock_upstream.requests() if marker in json.dumps(r["body"])]


@pytest.mark.parametrize("model", MODELS)
def test_plain_text_answer_is_a_response_with_cost_and_a_recorded_run(
    client, flowgate, mock_upstream, marker, model
):
    raw = client.responses.with_raw_response.create(
        model=f"doors-agent/{model}", input=f"Hello {marker}", instructions="Answer briefly."
    )
    response = raw.parse()

    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == f"Hello {marker}"
    assert response.model == model
    [item] = response.output
    assert item.type == "message" and item.role == "assistant"
    assert item.content[0].type == "output_text"
    assert response.instructions == "Answer briefly."
    usage = response.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    cost = response.model_extra["cost_usd"]
    assert cost == pytest.approx(expected_cost(usage.input_tokens, usage.output_tokens), rel=1e-9)

    # The instructions went upstream as the provider's system prompt.
    [sent] = upstream_bodies_containing(mock_upstream, marker)
    assert "Answer briefly." in json.dumps(sent["body"])

    run_id = run_id_of(response.id)
    assert raw.headers["x-flowgate-run-id"] == run_id
    assert raw.headers["x-flowgate-model"] == model
    run = flowgate.get_run(run_id)
    assert run["door"] == "responses"
    assert run["agent"] == "doors-agent"
    assert run["model"] == model
    assert run["provider"] == DOOR_MODELS[model][0]
    assert run["cost_usd"] == pytest.approx(cost, rel=1e-12)
    assert run["usage"]["prompt_tokens"] == usage.input_tokens


@pytest.mark.parametrize("model", MODELS)
def test_streamed_answer_has_the_responses_event_sequence(client, flowgate, marker, model):
    events = list(client.responses.create(model=model, input=f"Stream {marker}", stream=True))
    types = [e.type for e in events]

    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert "response.output_item.added" in types and "response.output_item.done" in types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == f"Stream {marker}"
    [done] = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == f"Stream {marker}"

    final = events[-1].response
    assert final.status == "completed"
    assert final.output_text == f"Stream {marker}"
    assert final.usage.output_tokens > 0
    assert final.model_extra["cost_usd"] == pytest.approx(
        expected_cost(final.usage.input_tokens, final.usage.output_tokens), rel=1e-9
    )
    run = flowgate.get_run(run_id_of(final.id))
    assert run["door"] == "responses" and run["stream"] is True
    assert run["status"] == "success"
    assert run["output"]["choices"][0]["message"]["content"] == f"Stream {marker}"


def test_the_sdk_stream_helper_accumulates_the_final_response(client, marker):
    with client.responses.stream(model="door-claude", input=f"Helper {marker}") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == f"Helper {marker}"
    assert final.output_text == f"Helper {marker}"


@pytest.mark.parametrize("model", MODELS)
def test_function_tool_round_trip_through_previous_response_id(
    client, flowgate, mock_upstream, marker, model
):
    prompt = f"What is the weather in Paris? {marker}"
    first = client.responses.create(
        model=model, input=prompt, tools=[WEATHER_TOOL], tool_choice="required"
    )
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert isinstance(json.loads(call.arguments)["city"], str)
    assert call.call_id

    result_marker = f"r-{uuid.uuid4().hex[:10]}"
    second = client.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": f"18 degrees {result_marker}"}],
        tools=[WEATHER_TOOL],
    )
    # The mock answers with the last user message: the one of the first response, carried
    # over by `previous_response_id`.
    assert second.output_text == prompt
    assert second.previous_response_id == first.id
    # The provider saw the whole conversation: the prompt, the call and its output (Gemini's
    # format matches calls and results by name, not id).
    [sent] = upstream_bodies_containing(mock_upstream, result_marker)
    assert marker in json.dumps(sent["body"])
    run = flowgate.get_run(run_id_of(second.id))
    messages = run["request"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == call.call_id
    assert messages[2]["tool_call_id"] == call.call_id


def test_function_tool_round_trip_with_the_items_sent_back(client, mock_upstream, marker):
    prompt = f"Weather? {marker}"
    first = client.responses.create(
        model="door-claude", input=prompt, tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    [call] = [item for item in first.output if item.type == "function_call"]
    second = client.responses.create(
        model="door-claude",
        input=[
            {"role": "user", "content": prompt},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert second.output_text == prompt
    assert second.previous_response_id is None


def test_streamed_function_call_arrives_as_argument_deltas(client, marker):
    events = list(client.responses.create(
        model="door-gpt", input=f"Weather {marker}", tools=[WEATHER_TOOL],
        tool_choice="required", stream=True,
    ))
    types = [e.type for e in events]
    assert "response.function_call_arguments.delta" in types
    assert "response.function_call_arguments.done" in types
    [added] = [e for e in events if e.type == "response.output_item.added"]
    assert added.item.type == "function_call" and added.item.name == "get_weather"
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    final = events[-1].response
    [call] = final.output
    assert call.type == "function_call" and call.arguments == deltas
    assert isinstance(json.loads(deltas)["city"], str)


@pytest.mark.parametrize("model", MODELS)
def test_json_schema_text_format_gives_valid_json(client, flowgate, marker, model):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model=model,
        input=f"Extract: Jason is 25 {marker}",
        text={"format": {"type": "json_schema", "name": "User", "schema": schema, "strict": True}},
    )
    parsed = json.loads(response.output_text)
    assert isinstance(parsed["name"], str) and isinstance(parsed["age"], int)
    assert response.text.format.type == "json_schema"
    run = flowgate.get_run(run_id_of(response.id))
    assert run["structured"]["layer"] is not None
    assert run["structured"]["validation_errors"] == []


def test_bad_input_is_an_openai_error(client, flowgate):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="door-gpt", input=[])
    assert info.value.body["param"] == "input"

    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="door-gpt", input="x", tools=[{"type": "web_search_preview"}])
    assert info.value.body["param"] == "tools[0].type"

    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="door-gpt", input=[{"type": "function_call", "name": "f"}])
    assert info.value.body["param"] == "input[0]"

    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(
            model="door-gpt", input="x", previous_response_id=f"resp_{uuid.uuid4().hex}"
        )
    assert info.value.body["code"] == "previous_response_not_found"

    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="no-such-model", input="x")
    assert info.value.body["code"] == "model_not_found"

    # The body is checked as on Chat Completions: a missing field is named.
    response = flowgate.http.post("/v1/responses", json={"input": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"

    # The key is checked as on Chat Completions.
    response = httpx.post(f"{flowgate.url}/v1/responses", json={"model": "door-gpt", "input": "x"},
                          headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert API_KEY not in response.text


def test_a_stream_cut_after_content_ends_with_error_and_response_failed(client, flowgate, marker):
    # `up-cut` streams one 4-character piece, then the upstream connection is cut.
    events = list(client.responses.create(model="up-cut", input=f"Cut me {marker}", stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in types
    assert types[-2:] == ["error", "response.failed"]
    assert events[-2].message
    failed = events[-1].response
    assert failed.status == "failed" and failed.error.message == events[-2].message
    # What was streamed before the cut is kept in the failed response.
    assert failed.output[0].content[0].text == "".join(
        e.delta for e in events if e.type == "response.output_text.delta"
    )
    run = flowgate.get_run(run_id_of(failed.id))
    assert run["status"] == "error" and run["door"] == "responses"
