"""Fixtures for the end-to-end suite: the mock upstream and flowgate, each a real process.

The mock upstream (`$MOCK_UPSTREAM_BIN`) plays an OpenAI-compatible provider; flowgate
(`$FLOWGATE_BIN`) is started with a config written into a temporary directory, with the
built-in `mock` provider and an `openai`-type provider pointed at the mock upstream.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

API_KEY = "test-key"
UPSTREAM_SECRET = "upstream-secret"
# Prices of every offer in the test config (per million tokens).
INPUT_PER_MTOK = 0.15
OUTPUT_PER_MTOK = 0.60
STARTUP_TIMEOUT_S = 30.0


def _binary(var: str) -> str:
    path = os.environ.get(var)
    if not path:
        pytest.exit(f"{var} is not set: run the suite with `bash tests/run.sh`", returncode=2)
    if not os.access(path, os.X_OK):
        pytest.exit(f"{var}={path} is not an executable: build with `cargo build --workspace --bins`",
                    returncode=2)
    return path


@dataclass
class Proc:
    """A started server process, its base URL and where its stderr goes."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _start(args: list[str], log_path: Path, name: str) -> Proc:
    """Starts `args`, waits for its `listening on http://…` stdout line, returns the URL.

    stderr goes to a file (a pipe nobody reads could fill up and block the server)."""
    log = open(log_path, "wb")
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    lines: queue.Queue[bytes] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(b"")

    threading.Thread(target=pump, name=f"{name}-stdout", daemon=True).start()
    try:
        while True:
            line = lines.get(timeout=STARTUP_TIMEOUT_S).decode(errors="replace").strip()
            if not line:
                raise RuntimeError(f"{name} exited before listening (code {process.wait()})")
            if line.startswith("listening on "):
                return Proc(process, line.removeprefix("listening on ").rstrip("/"), log_path)
    except (queue.Empty, RuntimeError) as e:
        process.kill()
        process.wait()
        pytest.fail(f"{name} did not start: {e}\n--- stderr ---\n{log_path.read_text(errors='replace')}")
        raise


def _stop(proc: Proc) -> int:
    if proc.process.poll() is None:
        proc.process.send_signal(signal.SIGTERM)
        try:
            return proc.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.process.kill()
            proc.process.wait()
            return -9
    return proc.process.returncode


# ---------------------------------------------------------------------------------------------
# The mock upstream


class MockUpstream:
    """The running mock upstream and its control endpoint (recorded requests)."""

    def __init__(self, proc: Proc):
        self.proc = proc
        self.url = proc.url
        self.base_url = f"{proc.url}/v1"
        self.http = httpx.Client(base_url=proc.url, timeout=10)

    def requests(self) -> list[dict[str, Any]]:
        """Every request received since the last clear: {method, path, headers, body}."""
        response = self.http.get("/_mock/requests")
        response.raise_for_status()
        return response.json()

    def clear(self) -> None:
        self.http.delete("/_mock/requests").raise_for_status()

    def chat_requests_containing(self, marker: str) -> list[dict[str, Any]]:
        """The recorded chat-completions requests whose body mentions `marker`."""
        return [
            r for r in self.requests()
            if r["path"].endswith("/chat/completions") and marker in json.dumps(r["body"])
        ]


@pytest.fixture(scope="session")
def mock_upstream(tmp_path_factory: pytest.TempPathFactory) -> MockUpstream:
    binary = _binary("MOCK_UPSTREAM_BIN")
    tmp = tmp_path_factory.mktemp("mock-upstream")
    proc = _start([binary, "--listen", "127.0.0.1:0", "--workers", "2"], tmp / "stderr.log",
                  "mock upstream")
    upstream = MockUpstream(proc)
    yield upstream
    upstream.http.close()
    _stop(proc)


# ---------------------------------------------------------------------------------------------
# flowgate


def _toml_str(value: str) -> str:
    # A JSON string literal is a valid TOML basic string for the characters used here.
    return json.dumps(value)


