"""The shipped `grafana/` folder, as the tests read it: the dashboard, its panels' queries, the
alert rules and the scrape config, and where `promtool` is."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "flowgate.json"
RULES = GRAFANA / "flowgate.rules.yml"
RULE_TESTS = sorted((GRAFANA / "tests").glob("*.yml"))
SCRAPE_CONFIG = GRAFANA / "prometheus.yml"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "flowgate.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "flowgate.yml"

# A `flowgate_*` metric name in a PromQL expression.
METRIC_NAME = re.compile(r"\bflowgate_[a-z0-9_]+\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included, nested rows' panels too."""
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title and refId, expr) of every target of every panel."""
    return [
        (f"{panel['title']} [{target['refId']}]", target["expr"])
        for panel in panels(board)
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def variables(board: dict[str, Any]) -> list[dict[str, Any]]:
    return board["templating"]["list"]


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def metric_families(expr: str) -> set[str]:
    """The `flowgate_*` families an expression reads (a histogram's series by its family)."""
    names = set()
    for name in METRIC_NAME.findall(expr):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
                break
        names.add(name)
    return names


def promtool() -> str:
    """The `promtool` binary: tests/run.sh installs Debian's `prometheus` package when it is
    missing. Without it the test fails rather than skips: the rules would go untested."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run `bash tests/run.sh` (it installs the "
                    "`prometheus` package) or `apt-get install prometheus`")
    return path


def prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail("prometheus is not installed: run `bash tests/run.sh` (it installs the "
                    "`prometheus` package) or `apt-get install prometheus`")
    return path
