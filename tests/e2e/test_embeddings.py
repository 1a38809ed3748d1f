"""`POST /v1/embeddings` through the official `openai` SDK: the built-in mock model and models
behind the OpenAI- and Gemini-format mock upstreams; every input shape, both encodings,
`dimensions`, the run with its tokens and cost (without the vectors), and the bounds."""

from __future__ import annotations

import base64
import json
import math
import struct

import httpx
import openai
import pytest

from conftest import API_KEY, EMBEDDING_MODELS, EMBEDDING_PER_MTOK


def run_of(flowgate, raw) -> dict:
    return flowgate.get_run(raw.headers["x-flowgate-run-id"])


@pytest.mark.parametrize("model", list(EMBEDDING_MODELS))
def test_upstream_models_embed_each_input_with_cost_recorded(client, flowgate, mock_upstream, marker, model):
    provider, provider_model, dimensions = EMBEDDING_MODELS[model]
    texts = [f"first {marker}", f"second {marker}", f"third {marker}"]
    raw = client.embeddings.with_raw_response.create(model=f"emb-agent/{model}", input=texts)
    result = raw.parse()

    assert result.object == "list"
    assert result.model == model
    assert [d.index for d in result.data] == [0, 1, 2]
    for datum in result.data:
        assert len(datum.embedding) == dimensions
        assert math.isclose(math.sqrt(sum(x * x for x in datum.embedding)), 1.0, rel_tol=1e-3)
    # Different texts, different vectors; the same text, the same vector.
    assert result.data[0].embedding != result.data[1].embedding
    again = client.embeddings.create(model=model, input=texts[0])
    assert again.data[0].embedding == pytest.approx(result.data[0].embedding, rel=1e-6)

    tokens = result.usage.prompt_tokens
    assert tokens == sum(max(1, math.ceil(len(t) / 4)) for t in texts)
    assert result.usage.total_tokens == tokens
    cost = result.model_extra["cost_usd"]
    assert cost == pytest.approx(tokens * EMBEDDING_PER_MTOK / 1e6, rel=1e-9)

    # The provider got the texts in its own format.
    [sent] = [r for r in mock_upstream.requests() if "second " + marker in json.dumps(r["body"])]
    if provider == "upstream":
        assert sent["path"] == "/v1/embeddings"
        assert sent["body"]["model"] == provider_model and sent["body"]["input"] == texts
    else:
        assert sent["path"].endswith(f"/models/{provider_model}:batchEmbedContents")
        assert [r["content"]["parts"][0]["text"] for r in sent["body"]["requests"]] == texts

    run = run_of(flowgate, raw)
    assert run["door"] == "embeddings"
    assert run["agent"] == "emb-agent"
    assert run["status"] == "success"
    assert run["model"] == model and run["provider"] == provider
    assert run["usage"]["prompt_tokens"] == tokens
    assert run["cost_usd"] == pytest.approx(cost, rel=1e-12)
    # The vectors are not stored.
    assert run["output"] is None
    assert str(result.data[0].embedding[0]) not in json.dumps(run)


def test_the_built_in_mock_embeds_without_a_key(client, flowgate):
    raw = client.embeddings.with_raw_response.create(model="mock-embed", input="hello")
    result = raw.parse()
    assert len(result.data) == 1 and len(result.data[0].embedding) == 256
    assert result.usage.prompt_tokens == 2
    assert raw.headers["x-flowgate-provider"] == "mock"
    assert run_of(flowgate, raw)["cost_usd"] > 0


def test_dimensions_and_both_encodings(client, flowgate):
    result = client.embeddings.create(model="emb-openai", input="short", dimensions=64)
    assert len(result.data[0].embedding) == 64

    # float on the wire, and base64 (little-endian f32s) decoding to the same vector.
    body = {"model": "emb-openai", "input": ["same text"]}
    floats = flowgate.http.post("/v1/embeddings", json={**body, "encoding_format": "float"}).json()
    b64 = flowgate.http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    decoded = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    assert decoded == pytest.approx(floats["data"][0]["embedding"], rel=1e-6)
    assert len(decoded) == 1536

    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="emb-openai", input="x", dimensions=4096)
    assert info.value.body["param"] == "dimensions"


def test_token_array_inputs(client, mock_upstream):
    one = client.embeddings.create(model="emb-openai", input=[1, 2, 3, 4])
    assert len(one.data) == 1 and one.usage.prompt_tokens == 4
    many = client.embeddings.create(model="emb-openai", input=[[1, 2], [3, 4, 5]])
    assert len(many.data) == 2 and many.usage.prompt_tokens == 5
    # Gemini has no token form: a clear 400, not a provider error.
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="emb-gemini", input=[[1, 2]])
    assert info.value.body["param"] == "input"


def test_bad_input_and_bounds(client, flowgate):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="emb-openai", input=[])
    assert info.value.body["param"] == "input"

    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="emb-openai", input=["a"] * 65)
    assert info.value.body["code"] == "too_many_inputs"

    too_big = flowgate.http.post("/v1/embeddings", json={"model": "emb-openai", "input": ["ok", "x" * 5000]})
    assert too_big.status_code == 413
    error = too_big.json()["error"]
    assert error["code"] == "input_too_large" and error["param"] == "input[1]"

    mixed = flowgate.http.post("/v1/embeddings", json={"model": "emb-openai", "input": ["a", 3]})
    assert mixed.status_code == 400 and mixed.json()["error"]["param"] == "input[1]"

    # A chat model is not an embedding model, and the other way round.
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="door-gpt", input="x")
    assert info.value.body["code"] == "not_an_embedding_model"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="mock-embed", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "embedding_model"

    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-embedder", input="x")

    response = httpx.post(f"{flowgate.url}/v1/embeddings", json={"model": "mock-embed", "input": "x"})
    assert response.status_code == 401
    assert API_KEY not in response.text
