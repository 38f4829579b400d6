"""compose.yaml: valid Compose, started in the right order, scalable, and in step with the code."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest

from notifier.settings import Settings
from tests.deploy.support import (
    ROOT,
    assert_known_settings,
    duration_seconds,
    env_of,
    final_stage,
    load_yaml,
    parse_notifier_args,
    vendored_schema,
)

COMPOSE = load_yaml(ROOT / "compose.yaml")
SERVICES: dict[str, Any] = COMPOSE["services"]
NOTIFIER_SERVICES = [name for name, spec in SERVICES.items() if "build" in spec]


def test_matches_the_compose_specification() -> None:
    jsonschema.validate(COMPOSE, vendored_schema("compose-spec"))


def test_notifier_services_are_the_three_roles_of_one_image() -> None:
    assert sorted(NOTIFIER_SERVICES) == ["api", "migrate", "worker"]
    assert {SERVICES[name]["build"]["dockerfile"] for name in NOTIFIER_SERVICES} == {
        "Containerfile"
    }
    for name in NOTIFIER_SERVICES:
        assert parse_notifier_args(SERVICES[name]["command"]).command == name


@pytest.mark.parametrize("name", ["api", "migrate", "worker"])
def test_every_notifier_variable_is_a_setting(name: str) -> None:
    assert_known_settings(SERVICES[name]["environment"], f"compose service {name}")


def test_start_order_postgres_then_migrate_then_api_and_workers() -> None:
    assert "healthcheck" in SERVICES["postgres"]
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["restart"] == "no"
    for name in ("api", "worker"):
        migrate = SERVICES[name]["depends_on"]["migrate"]
        assert migrate["condition"] == "service_completed_successfully", name


def test_workers_scale_with_the_scale_flag() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker, "`--scale worker=N` needs generated names"
    assert "ports" not in worker, "N workers cannot publish one host port"


def test_workers_serve_their_counters_on_the_compose_network() -> None:
    worker = SERVICES["worker"]
    settings = Settings.from_env(worker["environment"])
    assert settings.worker_metrics_host == "0.0.0.0"
    assert settings.worker_metrics_port > 0
    assert worker["expose"] == [str(settings.worker_metrics_port)]


def test_workers_get_longer_than_their_shutdown_timeout_to_stop() -> None:
    grace = duration_seconds(SERVICES["worker"]["stop_grace_period"])
    assert grace > Settings().worker_shutdown_timeout_seconds


def test_only_the_api_runs_the_image_healthcheck() -> None:
    assert "healthcheck" not in SERVICES["api"], "the image's own check applies"
    for name in ("migrate", "worker"):
        assert SERVICES[name]["healthcheck"] == {"disable": True}, name


def test_api_publishes_the_port_the_image_listens_on() -> None:
    port = env_of(final_stage())["NOTIFIER_API_PORT"]
    assert f"{port}:{port}" in SERVICES["api"]["ports"]


def test_traces_go_to_jaeger_over_otlp() -> None:
    jaeger = SERVICES["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert "16686:16686" in jaeger["ports"], "the UI"
    for name in ("api", "worker"):
        environment = SERVICES[name]["environment"]
        assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318", name
        assert environment["OTEL_SERVICE_NAME"] == f"notifier-{name}"


def test_secrets_come_from_an_uncommitted_env_file() -> None:
    text = (ROOT / "compose.yaml").read_text()
    interpolated = set(re.findall(r"\$\{(\w+)", text))
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^(\w+)=", example, flags=re.MULTILINE))

    assert interpolated <= documented, "document every variable compose reads in .env.example"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    for name in NOTIFIER_SERVICES:
        assert {"path": ".env", "required": False} in SERVICES[name]["env_file"]


def test_third_party_images_are_pinned_to_a_version() -> None:
    for name, spec in SERVICES.items():
        if "build" in spec:
            continue
        tag = spec["image"].rpartition(":")[2]
        assert re.match(r"\d+\.\d+", tag), f"{name}: pin {spec['image']} to a version"
