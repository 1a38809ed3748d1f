"""Invisible fallback: the first provider fails with a 500, the next one answers."""

from __future__ import annotations

STREAM_PROMPT = "Falling back while streaming is invisible to the client."


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def check_attempts(run: dict) -> None:
    attempts = run["attempts"]
    assert len(attempts) == 2, attempts
    first, second = attempts
    assert first["provider"] == "upstream"
    assert first["model"] == "gpt-4o-mini;status=500"
    assert first["status"] == 500
    assert first["error"] == "upstream_server_error"
    assert second["provider"] == "mock"
    assert second["model"] == "mock-echo"
    assert second["status"] == 200
    assert second["error"] is None
    assert second["reason"].startswith("other_provider")


def test_fallback_non_streaming(client, flowgate, mock_upstream, marker):
    prompt = f"Hello {marker}"
    raw = client.chat.completions.with_raw_response.create(
        model="fb-agent/up-failing", messages=user(prompt)
    )
    assert raw.status_code == 200
    completion = raw.parse()
    assert completion.choices[0].message.content == prompt
    assert raw.headers["x-flowgate-provider"] == "mock"
    assert raw.headers["x-flowgate-model"] == "up-failing"
    assert completion.model_extra["cost_usd"] > 0

    # The upstream was really tried first.
    assert len(mock_upstream.chat_requests_containing(marker)) == 1

    run = flowgate.get_run(raw.headers["x-flowgate-run-id"])
    assert run["status"] == "success"
    assert run["provider"] == "mock"
    assert run["error"] is None
    check_attempts(run)


def test_fallback_streaming(client, flowgate, mock_upstream, marker):
    prompt = f"{STREAM_PROMPT} {marker}"
    raw = client.chat.completions.with_raw_response.create(
        model="fb-agent/up-failing", messages=user(prompt), stream=True
    )
    assert raw.headers["x-flowgate-provider"] == "mock"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == prompt
    assert chunks[-1].usage is not None
    assert chunks[-1].model_extra["cost_usd"] > 0

    assert len(mock_upstream.chat_requests_containing(marker)) == 1

    run = flowgate.get_run(raw.headers["x-flowgate-run-id"])
    assert run["status"] == "success"
    assert run["stream"] is True
    assert run["provider"] == "mock"
    check_attempts(run)