def flowgate_config(data_dir: Path, upstream_base_url: str) -> str:
    offer = f"input_per_mtok = {INPUT_PER_MTOK}, output_per_mtok = {OUTPUT_PER_MTOK}"
    return f"""
[server]
listen = "127.0.0.1:0"
data_dir = {_toml_str(str(data_dir))}

[recorder]
flush_interval_ms = 50

[auth]
api_keys = [{_toml_str(API_KEY)}]

[providers.mock]
type = "mock"

[providers.upstream]
type = "openai"
base_url = {_toml_str(upstream_base_url)}
api_key = {_toml_str(UPSTREAM_SECRET)}
# A few deliberate 500s must not open the circuit for the rest of the suite.
breaker = {{ failure_threshold = 1000, error_rate_threshold = 1.1 }}

[models."up-model"]
aliases = ["up-alias"]
providers = [{{ provider = "upstream", model = "gpt-4o-mini", {offer} }}]
supports = {{ structured_output = true, json_mode = true, tools = true }}

# Served first by the upstream, which always fails, then by the built-in mock.
[models."up-failing"]
providers = [
  {{ provider = "upstream", model = "gpt-4o-mini;status=500", {offer} }},
  {{ provider = "mock", model = "mock-echo", {offer} }},
]
supports = {{ structured_output = true, json_mode = true, tools = true }}

# Served only by the failing upstream.
[models."up-broken"]
providers = [{{ provider = "upstream", model = "gpt-4o-mini;status=500", {offer} }}]

# Streams one 4-character piece, then the upstream connection is cut.
[models."up-cut"]
providers = [{{ provider = "upstream", model = "gpt-4o-mini;cut_after=1;chunk_chars=4", {offer} }}]
""" + structured_config(upstream_base_url.removesuffix("/v1")) + doors_config()


# ---------------------------------------------------------------------------------------------
# The other doors (test_responses.py, test_messages.py, test_embeddings.py): one model per wire
# format of the mock upstream, with no directive (a tool is called only when the request
# forces it), so a tool round trip ends in a text answer.

DOOR_MODELS = {
    "door-gpt": ("upstream", "gpt-4o-mini"),
    "door-claude": ("sx_anthropic", "claude-3-5-haiku-20241022"),
    "door-gemini": ("sx_gemini", "gemini-2.0-flash"),
}


# Embedding models: catalog id → (provider, the provider's model id, dimensions).
EMBEDDING_MODELS = {
    "emb-openai": ("upstream", "text-embedding-3-small", 1536),
    "emb-gemini": ("sx_gemini", "text-embedding-004", 768),
}
# Their price per million input tokens.
EMBEDDING_PER_MTOK = 0.02


def doors_config() -> str:
    offer = f"input_per_mtok = {INPUT_PER_MTOK}, output_per_mtok = {OUTPUT_PER_MTOK}"
    chat = "".join(f"""
[models.{_toml_str(name)}]
providers = [{{ provider = {_toml_str(provider)}, model = {_toml_str(model)}, {offer} }}]
supports = {NATIVE_SUPPORTS}
""" for name, (provider, model) in DOOR_MODELS.items())
    embedding = "".join(f"""
[models.{_toml_str(name)}]
providers = [{{ provider = {_toml_str(provider)}, model = {_toml_str(model)}, input_per_mtok = {EMBEDDING_PER_MTOK}, output_per_mtok = 0.0 }}]
embedding = {{ dimensions = {dimensions}, shortens = true }}
""" for name, (provider, model, dimensions) in EMBEDDING_MODELS.items())
    return chat + embedding + """
[limits]
max_embedding_inputs = 64
max_embedding_input_bytes = 4096
"""


# ---------------------------------------------------------------------------------------------
# Structured outputs (test_structured.py)
#
# Three adapters over the same mock upstream: the `upstream` provider (openai type), and
# `sx_anthropic` / `sx_gemini` (anthropic and gemini types, base_url = the mock's root).

ANTHROPIC_SECRET = "sx-anthropic-secret"
GEMINI_SECRET = "sx-gemini-secret"

# Adapter → (provider, the provider's model id). `call_tools` makes the mock call every
# declared tool under `tool_choice: auto` (Instructor's PARALLEL_TOOLS); it is a no-op otherwise.
SX_ADAPTERS = {
    "openai": ("upstream", "gpt-4o-mini;call_tools"),
    "anthropic": ("sx_anthropic", "claude-3-5-haiku-20241022;call_tools"),
    "gemini": ("sx_gemini", "gemini-2.0-flash;call_tools"),
}
NATIVE_SUPPORTS = "{ structured_output = true, json_mode = true, tools = true, parallel_tools = true }"
JSON_MODE_SUPPORTS = "{ json_mode = true }"
TEXT_SUPPORTS = "{}"

