"""`POST /v1/messages` through the official `anthropic` SDK's `client.messages`: plain,
streamed (`messages.stream` and `stream=True`), a tool use round trip, both ways of sending
the key, and bad input in Anthropic's error shape; against models behind the OpenAI-,
Anthropic- and Gemini-format mock upstreams."""

from __future__ import annotations

import json
import uuid

import anthropic
import httpx
import pytest

from conftest import API_KEY, DOOR_MODELS, expected_cost

MODELS = list(DOOR_MODELS)

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def claude(flowgate) -> anthropic.Anthropic:
    # The SDK sends the key in `x-api-key` and appends `/v1/messages` to the base URL.
    c = anthropic.Anthropic(base_url=flowgate.url, api_key=API_KEY, max_retries=0, timeout=30)
    yield c
    c.close()


def upstream_bodies_containing(mock_upstream, marker: str) -> list[dict]:
    return [r for r in mock_upstream.requests() if marker in json.dumps(r["body"])]


@pytest.mark.parametrize("model", MODELS)
def test_plain_message_with_cost_and_a_recorded_run(claude, flowgate, mock_upstream, marker, model):
    raw = claude.messages.with_raw_response.create(
        model=f"doors-agent/{model}",
        max_tokens=200,
        system="Answer briefly.",
        messages=[{"role": "user", "content": f"Hello {marker}"}],
    )
    message = raw.parse()

    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == model
    [block] = message.content
    assert block.type == "text" and block.text == f"Hello {marker}"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    cost = message.model_extra["cost_usd"]
    assert cost == pytest.approx(
        expected_cost(message.usage.input_tokens, message.usage.output_tokens), rel=1e-9
    )

    [sent] = upstream_bodies_containing(mock_upstream, marker)
    assert "Answer briefly." in json.dumps(sent["body"])

    run_id = raw.headers["x-flowgate-run-id"]
    assert message.id == f"msg_{uuid.UUID(run_id).hex}"
    run = flowgate.get_run(run_id)
    assert run["door"] == "messages"
    assert run["agent"] == "doors-agent"
    assert run["model"] == model and run["provider"] == DOOR_MODELS[model][0]
    assert run["cost_usd"] == pytest.approx(cost, rel=1e-12)


@pytest.mark.parametrize("model", MODELS)
def test_messages_stream_helper_gets_text_and_final_message(claude, flowgate, marker, model):
    with claude.messages.stream(
        model=model, max_tokens=200, messages=[{"role": "user", "content": f"Stream {marker}"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == f"Stream {marker}"
    assert final.content[0].text == f"Stream {marker}"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0
    run = flowgate.get_run(str(uuid.UUID(hex=final.id.removeprefix("msg_"))))
    assert run["door"] == "messages" and run["stream"] is True and run["status"] == "success"
    assert run["cost_usd"] == pytest.approx(
        expected_cost(final.usage.input_tokens, final.usage.output_tokens), rel=1e-9
    )


def test_raw_stream_events_are_anthropics(claude, marker):
    events = list(claude.messages.create(
        model="door-gpt", max_tokens=100, stream=True,
        messages=[{"role": "user", "content": f"Raw {marker}"}],
    ))
    types = [e.type for e in events]
    assert types[0] == "message_start"
    assert types[1] == "content_block_start"
    assert types[-2:] == ["message_delta", "message_stop"]
    assert "content_block_stop" in types
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == f"Raw {marker}"
    delta = events[-2]
    assert delta.delta.stop_reason == "end_turn"
    assert delta.model_extra["cost_usd"] > 0


@pytest.mark.parametrize("model", MODELS)
def test_tool_use_round_trip(claude, flowgate, mock_upstream, marker, model):
    prompt = f"What is the weather in Paris? {marker}"
    first = claude.messages.create(
        model=model, max_tokens=200, tools=[WEATHER_TOOL], tool_choice={"type": "any"},
        messages=[{"role": "user", "content": prompt}],
    )
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather"
    assert isinstance(use.input["city"], str)

    result_marker = f"r-{uuid.uuid4().hex[:10]}"
    second = claude.messages.create(
        model=model, max_tokens=200, tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                          "content": f"18 degrees {result_marker}"}]},
        ],
    )
    # The mock answers with the last user text: the prompt (the last turn is a tool result).
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == prompt
    [sent] = upstream_bodies_containing(mock_upstream, result_marker)
    assert marker in json.dumps(sent["body"])


def test_streamed_tool_use_is_accumulated_by_the_sdk(claude, marker):
    with claude.messages.stream(
        model="door-claude", max_tokens=200, tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": f"Weather {marker}"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [use] = [b for b in final.content if b.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input["city"], str)


def test_bearer_token_and_anthropic_version_are_accepted(flowgate, marker):
    c = anthropic.Anthropic(base_url=flowgate.url, auth_token=API_KEY, max_retries=0)
    message = c.messages.create(
        model="door-gpt", max_tokens=50, messages=[{"role": "user", "content": f"Bearer {marker}"}]
    )
    assert message.content[0].text == f"Bearer {marker}"
    c.close()


def test_bad_input_is_an_anthropic_error(claude, flowgate):
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model="door-gpt", max_tokens=10, messages=[])
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "messages" in info.value.body["error"]["message"]

    with pytest.raises(anthropic.NotFoundError) as info:
        claude.messages.create(
            model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body["error"]["type"] == "not_found_error"

    with pytest.raises(anthropic.AuthenticationError) as info:
        anthropic.Anthropic(base_url=flowgate.url, api_key="wrong", max_retries=0).messages.create(
            model="door-gpt", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body["error"]["type"] == "authentication_error"

    # A missing required field, a bad block and bad JSON: each named, in Anthropic's shape.
    url = f"{flowgate.url}/v1/messages"
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    response = httpx.post(url, headers=headers,
                          json={"model": "door-gpt", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    assert response.headers["x-flowgate-run-id"]

    response = httpx.post(url, headers=headers, json={
        "model": "door-gpt", "max_tokens": 5,
        "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}],
    })
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content[0].type"

    response = httpx.post(url, headers={**headers, "content-type": "application/json"},
                          content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"

    # Unknown paths answer only a caller with a key.
    assert httpx.get(f"{flowgate.url}/v1/nothing").status_code == 401
    assert httpx.get(f"{flowgate.url}/v1/nothing", headers=headers).status_code == 404


def test_a_stream_cut_after_content_is_an_error_event(claude, flowgate, marker):
    # `up-cut` streams one 4-character piece, then the upstream connection is cut.
    seen = []
    with pytest.raises(anthropic.APIStatusError) as info:
        for event in claude.messages.create(
            model="up-cut", max_tokens=100, stream=True,
            messages=[{"role": "user", "content": f"Cut me {marker}"}],
        ):
            seen.append(event.type)
    assert seen[0] == "message_start" and "content_block_delta" in seen
    assert "message_stop" not in seen
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "api_error"
