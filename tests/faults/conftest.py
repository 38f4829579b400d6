"""Fixtures of the fault suite, and the "fault figures" section at the end of the run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from notifier.rate_limits.gcra import MAX_BURST, MAX_PER_SECOND
from notifier.settings import Settings
from tests.faults.support import (
    FULL,
    DedupReceiver,
    WorkerProcesses,
    start_receiver,
    stop_receiver,
    worker_environment,
)
from tests.figures import Figures, collected
from tests.support import WEBHOOK_SECRET

# The name under which a figure travels in its test's report's user_properties: reports
# reach the terminal summary of the controlling process under pytest-xdist too.
FIGURE = "fault figure"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/faults is a fault case."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.faults)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    figures = collected(terminalreporter, FIGURE)
    if not figures:
        return
    sizes = "full sizes" if FULL else "reduced sizes; `nox -s faults` runs the full ones"
    terminalreporter.section(f"fault figures ({sizes})")
    for test, _, line in figures:
        terminalreporter.write_line(f"{test}: {line}")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings, the API's request rate per key at its bound: at full size a
    fault case sends its own requests by the thousand with one key, and a 429 is not the
    fault under test (tests/auth/test_rate_limits.py tests the limit)."""
    return settings.replace(
        api_rate_limit_per_second=MAX_PER_SECOND, api_rate_limit_burst=MAX_BURST
    )


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Figures:
    """Call with a line of text to report a measured figure."""
    assert isinstance(request.node, pytest.Item)
    return Figures(request.node, FIGURE)


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
