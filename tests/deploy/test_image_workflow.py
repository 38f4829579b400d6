"""The image workflow builds the Containerfile and pushes it, tagged by version and commit."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from typing import Any

import jsonschema
import pytest

from tests.deploy.support import CONTAINERFILE, ROOT, load_yaml, vendored_schema

WORKFLOW = load_yaml(ROOT / ".github" / "workflows" / "image.yaml")
# PyYAML reads the bare key `on` as YAML 1.1's boolean true.
TRIGGERS = WORKFLOW.get("on", WORKFLOW.get(True))
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def steps() -> list[dict[str, Any]]:
    (job,) = WORKFLOW["jobs"].values()
    found: list[dict[str, Any]] = job["steps"]
    return found


def the_step(action: str) -> dict[str, Any]:
    (step,) = [s for s in steps() if s.get("uses", "").split("@")[0] == action]
    return step


def test_matches_the_github_workflow_schema() -> None:
    document = {("on" if key is True else key): value for key, value in WORKFLOW.items()}
    jsonschema.validate(document, vendored_schema("github-workflows"))


def test_runs_on_version_tags_and_main_only_and_may_write_packages_only() -> None:
    assert TRIGGERS == {"push": {"branches": ["main"], "tags": ["v*"]}}
    assert WORKFLOW["permissions"] == {"contents": "read", "packages": "write"}


def test_actions_are_pinned_to_a_major_version() -> None:
    for step in steps():
        if "uses" in step:
            assert re.fullmatch(r"[\w-]+/[\w-]+@v\d+", step["uses"]), step["uses"]


def test_builds_the_containerfile_and_pushes_it_to_ghcr_under_the_computed_tags() -> None:
    build = the_step("docker/build-push-action")["with"]
    assert (ROOT / build["file"]) == CONTAINERFILE
    assert build["context"] == "."
    assert build["push"] is True
    assert build["tags"] == "${{ steps.meta.outputs.tags }}"
    login = the_step("docker/login-action")["with"]
    assert login["registry"] == "ghcr.io"
    assert login["password"] == "${{ secrets.GITHUB_TOKEN }}"
    meta = the_step("docker/metadata-action")
    assert meta["id"] == "meta"
    assert meta["with"]["images"] == "ghcr.io/${{ github.repository }}"
    tags = meta["with"]["tags"].split()
    assert "type=semver,pattern={{version}}" in tags, "v0.1.0 is pushed as 0.1.0"
    assert "type=sha,format=long" in tags, "every image also under its commit"
    assert "type=ref,event=branch" in tags, "main is pushed as main"


def version_check() -> str:
    (step,) = [s for s in steps() if s.get("name", "").startswith("A version tag")]
    assert step["if"] == "startsWith(github.ref, 'refs/tags/v')"
    script: str = step["run"]
    return script


@pytest.mark.parametrize(("tag", "passes"), [(f"v{VERSION}", True), ("v99.0.0", False)])
def test_a_version_tag_must_name_the_package_version(tag: str, passes: bool) -> None:
    result = subprocess.run(
        ["bash", "-e", "-c", version_check()],
        cwd=ROOT,
        env={**os.environ, "GITHUB_REF_NAME": tag},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert (result.returncode == 0) is passes, result.stderr
