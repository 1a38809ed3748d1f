"""The shipped dashboard and alert rules against a real Prometheus (Debian's `prometheus`
package) scraping a real flowgate under traffic.

A flowgate of its own (two tenants; a provider whose circuit opens; one that always fails and
is retried; a slow one for in-flight coalescing; cached, streamed and structured requests) is
scraped every second by a Prometheus loaded with the shipped `grafana/prometheus.yml` (its
target and intervals changed for the test) and the shipped rules. Then every query of every
panel of the dashboard, its template variables substituted as Grafana would, must return
series with a value; every metric the dashboard or the rules name must be in `/metrics`; and
Prometheus must evaluate every rule without error, with the circuit alert pending for the
provider whose circuit is open.
"""

from __future__ import annotations

import json
import math
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import API_KEY, MockUpstream, Proc, _binary, _start, _stop
from grafana_files import (
    RULES,
    SCRAPE_CONFIG,
    dashboard,
    metric_families,
    prometheus,
    queries,
    rules,
    variables,
)

ACME_KEY = "acme-key"
SCRAPE_SECONDS = 1
# What Grafana would put for its interval variables on a short time range.
INTERVALS = {"__rate_interval": "1m", "__range": "5m", "__interval": "15s"}
AGENT = "prom-agent"


def config(data_dir: Path, upstream: str) -> str:
    offer = "input_per_mtok = 0.15, output_per_mtok = 0.60"
    return f"""
[server]
listen = "127.0.0.1:0"
data_dir = {json.dumps(str(data_dir))}

[recorder]
flush_interval_ms = 50

[auth]
api_keys = [{json.dumps(API_KEY)}]

[auth.tenants.acme]
api_keys = [{json.dumps(ACME_KEY)}]

[retries]
max_retries = 1
base_delay_ms = 10
max_delay_ms = 50

[providers.mock]
type = "mock"

# Answers after 700 ms: identical requests meanwhile share its answer.
[providers.slowmock]
type = "mock"
latency_ms = 700

[providers.upstream]
type = "openai"
base_url = {json.dumps(upstream)}
api_key = "upstream-secret"

# Fails; its circuit opens after two failures and stays open for the test.
[providers.flaky]
type = "openai"
base_url = {json.dumps(upstream)}
api_key = "flaky-secret"
breaker = {{ failure_threshold = 2, cooldown = 600.0, error_rate_threshold = 1.1 }}

# Fails every time; its circuit never opens, so it is retried and the client gets a 502.
[providers.broken]
type = "openai"
base_url = {json.dumps(upstream)}
api_key = "broken-secret"
breaker = {{ failure_threshold = 1000, error_rate_threshold = 1.1 }}

[models."pm-up"]
providers = [{{ provider = "upstream", model = "gpt-4o-mini", {offer} }}]

[models."pm-failover"]
providers = [
  {{ provider = "flaky", model = "gpt-4o-mini;status=500", {offer} }},
  {{ provider = "mock", model = "mock-echo", {offer} }},
]

[models."pm-broken"]
providers = [{{ provider = "broken", model = "gpt-4o-mini;status=500", {offer} }}]

[models."pm-cached"]
providers = [{{ provider = "mock", model = "mock-echo", {offer} }}]

[models."pm-slow"]
providers = [{{ provider = "slowmock", model = "mock-echo", {offer} }}]

[models."pm-structured"]
providers = [{{ provider = "mock", model = "mock-echo", {offer} }}]
supports = {{ structured_output = true, json_mode = true }}
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class Traffic:
    """Requests that give every panel something to show; counts what it sent."""

    def __init__(self, url: str):
        self.url = url
        self.sent = 0
        self.statuses: list[int] = []
        self.lock = threading.Lock()

    def post(self, body: dict[str, Any], key: str = API_KEY) -> httpx.Response:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            response = http.post("/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"})
            response.read()
        with self.lock:
            self.sent += 1
            self.statuses.append(response.status_code)
        return response

    def run(self) -> None:
        marker = uuid.uuid4().hex[:8]
        # Whole and streamed answers from an upstream provider, for two tenants.
        for i in range(3):
            assert self.post({"model": f"{AGENT}/pm-up", "messages": user(f"hello {i}")}).status_code == 200
        assert self.post({"model": f"{AGENT}/pm-up", "messages": user("acme")}, ACME_KEY).status_code == 200
        for i in range(2):
            streamed = self.post({"model": f"{AGENT}/pm-up", "messages": user(f"stream {i} please"),
                                  "stream": True})
            assert streamed.status_code == 200 and "[DONE]" in streamed.text, streamed.text
        # A structured output.
        schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
        structured = self.post({"model": f"{AGENT}/pm-structured", "messages": user("a name"),
                                "response_format": {"type": "json_schema",
                                                    "json_schema": {"name": "Person", "schema": schema}}})
        assert structured.status_code == 200, structured.text
        # Fallbacks while the flaky provider fails, until its circuit opens (the first time).
        for i in range(4):
            failover = self.post({"model": f"{AGENT}/pm-failover", "messages": user(f"fail over {i}")})
            assert failover.status_code == 200, failover.text
        # Retried, then a 502; and a 404.
        for i in range(2):
            assert self.post({"model": f"{AGENT}/pm-broken", "messages": user(f"broken {i}")}).status_code == 502
        assert self.post({"model": f"{AGENT}/no-such-model", "messages": user("?")}).status_code == 404
        # A stored answer, then a hit.
        cached = {"model": f"{AGENT}/pm-cached", "messages": user(f"cache me {marker}"), "temperature": 0}
        assert self.post(cached).headers["x-flowgate-cache"] == "miss"
        assert self.post(cached).headers["x-flowgate-cache"] == "hit"
        # Identical requests at once: one goes upstream, the others share its answer.
        slow = {"model": f"{AGENT}/pm-slow", "messages": user(f"together {marker}"), "temperature": 0}
        threads = [threading.Thread(target=self.post, args=(slow,)) for _ in range(3)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()


class PrometheusServer:
    def __init__(self, process: subprocess.Popen, url: str, log_path: Path):
        self.process = process
        self.url = url
        self.log_path = log_path
        self.http = httpx.Client(base_url=url, timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params=params)
        assert response.status_code == 200, f"{path} {params}: {response.text}"
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    def stop(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_prometheus(tmp: Path, target: str) -> PrometheusServer:
    """Prometheus with the shipped scrape config (aimed at `target`, every second) and rules."""
    scrape = yaml.safe_load(SCRAPE_CONFIG.read_text())
    scrape["global"]["scrape_interval"] = f"{SCRAPE_SECONDS}s"
    scrape["global"]["evaluation_interval"] = f"{SCRAPE_SECONDS}s"
    scrape["rule_files"] = [str(RULES)]
    (job,) = scrape["scrape_configs"]
    job["scrape_interval"] = f"{SCRAPE_SECONDS}s"
    job["scrape_timeout"] = f"{SCRAPE_SECONDS}s"
    job["static_configs"] = [{"targets": [target]}]
    config_path = tmp / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(scrape))
    port = free_port()
    log_path = tmp / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [prometheus(), f"--config.file={config_path}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = PrometheusServer(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited with {process.returncode}:\n{server.log()}")
        try:
            if server.http.get("/-/ready").status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    pytest.fail(f"prometheus did not get ready:\n{server.log()}")


def wait_for(what: str, probe, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory, mock_upstream: MockUpstream):
    """flowgate under traffic, scraped by Prometheus until the traffic is all in."""
    tmp = tmp_path_factory.mktemp("prometheus")
    config_path = tmp / "flowgate.toml"
    config_path.write_text(config(tmp / "data", mock_upstream.base_url))
    gateway: Proc = _start([_binary("FLOWGATE_BIN"), "serve", "--config", str(config_path)],
                           tmp / "flowgate.log", "flowgate")
    target = gateway.url.removeprefix("http://")
    server = start_prometheus(tmp, target)
    try:
        wait_for("the first scrape", lambda: server.query('up{job="flowgate"} == 1'))
        traffic = Traffic(gateway.url)

        def all_scraped():
            # Every request is in a scrape, and a few scrapes follow it.
            wait_for(f"{traffic.sent} requests in Prometheus", lambda: any(
                float(s["value"][1]) == traffic.sent
                for s in server.query('sum(flowgate_requests_total{job="flowgate"})')))
            time.sleep(3 * SCRAPE_SECONDS)

        # Twice, as steady traffic would: a series is born with its first request, so its
        # rate only shows from the second on.
        traffic.run()
        all_scraped()
        traffic.run()
        all_scraped()
        metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
        yield server, metrics, traffic
    finally:
        server.stop()
        _stop(gateway)


VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*(\w+)\)$")


def substitute(expr: str, values: dict[str, str]) -> str:
    def one(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown variable ${name} in {expr}"
        return values[name]
    return VARIABLE.sub(one, expr)


def variable_values(server: PrometheusServer) -> dict[str, str]:
    """Each template variable as Grafana would set it: its query run through Prometheus (it
    must find values), then `All` where the variable allows it, else the test's job."""
    values = dict(INTERVALS)
    for variable in variables(dashboard()):
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = LABEL_VALUES.match(query)
        assert match, query
        selector, label = substitute(match.group(1), values), match.group(2)
        found = server.get(f"/api/v1/label/{label}/values", **{"match[]": selector})
        assert found, f"variable ${variable['name']} finds no values: {selector}"
        if variable.get("includeAll"):
            values[variable["name"]] = variable["allValue"]
        else:
            assert "flowgate" in found, (variable["name"], found)
            values[variable["name"]] = "flowgate"
    return values


