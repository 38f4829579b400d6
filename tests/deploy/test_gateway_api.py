"""overlays/gateway-api: ops/ behind a Gateway API gateway (Istio's, by default).

The Gateway API objects are checked against the Gateway API schemas of the npm package
@kubernetes-models/gateway-api (generated from the Gateway API CRDs; pinned in
tests/deploy/gateway_api/package-lock.json, installed by `.ci/run` with `npm ci`), and the
routes against the paths the app really serves.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import ROOT, load_yaml, load_yaml_documents, served_paths

OVERLAY = ROOT / "overlays" / "gateway-api"
SCHEMAS = Path(__file__).parent / "gateway_api"
NODE = shutil.which("node")
KUBECTL = shutil.which("kubectl")
GATEWAY_API = "gateway.networking.k8s.io/"
# Never published: scrapes, probes and readiness details stay inside the cluster.
INTERNAL_PATHS = ("/metrics", "/health/live", "/health/ready")


def kustomization_objects(directory: Path) -> list[dict[str, Any]]:
    """What a kustomization lists, read the way the other deploy tests read ops/ (no
    patches applied): its files' documents, and its directories' own resources."""
    objects: list[dict[str, Any]] = []
    for resource in load_yaml(directory / "kustomization.yaml")["resources"]:
        path = (directory / resource).resolve()
        if path.is_dir():
            objects += kustomization_objects(path)
        else:
            objects += load_yaml_documents(path)
    return objects


OBJECTS = kustomization_objects(OVERLAY)
ADDED = [o for o in OBJECTS if o["apiVersion"].startswith(GATEWAY_API)]


def the(kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in OBJECTS if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def validate(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each object's result from the Gateway API schemas: ``error`` is None when valid."""
    if NODE is None or not (SCHEMAS / "node_modules").is_dir():
        pytest.skip("the Gateway API schemas need node and `npm ci` in tests/deploy/gateway_api")
    checked = subprocess.run(
        [NODE, "validate.mjs"],
        cwd=SCHEMAS,
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    results: list[dict[str, Any]] = json.loads(checked.stdout)
    return results


def test_the_overlay_is_ops_plus_a_gateway_and_its_routes() -> None:
    base = kustomization_objects(ROOT / "ops")
    assert OBJECTS[: len(base)] == base
    assert sorted(f"{o['kind']}/{o['metadata']['name']}" for o in ADDED) == [
        "Gateway/notifier",
        "HTTPRoute/notifier-api",
        "HTTPRoute/notifier-https-redirect",
    ]
    assert all(o["apiVersion"] == "gateway.networking.k8s.io/v1" for o in ADDED)


def test_gateway_and_routes_match_the_gateway_api_schemas() -> None:
    results = validate(ADDED)

    assert [(r["kind"], r["name"]) for r in results] == [
        (o["kind"], o["metadata"]["name"]) for o in ADDED
    ]
    assert [r for r in results if r["error"]] == []


def test_the_schemas_refuse_a_broken_route() -> None:
    """The check above can fail: a route with a path match type that does not exist."""
    broken = copy.deepcopy(the("HTTPRoute", "notifier-api"))
    broken["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Glob"

    (result,) = validate([broken])

    assert result["error"]
    assert "path/type" in result["error"]


def routed(path: str) -> bool:
    """Whether the API route sends ``path`` to the API (Gateway API path matching)."""
    for rule in the("HTTPRoute", "notifier-api")["spec"]["rules"]:
        for match in rule["matches"]:
            value, kind = match["path"]["value"], match["path"]["type"]
            if kind == "Exact" and path == value:
                return True
            if kind == "PathPrefix" and (path == value or path.startswith(value.rstrip("/") + "/")):
                return True
    return False


def test_the_api_route_publishes_served_paths_and_keeps_internal_ones_inside() -> None:
    served = served_paths()
    for rule in the("HTTPRoute", "notifier-api")["spec"]["rules"]:
        for match in rule["matches"]:
            value = match["path"]["value"]
            assert any(routed(path) and path.startswith(value) for path in served), value
    assert routed("/api/v1/events")
    assert routed("/api/v1/notifications/{notification_id}")
    assert routed("/health"), "the seed clients' health check"
    assert routed("/schema")
    assert {"/metrics", "/health/live", "/health/ready"} <= served
    for path in INTERNAL_PATHS:
        assert not routed(path), f"{path} must stay inside the cluster"


def test_routes_reach_the_api_service_through_the_gateway_listeners() -> None:
    gateway = the("Gateway", "notifier")
    listeners = {listener["name"]: listener for listener in gateway["spec"]["listeners"]}
    service = the("Service", "notifier-api")
    ports = {port["port"] for port in service["spec"]["ports"]}
    https = listeners["https"]
    assert https["protocol"] == "HTTPS"
    assert https["tls"]["certificateRefs"]
    for route in (o for o in ADDED if o["kind"] == "HTTPRoute"):
        for parent in route["spec"]["parentRefs"]:
            assert parent["name"] == gateway["metadata"]["name"]
            listener = listeners[parent["sectionName"]]
            assert set(route["spec"]["hostnames"]) == {listener["hostname"]}
        for rule in route["spec"]["rules"]:
            for backend in rule.get("backendRefs", []):
                assert backend["name"] == service["metadata"]["name"]
                assert backend["port"] in ports
    redirect = the("HTTPRoute", "notifier-https-redirect")
    assert redirect["spec"]["parentRefs"] == [{"name": "notifier", "sectionName": "http"}]
    (rule,) = redirect["spec"]["rules"]
    assert "backendRefs" not in rule, "plain HTTP only redirects"
    assert rule["filters"][0]["requestRedirect"]["scheme"] == "https"


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_renders_the_overlay() -> None:
    assert KUBECTL is not None
    rendered = subprocess.run(
        [KUBECTL, "kustomize", str(OVERLAY)], capture_output=True, text=True, check=True
    ).stdout
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    base = subprocess.run(
        [KUBECTL, "kustomize", str(ROOT / "ops")], capture_output=True, text=True, check=True
    ).stdout
    base_objects = [doc for doc in yaml.safe_load_all(base) if doc]

    added = [o for o in objects if o not in base_objects]
    assert sorted(o["kind"] for o in added) == ["Gateway", "HTTPRoute", "HTTPRoute"]
    assert all(o in objects for o in base_objects), "the overlay changes nothing of ops/"
