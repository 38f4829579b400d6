"""The README's promises stay in step with the code."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from notifier.cli import build_parser
from notifier.settings import ENV_PREFIX, Settings

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
