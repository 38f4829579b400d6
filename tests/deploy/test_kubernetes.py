"""ops/: valid Kubernetes objects that run the right commands, probe served paths, and scale."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import psycopg
import pytest
import yaml
from litestar.testing import AsyncTestClient

from notifier.queue import ALL_QUEUES, MAINTENANCE_QUEUE
from notifier.services import Services
from notifier.settings import Settings
from tests.deploy.support import (
    OPS,
    ROOT,
    assert_known_settings,
    assert_served,
    env_names,
    final_stage,
    load_yaml,
    load_yaml_documents,
    parse_notifier_args,
)

# A Kubernetes version kubernetes-validate ships schemas for, and that clusters still run.
KUBERNETES_VERSION = "1.33.0"
KUSTOMIZATION = load_yaml(OPS / "kustomization.yaml")
OBJECTS = [doc for path in KUSTOMIZATION["resources"] for doc in load_yaml_documents(OPS / path)]
BUILT_IN_GROUPS = ("v1", "apps/", "batch/", "autoscaling/", "policy/")
CUSTOM = [o for o in OBJECTS if not o["apiVersion"].startswith(BUILT_IN_GROUPS)]


def the(kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in OBJECTS if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}"
    return matches[0]


def pod_spec(kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = the(kind, name)["spec"]["template"]["spec"]
    return spec


def workloads() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{o['kind']} {o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in OBJECTS
        if o["kind"] in {"Deployment", "Job"}
    ]


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_kustomization_lists_every_manifest() -> None:
    listed = {OPS / path for path in KUSTOMIZATION["resources"]}
    on_disk = {*OPS.glob("k8s/*.yaml"), *OPS.glob("prometheus/*.yaml")}
    assert listed == on_disk
    for generator in KUSTOMIZATION["configMapGenerator"]:
        for file in generator["files"]:
            assert (OPS / file).is_file(), file


@pytest.mark.parametrize(
    "obj",
    [o for o in OBJECTS if o not in CUSTOM],
    ids=lambda o: f"{o['kind']}/{o['metadata']['name']}",
)
def test_built_in_objects_match_the_kubernetes_schemas_strictly(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_no_secret_is_committed() -> None:
    assert not [o for o in OBJECTS if o["kind"] == "Secret"]
    for where, spec in workloads():
        for container in all_containers(spec):
            for entry in container.get("env", []):
                secret = entry.get("valueFrom", {}).get("secretKeyRef")
                if secret:
                    assert secret["name"] == "notifier-secrets", where
                else:
                    assert not entry["name"].endswith(("_URL", "_SECRET")), (where, entry)


@pytest.mark.parametrize(
    ("kind", "name", "command"),
    [
        ("Deployment", "notifier-api", "api"),
        ("Deployment", "notifier-worker", "worker"),
        ("Job", "notifier-migrate", "migrate"),
    ],
)
def test_each_workload_runs_its_notifier_command(kind: str, name: str, command: str) -> None:
    (container,) = pod_spec(kind, name)["containers"]
    assert parse_notifier_args(container["args"]).command == command


def test_api_and_workers_wait_until_the_schema_is_at_head() -> None:
    for name in ("notifier-api", "notifier-worker"):
        (init,) = pod_spec("Deployment", name)["initContainers"]
        args = parse_notifier_args(init["args"])
        assert (args.command, args.check) == ("migrate", True), name


def test_every_notifier_variable_is_a_setting() -> None:
    config = the("ConfigMap", "notifier-config")
    assert_known_settings(config["data"], "the ConfigMap")
    for where, spec in workloads():
        for container in all_containers(spec):
            assert_known_settings(env_names(container), where)
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] == "notifier-config", where


def test_pods_run_as_non_root_on_a_read_only_filesystem_with_limits() -> None:
    image_user = next(a for k, a in final_stage() if k == "USER").split(":")[0]
    for where, spec in workloads():
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert str(spec["securityContext"]["runAsUser"]) == image_user, where
        assert spec["automountServiceAccountToken"] is False, where
        for container in all_containers(spec):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, (where, container["name"])
            assert security["allowPrivilegeEscalation"] is False, (where, container["name"])
            assert container["resources"]["limits"]["memory"], (where, container["name"])
        scratch = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/tmp") in scratch, f"{where}: a writable /tmp"


def test_api_probes_paths_the_api_serves_on_its_port() -> None:
    (api,) = pod_spec("Deployment", "notifier-api")["containers"]
    ports = {port["name"]: port["containerPort"] for port in api["ports"]}
    env = {entry["name"]: entry.get("value") for entry in api["env"]}
    assert ports == {"http": int(env["NOTIFIER_API_PORT"])}
    # A database outage takes API pods out of the Service but must not restart them all.
    assert api["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert api["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert api["livenessProbe"]["httpGet"]["path"] == "/health/live"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["port"] in ports, probe
        assert_served(api[probe]["httpGet"]["path"])


def test_api_service_hpa_and_budget_select_the_api_pods() -> None:
    deployment = the("Deployment", "notifier-api")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    service = the("Service", "notifier-api")
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert the("PodDisruptionBudget", "notifier-api")["spec"]["selector"]["matchLabels"] == labels
    hpa = the("HorizontalPodAutoscaler", "notifier-api")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "notifier-api",
    }
    assert hpa["minReplicas"] >= 2, "the budget keeps one up during node drains"
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"


def test_workers_get_longer_than_their_shutdown_timeout_to_stop() -> None:
    spec = pod_spec("Deployment", "notifier-worker")
    timeout = float(
        the("ConfigMap", "notifier-config")["data"]["NOTIFIER_WORKER_SHUTDOWN_TIMEOUT_SECONDS"]
    )
    assert spec["terminationGracePeriodSeconds"] > timeout
    (worker,) = spec["containers"]
    # Its metrics server answers from a thread of its own even when the worker is stuck.
    assert "livenessProbe" not in worker, "the metrics port is no liveness signal"


def test_worker_budget_selects_the_worker_pods() -> None:
    labels = the("Deployment", "notifier-worker")["spec"]["template"]["metadata"]["labels"]
    budget = the("PodDisruptionBudget", "notifier-worker")["spec"]
    assert budget["selector"]["matchLabels"] == labels
    assert budget["maxUnavailable"] == 1


def test_keda_scales_the_worker_deployment_on_due_jobs() -> None:
    scaled = the("ScaledObject", "notifier-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"name": "notifier-worker"}
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "postgresql"
    metadata = trigger["metadata"]
    assert set(metadata) == {
        "connectionFromEnv",
        "targetQueryValue",
        "activationTargetQueryValue",
        "query",
    }
    (worker,) = pod_spec("Deployment", "notifier-worker")["containers"]
    assert metadata["connectionFromEnv"] in set(env_names(worker))
    assert float(metadata["targetQueryValue"]) > 0
    assert "replicas" not in the("Deployment", "notifier-worker")["spec"]


async def test_keda_query_counts_due_jobs_of_the_worked_queues(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], services: Services
) -> None:
    query = the("ScaledObject", "notifier-worker")["spec"]["triggers"][0]["metadata"]["query"]
    now = datetime.datetime.now(datetime.UTC)

    async def scaler_value() -> int:
        row = await (await db.execute(query)).fetchone()
        assert row is not None
        return int(next(iter(row.values())))

    assert await scaler_value() == 0
    # Due now: one event to process.
    published = await client.post("/api/v1/events/", json={"type": "user.signup", "payload": {}})
    assert published.status_code == 201
    # Not due for weeks: a reminder seven days before a date 30 days out.
    scheduled = await client.post(
        "/api/v1/notifications/",
        json={
            "notification_type": "contract.renewal",
            "entity_id": "contract-17",
            "target_date": (now + datetime.timedelta(days=30)).isoformat(),
            "lead_time_days": 7,
            "email": "ada@example.com",
        },
    )
    assert scheduled.status_code == 201, scheduled.text
    # Housekeeping is not backlog: it runs on the workers that are always there.
    await services.queue.configure_task(
        "notifier.maintenance", queue=MAINTENANCE_QUEUE
    ).defer_async(timestamp=0)

    assert await scaler_value() == 1

    await db.execute("UPDATE procrastinate_jobs SET status = 'doing' WHERE queue_name = 'events'")
    assert await scaler_value() == 0, "running jobs already have a worker"
    await db.execute(
        "UPDATE procrastinate_jobs SET scheduled_at = now() - interval '1 minute'"
        " WHERE queue_name = 'deliveries'"
    )
    assert await scaler_value() == 1, "a scheduled job counts once it is due"


def test_keda_query_names_the_queues_that_exist() -> None:
    query = the("ScaledObject", "notifier-worker")["spec"]["triggers"][0]["metadata"]["query"]
    for queue in ALL_QUEUES:
        assert (f"'{queue}'" in query) == (queue != MAINTENANCE_QUEUE), queue


def test_service_monitor_scrapes_the_api_service_metrics_port() -> None:
    monitor = the("ServiceMonitor", "notifier-api")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = the("Service", "notifier-api")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert_served(endpoint["path"])
    assert endpoint["path"] == "/metrics"


def test_workers_serve_their_counters_on_the_declared_port() -> None:
    (worker,) = pod_spec("Deployment", "notifier-worker")["containers"]
    env = {entry["name"]: entry.get("value") for entry in worker["env"]}
    settings = Settings.from_env(env)
    assert settings.worker_metrics_host == "0.0.0.0", "reachable from outside the pod"
    assert settings.worker_metrics_port > 0
    assert worker["ports"] == [{"name": "metrics", "containerPort": settings.worker_metrics_port}]


def test_pod_monitor_scrapes_every_worker_pod_metrics_port() -> None:
    monitor = the("PodMonitor", "notifier-worker")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    template = the("Deployment", "notifier-worker")["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (worker,) = template["spec"]["containers"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {port["name"] for port in worker["ports"]}
    assert endpoint["path"] == "/metrics"  # where prometheus_client's server answers


def test_custom_resources_are_the_ones_documented() -> None:
    assert sorted(f"{o['apiVersion']} {o['kind']}" for o in CUSTOM) == [
        "keda.sh/v1alpha1 ScaledObject",
        "monitoring.coreos.com/v1 PodMonitor",
        "monitoring.coreos.com/v1 PrometheusRule",
        "monitoring.coreos.com/v1 ServiceMonitor",
    ]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_every_object_with_the_release_image() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(OPS)], capture_output=True, text=True, check=True
    ).stdout
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]

    names = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
    expected = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in OBJECTS)
    assert names == sorted([*expected, "ConfigMap/notifier-grafana-dashboard"])
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "notifier"
        if obj["kind"] in {"Deployment", "Job"}:
            for container in all_containers(obj["spec"]["template"]["spec"]):
                assert container["image"] == "registry.example.com/notifier:0.1.0"


KUBECTL = shutil.which("kubectl")
RELEASE_OVERLAY_MARKER = "<!-- release-overlay: tests/deploy/test_kubernetes.py renders this -->"
MONITORING_GROUP = "monitoring.coreos.com/"


def kustomize(path: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    rendered = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def documented_yaml(marker: str) -> str:
    """The YAML block right after ``marker`` in docs/operations.md."""
    text = (ROOT / "docs" / "operations.md").read_text()
    after = text.split(marker, 1)[1]
    return after.split("```yaml\n", 1)[1].split("```", 1)[0]


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_monitors_and_rules_carry_the_release_label_kube_prometheus_stack_selects_on() -> None:
    objects = kustomize(OPS)
    monitoring = [o for o in objects if o["apiVersion"].startswith(MONITORING_GROUP)]
    assert sorted(o["kind"] for o in monitoring) == [
        "PodMonitor",
        "PrometheusRule",
        "ServiceMonitor",
    ]
    for obj in objects:
        labels = obj["metadata"]["labels"]
        if obj in monitoring:
            assert labels["release"] == "kube-prometheus-stack", obj["kind"]
        else:
            assert "release" not in labels, f"{obj['kind']} needs no release label"


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_the_documented_overlay_names_another_release(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    text = documented_yaml(RELEASE_OVERLAY_MARKER)
    assert "- ../ops" in text
    relative = os.path.relpath(OPS, overlay)
    (overlay / "kustomization.yaml").write_text(text.replace("- ../ops", f"- {relative}"))

    objects = kustomize(overlay)

    monitoring = [o for o in objects if o["apiVersion"].startswith(MONITORING_GROUP)]
    assert len(monitoring) == 3
    assert {o["metadata"]["labels"]["release"] for o in monitoring} == {"prometheus"}
    assert len(objects) == len(kustomize(OPS))
