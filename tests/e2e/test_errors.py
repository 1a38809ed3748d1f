"""Errors as the `openai` SDK (and a raw HTTP client) sees them."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from conftest import API_KEY, UPSTREAM_SECRET


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_unknown_model_is_not_found_with_suggestions(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="err-agent/mock-ecoh", messages=user("Hello"))
    error = info.value
    assert error.status_code == 404
    assert error.code == "model_not_found"
    assert error.param == "model"
    assert "mock-ecoh" in error.message
    assert "mock-echo" in error.body["details"]["suggestions"]


def test_wrong_api_key_is_an_authentication_error(flowgate):
    with OpenAI(base_url=flowgate.base_url, api_key="not-the-key", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as info:
            wrong.chat.completions.create(model="err-agent/mock-echo", messages=user("Hello"))
    assert info.value.status_code == 401

    # No key at all.
    response = httpx.post(
        f"{flowgate.base_url}/chat/completions",
        json={"model": "err-agent/mock-echo", "messages": user("Hello")},
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_missing_messages_is_a_400_naming_the_field(flowgate):
    response = flowgate.http.post("/v1/chat/completions", json={"model": "err-agent/mock-echo"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages"
    assert error["code"] == "missing_field"
    assert "messages" in error["message"]


def test_empty_messages_is_a_bad_request_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="err-agent/mock-echo", messages=[])
    assert info.value.status_code == 400
    assert info.value.param == "messages"


def test_malformed_json_is_a_400_invalid_json(flowgate):
    response = flowgate.http.post(
        "/v1/chat/completions",
        content=b'{"model": "err-agent/mock-echo", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert error["type"] == "invalid_request_error"


def test_failing_only_provider_is_a_502_listing_the_attempt(client, mock_upstream, marker):
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="err-agent/up-broken", messages=user(f"Hello {marker}"))
    error = info.value
    assert error.status_code == 502
    assert error.type == "upstream_error"
    # The only provider is retried twice (the default) with backoff, then the error is returned.
    attempts = error.body["details"]["attempts"]
    assert len(attempts) == 3, attempts
    for attempt in attempts:
        assert attempt["provider"] == "upstream"
        assert attempt["model"] == "gpt-4o-mini;status=500"
        assert attempt["status"] == 500
        assert attempt["error"] == "upstream_server_error"
    assert "reason" not in attempts[0]
    assert [a["reason"] for a in attempts[1:]] == ["retry after upstream_server_error"] * 2

    # Every call is visible in the details, and the provider key is not in the error.
    assert len(mock_upstream.chat_requests_containing(marker)) == 3
    assert UPSTREAM_SECRET not in error.response.text
    assert API_KEY not in error.response.text


def test_failing_only_provider_streaming_is_a_502_before_any_chunk(client, marker):
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="err-agent/up-broken", messages=user(f"Hello {marker}"), stream=True
        )
    assert info.value.status_code == 502
    assert info.value.body["details"]["attempts"][0]["status"] == 500


def test_unknown_run_is_not_found_and_runs_need_the_key(flowgate):
    response = flowgate.http.get("/api/runs/01234567-89ab-7def-8123-456789abcdef")
    assert response.status_code == 404
    response = httpx.get(f"{flowgate.url}/api/agents/err-agent/runs")
    assert response.status_code == 401
    response = flowgate.http.get("/api/agents/err-agent/runs", params={"cursor": "not-a-run"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "cursor"