# Layer 2 (json_mode) and 3 (text) models: catalog id → (provider, provider model, supports).
SX_LAYER_MODELS = {
    "sx-mock-json-mode": ("mock", "mock-echo", JSON_MODE_SUPPORTS),
    "sx-mock-text": ("mock", "mock-echo", TEXT_SUPPORTS),
    "sx-up-json-mode": ("upstream", "gpt-4o-mini", JSON_MODE_SUPPORTS),
    "sx-up-text": ("upstream", "gpt-4o-mini", TEXT_SUPPORTS),
    "sx-anthropic-json-mode": ("sx_anthropic", "claude-3-5-haiku-20241022", JSON_MODE_SUPPORTS),
    "sx-anthropic-text": ("sx_anthropic", "claude-3-5-haiku-20241022", TEXT_SUPPORTS),
    "sx-gemini-json-mode": ("sx_gemini", "gemini-2.0-flash", JSON_MODE_SUPPORTS),
    "sx-gemini-text": ("sx_gemini", "gemini-2.0-flash", TEXT_SUPPORTS),
    # text-layer models that answer like chatty models: prose and a ```json fence around the JSON
    "sx-prose-up-text": ("upstream", "gpt-4o-mini;prose_json", TEXT_SUPPORTS),
    "sx-prose-anthropic-text": ("sx_anthropic", "claude-3-5-haiku-20241022;prose_json", TEXT_SUPPORTS),
}

# Models whose first answers go wrong (mock directives `bad_json_first` / `invalid_first`).
# The mock counts answers per exact provider model string for the whole session, so each of
# these models serves ONE request: its model string is made unique with a `tag=` (a key the
# mock ignores), and a test that needs a faulty model uses its own. Only the openai and
# anthropic routes of the mock see the directives (its gemini route strips them before
# answering), so there is no gemini entry.
# catalog id → (adapter, directives, supports)
SX_FAULTY_MODELS = {
    # malformed JSON first, then the instance
    "sx-bad-json-openai-tools": ("openai", "bad_json_first=1", NATIVE_SUPPORTS),
    "sx-bad-json-openai-schema": ("openai", "bad_json_first=1", NATIVE_SUPPORTS),
    "sx-bad-json-anthropic-tools": ("anthropic", "bad_json_first=1", NATIVE_SUPPORTS),
    "sx-bad-json-anthropic-schema": ("anthropic", "bad_json_first=1", NATIVE_SUPPORTS),
    "sx-bad-json-up-json-mode": ("openai", "bad_json_first=1", JSON_MODE_SUPPORTS),
    "sx-bad-json-up-text": ("openai", "bad_json_first=1", TEXT_SUPPORTS),
    # JSON that violates the schema first, then the instance
    "sx-invalid-openai-tools": ("openai", "invalid_first=1", NATIVE_SUPPORTS),
    "sx-invalid-openai-schema": ("openai", "invalid_first=1", NATIVE_SUPPORTS),
    "sx-invalid-anthropic-tools": ("anthropic", "invalid_first=1", NATIVE_SUPPORTS),
    "sx-invalid-anthropic-schema": ("anthropic", "invalid_first=1", NATIVE_SUPPORTS),
    "sx-invalid-up-json-mode": ("openai", "invalid_first=1", JSON_MODE_SUPPORTS),
    "sx-invalid-up-text": ("openai", "invalid_first=1", TEXT_SUPPORTS),
    # streamed: no repair is possible once content went out
    "sx-invalid-stream": ("openai", "invalid_first=1", NATIVE_SUPPORTS),
    # for the metrics test
    "sx-invalid-metrics": ("openai", "invalid_first=1", NATIVE_SUPPORTS),
    # Instructor modes whose schema is only in the prompt (JSON, MD_JSON: validated since
    # flowgate finds it there) or not forced (PARALLEL_TOOLS: `tool_choice: auto`)
    "sx-bad-json-openai-json": ("openai", "bad_json_first=1", NATIVE_SUPPORTS),
    "sx-bad-json-openai-md-json": ("openai", "bad_json_first=1", NATIVE_SUPPORTS),
    "sx-invalid-openai-parallel": ("openai", "invalid_first=1;call_tools", NATIVE_SUPPORTS),
    # always wrong (5 answers cover the first call and the repair of two requests)
    "sx-invalid-fallback": ("openai", "invalid_first=5", NATIVE_SUPPORTS),
    # wrong twice (the first call and its repair), no fallback configured
    "sx-invalid-twice-error": ("openai", "invalid_first=2", NATIVE_SUPPORTS),
    "sx-invalid-twice-cost": ("openai", "invalid_first=2", NATIVE_SUPPORTS),
}
# Where `sx-invalid-fallback` goes once its repair failed too.
SX_FALLBACK_TARGET = "sx-openai"


