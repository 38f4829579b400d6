"""What the deployment files are checked against: the CLI, the settings, the app's routes.

The files in Containerfile, compose.yaml and ops/ name commands, settings, paths and metrics
of the code; these helpers read them from the code itself, so the files cannot drift from it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from litestar.routes import HTTPRoute

from notifier.app import create_app
from notifier.cli import build_parser
from notifier.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
CONTAINERFILE = ROOT / "Containerfile"

# Where a family comes from, which decides how a query may aggregate it across pods.
DATABASE = "database"  # a gauge the API reads from PostgreSQL: every API pod reports the same
PROCESS = "process"  # counted by the process that did the work: each pod its own, summed
API = "api"  # counted by each API process only (its requests): summed over API pods


@dataclass(frozen=True)
class MetricFamily:
    """A metric family as ``prometheus_client.parser`` names it, with its type and labels."""

    kind: str
    labels: frozenset[str]
    source: str


# The families the dashboard and the alerts may use. Not a promise made by hand:
# test_observability scrapes the real API and a real worker and checks this against them.
METRIC_FAMILIES: dict[str, MetricFamily] = {
    "notifier_events_received": MetricFamily("counter", frozenset({"type", "producer"}), PROCESS),
    "notifier_deliveries": MetricFamily("counter", frozenset({"channel", "outcome"}), PROCESS),
    "notifier_host_slot_waits": MetricFamily("counter", frozenset({"channel"}), PROCESS),
    "notifier_endpoints_disabled": MetricFamily("counter", frozenset(), PROCESS),
    "notifier_notifications_expired": MetricFamily("counter", frozenset({"reason"}), PROCESS),
    "notifier_delivery_lag_seconds": MetricFamily("histogram", frozenset(), PROCESS),
    "notifier_publish_batch_size": MetricFamily("histogram", frozenset(), PROCESS),
    "notifier_notifications": MetricFamily("gauge", frozenset({"status"}), DATABASE),
    "notifier_queue_depth": MetricFamily("gauge", frozenset({"queue"}), DATABASE),
    "notifier_queue_oldest_due_job_age_seconds": MetricFamily(
        "gauge", frozenset({"queue"}), DATABASE
    ),
    "notifier_workers_alive": MetricFamily("gauge", frozenset(), DATABASE),
    "notifier_metrics_database_up": MetricFamily("gauge", frozenset(), DATABASE),
    "notifier_http_requests": MetricFamily(
        "counter", frozenset({"method", "route", "status"}), API
    ),
    "notifier_http_request_duration_seconds": MetricFamily(
        "histogram", frozenset({"method", "route", "status"}), API
    ),
    # prometheus_client's process collector, in every process's registry.
    "process_resident_memory_bytes": MetricFamily("gauge", frozenset(), PROCESS),
    "process_cpu_seconds": MetricFamily("counter", frozenset(), PROCESS),
}
# The samples each kind of family writes, by suffix, and the labels they add.
SAMPLE_SUFFIXES: dict[str, dict[str, frozenset[str]]] = {
    "counter": {"_total": frozenset()},
    "histogram": {"_bucket": frozenset({"le"}), "_sum": frozenset(), "_count": frozenset()},
    "gauge": {"": frozenset()},
}


def metric_series() -> dict[str, frozenset[str]]:
    """Every series name a query may select, with its labels (histograms: _bucket and more)."""
    return {
        name + suffix: family.labels | extra
        for name, family in METRIC_FAMILIES.items()
        for suffix, extra in SAMPLE_SUFFIXES[family.kind].items()
    }


def family_of(series: str) -> str:
    """The family a series belongs to."""
    return next(
        name
        for name, family in METRIC_FAMILIES.items()
        if any(series == name + suffix for suffix in SAMPLE_SUFFIXES[family.kind])
    )


def load_yaml(path: Path) -> Any:
    """One YAML document."""
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty document of a multi-document YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def vendored_schema(name: str) -> Any:
    """A public JSON schema as shipped (with its licence) by the check-jsonschema package."""
    schemas = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((schemas / f"{name}.json").read_text())


def setting_names() -> set[str]:
    """``NOTIFIER_*`` variables the Settings object reads."""
    return {ENV_PREFIX + field.name.upper() for field in fields(Settings)}


def assert_known_settings(names: Iterable[str], where: str) -> None:
    """Every ``NOTIFIER_*`` name is a setting."""
    unknown = {n for n in names if n.startswith(ENV_PREFIX)} - setting_names()
    assert not unknown, f"{where} sets variables that no setting reads: {sorted(unknown)}"


def served_paths() -> set[str]:
    """The GET paths the API serves."""
    app = create_app(Settings())
    return {
        route.path
        for route in app.routes
        if isinstance(route, HTTPRoute) and "GET" in route.methods
    }


def assert_served(path: str) -> None:
    """The API answers GET ``path``."""
    assert path in served_paths(), f"the API does not serve GET {path}"


def parse_notifier_args(args: list[str]) -> argparse.Namespace:
    """Parse ``notifier ARGS`` with the real parser; fail the test on anything it rejects."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"`notifier {' '.join(args)}` is not a valid command: {stderr.getvalue()}")


def env_names(container: dict[str, Any]) -> Iterator[str]:
    """Names of the variables a Kubernetes container spec sets one by one."""
    for entry in container.get("env", []):
        yield entry["name"]


def duration_seconds(text: str) -> float:
    """A Compose/Go duration such as ``40s`` or ``1m30s`` in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts, f"not a duration: {text!r}"
    assert "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def instructions() -> list[tuple[str, str]]:
    """The Containerfile's (INSTRUCTION, arguments) pairs, continuations joined, no comments."""
    logical: list[str] = []
    pending = ""
    for line in CONTAINERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the runtime stage (from its FROM on)."""
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def exec_form(arguments: str) -> list[str]:
    """An instruction's JSON (exec) form; the shell form is not allowed for commands."""
    parsed = json.loads(arguments)
    assert isinstance(parsed, list), arguments
    return [str(item) for item in parsed]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    """The variables a stage sets with ENV."""
    values: dict[str, str] = {}
    for keyword, arguments in stage:
        if keyword == "ENV":
            values.update(re.findall(r"(\w+)=(\S+)", arguments))
    return values
