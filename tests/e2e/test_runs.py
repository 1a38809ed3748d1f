"""The runs admin API: every request is one run, listed newest first with a cursor."""

from __future__ import annotations

import openai
import pytest

AGENT = "list-agent"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_agent_runs_are_listed_once_each_newest_first_with_cursor(client, flowgate):
    # Five requests, in order; the third fails (unknown model) and is still a run.
    outcomes: list[str | None] = []  # run id of each success, None for the error
    for i in range(5):
        if i == 2:
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model=f"{AGENT}/nope", messages=user("no such model"))
            outcomes.append(None)
        else:
            raw = client.chat.completions.with_raw_response.create(
                model=f"{AGENT}/mock-echo", messages=user(f"listed run {i}")
            )
            outcomes.append(raw.headers["x-flowgate-run-id"])

    pages = []
    page = flowgate.list_runs(AGENT, limit=2)
    pages.append(page)
    while page["next_cursor"] is not None:
        assert len(pages) < 10, "the cursor never ends"
        page = flowgate.list_runs(AGENT, limit=2, cursor=page["next_cursor"])
        pages.append(page)

    assert [len(p["items"]) for p in pages] == [2, 2, 1]
    assert all(p["next_cursor"] is not None for p in pages[:-1])
    # The cursor is the last item of its page: the next page is strictly older.
    for p in pages[:-1]:
        assert p["next_cursor"] == p["items"][-1]["id"]

    items = [item for p in pages for item in p["items"]]
    ids = [item["id"] for item in items]
    assert len(set(ids)) == 5, ids
    assert all(item["agent"] == AGENT for item in items)

    # Newest first: the reverse of the order the requests were made in.
    newest_first = list(reversed(outcomes))
    for item, expected_id in zip(items, newest_first):
        if expected_id is None:
            assert item["status"] == "error", item
        else:
            assert item["id"] == expected_id
            assert item["status"] == "success"
            assert item["model"] == "mock-echo"
            assert item["cost_usd"] > 0
    assert [item["status"] for item in items].count("error") == 1
    created = [item["created_at"] for item in items]
    assert created == sorted(created, reverse=True)

    # The error run kept what the client was told.
    error_id = items[newest_first.index(None)]["id"]
    error_run = flowgate.get_run(error_id)
    assert error_run["requested_model"] == f"{AGENT}/nope"
    assert error_run["error"]["error"]["code"] == "model_not_found"

    # Without a cursor and a big page, the same five.
    everything = flowgate.list_runs(AGENT, limit=50)
    assert [item["id"] for item in everything["items"]] == ids
    assert everything["next_cursor"] is None


def test_unknown_agent_has_no_runs(flowgate):
    page = flowgate.list_runs("agent-that-never-ran")
    assert page == {"items": [], "next_cursor": None}
