"""Templates, versions, deployments and feedback with the real `openai` SDK and `instructor`.

This module starts a flowgate of its own (same config as the shared one, plus an `[admin]` key
for deployments), so deployments made here cannot leak into other tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import instructor
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel

from conftest import API_KEY, Flowgate, MockUpstream, _binary, _start, _stop, flowgate_config

ADMIN_KEY = "e2e-admin-key"


class UserDetail(BaseModel):
    name: str
    age: int


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, mock_upstream: MockUpstream) -> Flowgate:
    binary = _binary("FLOWGATE_BIN")
    tmp: Path = tmp_path_factory.mktemp("flowgate-templates")
    config_path = tmp / "flowgate.toml"
    config_path.write_text(
        flowgate_config(tmp / "data", mock_upstream.base_url)
        + f'\n[admin]\napi_keys = [{{ key = "{ADMIN_KEY}", label = "e2e-admin" }}]\n'
    )
    proc = _start([binary, "serve", "--config", str(config_path)], tmp / "stderr.log", "flowgate")
    gw = Flowgate(proc, config_path)
    yield gw
    gw.http.close()
    assert _stop(proc) == 0, proc.log()


@pytest.fixture(scope="module")
def sdk(gateway: Flowgate) -> OpenAI:
    c = OpenAI(base_url=gateway.base_url, api_key=API_KEY, max_retries=0, timeout=30)
    yield c
    c.close()


def deploy(gateway: Flowgate, agent: str, version_id: str, environment: str = "production") -> dict[str, Any]:
    response = httpx.post(
        f"{gateway.url}/api/agents/{agent}/versions/{version_id}/deploy",
        json={"environment": environment},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def upstream_messages(mock_upstream: MockUpstream, marker: str) -> list[dict[str, Any]]:
    """The messages of the last upstream request that mentions `marker`."""
    requests = mock_upstream.chat_requests_containing(marker)
    assert requests, f"no upstream request mentions {marker}"
    return requests[-1]["body"]["messages"]


@pytest.mark.parametrize("mode", [instructor.Mode.TOOLS, instructor.Mode.JSON])
def test_instructor_with_input_renders_the_templates(sdk, gateway, mock_upstream, marker, mode):
    ic = instructor.from_openai(sdk, mode=mode)
    messages = [
        {"role": "system", "content": "Extract the user. Case {{ case | upper }}."},
        {"role": "user", "content": "{{ text }}{% if note %} ({{ note }}){% endif %}"},
    ]
    user, completion = ic.chat.completions.create_with_completion(
        model="e2e-extract/up-model",
        response_model=UserDetail,
        messages=messages,
        extra_body={"input": {"case": marker, "text": "Jason is 25 years old", "note": "verified"}},
        max_retries=0,
    )
    assert isinstance(user, UserDetail)
    sent = upstream_messages(mock_upstream, marker.upper())
    assert f"Extract the user. Case {marker.upper()}." in sent[0]["content"]
    assert sent[1]["content"] == "Jason is 25 years old (verified)"

    run = gateway.get_run(completion.id.split("/")[-1])
    assert run["input"]["text"] == "Jason is 25 years old"
    assert run["version_id"] == completion.model_extra["version_id"]
    assert isinstance(run["schema_id"], int)
    # The run keeps the templates as sent, and what went upstream.
    assert "{{ text }}" in run["request"]["messages"][1]["content"]
    assert run["rendered_messages"][1]["content"] == "Jason is 25 years old (verified)"


def test_template_errors_are_bad_requests_that_help(sdk):
    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(
            model="e2e-errors/mock-echo",
            messages=[{"role": "user", "content": "Hello\n{{ name"}],
            extra_body={"input": {"name": "x"}},
        )
    assert e.value.body["code"] == "template_syntax_error"
    assert "line 2" in e.value.body["message"]
    assert e.value.body["param"] == "messages[0].content"

    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(
            model="e2e-errors/mock-echo",
            messages=[{"role": "user", "content": "Hello {{ name }} from {{ city }}"}],
            extra_body={"input": {"name": "x"}},
        )
    assert e.value.body["code"] == "template_variable_missing"
    assert "`city`" in e.value.body["message"]

    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(
            model="e2e-errors/mock-echo", messages=[{"role": "user", "content": "Hello {{ name }}"}]
        )
    assert e.value.body["code"] == "template_without_input"

    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(
            model="e2e-errors/mock-echo",
            messages=[{"role": "user", "content": "Hello"}],
            extra_body={"input": {"name": "x"}},
        )
    assert e.value.body["code"] == "input_without_template"


def test_deployment_serves_new_prompts_without_a_restart_and_rolls_back(sdk, gateway, mock_upstream, marker):
    agent = "e2e-deploy"

    def create(template: str) -> str:
        completion = sdk.chat.completions.create(
            model=f"{agent}/up-model",
            messages=[{"role": "system", "content": template}],
            extra_body={"input": {"who": "first"}},
        )
        return completion.model_extra["version_id"]

    v1 = create(f"{marker} v1 greets {{{{ who }}}}")
    v2 = create(f"{marker} v2 welcomes {{{{ who }}}}")

    def call(who: str):
        return sdk.chat.completions.create(
            model=f"{agent}/#1/production", messages=[], extra_body={"input": {"who": who}}
        )

    with pytest.raises(openai.BadRequestError) as e:
        call("nobody")
    assert e.value.body["code"] == "deployment_not_found"

    record = deploy(gateway, agent, v1)
    assert record["deployed_by"] == "e2e-admin"
    completion = call("Ann")
    assert completion.model_extra["version_id"] == v1
    assert upstream_messages(mock_upstream, marker)[0]["content"] == f"{marker} v1 greets Ann"

    deploy(gateway, agent, v2)
    completion = call("Bob")
    assert completion.model_extra["version_id"] == v2
    assert upstream_messages(mock_upstream, marker)[0]["content"] == f"{marker} v2 welcomes Bob"

    deploy(gateway, agent, v1)  # rollback
    call("Cy")
    assert upstream_messages(mock_upstream, marker)[0]["content"] == f"{marker} v1 greets Cy"

    deployments = gateway.http.get(f"/api/agents/{agent}/deployments").json()
    assert [d["version_id"] for d in deployments["history"]] == [v1, v2, v1]

    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(
            model=f"{agent}/#1/production",
            messages=[{"role": "system", "content": f"{marker} v1 greets {{{{ who }}}}"}],
            extra_body={"input": {"who": "x"}},
        )
    assert e.value.body["code"] == "duplicate_messages"

    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(
            model=f"{agent}/#1/production", messages=[], extra_body={"input": {"someone": "x"}}
        )
    assert e.value.body["code"] == "schema_mismatch"


def test_instructor_calls_a_deployment_with_only_input(sdk, gateway, mock_upstream, marker):
    agent = "e2e-deployed-extract"
    ic = instructor.from_openai(sdk, mode=instructor.Mode.TOOLS)
    _, created = ic.chat.completions.create_with_completion(
        model=f"{agent}/up-model",
        response_model=UserDetail,
        messages=[{"role": "user", "content": f"{marker}: extract the user from {{{{ text }}}}"}],
        extra_body={"input": {"text": "Ann is 30"}},
        max_retries=0,
    )
    deploy(gateway, agent, created.model_extra["version_id"])
    user, completion = ic.chat.completions.create_with_completion(
        model=f"{agent}/#1/production",
        response_model=UserDetail,
        messages=[],
        extra_body={"input": {"text": "Bob is 41"}},
        max_retries=0,
    )
    assert isinstance(user, UserDetail)
    assert completion.model_extra["version_id"] == created.model_extra["version_id"]
    sent = upstream_messages(mock_upstream, "Bob is 41")
    assert sent[0]["content"] == f"{marker}: extract the user from Bob is 41"


def test_feedback_with_the_token_of_an_answer(sdk, gateway):
    completion = sdk.chat.completions.create(
        model="e2e-feedback/mock-echo", messages=[{"role": "user", "content": "rate me"}]
    )
    token = completion.choices[0].model_extra["feedback_token"]
    # No API key: the token is the credential.
    response = httpx.post(
        f"{gateway.url}/v1/feedback",
        json={"feedback_token": token, "outcome": "positive", "comment": "spot on", "user_id": "u-1"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    run_id = completion.id.split("/")[-1]
    assert response.json()["run_id"] == run_id

    forged = token.rsplit(".", 1)[0] + ".ffffffffffffffffffffffffffffffff"
    response = httpx.post(
        f"{gateway.url}/v1/feedback", json={"feedback_token": forged, "outcome": "negative"}, timeout=30
    )
    assert response.status_code == 404, response.text

    listed = gateway.http.get(f"/api/runs/{run_id}/feedback").json()["items"]
    assert [(f["outcome"], f["comment"], f["user_id"]) for f in listed] == [("positive", "spot on", "u-1")]
