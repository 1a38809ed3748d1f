"""A flowgate cluster for the high-availability tests: N flowgate processes on one PostgreSQL
database (a schema of their own), behind a real HAProxy running the shipped
`deploy/haproxy.cfg`, all on 127.0.0.1.

Reusable by any test (fixtures at the bottom):

* `postgres_url` — the suite's server (`FLOWGATE_TEST_DATABASE_URL`, else 127.0.0.1:5432).
* `throwaway_postgres` — a PostgreSQL cluster of the test's own (`initdb` in a temporary
  directory, a free port), which the test may `stop()` (immediate: like a crash), `start()`
  again, or `restart()`. Name it before `make_cluster` in the test's arguments, so that the
  cluster stops before the server goes.
* `make_cluster(database_url, instances=3, extra_config="")` — starts the cluster in a fresh
  schema of that database; `cluster.instances[i]` are the flowgate processes (`kill(i)`:
  SIGKILL, `stop(i)`: SIGTERM and drain, `start(i)`: again on the same port),
  `cluster.lb_url` the load balancer, `cluster.lb_states()` what HAProxy thinks of each
  instance, `cluster.wait_lb(up=…)`.

HAProxy (Debian's `haproxy` package) is required: `tests/run.sh` and `.ci/run` install it;
without it the tests fail, they never skip.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from conftest import API_KEY, MockUpstream, Proc, _binary, _start, _stop, flowgate_config

REPO = Path(__file__).resolve().parents[2]
HAPROXY_CFG = REPO / "deploy" / "haproxy.cfg"
ADMIN_KEY = "ha-admin-key"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, check, timeout: float, every: float = 0.05) -> Any:
    """Calls `check` until it returns something true; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (httpx.HTTPError, OSError, openai.APIError) as e:
            # A request may fail while the cluster changes (an instance or the database down).
            last = e
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {timeout} s (last: {last!r})")
        time.sleep(every)


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not candidates:
        pytest.fail(f"PostgreSQL's `{name}` is missing: install Debian's postgresql package")
    return str(candidates[-1])


def psql(url: str, sql: str) -> str:
    """Runs SQL with psql on `url`; its output (unaligned, tuples only)."""
    out = subprocess.run(
        [_pg_tool("psql"), url, "-v", "ON_ERROR_STOP=1", "-X", "-A", "-t", "-c", sql],
        capture_output=True, text=True, timeout=30,
    )
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr.strip()}")
    return out.stdout.strip()


@dataclass
class ThrowawayPostgres:
    """A PostgreSQL cluster of one test's own: trust auth on 127.0.0.1:`port`, database
    `test`. `stop()` stops it at once (no checkpoint, clients cut: like a crash or a lost
    network), `start()` starts it again on the same port and data."""

    dir: Path
    port: int
    bin: Path
    as_user: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/test"

    def _ctl(self, *args: str) -> None:
        out = subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), *args],
            capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {out.stdout}{out.stderr}"
                               f"\n--- server log ---\n{self.log()}")

    def start(self) -> None:
        self._ctl("-l", str(self.dir / "server.log"), "-w", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                  "-c max_connections=200", "start")

    def stop(self, mode: str = "immediate") -> None:
        self._ctl("-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        return subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "status"],
            capture_output=True,
        ).returncode == 0

    def log(self) -> str:
        try:
            return (self.dir / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def remove(self) -> None:
        """Stops the server if it runs and deletes its files."""
        if self.running():
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @classmethod
    def create(cls) -> "ThrowawayPostgres":
        bin_dir = Path(_pg_tool("initdb")).resolve().parent
        # Not under pytest's temporary directory: its parents are private to root, and the
        # server may run as another user.
        tmp = Path(tempfile.mkdtemp(prefix="flowgate-ha-pg."))
        as_user: list[str] = []
        if os.geteuid() == 0:
            # initdb and postgres refuse to run as root: as the package's `postgres` user.
            subprocess.run(["id", "postgres"], check=True, capture_output=True)
            shutil.chown(tmp, user="postgres")
            as_user = ["runuser", "-u", "postgres", "--"]
        out = subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(tmp / "data"), "-A", "trust",
             "-U", "postgres"], capture_output=True, text=True, timeout=120,
        )
        if out.returncode != 0:
            pytest.fail(f"initdb failed: {out.stdout}{out.stderr}")
        pg = cls(dir=tmp, port=free_port(), bin=bin_dir, as_user=as_user)
        pg.start()
        subprocess.run(
            [*as_user, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(pg.port),
             "-U", "postgres", "test"], check=True, capture_output=True, timeout=30,
        )
        return pg


