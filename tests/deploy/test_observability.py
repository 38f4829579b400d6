"""The Grafana dashboard and the Prometheus alerts: valid, and only about metrics that exist."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import promql_parser
import psycopg
import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard, Panel
from grafana_foundation_sdk.models.prometheus import Dataquery
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from notifier.services import Services
from notifier.telemetry.metrics import serve_worker_metrics
from tests.deploy.support import (
    API,
    DATABASE,
    METRIC_FAMILIES,
    OPS,
    SAMPLE_SUFFIXES,
    family_of,
    load_yaml,
    metric_series,
)
from tests.support import WebhookReceiver, eventually, free_port

DASHBOARD: dict[str, Any] = json.loads((OPS / "grafana" / "notifier-dashboard.json").read_text())
RULES = load_yaml(OPS / "prometheus" / "alerts.yaml")
ALERTS: dict[str, dict[str, Any]] = {
    rule["alert"]: rule for group in RULES["spec"]["groups"] for rule in group["rules"]
}
# Grafana replaces these before Prometheus sees the query.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def parse_query(promql: str) -> promql_parser.Expr:
    """A dashboard's or an alert's query as Prometheus parses it (Grafana's variables replaced)."""
    for variable, value in GRAFANA_VARIABLES.items():
        promql = promql.replace(variable, value)
    return promql_parser.parse(promql)


def selected_series(promql: str) -> dict[str, set[str]]:
    """The series a query selects, each with the labels the query uses on it.

    A label is "used" if a matcher names it or an enclosing ``by (...)`` groups by it.
    """
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

    promql_parser.walk(parse_query(promql), enter, leave)
    return used


def assert_only_known_metrics(promql: str) -> set[str]:
    """Every series the query selects exists, with the labels the query uses on it."""
    series = metric_series()
    used = selected_series(promql)
    for name, labels in used.items():
        assert name in series, f"unknown metric {name} in {promql}"
        assert labels <= series[name], f"{name} has no label {labels - series[name]}: {promql}"
    return set(used)


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
            kind = METRIC_FAMILIES[family_of(name)].kind
            assert kind == "counter" or name.endswith("_bucket"), target["expr"]


def all_queries() -> list[str]:
    """Every PromQL expression of the dashboard and the alerts."""
    return [target["expr"] for target in dashboard_targets()] + [
        rule["expr"] for rule in ALERTS.values()
    ]


def aggregations_over(promql: str) -> dict[str, set[str]]:
    """Each series the query selects, with the aggregation nearest above each selection."""
    found: dict[str, set[str]] = {}
    operators: list[str] = []

    def enter(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.AggregateExpr):
            operators.append(str(node.op))
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.setdefault(node.name, set()).add(operators[-1] if operators else "")

    def leave(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.AggregateExpr):
            operators.pop()

    promql_parser.walk(parse_query(promql), enter, leave)
    return found


def test_aggregations_over_finds_the_nearest_aggregation() -> None:
    assert aggregations_over("sum(max by (queue) (a)) + max(rate(b[5m])) + c") == {
        "a": {"max"},
        "b": {"max"},
        "c": {""},
    }


@pytest.mark.parametrize("promql", all_queries())
def test_gauges_read_from_the_database_are_not_summed_over_api_pods(promql: str) -> None:
    # Every API pod reports the same value, so a sum would count it once per pod.
    for series, operators in aggregations_over(promql).items():
        if METRIC_FAMILIES[family_of(series)].source == DATABASE:
            assert operators <= {"max", "min", "avg", ""}, f"{series}: {operators} in {promql}"


def test_alert_rules_are_a_prometheus_rule_with_the_five_alerts() -> None:
    assert RULES["apiVersion"] == "monitoring.coreos.com/v1"
    assert RULES["kind"] == "PrometheusRule"
    assert set(ALERTS) == {
        "NotifierBacklogGrowing",
        "NotifierOldestDueJobTooOld",
        "NotifierDeadNotifications",
        "NotifierNoLiveWorkers",
        "NotifierMetricsDatabaseDown",
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
        ("NotifierDeadNotifications", "notifier_deliveries_total"),
        ("NotifierNoLiveWorkers", "notifier_workers_alive"),
        ("NotifierMetricsDatabaseDown", "notifier_metrics_database_up"),
    ],
)
def test_each_alert_watches_its_metric(name: str, family: str) -> None:
    assert family in selected_series(ALERTS[name]["expr"])


def test_no_live_workers_also_fires_when_the_metric_is_missing() -> None:
    assert "absent(notifier_workers_alive)" in ALERTS["NotifierNoLiveWorkers"]["expr"]


