"""The shipped `grafana/` folder without Grafana (which cannot be installed here): the
dashboard's JSON has the structure Grafana's current schema expects, the provisioning files
point at it, and Debian's `promtool` accepts the scrape config and the alert rules and runs
their unit tests (each alert fires when it should and not otherwise)."""

from __future__ import annotations

import subprocess

import yaml

from grafana_files import (
    DASHBOARD,
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    GRAFANA,
    RULE_TESTS,
    RULES,
    SCRAPE_CONFIG,
    dashboard,
    panels,
    promtool,
    queries,
    rules,
    variables,
)

# Grafana 10.4 / 11 write schemaVersion 39.
MIN_SCHEMA_VERSION = 39
ROWS = [
    "Traffic",
    "Latency",
    "Cost and tokens",
    "Providers and circuits",
    "Cache and dedup",
    "Recorder and storage",
]
ALERTS = {
    "FlowgateDown",
    "FlowgateProviderCircuitOpen",
    "FlowgateHighErrorRate",
    "FlowgateGatewayOverheadHigh",
    "FlowgateRecorderErrors",
    "FlowgateStorageUnreachable",
    "FlowgateSpoolFull",
    "FlowgateCostPerHourHigh",
    "FlowgateRedisUnreachable",
}
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}


def test_dashboard_has_the_current_schema_and_a_datasource_variable():
    board = dashboard()
    assert board["schemaVersion"] >= MIN_SCHEMA_VERSION
    assert board["uid"] and board["title"]
    # Provisioned dashboards must not carry a database id.
    assert board.get("id") is None
    by_name = {v["name"]: v for v in variables(board)}
    assert by_name["datasource"]["type"] == "datasource"
    assert by_name["datasource"]["query"] == "prometheus"
    for name, variable in by_name.items():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE_REF, name
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            assert query.startswith("label_values("), (name, query)
            if variable.get("includeAll"):
                assert variable.get("allValue") == ".*", name
    assert {"job", "instance"} <= by_name.keys()


def test_every_panel_has_a_place_targets_and_the_datasource_variable():
    board = dashboard()
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    cells: set[tuple[int, int]] = set()
    for panel in panels(board):
        title = panel.get("title")
        assert title, panel
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), title
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0, title
        assert grid["x"] + grid["w"] <= 24, f"{title} is wider than the grid"
        # No two panels overlap.
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{title} overlaps another panel at {(x, y)}"
                cells.add((x, y))
        if panel["type"] == "row":
            assert grid["w"] == 24 and grid["h"] == 1, title
            continue
        assert panel["type"] in {"timeseries", "stat", "state-timeline", "bargauge"}, title
        assert panel["datasource"] == DATASOURCE_REF, title
        assert panel["targets"], f"{title} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), title
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE_REF, title
            assert target["expr"].strip(), title
            assert "flowgate_" in target["expr"], title
        assert "unit" in panel["fieldConfig"]["defaults"], title


def test_dashboard_rows_come_in_order_and_each_holds_panels():
    board = dashboard()
    top = board["panels"]
    rows = [p for p in top if p["type"] == "row"]
    assert [r["title"] for r in rows] == ROWS
    # The first panel is a row; each row is followed by panels below it (rows are open).
    assert top[0]["type"] == "row"
    ordered = sorted(top, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    assert ordered == top, "panels are listed in the order they are laid out"
    for i, row in enumerate(top):
        if row["type"] != "row":
            continue
        assert row["collapsed"] is False and row["panels"] == [], row["title"]
        following = top[i + 1] if i + 1 < len(top) else None
        assert following is not None and following["type"] != "row", f"row {row['title']} is empty"
        assert following["gridPos"]["y"] > row["gridPos"]["y"]


def test_queries_use_the_template_variables():
    for where, expr in queries(dashboard()):
        assert 'job=~"$job"' in expr and 'instance=~"$instance"' in expr, where
        if "rate(" in expr or "increase(" in expr or "deriv(" in expr:
            assert "[$__rate_interval]" in expr or "[$__range]" in expr, where


def test_provisioning_points_at_the_dashboard_and_a_prometheus_datasource():
    datasources = yaml.safe_load(DATASOURCES.read_text())
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert DASHBOARD.exists()


def test_promtool_accepts_the_scrape_config_and_the_rules():
    tool = promtool()
    checked = subprocess.run([tool, "check", "config", str(SCRAPE_CONFIG)], capture_output=True,
                             text=True, cwd=GRAFANA)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert {rule["alert"] for rule in rules()} == ALERTS


def test_promtool_unit_tests_cover_every_alert_and_pass():
    tool = promtool()
    assert RULE_TESTS, "no rule tests in grafana/tests/"
    fires, quiet = set(), set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    # Each alert is shown to fire, and to stay quiet when it should.
    assert fires == ALERTS and quiet == ALERTS, (fires, quiet)
    result = subprocess.run([tool, "test", "rules", *map(str, RULE_TESTS)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
