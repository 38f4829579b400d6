"""The README's promises stay in step with the code."""

from __future__ import annotations

import datetime
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from notifier.cli import build_parser
from notifier.settings import ENV_PREFIX, Settings
from tests.support import SmtpServer, eventually

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_configuration_table_lists_exactly_the_settings() -> None:
    documented = set(re.findall(r"^\| `(NOTIFIER_[A-Z_]+)` \|", README, flags=re.MULTILINE))

    assert documented == {ENV_PREFIX + field.name.upper() for field in fields(Settings)}


def test_readme_test_command_is_what_ci_runs() -> None:
    ci_commands = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip().startswith("uv run")
    ]

    assert ci_commands == ["uv run nox"]
    assert "```sh\nuv run nox\n```" in README


def test_linked_documents_exist() -> None:
    for link in re.findall(r"\]\(((?:docs/)[^)#]+)\)", README):
        assert (ROOT / link).is_file(), link


def test_every_documented_notifier_command_parses() -> None:
    documents = [README, (ROOT / "docs" / "operations.md").read_text()]
    commands = [
        line.removeprefix("uv run ").split("#", 1)[0].split()[1:]
        for text in documents
        for line in text.splitlines()
        if line.startswith(("notifier ", "uv run notifier "))
    ]
    assert len(commands) >= 10
    for args in commands:
        try:
            build_parser().parse_args(args)
        except SystemExit:
            raise AssertionError(f"documented but rejected: notifier {' '.join(args)}") from None


def readme_section(title: str) -> str:
    """The README's ``## title`` section."""
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def shell_commands(text: str) -> list[str]:
    """The commands of every ```sh block: continued and quoted lines joined, no comments."""
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            pending = f"{pending}\n{line}" if pending else line.strip()
            try:
                shlex.split(pending)
            except ValueError:  # a quote still open: the command goes on
                continue
            commands.append(pending)
            pending = ""
        assert not pending, f"unclosed quote in {pending}"
    return commands


def test_the_dev_command_installs_the_embedded_database_and_no_dev_tools() -> None:
    (command,) = [c for c in shell_commands(readme_section("Quick start")) if "notifier dev" in c]
    words = command.split()
    assert words[:2] == ["uv", "run"], command
    flags = words[2 : words.index("notifier")]
    uv = shutil.which("uv")
    assert uv is not None, "uv runs the README's commands"

    exported = subprocess.run(
        [uv, "export", "--frozen", "--no-hashes", "--no-emit-project", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    packages = {line.split("==")[0] for line in exported.splitlines() if "==" in line}

    assert "pgserver" in packages
    assert not packages & {"pytest", "mypy", "ruff", "nox", "hypothesis", "schemathesis"}


@pytest.fixture
def settings(settings: Settings, smtp_server: SmtpServer) -> Settings:
    """The service as the README's email example restarts it: with the local SMTP server."""
    return settings.replace(smtp_host=smtp_server.host, smtp_port=smtp_server.port, smtp_tls="none")


class Curl:
    """One of the README's curl commands, as the request it sends."""

    def __init__(self, command: str, variables: dict[str, str]) -> None:
        words = shlex.split(command)
        assert words[0] == "curl", command
        self.method = "GET"
        self.headers: dict[str, str] = {}
        self.body: str | None = None
        self.url = ""
        options = iter(words[1:])
        for word in options:
            if word == "-s":
                continue
            if word == "-X":
                self.method = next(options)
            elif word == "-H":
                name, _, value = next(options).partition(": ")
                self.headers[name] = value
            elif word == "-d":
                self.body = next(options)
                self.method = "POST" if self.method == "GET" else self.method
            else:
                assert not word.startswith("-"), f"unexpected option {word} in {command}"
                self.url = word
        for name, value in variables.items():
            self.headers = {k: v.replace(f"${name}", value) for k, v in self.headers.items()}
            if self.body is not None:
                self.body = self.body.replace(f"${name}", value)
        assert self.url.startswith("localhost:8000/"), command
        self.path = self.url.removeprefix("localhost:8000")


def evaluate(python: str) -> str:
    """What a README's ``$(python3 -c '...')`` prints."""
    return subprocess.run(
        [sys.executable, "-c", python], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


async def superseded_by(client: AsyncTestClient[Any], curl: Curl, event_id: str) -> Any:
    """The answer of ``curl`` (a list of notifications) once it is two superseded by
    ``event_id``; asked again until then."""
    answer: Any = None

    async def two_superseded() -> bool:
        nonlocal answer
        answer = await client.request(curl.method, curl.path, headers=curl.headers)
        return sorted(n["cancelled_by_event_id"] for n in answer.json()) == [event_id] * 2

    await eventually(two_superseded)
    return answer


async def test_try_it_works_as_written_and_delivers(
    client: AsyncTestClient[Any],
    worker: None,
    api_key: str,
    smtp_server: SmtpServer,
    db: psycopg.AsyncConnection[Any],
) -> None:
    variables = {"NOTIFIER_KEY": api_key}
    last: dict[str, str] = {}
    answers: list[tuple[str, int]] = []
    superseded_seen = False
    for command in shell_commands(readme_section("Try it")):
        if assignment := re.fullmatch(r"(\w+)=\$\((.*)\)", command):
            program = shlex.split(assignment[2])
            assert program[:2] == ["python3", "-c"], command
            variables[assignment[1]] = evaluate(program[2])
            continue
        filled = command.replace("<event id>", last.get("event", "?"))
        filled = filled.replace("<id>", last.get("pending", "?"))
        curl = Curl(filled, variables)
        response = await client.request(
            curl.method, curl.path, headers=curl.headers, content=curl.body
        )
        if "status=superseded" in curl.path:
            # What the README promises there: the old date's two reminders, superseded by
            # the event that moved the date (the worker processes both events meanwhile).
            response = await superseded_by(client, curl, last["event"])
            superseded_seen = True
        answers.append((command, response.status_code))
        assert 200 <= response.status_code < 300, (command, response.text)
        body = response.json()
        if curl.method == "POST" and curl.path.startswith("/api/v1/events"):
            last["event"] = body["id"]
        if curl.method == "GET" and curl.path.startswith("/api/v1/notifications"):
            pending = [n["id"] for n in body if n["status"] == "pending"]
            last["pending"] = pending[0] if pending else last.get("pending", "?")
    assert len(answers) >= 10
    assert superseded_seen, "the README's Try it no longer lists the superseded reminders"

    async def delivered() -> bool:
        rows = await (
            await db.execute("SELECT notification_type AS type, status FROM notifier.notifications")
        ).fetchall()
        return [r["status"] for r in rows if r["type"] == "user.signup"] == ["sent"] and bool(
            smtp_server.received()
        )

    await eventually(delivered)
    (email,) = smtp_server.received()
    assert email["To"] == "grace@example.com"
    assert email["Subject"] == "Welcome, Grace"
    # Reminders: one due within a minute, as the README says; the cancelled one never is.
    rows = await (
        await db.execute(
            "SELECT notification_type, status, send_at - now() AS due_in FROM notifier.notifications"
            " WHERE notification_type IN ('password.expiring', 'contract.renewal') ORDER BY send_at"
        )
    ).fetchall()
    statuses = sorted(r["status"] for r in rows)
    # The reminders for the first date were superseded when it moved.
    assert statuses == ["cancelled", "pending", "pending", "superseded", "superseded"], rows
    soonest = min(r["due_in"] for r in rows if r["status"] == "pending")
    assert datetime.timedelta(0) < soonest <= datetime.timedelta(minutes=1), rows
