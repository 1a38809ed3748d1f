"""Faults under load (issue [12]): three flowgate instances on a PostgreSQL of the test's own
behind the shipped HAProxy config. Under steady load through the load balancer one instance is
killed with SIGKILL, then PostgreSQL stops for 10 s and starts again. The clients keep getting
answers (only requests in flight on the killed instance may fail), and afterwards the runs in
PostgreSQL are the answers the clients received: none lost, none stored twice, none unknown.

The one loss flowgate allows is documented: a run is handed to the recorder as its answer
goes out and is written within the recorder's flush interval, so a SIGKILL can take the runs
answered in that last moment with it (the same window as sled's). The test allows exactly
that for the killed instance (answers less than 1 s older than the kill) and nothing else.
"""

from __future__ import annotations

import threading
import time
import uuid

import httpx

from cluster import make_cluster, psql, throwaway_postgres, wait_until  # noqa: F401
from conftest import API_KEY

WORKERS = 4
OUTAGE_S = 10.0
KILL_WINDOW_S = 1.0


class Load:
    """Threads sending chat completions through the load balancer one after another; each
    answer's run id, instance and time, and each failure's time and reason."""

    def __init__(self, url: str, agent: str):
        self.url = url
        self.agent = agent
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answers: list[tuple[str, str, float]] = []
        self.failures: list[tuple[float, str]] = []
        self.threads = [threading.Thread(target=self.work, args=(i,), daemon=True)
                        for i in range(WORKERS)]

    def work(self, worker: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            n = 0
            while not self.stop.is_set():
                n += 1
                sent = time.monotonic()
                try:
                    response = http.post("/v1/chat/completions", json={
                        "model": f"{self.agent}/up-model",
                        "messages": [{"role": "user", "content": f"load {worker}-{n}"}],
                    })
                except httpx.HTTPError as e:
                    with self.lock:
                        self.failures.append((sent, f"{type(e).__name__}: {e}"))
                    continue
                now = time.monotonic()
                with self.lock:
                    if response.status_code == 200:
                        self.answers.append((response.headers["x-flowgate-run-id"],
                                             response.headers.get("x-flowgate-instance", "?"),
                                             now))
                    else:
                        self.failures.append((sent, f"{response.status_code}: {response.text[:300]}"))

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def answered_by(self, instance: str, before: float) -> int:
        with self.lock:
            return sum(1 for _, by, at in self.answers if by == instance and at < before)

    def count(self) -> int:
        with self.lock:
            return len(self.answers)


def test_kill_9_and_a_postgresql_outage_under_load_lose_no_answered_run(
        throwaway_postgres, make_cluster):
    cluster = make_cluster(throwaway_postgres.url)
    a, b, c = cluster.instances
    agent = f"ha-fault-{uuid.uuid4().hex[:8]}"
    warmed: set[str] = set()
    # Each instance has seen the agent (its schema ids are numbered by the database).
    for instance in cluster.instances:
        with instance.http() as http:
            response = http.post("/v1/chat/completions", json={
                "model": f"{agent}/up-model", "messages": [{"role": "user", "content": "warm"}]})
        assert response.status_code == 200, response.text
        warmed.add(response.headers["x-flowgate-run-id"])

    with Load(cluster.lb_url, agent) as load:
        # The instance to kill has answered a while (its runs are old enough to be stored).
        wait_until("load flowing to every instance", lambda: load.answered_by(
            "flowgate3", before=time.monotonic() - 2 * KILL_WINDOW_S) >= 10, timeout=30)
        killed_at = time.monotonic()
        c.kill()
        wait_until("answers after the kill", lambda: load.count() >= 100, timeout=20)
        before_outage = load.count()
        outage_from = time.monotonic()
        throwaway_postgres.stop()
        time.sleep(OUTAGE_S)
        throwaway_postgres.start()
        outage_to = time.monotonic()
        during_outage = load.count() - before_outage
        # A while with the database back, under load.
        time.sleep(2)

    # Answers kept coming while the database was away.
    assert during_outage > 50, f"only {during_outage} answers during the outage"
    # Only requests in flight on the killed instance failed: at most one per worker, all
    # sent just before or as it died.
    assert len(load.failures) <= WORKERS, load.failures
    for sent, reason in load.failures:
        assert killed_at - 5 <= sent <= killed_at + 2, (sent - killed_at, reason)
    assert not [f for f in load.failures if outage_from <= f[0] <= outage_to], load.failures

    # The surviving instances' spools reach the database.
    def spools_empty() -> bool:
        for instance in (a, b):
            with instance.http() as http:
                ready = http.get("/readyz").json()
            storage = ready["storage"]
            if not storage["reachable"] or storage["spool"]["runs"] != 0:
                return False
        return True

    wait_until("the spools replayed", spools_empty, timeout=30)
    spooled = 0
    for instance in (a, b):
        with instance.http() as http:
            metrics = http.get("/metrics").text
        spooled += sum(int(float(line.split()[-1])) for line in metrics.splitlines()
                       if line.startswith("flowgate_spool_spooled_runs_total "))
    assert spooled > 0, "the outage never reached the spool: the test did not test it"

    answered = {run_id for run_id, _, _ in load.answers}
    survivors = {run_id for run_id, instance, _ in load.answers if instance != "flowgate3"}

    def stored_ids() -> list[str]:
        return psql(throwaway_postgres.url, f"SELECT id::text FROM {cluster.schema}.runs").split()

    # The recorders write what they hold within moments (the versions answered during the
    # outage go first, eight at a time).
    wait_until("every surviving answer stored", lambda: survivors <= set(stored_ids()),
               timeout=30, every=0.5)
    stored = stored_ids()
    assert len(stored) == len(set(stored)), "a run stored twice"
    stored_set = set(stored)
    assert stored_set <= answered | warmed, f"runs nobody received: {stored_set - answered - warmed}"
    # Every answer of the surviving instances is stored.
    assert survivors <= stored_set, f"lost: {len(survivors - stored_set)} of {len(survivors)}"
    # The killed instance's answers are stored, but for those of its last moment.
    old_enough = {run_id for run_id, instance, at in load.answers
                  if instance == "flowgate3" and at < killed_at - KILL_WINDOW_S}
    assert old_enough, "the killed instance answered nothing before it died"
    assert old_enough <= stored_set, f"lost: {len(old_enough - stored_set)} of {len(old_enough)}"
    late = {run_id for run_id, instance, at in load.answers
            if instance == "flowgate3" and at >= killed_at - KILL_WINDOW_S}
    print(f"answers {len(answered)}, during the outage {during_outage}, spooled {spooled}, "
          f"failures {len(load.failures)}, killed instance's last-second answers "
          f"{len(late)} of which stored {len(late & stored_set)}")