@dataclass
class Exposition:
    """What one process serves at ``/metrics``, as Prometheus parses it."""

    kinds: dict[str, str] = field(default_factory=dict)
    # sample name -> label name -> the values seen
    samples: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Exposition:
        exposition = cls()
        for family in text_string_to_metric_families(text):
            base = family.name.removesuffix("_created")
            if base != family.name and exposition.kinds.get(base) in {"counter", "histogram"}:
                continue  # prometheus_client's creation time of the family before it
            exposition.kinds[family.name] = family.type
            for sample in family.samples:
                labels = exposition.samples.setdefault(sample.name, {})
                for label, label_value in sample.labels.items():
                    labels.setdefault(label, set()).add(label_value)
        return exposition

    def labels_of(self, family: str) -> frozenset[str]:
        """The labels of the family's samples, without the ones the sample kind adds (le)."""
        kind = self.kinds[family]
        return frozenset(
            label
            for suffix, extra in SAMPLE_SUFFIXES[kind].items()
            for label in self.samples.get(family + suffix, {})
            if label not in extra
        )


def equality_matchers(promql: str) -> list[tuple[str, str, str]]:
    """(series, label, value) of every ``label="value"`` matcher in the query."""
    found: list[tuple[str, str, str]] = []

    def enter(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.extend(
                (node.name, matcher.name, matcher.value)
                for matcher in node.matchers.matchers
                if matcher.op == promql_parser.MatchOp.Equal
            )

    promql_parser.walk(parse_query(promql), enter)
    return found


@pytest.fixture
async def exposed(
    client: AsyncTestClient[Any],
    services: Services,
    worker: None,
    receiver: WebhookReceiver,
    db: psycopg.AsyncConnection[Any],
) -> dict[str, Exposition]:
    """The real ``/metrics`` of the API and of a worker, after both have done some work.

    The API (``client``) has its own registry, as in production; the worker counts into
    ``services.metrics`` and serves it the way ``notifier worker`` does.
    """
    rule = await client.post(
        "/api/v1/rules/",
        json={"event_type": "user.signup", "channel": "webhook", "recipient": receiver.url},
    )
    assert rule.status_code == 201, rule.text
    receiver.script(503)  # one retry, then delivered
    published = await client.post("/api/v1/events/", json={"type": "user.signup", "payload": {}})
    assert published.status_code == 201
    await db.execute("INSERT INTO notifier.outbox (type, payload) VALUES ('order.paid', '{}')")

    async def done() -> bool:
        detail = (await client.get(f"/api/v1/events/{published.json()['id']}")).json()
        outbox = await (await db.execute("SELECT count(*) AS n FROM notifier.events")).fetchone()
        sent = [n["status"] for n in detail["notifications"]] == ["sent"]
        return sent and outbox is not None and outbox["n"] == 2

    await eventually(done)
    port = free_port()
    stop = serve_worker_metrics(services.metrics, "127.0.0.1", port)
    try:
        async with httpx.AsyncClient() as http:
            worker_text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        stop()
    api_response = await client.get("/metrics")
    assert api_response.status_code == 200
    return {"api": Exposition.parse(api_response.text), "worker": Exposition.parse(worker_text)}


async def test_declared_families_are_what_the_api_and_a_worker_really_expose(
    exposed: dict[str, Exposition],
) -> None:
    api, worker = exposed["api"], exposed["worker"]
    notifier_families = {
        name for e in (api, worker) for name in e.kinds if name.startswith("notifier_")
    }
    assert notifier_families == {n for n in METRIC_FAMILIES if n.startswith("notifier_")}
    for name, family in METRIC_FAMILIES.items():
        where = [e for e in (api, worker) if name in e.kinds]
        if family.source == DATABASE:
            assert where == [api], f"{name}: only the API reads it from PostgreSQL"
        elif family.source == API:
            assert where == [api], f"{name}: only the API serves requests"
        else:
            assert where == [api, worker], f"{name}: every process counts its own work"
        assert {e.kinds[name] for e in where} == {family.kind}, name
        assert frozenset().union(*(e.labels_of(name) for e in where)) == family.labels, name


async def test_every_series_label_and_value_queried_is_really_exposed(
    exposed: dict[str, Exposition],
) -> None:
    series: dict[str, dict[str, set[str]]] = {}
    for exposition in exposed.values():
        for name, values_by_label in exposition.samples.items():
            seen = series.setdefault(name, {})
            for label, values in values_by_label.items():
                seen.setdefault(label, set()).update(values)
    for promql in all_queries():
        for name, used in selected_series(promql).items():
            assert name in series, f"nothing exposes {name}: {promql}"
            assert used <= set(series[name]), f"{name} has no label {used}: {promql}"
        for name, label, value in equality_matchers(promql):
            assert value in series[name][label], f"{name} never has {label}={value!r}: {promql}"
