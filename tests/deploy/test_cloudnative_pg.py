"""ops/cloudnative-pg: a CloudNativePG ``Cluster`` for notifier with synchronous replication.

Checked against the operator's own schema for the Cluster resource (the CRD's
openAPIV3Schema of CloudNativePG v1.30.0, its descriptions removed, in
tests/deploy/cloudnative_pg/), strictly: a field the schema does not know is an error, as
``kubectl apply --validate=strict`` would make it. The CRD's CEL rules
(x-kubernetes-validations) are not evaluated here; the test states the ones that matter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema

from tests.deploy.support import OPS, ROOT, load_yaml

CLUSTER = load_yaml(OPS / "cloudnative-pg" / "cluster.yaml")
SCHEMA_FILE = Path(__file__).parent / "cloudnative_pg" / "cluster-v1.30.0.schema.json"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())["schema"]
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Paths of fields the schema does not declare (Kubernetes would prune them silently)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                yield from unknown_fields(item, properties[key], f"{path}.{key}")
            elif isinstance(additional, dict):
                yield from unknown_fields(item, additional, f"{path}.{key}")
            elif properties is not None or additional is False:
                yield f"{path}.{key}"
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], f"{path}[{index}]")


def test_the_cluster_matches_the_operator_schema() -> None:
    jsonschema.Draft7Validator(SCHEMA).validate(CLUSTER)
    assert list(unknown_fields(CLUSTER, SCHEMA)) == []


def test_the_strict_check_finds_a_misspelt_field() -> None:
    misspelt = json.loads(json.dumps(CLUSTER))
    misspelt["spec"]["postgresql"]["synchronous"]["numbr"] = 1
    assert list(unknown_fields(misspelt, SCHEMA)) == [".spec.postgresql.synchronous.numbr"]


def test_replication_is_synchronous_and_survives_one_lost_instance() -> None:
    spec = CLUSTER["spec"]
    synchronous = spec["postgresql"]["synchronous"]
    # The CRD's CEL rule: number > 0; and fewer than the standbys, or a lost one stops writes.
    assert 0 < synchronous["number"] < spec["instances"] - 1
    assert synchronous["dataDurability"] == "required"  # never falls back to asynchronous
    assert spec["affinity"]["podAntiAffinityType"] == "required"  # one instance per node


def test_the_operations_guide_connects_through_the_read_write_service() -> None:
    name = CLUSTER["metadata"]["name"]
    assert f"{name}-rw" in OPERATIONS
    assert "ops/cloudnative-pg/cluster.yaml" in OPERATIONS
    assert "connect_timeout" in OPERATIONS
