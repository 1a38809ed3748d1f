"""High availability: three flowgate processes on one PostgreSQL database behind a real HAProxy
running the shipped deploy/haproxy.cfg (tests/e2e/cluster.py), driven with the openai SDK.

What a team running several instances relies on: a deployment (or a rollback) made through
one instance is what every instance serves within a second; a run made through one is read,
searched, counted and shared through another; an answer cached by one is a hit on another;
a key revoked through one is refused by all.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import openai
import pytest

from cluster import ADMIN_KEY, Cluster, make_cluster, postgres_url, throwaway_postgres, wait_until  # noqa: F401
from conftest import API_KEY

# How soon a change made through one instance holds on every instance.
PROPAGATION_S = 1.0


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def make_version(instance, agent: str, prompt: str) -> str:
    """A version of `agent` (its system prompt), made by a call through `instance`."""
    with instance.client() as client:
        completion = client.chat.completions.create(
            model=f"{agent}/up-model",
            messages=[{"role": "system", "content": prompt}, *user("make a version")],
        )
    return completion.model_extra["version_id"]


def deploy(instance, agent: str, version: str, environment: str = "production") -> dict[str, Any]:
    with instance.http(ADMIN_KEY) as http:
        response = http.post(f"/api/agents/{agent}/versions/{version}/deploy",
                             json={"environment": environment})
    assert response.status_code == 200, response.text
    return response.json()


def served_version(client: openai.OpenAI, agent: str) -> tuple[str, str | None]:
    """The version `agent/#1/production` answers with, and which instance answered (the
    header the load balancer adds; None when called directly)."""
    raw = client.chat.completions.with_raw_response.create(
        model=f"{agent}/#1/production", messages=user("which version?"))
    return raw.parse().model_extra["version_id"], raw.headers.get("x-flowgate-instance")


def test_a_deploy_or_rollback_through_one_instance_is_served_by_every_instance_within_a_second(
        make_cluster, postgres_url):
    cluster = make_cluster(postgres_url)
    a, b, c = cluster.instances
    agent = f"ha-deploy-{uuid.uuid4().hex[:8]}"
    v1 = make_version(a, agent, "You are version one.")
    v2 = make_version(b, agent, "You are version two.")
    assert v1 != v2
    deploy(a, agent, v1)

    clients = {i.name: i.client() for i in cluster.instances}
    lb = cluster.lb_client()
    try:
        # Every instance serves v1, and so keeps its copy of the deployment.
        for name, client in clients.items():
            assert served_version(client, agent)[0] == v1, name

        # A deploy through A, then a rollback through C.
        for through, version, previous in [(a, v2, v1), (c, v1, v2)]:
            deploy(through, agent, version)
            deployed_at = time.monotonic()
            # Each instance, called directly, serves the new version within a second.
            pending = dict(clients)
            while pending:
                for name, client in list(pending.items()):
                    if served_version(client, agent)[0] == version:
                        del pending[name]
                elapsed = time.monotonic() - deployed_at
                assert elapsed < PROPAGATION_S or not pending, \
                    f"{sorted(pending)} still serve {previous} {elapsed:.2f} s after the deploy"
            # Through the load balancer: every instance answers, all with the new version.
            answered: dict[str, set[str]] = {}
            deadline = time.monotonic() + 10
            while len(answered) < len(clients):
                assert time.monotonic() < deadline, f"only {sorted(answered)} answered via HAProxy"
                served, instance = served_version(lb, agent)
                assert instance in clients, f"unknown instance header {instance!r}"
                answered.setdefault(instance, set()).add(served)
            assert all(versions == {version} for versions in answered.values()), answered
    finally:
        for client in clients.values():
            client.close()
        lb.close()
    # The history (read through B) has all three deploys, newest first.
    with b.http() as http:
        history = http.get(f"/api/agents/{agent}/deployments").json()["history"]
    assert [d["version_id"] for d in history] == [v1, v2, v1]


def test_a_run_made_through_one_instance_is_read_searched_counted_and_shared_through_another(
        make_cluster, postgres_url):
    cluster = make_cluster(postgres_url)
    a, b, c = cluster.instances
    agent = f"ha-runs-{uuid.uuid4().hex[:8]}"
    marker = f"m{uuid.uuid4().hex[:12]}"
    with b.client() as client:
        raw = client.chat.completions.with_raw_response.create(
            model=f"{agent}/up-model", messages=user(f"remember {marker}"))
    run_id = raw.headers["x-flowgate-run-id"]
    with a.client() as client:
        client.chat.completions.create(model=f"{agent}/up-model", messages=user("a second run"))

    with c.http() as http, cluster.lb_http() as lb:
        # Read: once B's recorder wrote it (within its flush interval).
        run = wait_until("the run read through C",
                         lambda: (r := http.get(f"/api/runs/{run_id}")).status_code == 200 and r.json(),
                         timeout=5)
        assert run["agent"] == agent and marker in str(run)
        # Searched, free text.
        found = http.post("/api/runs/search", json={"field_queries": [
            {"field": "text", "operator": "contains", "values": [marker]}]})
        assert found.status_code == 200, found.text
        assert [item["id"] for item in found.json()["items"]] == [run_id]
        # Listed, with A's run too.
        listed = wait_until("both runs listed through C",
                            lambda: len(http.get(f"/api/agents/{agent}/runs").json()["items"]) == 2,
                            timeout=5)
        assert listed
        # Counted: the stats A and B wrote, read through C.
        totals = wait_until(
            "both runs counted through C",
            lambda: (t := http.get(f"/api/agents/{agent}/stats").json()["totals"])["runs"] == 2 and t,
            timeout=5)
        assert totals["errors"] == 0
        # Shared through B, opened through C and through the load balancer, without a key.
        with b.http() as http_b:
            share = http_b.post(f"/api/runs/{run_id}/share", json={})
        assert share.status_code == 201, share.text
        token = share.json()["token"]
        for base in (c.url, cluster.lb_url):
            opened = httpx.get(f"{base}/share/{token}", headers={"accept": "application/json"})
            assert opened.status_code == 200, opened.text
            assert marker in opened.text
        # Revoked through A: closed everywhere.
        with a.http() as http_a:
            assert http_a.delete(f"/api/runs/{run_id}/share").status_code == 204
        assert httpx.get(f"{c.url}/share/{token}",
                         headers={"accept": "application/json"}).status_code == 404
        # The run, through the load balancer (whichever instance answers).
        assert lb.get(f"/api/runs/{run_id}").status_code == 200


def test_an_answer_cached_by_one_instance_is_a_hit_on_another(make_cluster, postgres_url,
                                                             mock_upstream):
    cluster = make_cluster(postgres_url)
    a, _, c = cluster.instances
    marker = f"cache-{uuid.uuid4().hex[:12]}"
    request = dict(model="ha-cache/up-model", messages=user(f"cache me {marker}"), temperature=0)
    with a.client() as client:
        first = client.chat.completions.with_raw_response.create(**request)
    assert first.headers["x-flowgate-cache"] == "miss"

    def hit_on_c():
        with c.client() as client:
            raw = client.chat.completions.with_raw_response.create(**request)
        return raw if raw.headers["x-flowgate-cache"] == "hit" else None

    # A's cache writer stores the answer a moment after it answered.
    second = wait_until("a cache hit on C", hit_on_c, timeout=5)
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    # One upstream call for both.
    assert len(mock_upstream.chat_requests_containing(marker)) == 1


def test_a_key_revoked_through_one_instance_is_refused_by_all_within_a_second(
        make_cluster, postgres_url):
    cluster = make_cluster(postgres_url)
    a = cluster.instances[0]
    with a.http(ADMIN_KEY) as admin:
        made = admin.post("/api/admin/keys", json={"name": "ha"})
        assert made.status_code == 201, made.text
        key = made.json()

    def accepted(instance) -> bool:
        with instance.client(key["secret"]) as client:
            try:
                client.chat.completions.create(model="ha-keys/up-model", messages=user("hi"))
                return True
            except openai.AuthenticationError:
                return False

    for instance in cluster.instances:
        wait_until(f"the new key accepted by {instance.name}", lambda: accepted(instance),
                   timeout=PROPAGATION_S)
    with a.http(ADMIN_KEY) as admin:
        assert admin.delete(f"/api/admin/keys/{key['id']}").status_code == 200
    revoked_at = time.monotonic()
    for instance in cluster.instances:
        wait_until(f"the revoked key refused by {instance.name}", lambda: not accepted(instance),
                   timeout=max(0.05, PROPAGATION_S - (time.monotonic() - revoked_at)))


def test_after_postgresql_restarts_every_instance_hears_deploys_again(
        throwaway_postgres, make_cluster):
    """The listening connection is lost with the server and made again: a deploy after the
    restart reaches every instance within a second (not after the copies' safety refresh)."""
    cluster = make_cluster(throwaway_postgres.url)
    a, b, c = cluster.instances
    agent = f"ha-restart-{uuid.uuid4().hex[:8]}"
    v1 = make_version(a, agent, "Before the restart.")
    v2 = make_version(a, agent, "After the restart.")
    deploy(a, agent, v1)
    throwaway_postgres.restart()

    def reconnected(instance) -> bool:
        with instance.http() as http:
            text = http.get("/metrics").text
        return ("flowgate_storage_listener_reconnects_total 1" in text
                and "flowgate_storage_listener_connected 1" in text)

    for instance in cluster.instances:
        wait_until(f"{instance.name} listening again", lambda: reconnected(instance), timeout=15)
    clients = [i.client() for i in cluster.instances]
    try:
        # Each serves v1 (their copies, read again after the restart).
        for client in clients:
            wait_until("v1 served after the restart",
                       lambda: served_version(client, agent)[0] == v1, timeout=10)
        deploy(b, agent, v2)
        deployed_at = time.monotonic()
        for client in clients:
            wait_until("v2 served", lambda: served_version(client, agent)[0] == v2,
                       timeout=max(0.05, PROPAGATION_S - (time.monotonic() - deployed_at)))
    finally:
        for client in clients:
            client.close()
    assert "lost the PostgreSQL change listener" in c.log()


def test_an_instance_killed_is_taken_out_by_haproxy_and_back_in_when_it_returns(
        make_cluster, postgres_url):
    """The harness the fault tests stand on, and deploy/haproxy.cfg's retry: kill -9 one
    instance and every request through the load balancer still succeeds, before HAProxy's
    check notices (a refused connection is tried on another instance) and after (the
    instance is out); started again on its port, it is back in."""
    cluster = make_cluster(postgres_url)
    b = cluster.instances[1]
    b.kill()
    assert not b.alive()
    served_by: set[str] = set()
    with cluster.lb_client() as lb:
        for i in range(30):
            raw = lb.chat.completions.with_raw_response.create(
                model="ha-kill/up-model", messages=user(f"while one is down {i}"))
            served_by.add(raw.headers["x-flowgate-instance"])
        assert served_by == {"flowgate1", "flowgate3"}, served_by
        cluster.wait_lb(up={"flowgate1", "flowgate3"}, down={"flowgate2"}, timeout=10)
        b.start()
        cluster.wait_lb(up={"flowgate1", "flowgate2", "flowgate3"}, timeout=15)
        # Back in: it answers through the load balancer again.
        wait_until("flowgate2 answering through HAProxy", lambda: lb.chat.completions
                   .with_raw_response.create(model="ha-kill/up-model", messages=user("back?"))
                   .headers["x-flowgate-instance"] == "flowgate2", timeout=15)
