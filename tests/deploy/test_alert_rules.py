"""Prometheus evaluates our rules and dashboard queries as we claim: promtool, for real.

The alerts ship as a PrometheusRule, which promtool cannot read: the test extracts its rule
groups into a plain rule file, as docs/operations.md tells operators without the Prometheus
Operator to do, then runs `promtool check rules` and `promtool test rules` on it
(tests/deploy/alert_rules_test.yaml). Debian's `prometheus` package ships promtool;
`.ci/run` installs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import OPS, load_yaml

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (.ci/run installs Debian's prometheus)"
)
HERE = Path(__file__).parent
UNIT_TESTS = HERE / "alert_rules_test.yaml"
RULES = load_yaml(OPS / "prometheus" / "alerts.yaml")
ALERTS = {rule["alert"] for group in RULES["spec"]["groups"] for rule in group["rules"]}
DASHBOARD: dict[str, Any] = json.loads((OPS / "grafana" / "notifier-dashboard.json").read_text())
# Grafana replaces these before Prometheus sees a panel's query.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def rule_file(tmp_path: Path) -> Path:
    """The PrometheusRule's groups as a plain Prometheus rule file."""
    path = tmp_path / "notifier-rules.yaml"
    path.write_text(yaml.safe_dump(RULES["spec"], sort_keys=False))
    return path


def test_promtool_checks_the_rules_extracted_from_the_prometheus_rule(rule_file: Path) -> None:
    checked = promtool("check", "rules", str(rule_file), cwd=rule_file.parent)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout


def test_promtool_cannot_read_the_prometheus_rule_itself() -> None:
    """Why the extraction: what operators without the Operator must do too."""
    checked = promtool("check", "rules", str(OPS / "prometheus" / "alerts.yaml"), cwd=OPS)

    assert checked.returncode != 0


def test_every_alert_behaves_as_its_unit_tests_say(rule_file: Path) -> None:
    shutil.copy(UNIT_TESTS, rule_file.parent / UNIT_TESTS.name)

    tested = promtool("test", "rules", UNIT_TESTS.name, cwd=rule_file.parent)

    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_unit_tests_see_every_alert_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(UNIT_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == ALERTS
    assert quiet == ALERTS


def panel(title: str) -> dict[str, Any]:
    (found,) = [p for p in DASHBOARD["panels"] if p["title"] == title]
    assert isinstance(found, dict)
    return found


def panel_query(target: dict[str, Any]) -> str:
    expr = str(target["expr"])
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def test_publish_batch_size_panel_shows_one_when_every_publish_carried_one_event(
    tmp_path: Path,
) -> None:
    """Quantiles interpolate inside a bucket: in the first one, (0, 1], p50 read 0.5."""
    ones = "0+10x30"  # ten single-event statements a minute, every one in bucket le="1"
    buckets = ["1", "2", "4", "8", "16", "32", "64", "100", "+Inf"]
    series = [
        {
            "series": f'notifier_publish_batch_size_bucket{{le="{le}", instance="api-1"}}',
            "values": ones,
        }
        for le in buckets
    ]
    series += [
        {"series": 'notifier_publish_batch_size_count{instance="api-1"}', "values": ones},
        {"series": 'notifier_publish_batch_size_sum{instance="api-1"}', "values": ones},
    ]
    targets = panel("Events per publish statement")["targets"]
    cases = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": panel_query(target),
                        "eval_time": "20m",
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    }
                    for target in targets
                ],
            }
        ],
    }
    (tmp_path / "panel_test.yaml").write_text(yaml.safe_dump(cases, sort_keys=False))

    tested = promtool("test", "rules", "panel_test.yaml", cwd=tmp_path)

    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert len(targets) == 2