def test_every_panel_query_returns_series(scraped):
    server, _, _ = scraped
    values = variable_values(server)
    empty = []
    for where, expr in queries(dashboard()):
        result = server.query(substitute(expr, values))
        finite = [s for s in result if math.isfinite(float(s["value"][1]))]
        if not finite:
            empty.append(f"{where}: {substitute(expr, values)} -> {result}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_every_metric_the_dashboard_and_rules_name_is_exported(scraped):
    _, metrics, _ = scraped
    exported = {line.split()[2] for line in metrics.splitlines() if line.startswith("# TYPE ")}
    named = set()
    for _, expr in queries(dashboard()):
        named |= metric_families(expr)
    for variable in variables(dashboard()):
        if variable["type"] == "query":
            named |= metric_families(json.dumps(variable["query"]))
    for rule in rules():
        named |= metric_families(rule["expr"])
    assert len(named) >= 20, named
    # Exported only by an instance with the optional section that makes them mean something
    # (this one runs without Redis): their rules stay quiet rather than fire on a default.
    only_with_section = {"flowgate_redis_up": "[redis]"}
    missing = sorted(named - exported - set(only_with_section))
    assert not missing, f"named but not in /metrics: {missing}"


def test_prometheus_evaluates_every_rule_and_the_open_circuit_is_pending(scraped):
    server, _, _ = scraped
    groups = server.get("/api/v1/rules")["groups"]
    evaluated = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(evaluated) == {rule["alert"] for rule in rules()}
    for name, rule in evaluated.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))

    def circuit_alert():
        return [a for a in server.get("/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == "FlowgateProviderCircuitOpen"]

    alerts = wait_for("the circuit alert", circuit_alert, timeout=15)
    # Only the provider whose circuit opened; `for: 5m` keeps it pending in a test this short.
    assert [a["labels"]["provider"] for a in alerts] == ["flaky"], alerts
    assert alerts[0]["state"] == "pending"
    # Nothing recorded failed, so the recorder alert has no candidate.
    assert not [a for a in server.get("/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == "FlowgateRecorderErrors"]
