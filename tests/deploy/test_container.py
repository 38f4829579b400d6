"""The Containerfile: hadolint-clean, small, non-root, and in step with the CLI and settings."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.deploy.support import (
    CONTAINERFILE,
    ROOT,
    assert_known_settings,
    assert_served,
    env_of,
    exec_form,
    final_stage,
    instructions,
    parse_notifier_args,
)
from tests.support import free_port


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sysconfig.get_path("scripts")) / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_from_pinned_images() -> None:
    images = [arguments.split()[0] for keyword, arguments in instructions() if keyword == "FROM"]
    assert len(images) >= 2, "build tools must stay out of the runtime image"
    for image in images:
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name, f"{image} has no tag"
        assert re.fullmatch(r"\d+\.\d+\.\d+.*", tag), f"{image}: pin a full version tag"


def test_dependencies_come_from_the_lock_file_without_dev_tools() -> None:
    runs = [arguments for keyword, arguments in instructions() if keyword == "RUN"]
    syncs = [run for run in runs if "uv sync" in run]
    assert syncs, "the image is built with uv"
    for sync in syncs:
        assert "--frozen" in sync, sync
        assert "--no-dev" in sync, sync
    assert not any(keyword == "ADD" for keyword, _ in instructions()), "COPY, never ADD"


def test_runtime_runs_as_a_numeric_non_root_user() -> None:
    users = [arguments for keyword, arguments in final_stage() if keyword == "USER"]
    assert users, "the runtime stage must drop root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric uid lets Kubernetes verify runAsNonRoot"
    assert int(uid) != 0


def test_entrypoint_and_default_command_are_a_notifier_command() -> None:
    stage = final_stage()
    entrypoint = exec_form(next(a for k, a in stage if k == "ENTRYPOINT"))
    command = exec_form(next(a for k, a in stage if k == "CMD"))

    assert entrypoint == ["notifier"]
    assert parse_notifier_args(command).command == "api"


def test_settings_and_exposed_port_agree() -> None:
    stage = final_stage()
    env = env_of(stage)
    assert_known_settings(env, "the Containerfile")
    exposed = [arguments for keyword, arguments in stage if keyword == "EXPOSE"]
    assert exposed == [env["NOTIFIER_API_PORT"]]
    assert env["NOTIFIER_API_HOST"] == "0.0.0.0", "a container must listen beyond loopback"


def healthcheck_command() -> list[str]:
    arguments = next(a for k, a in final_stage() if k == "HEALTHCHECK")
    return exec_form(arguments.split(" CMD ", 1)[1])[1:]  # without the leading "python"


def test_healthcheck_probes_liveness_so_a_database_outage_restarts_nothing() -> None:
    # The URL is http://127.0.0.1:{port}PATH, the port read from the environment.
    (path,) = re.findall(r'\}(/[\w/]*)"', healthcheck_command()[1])
    assert path == "/health/live"
    assert_served(path)


def test_healthcheck_passes_against_a_live_api(live_api: str) -> None:
    port = live_api.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, *healthcheck_command()],
        env={"NOTIFIER_API_PORT": port},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_healthcheck_fails_when_nothing_answers() -> None:
    result = subprocess.run(
        [sys.executable, *healthcheck_command()],
        env={"NOTIFIER_API_PORT": str(free_port())},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0


@pytest.mark.parametrize("ignore_file", [".dockerignore", ".containerignore"])
def test_build_context_holds_what_the_build_copies_and_nothing_else(ignore_file: str) -> None:
    lines = [
        line.strip()
        for line in (ROOT / ignore_file).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "ignore everything by default: no .env, .git or .venv in the image"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {
        source.rstrip("/")
        for keyword, arguments in instructions()
        if keyword == "COPY" and not arguments.startswith("--from")
        for source in arguments.split()[:-1]
    }
    assert copied == admitted
