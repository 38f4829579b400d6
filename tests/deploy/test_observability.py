"""The Grafana dashboard and the Prometheus alerts: valid, and only about metrics that exist."""

from __future__ import annotations

import json
import re
from typing import Any

import promql_parser
import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard, Panel
from grafana_foundation_sdk.models.prometheus import Dataquery

from tests.deploy.support import METRIC_FAMILIES, OPS, load_yaml, metric_series

DASHBOARD: dict[str, Any] = json.loads((OPS / "grafana" / "notifier-dashboard.json").read_text())
RULES = load_yaml(OPS / "prometheus" / "alerts.yaml")
ALERTS: dict[str, dict[str, Any]] = {
    rule["alert"]: rule for group in RULES["spec"]["groups"] for rule in group["rules"]
}
# Grafana replaces these before Prometheus sees the query.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def selected_series(promql: str) -> dict[str, set[str]]:
    """The series a query selects, each with the labels the query uses on it.

    A label is "used" if a matcher names it or an enclosing ``by (...)`` groups by it.
    """
    for variable, value in GRAFANA_VARIABLES.items():
        promql = promql.replace(variable, value)
    used: dict[str, set[str]] = {}
    grouping: list[list[str]] = []

    def enter(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.AggregateExpr):
            grouping.append(list(node.modifier.labels) if node.modifier else [])
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"select metrics by name: {promql}"
            labels = used.setdefault(node.name, set())
            labels.update(matcher.name for matcher in node.matchers.matchers)
            labels.update(label for level in grouping for label in level)

    def leave(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.AggregateExpr):
            grouping.pop()

    promql_parser.walk(promql_parser.parse(promql), enter, leave)
    return used


def assert_only_known_metrics(promql: str) -> set[str]:
    """Every series the query selects exists, with the labels the query uses on it."""
    series = metric_series()
    used = selected_series(promql)
    for name, labels in used.items():
        assert name in series, f"unknown metric {name} in {promql}"
        assert labels <= series[name], f"{name} has no label {labels - series[name]}: {promql}"
    return set(used)


def family_of(series: str) -> str:
    return next(f for f in METRIC_FAMILIES if series == f or series.startswith(f + "_"))


def dashboard_targets() -> list[dict[str, Any]]:
    return [target for panel in DASHBOARD["panels"] for target in panel["targets"]]


def test_selected_series_understands_grouping_and_matchers() -> None:
    assert selected_series('sum by (queue) (rate(a_total{x="1"}[$__rate_interval])) / on () b') == {
        "a_total": {"queue", "x"},
        "b": set(),
    }


def test_dashboard_loads_into_grafanas_dashboard_model_without_losing_a_field() -> None:
    register_default_plugins()
    model = Dashboard.from_json(DASHBOARD)
    round_trip = json.loads(json.dumps(model, cls=JSONEncoder))

    def assert_kept(ours: Any, theirs: Any, path: str) -> None:
        if isinstance(ours, dict):
            assert isinstance(theirs, dict), path
            for key, value in ours.items():
                assert key in theirs, f"Grafana's model has no field {path}/{key}"
                assert_kept(value, theirs[key], f"{path}/{key}")
        elif isinstance(ours, list):
            assert isinstance(theirs, list), path
            assert len(ours) == len(theirs), path
            for index, (mine, its) in enumerate(zip(ours, theirs, strict=True)):
                assert_kept(mine, its, f"{path}[{index}]")
        else:
            assert ours == theirs, path

    assert_kept(DASHBOARD, round_trip, "")
    assert model.panels
    for panel in model.panels:
        assert isinstance(panel, Panel)
        assert panel.targets
        assert all(isinstance(target, Dataquery) for target in panel.targets), panel.title


def test_dashboard_has_a_prometheus_datasource_variable_every_query_uses() -> None:
    assert DASHBOARD["uid"]
    assert isinstance(DASHBOARD["schemaVersion"], int)
    variables = DASHBOARD["templating"]["list"]
    datasource = next(v for v in variables if v["type"] == "datasource")
    assert datasource["query"] == "prometheus"
    reference = {"type": "prometheus", "uid": "${" + datasource["name"] + "}"}
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"] == reference, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == reference, panel["title"]


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


def test_dashboard_queries_use_known_metrics_and_show_every_family() -> None:
    shown: set[str] = set()
    for target in dashboard_targets():
        shown |= {family_of(s) for s in assert_only_known_metrics(target["expr"])}
    assert shown == set(METRIC_FAMILIES)


def test_dashboard_rates_only_counters_and_histogram_buckets() -> None:
    for target in dashboard_targets():
        for name in re.findall(r"rate\((\w+)", target["expr"]):
            kind = METRIC_FAMILIES[family_of(name)][0]
            assert kind == "counter" or name.endswith("_bucket"), target["expr"]


def test_alert_rules_are_a_prometheus_rule_with_the_four_alerts() -> None:
    assert RULES["apiVersion"] == "monitoring.coreos.com/v1"
    assert RULES["kind"] == "PrometheusRule"
    assert set(ALERTS) == {
        "NotifierBacklogGrowing",
        "NotifierOldestDueJobTooOld",
        "NotifierDeadNotifications",
        "NotifierNoLiveWorkers",
    }


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_is_valid_promql_on_known_metrics(name: str) -> None:
    rule = ALERTS[name]
    assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
    assert assert_only_known_metrics(rule["expr"])
    if "for" in rule:
        assert promql_parser.parse_duration(rule["for"]).total_seconds() > 0
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert rule["annotations"]["summary"]


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("NotifierBacklogGrowing", "notifier_queue_depth"),
        ("NotifierOldestDueJobTooOld", "notifier_queue_oldest_due_job_age_seconds"),
        ("NotifierDeadNotifications", "notifier_notifications"),
        ("NotifierNoLiveWorkers", "notifier_workers_alive"),
    ],
)
def test_each_alert_watches_its_metric(name: str, family: str) -> None:
    assert family in selected_series(ALERTS[name]["expr"])


def test_no_live_workers_also_fires_when_the_metric_is_missing() -> None:
    assert "absent(notifier_workers_alive)" in ALERTS["NotifierNoLiveWorkers"]["expr"]