def sx_native_model(adapter: str) -> str:
    """The catalog id of the natively structured model of an adapter."""
    return f"sx-{adapter}"


def structured_config(mock_root: str) -> str:
    offer = f"input_per_mtok = {INPUT_PER_MTOK}, output_per_mtok = {OUTPUT_PER_MTOK}"
    out = [f"""
[providers.sx_anthropic]
type = "anthropic"
base_url = {_toml_str(mock_root)}
api_key = {_toml_str(ANTHROPIC_SECRET)}
breaker = {{ failure_threshold = 1000, error_rate_threshold = 1.1 }}

[providers.sx_gemini]
type = "gemini"
base_url = {_toml_str(mock_root)}
api_key = {_toml_str(GEMINI_SECRET)}
breaker = {{ failure_threshold = 1000, error_rate_threshold = 1.1 }}
"""]

    def model(name: str, provider: str, provider_model: str, supports: str, extra: str = "") -> None:
        out.append(f"""
[models.{_toml_str(name)}]
providers = [{{ provider = {_toml_str(provider)}, model = {_toml_str(provider_model)}, {offer} }}]
supports = {supports}
{extra}""")

    for adapter, (provider, provider_model) in SX_ADAPTERS.items():
        model(sx_native_model(adapter), provider, provider_model, NATIVE_SUPPORTS)
    for name, (provider, provider_model, supports) in SX_LAYER_MODELS.items():
        model(name, provider, provider_model, supports)
    for name, (adapter, directives, supports) in SX_FAULTY_MODELS.items():
        provider, provider_model = SX_ADAPTERS[adapter]
        extra = ""
        if name == "sx-invalid-fallback":
            extra = f"fallback = {{ structured_output = [{_toml_str(SX_FALLBACK_TARGET)}] }}"
        base = provider_model.split(";")[0]
        model(name, provider, f"{base};{directives};tag={name}", supports, extra)
    return "".join(out)


class Flowgate:
    """The running gateway: its URL and raw HTTP helpers."""

    def __init__(self, proc: Proc, config_path: Path):
        self.proc = proc
        self.url = proc.url
        self.base_url = f"{proc.url}/v1"
        self.config_path = config_path
        self.http = httpx.Client(
            base_url=proc.url, timeout=30, headers={"Authorization": f"Bearer {API_KEY}"}
        )

    def get_run(self, run_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/runs/{run_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def list_runs(self, agent: str, **params: Any) -> dict[str, Any]:
        response = self.http.get(f"/api/agents/{agent}/runs", params=params)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="session")
def flowgate(tmp_path_factory: pytest.TempPathFactory, mock_upstream: MockUpstream) -> Flowgate:
    binary = _binary("FLOWGATE_BIN")
    tmp = tmp_path_factory.mktemp("flowgate")
    data_dir = tmp / "data"
    config_path = tmp / "flowgate.toml"
    config_path.write_text(flowgate_config(data_dir, mock_upstream.base_url))
    proc = _start([binary, "serve", "--config", str(config_path)], tmp / "stderr.log", "flowgate")
    gateway = Flowgate(proc, config_path)
    yield gateway
    gateway.http.close()
    code = _stop(proc)
    # SIGTERM is a graceful shutdown: drain the recorder, exit 0.
    assert code == 0, f"flowgate exited with {code} on SIGTERM\n--- stderr ---\n{proc.log()}"


# ---------------------------------------------------------------------------------------------
# Clients


@pytest.fixture(scope="session")
def client(flowgate: Flowgate) -> OpenAI:
    c = OpenAI(base_url=flowgate.base_url, api_key=API_KEY, max_retries=0, timeout=30)
    yield c
    c.close()


@pytest.fixture
def make_async_client(flowgate: Flowgate):
    """Makes an `AsyncOpenAI` client; call it inside the coroutine that uses it (a client's
    connection pool belongs to one event loop; tests run coroutines with `asyncio.run`)."""

    def make() -> AsyncOpenAI:
        return AsyncOpenAI(base_url=flowgate.base_url, api_key=API_KEY, max_retries=0, timeout=30)

    return make


@pytest.fixture
def marker() -> str:
    """A unique string to put in a prompt and find again upstream or in the runs."""
    return f"m-{uuid.uuid4().hex[:12]}"


def expected_cost(prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * INPUT_PER_MTOK + completion_tokens * OUTPUT_PER_MTOK) / 1e6
