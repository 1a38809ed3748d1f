"""Streaming chat completions (`stream=True`) through the `openai` SDK, sync and async."""

from __future__ import annotations

import asyncio

import openai
import pytest

from conftest import expected_cost

# Longer than one streamed piece of the mock (16 characters) and of the upstream (8).
PROMPT = "Streaming works one piece at a time, and the pieces add up."


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def check_chunks(chunks, expected_text: str, agent: str) -> object:
    """Checks a complete chunk sequence; returns the last chunk."""
    assert chunks, "empty stream"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1, "the answer was not streamed in pieces"
    assert "".join(pieces) == expected_text

    assert {c.id for c in chunks} == {chunks[0].id}
    assert chunks[0].id.startswith(f"{agent}/")
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]

    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens > 0
    assert last.model_extra["cost_usd"] > 0
    assert last.model_extra["duration_seconds"] >= 0
    # Only the last chunk carries usage.
    assert all(c.usage is None for c in chunks[:-1])
    return last


def test_sync_stream_concatenates_to_the_echo(client):
    stream = client.chat.completions.create(
        model="stream-agent/mock-echo", messages=user(PROMPT), stream=True
    )
    check_chunks(list(stream), PROMPT, "stream-agent")


def test_sync_stream_helper_final_completion(client):
    with client.chat.completions.stream(model="stream-agent/mock-echo", messages=user(PROMPT)) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == PROMPT
    assert final.choices[0].message.content == PROMPT
    assert final.usage is not None and final.usage.total_tokens > 0


def test_async_stream_concatenates_to_the_echo(make_async_client):
    async def main():
        async with make_async_client() as aclient:
            stream = await aclient.chat.completions.create(
                model="stream-agent/mock-echo", messages=user(PROMPT), stream=True,
                stream_options={"include_usage": True},
            )
            return [chunk async for chunk in stream]

    check_chunks(asyncio.run(main()), PROMPT, "stream-agent")


def test_stream_through_the_openai_provider(client, flowgate, mock_upstream, marker):
    prompt = f"{PROMPT} {marker}"
    raw = client.chat.completions.with_raw_response.create(
        model="stream-agent/up-alias", messages=user(prompt), stream=True
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-flowgate-provider"] == "upstream"
    assert raw.headers["x-flowgate-model"] == "up-model"
    run_id = raw.headers["x-flowgate-run-id"]

    last = check_chunks(list(raw.parse()), prompt, "stream-agent")
    assert last.model_extra["cost_usd"] == pytest.approx(
        expected_cost(last.usage.prompt_tokens, last.usage.completion_tokens), rel=1e-9
    )

    received = mock_upstream.chat_requests_containing(marker)
    assert len(received) == 1, received
    body = received[0]["body"]
    assert body["model"] == "gpt-4o-mini"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}

    run = flowgate.get_run(run_id)
    assert run["status"] == "success"
    assert run["stream"] is True
    assert run["provider"] == "upstream"
    assert run["output"]["choices"][0]["message"]["content"] == prompt
    assert run["cost_usd"] == pytest.approx(last.model_extra["cost_usd"], rel=1e-12)


def open_cut_stream(client, marker: str):
    """Streams from `up-cut`; returns (run id, content received, the error raised)."""
    raw = client.chat.completions.with_raw_response.create(
        model="stream-agent/up-cut", messages=user(f"Hello there {marker}"), stream=True
    )
    assert raw.headers["x-flowgate-provider"] == "upstream"
    pieces = []
    with pytest.raises(openai.APIError) as info:
        for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
    return raw.headers["x-flowgate-run-id"], "".join(pieces), info.value


def test_upstream_cut_mid_stream_is_an_error_event_after_the_partial_answer(client, flowgate, marker):
    run_id, text, error = open_cut_stream(client, marker)
    # The piece sent before the cut reached the client, then the SDK raised the error event.
    assert text == "Hell"
    assert error.code == "upstream_connection"
    assert error.type == "upstream_error"

    run = flowgate.get_run(run_id)
    assert run["status"] == "error"
    assert run["stream"] is True
    assert run["output"]["choices"][0]["message"]["content"] == "Hell"
    assert run["error"]["error"]["code"] == "upstream_connection"
    assert [a["error"] for a in run["attempts"]] == ["upstream_connection"]


def test_upstream_cut_mid_stream_error_details_name_the_failed_attempt(client, marker):
    _, _, error = open_cut_stream(client, marker)
    attempts = error.body["details"]["attempts"]
    assert len(attempts) == 1
    assert attempts[0]["error"] == "upstream_connection"
    assert attempts[0]["duration_seconds"] > 0
