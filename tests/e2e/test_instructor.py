"""Instructor on top of the `openai` client pointed at flowgate."""

from __future__ import annotations

import instructor
import pytest
from pydantic import BaseModel


class UserDetail(BaseModel):
    name: str
    age: int


MESSAGES = [{"role": "user", "content": "Extract: Jason is 25 years old."}]


@pytest.mark.parametrize("model", ["inst-agent/mock-echo", "inst-agent/up-alias"])
def test_tools_mode_returns_a_valid_instance(client, model):
    ic = instructor.from_openai(client, mode=instructor.Mode.TOOLS)
    user = ic.chat.completions.create(
        model=model, response_model=UserDetail, messages=MESSAGES, max_retries=0
    )
    assert isinstance(user, UserDetail)
    assert isinstance(user.name, str) and isinstance(user.age, int)


def test_tools_mode_with_completion_exposes_cost(client):
    ic = instructor.from_openai(client, mode=instructor.Mode.TOOLS)
    user, completion = ic.chat.completions.create_with_completion(
        model="inst-agent/mock-echo", response_model=UserDetail, messages=MESSAGES, max_retries=0
    )
    assert isinstance(user, UserDetail)
    assert completion.model_extra["cost_usd"] > 0
    assert completion.id.startswith("inst-agent/")
    tool_calls = completion.choices[0].message.tool_calls
    assert [t.function.name for t in tool_calls] == ["UserDetail"]
    assert completion.choices[0].finish_reason == "tool_calls"


def test_json_mode_returns_a_valid_instance(client):
    ic = instructor.from_openai(client, mode=instructor.Mode.JSON)
    user, completion = ic.chat.completions.create_with_completion(
        model="inst-agent/mock-echo", response_model=UserDetail, messages=MESSAGES, max_retries=0
    )
    assert isinstance(user, UserDetail)
    # The mock answered from the schema Instructor put in the system prompt, as JSON text.
    parsed = UserDetail.model_validate_json(completion.choices[0].message.content)
    assert parsed.model_dump() == user.model_dump()
    assert completion.model_extra["cost_usd"] > 0
