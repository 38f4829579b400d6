"""Fixtures of the fault suite, and the "fault figures" section at the end of the run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.support import (
    FULL,
    DedupReceiver,
    WorkerProcesses,
    start_receiver,
    stop_receiver,
    worker_environment,
)
from tests.support import WEBHOOK_SECRET

FIGURES = pytest.StashKey[list[tuple[str, str]]]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/faults is a fault case."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.faults)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    figures = terminalreporter.config.stash.get(FIGURES, [])
    if not figures:
        return
    sizes = "full sizes" if FULL else "reduced sizes; `nox -s faults` runs the full ones"
    terminalreporter.section(f"fault figures ({sizes})")
    for test, line in figures:
        terminalreporter.write_line(f"{test}: {line}")


class Figures:
    """Numbers a fault case measured; printed in the "fault figures" summary."""

    def __init__(self, config: pytest.Config, test: str) -> None:
        self.config = config
        self.test = test

    def __call__(self, line: str) -> None:
        self.config.stash.setdefault(FIGURES, []).append((self.test, line))


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Figures:
    """Call with a line of text to report a measured figure."""
    return Figures(request.config, request.node.name)


@pytest.fixture
def dedup_receiver() -> Iterator[DedupReceiver]:
    """A receiver that holds requests open for a moment and counts webhook-ids."""
    running = start_receiver(hold_seconds=0.3)
    yield running.receiver
    stop_receiver(running)


@pytest.fixture
def worker_processes(database_url: str, tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Start real worker processes on the test database; all stopped at the end."""
    processes = WorkerProcesses(
        worker_environment(database_url, webhook_secret=WEBHOOK_SECRET), tmp_path
    )
    yield processes
    processes.stop_all()
