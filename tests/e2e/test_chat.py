"""Non-streaming chat completions through the official `openai` SDK, sync and async."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from conftest import API_KEY, UPSTREAM_SECRET, expected_cost


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_sync_client_gets_echo_with_cost_and_run_links(client):
    completion = client.chat.completions.create(model="my-agent/mock-echo", messages=user("Hello"))

    assert completion.object == "chat.completion"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello"
    assert choice.finish_reason == "stop"

    # `<agent>/<run id>`
    assert completion.id.startswith("my-agent/")
    run_id = completion.id.removeprefix("my-agent/")
    uuid.UUID(run_id)

    extra = completion.model_extra
    assert extra["cost_usd"] > 0
    assert isinstance(extra["duration_seconds"], float) and extra["duration_seconds"] >= 0

    choice_extra = choice.model_extra
    for key in ("cost_usd", "duration_seconds", "feedback_token", "url"):
        assert key in choice_extra, f"choice lacks `{key}`: {choice_extra}"
    assert choice_extra["cost_usd"] == pytest.approx(extra["cost_usd"], rel=1e-12)
    assert choice_extra["url"].endswith(f"/runs/{run_id}")
    assert choice_extra["feedback_token"].startswith(run_id)

    usage = completion.usage
    assert usage.total_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_openai_provider_translates_request_and_prices_exactly(client, flowgate, mock_upstream, marker):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": f"Hello upstream {marker}"},
    ]
    raw = client.chat.completions.with_raw_response.create(model="up-alias", messages=messages)
    completion = raw.parse()

    assert completion.choices[0].message.content == f"Hello upstream {marker}"
    assert raw.headers["x-flowgate-provider"] == "upstream"
    assert raw.headers["x-flowgate-model"] == "up-model"

    # What the upstream received: the provider's model id, the provider's key, the messages.
    received = mock_upstream.chat_requests_containing(marker)
    assert len(received) == 1, received
    request = received[0]
    assert request["method"] == "POST"
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "gpt-4o-mini"
    assert request["body"]["messages"] == messages
    assert not request["body"].get("stream", False)
    assert request["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    # The client's own flowgate key is not passed on to the provider.
    assert API_KEY not in json.dumps(request["headers"])

    # The provider's key never reaches the client, nor the stored run.
    assert UPSTREAM_SECRET not in raw.http_response.text
    assert UPSTREAM_SECRET not in json.dumps(dict(raw.headers))
    run = flowgate.http.get(f"/api/runs/{raw.headers['x-flowgate-run-id']}")
    assert run.status_code == 200
    assert UPSTREAM_SECRET not in run.text

    # Cost is exactly the configured prices applied to the returned usage.
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert completion.model_extra["cost_usd"] == pytest.approx(
        expected_cost(usage.prompt_tokens, usage.completion_tokens), rel=1e-9
    )


def test_raw_response_headers_match_the_recorded_run(client, flowgate):
    raw = client.chat.completions.with_raw_response.create(
        model="hdr-agent/mock-echo", messages=user("Headers, please")
    )
    completion = raw.parse()
    headers = raw.headers

    run_id = headers["x-flowgate-run-id"]
    uuid.UUID(run_id)
    assert completion.id == f"hdr-agent/{run_id}"
    assert headers["x-flowgate-provider"] == "mock"
    assert headers["x-flowgate-model"] == "mock-echo" == completion.model
    assert headers["x-flowgate-cache"] == "miss"

    run = flowgate.get_run(run_id)
    assert run["id"] == run_id
    assert run["status"] == "success"
    assert run["agent"] == "hdr-agent"
    assert run["requested_model"] == "hdr-agent/mock-echo"
    assert run["model"] == "mock-echo"
    assert run["provider"] == "mock"
    assert run["stream"] is False
    assert run["cost_usd"] == pytest.approx(completion.model_extra["cost_usd"], rel=1e-12)
    assert run["usage"]["prompt_tokens"] == completion.usage.prompt_tokens
    assert run["usage"]["completion_tokens"] == completion.usage.completion_tokens
    assert run["output"]["choices"][0]["message"]["content"] == "Headers, please"
    assert run["url"] == completion.choices[0].model_extra["url"]
    # The feedback token is the end user's, not the admin API's.
    assert "feedback_token" not in run

    # The response id form `<agent>/<run id>` (slash URL-encoded) finds the same run.
    by_response_id = flowgate.http.get(f"/api/runs/hdr-agent%2F{run_id}")
    assert by_response_id.status_code == 200, by_response_id.text
    assert by_response_id.json()["id"] == run_id


def test_async_client_concurrent_requests_each_get_their_own_echo(make_async_client):
    prompts = [f"concurrent request number {i}: {uuid.uuid4().hex}" for i in range(8)]

    async def main():
        async with make_async_client() as aclient:
            return await asyncio.gather(*(
                aclient.chat.completions.create(model="async-agent/mock-echo", messages=user(p))
                for p in prompts
            ))

    completions = asyncio.run(main())
    assert [c.choices[0].message.content for c in completions] == prompts
    ids = [c.id for c in completions]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("async-agent/") for i in ids)
    assert all(c.model_extra["cost_usd"] > 0 for c in completions)
