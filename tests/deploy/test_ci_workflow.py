"""The GitHub Actions workflow runs exactly .ci/run, beside the PostgreSQL the tests expect."""

from __future__ import annotations

from typing import Any

import jsonschema

from tests.deploy.support import ROOT, instructions, load_yaml, vendored_schema

WORKFLOW = load_yaml(ROOT / ".github" / "workflows" / "ci.yaml")
# PyYAML reads the bare key `on` as YAML 1.1's boolean true.
TRIGGERS = WORKFLOW.get("on", WORKFLOW.get(True))


def the_job() -> dict[str, Any]:
    (job,) = WORKFLOW["jobs"].values()
    assert isinstance(job, dict)
    return job


def test_matches_the_github_workflow_schema() -> None:
    document = {("on" if key is True else key): value for key, value in WORKFLOW.items()}
    jsonschema.validate(document, vendored_schema("github-workflows"))


def test_runs_on_pushes_to_main_and_pull_requests_with_read_only_token() -> None:
    assert TRIGGERS["push"]["branches"] == ["main"]
    assert "pull_request" in TRIGGERS
    assert WORKFLOW["permissions"] == {"contents": "read"}


def test_runs_ci_run_on_python_3_11() -> None:
    steps = the_job()["steps"]
    uses = [step["uses"].split("@")[0] for step in steps if "uses" in step]
    assert uses == ["actions/checkout", "actions/setup-python"]
    setup = next(step for step in steps if step.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["python-version"] == "3.11"
    assert steps[-1]["run"] == "bash .ci/run"


def test_postgresql_15_service_answers_where_the_tests_look() -> None:
    postgres = the_job()["services"]["postgres"]
    assert postgres["image"].startswith("postgres:15")
    assert postgres["ports"] == ["5432:5432"]
    assert postgres["env"] == {"POSTGRES_HOST_AUTH_METHOD": "trust"}, "user postgres, trust"
    assert "--health-cmd" in postgres["options"]


def test_time_limit_leaves_room_for_the_suite() -> None:
    assert 10 <= the_job()["timeout-minutes"] <= 30


def test_ci_and_the_image_use_the_same_uv() -> None:
    install = next(step["run"] for step in the_job()["steps"] if "uv==" in step.get("run", ""))
    ci_version = install.split("uv==", 1)[1].split()[0]
    uv_image = next(
        arguments.split()[0]
        for keyword, arguments in instructions()
        if keyword == "FROM" and "astral-sh/uv" in arguments
    )
    assert uv_image.rpartition(":")[2] == ci_version