# ---------------------------------------------------------------------------------------------
# The cluster


@dataclass
class Instance:
    """One flowgate process of the cluster, on a fixed port (it comes back on the same one)."""

    name: str  # the HAProxy server name: flowgate1, flowgate2, …
    port: int
    args: list[str]
    log_path: Path
    proc: Proc | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        log = self.log_path.with_suffix(f".{self.starts}.log")
        self.proc = _start(self.args, log, self.name)

    def stop(self) -> int:
        """SIGTERM: drains (requests in flight, the recorder), then exits."""
        assert self.proc is not None
        return _stop(self.proc)

    def kill(self) -> None:
        """SIGKILL: gone at once, nothing drained."""
        assert self.proc is not None
        self.proc.process.send_signal(signal.SIGKILL)
        self.proc.process.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.process.poll() is None

    def log(self) -> str:
        return self.proc.log() if self.proc else ""

    def client(self, key: str = API_KEY) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=30)

    def http(self, key: str = API_KEY) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {key}"})


class Cluster:
    """N flowgate instances on one database schema behind HAProxy (deploy/haproxy.cfg)."""

    def __init__(self, tmp: Path, database_url: str, upstream: MockUpstream, instances: int,
                 extra_config: str = ""):
        if shutil.which("haproxy") is None:
            pytest.fail("haproxy is missing: install Debian's haproxy package "
                        "(tests/run.sh and .ci/run do)")
        if instances > 3:
            raise ValueError("deploy/haproxy.cfg names three instances")
        self.tmp = tmp
        self.database_url = database_url
        self.schema = f"flowgate_ha_{uuid.uuid4().hex[:12]}"
        self.instances: list[Instance] = []
        self.haproxy: subprocess.Popen | None = None
        binary = _binary("FLOWGATE_BIN")
        for i in range(instances):
            data_dir = tmp / f"flowgate{i + 1}"
            data_dir.mkdir(parents=True, exist_ok=True)
            config = data_dir / "flowgate.toml"
            config.write_text(
                flowgate_config(data_dir / "data", upstream.base_url)
                + self.storage_config()
                + f'\n[admin]\napi_keys = [{{ key = "{ADMIN_KEY}", label = "ha-test" }}]\n'
                + extra_config
            )
            port = free_port()
            self.instances.append(Instance(
                name=f"flowgate{i + 1}", port=port, log_path=data_dir / "stderr",
                args=[binary, "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
            ))
        self.lb_port = free_port()
        self.stats_port = free_port()
        self.lb_url = f"http://127.0.0.1:{self.lb_port}"
        self.stats_url = f"http://127.0.0.1:{self.stats_port}"
        self.haproxy_log = tmp / "haproxy.log"

    def storage_config(self) -> str:
        return (f'\n[storage]\nbackend = "postgres"\nurl = {json.dumps(self.database_url)}\n'
                f'pool_size = 8\nschema = "{self.schema}"\n')

    def start(self) -> None:
        # The first applies the migrations; the others find them applied (they would take
        # turns under the advisory lock anyway).
        for instance in self.instances:
            instance.start()
        self.start_haproxy()
        self.wait_lb(up={i.name for i in self.instances}, timeout=15)

    def start_haproxy(self) -> None:
        env = dict(os.environ)
        env["FLOWGATE_LB_BIND"] = f"127.0.0.1:{self.lb_port}"
        env["FLOWGATE_LB_STATS"] = f"127.0.0.1:{self.stats_port}"
        env.pop("FLOWGATE_OPS_KEY", None)
        for i in range(3):
            # The shipped file names three servers: those this cluster lacks point at a
            # closed port (HAProxy keeps them down).
            port = self.instances[i].port if i < len(self.instances) else free_port()
            env[f"FLOWGATE_{i + 1}"] = f"127.0.0.1:{port}"
        check = subprocess.run(["haproxy", "-c", "-f", str(HAPROXY_CFG)], env=env,
                               capture_output=True, text=True)
        assert check.returncode == 0, f"deploy/haproxy.cfg is invalid:\n{check.stdout}{check.stderr}"
        log = open(self.haproxy_log, "wb")
        # -db: in the foreground, as a child of the test.
        self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(HAPROXY_CFG)], env=env,
                                        stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        log.close()

    def lb_states(self) -> dict[str, str]:
        """HAProxy's view of each instance: UP, DOWN, … (its stats CSV)."""
        response = httpx.get(f"{self.stats_url}/;csv", timeout=5)
        response.raise_for_status()
        rows = csv.DictReader(io.StringIO(response.text.lstrip("# ")))
        return {row["svname"]: row["status"] for row in rows
                if row["pxname"] == "flowgate" and row["svname"] not in ("BACKEND", "FRONTEND")}

    def wait_lb(self, up: set[str], down: set[str] = frozenset(), timeout: float = 10) -> None:
        """Waits until HAProxy sees the `up` instances up and the `down` ones down."""

        def settled() -> bool:
            states = self.lb_states()
            return (all(states.get(n, "").startswith("UP") for n in up)
                    and all(states.get(n, "").startswith("DOWN") for n in down))

        wait_until(f"HAProxy to see {sorted(up)} up and {sorted(down)} down", settled, timeout)

    def lb_client(self, key: str = API_KEY) -> OpenAI:
        return OpenAI(base_url=f"{self.lb_url}/v1", api_key=key, max_retries=0, timeout=30)

    def lb_http(self, key: str = API_KEY) -> httpx.Client:
        return httpx.Client(base_url=self.lb_url, timeout=30,
                            headers={"Authorization": f"Bearer {key}"})

    def logs(self) -> str:
        parts = [f"--- {i.name} ---\n{i.log()[-4000:]}" for i in self.instances]
        try:
            parts.append(f"--- haproxy ---\n{self.haproxy_log.read_text(errors='replace')[-4000:]}")
        except OSError:
            pass
        return "\n".join(parts)

    def close(self) -> None:
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait()
        for instance in self.instances:
            if instance.alive():
                instance.stop()
        try:
            psql(self.database_url, f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"cannot drop the test schema {self.schema}: {e}")


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The suite's PostgreSQL server (tests/postgres.sh exports it); it must answer."""
    url = os.environ.get("FLOWGATE_TEST_DATABASE_URL") or DEFAULT_DATABASE_URL
    try:
        psql(url, "SELECT 1")
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        pytest.fail(f"PostgreSQL at {url} does not answer ({e}): run the suite with "
                    "`bash tests/run.sh`, which makes sure one does")
    return url


@pytest.fixture
def throwaway_postgres() -> ThrowawayPostgres:
    """A PostgreSQL of the test's own, which it may stop and start; removed afterwards."""
    pg = ThrowawayPostgres.create()
    yield pg
    pg.remove()


@pytest.fixture
def make_cluster(tmp_path: Path, mock_upstream: MockUpstream):
    """Starts clusters: `make_cluster(database_url, instances=3, extra_config="")`; each is
    stopped (and its schema dropped) when the test ends."""
    clusters: list[Cluster] = []

    def make(database_url: str, instances: int = 3, extra_config: str = "") -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(clusters)}", database_url, mock_upstream,
                          instances, extra_config)
        clusters.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()
