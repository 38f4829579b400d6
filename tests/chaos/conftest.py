"""Fixtures of the chaos suite (a cluster of its own per module) and its figures section."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from notifier import migrate
from tests.chaos.harness import CLUSTER_SETTINGS, FULL, OBSERVER
from tests.faults.cluster import OwnedCluster, find_bindir
from tests.figures import Figures, collected

# Carried in a report's user_properties, so figures reach the summary under pytest-xdist too.
FIGURE = "chaos figure"
TEMPLATE = "chaos_template"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/chaos is a chaos case, and starts processes: serial."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.chaos)
            item.add_marker(pytest.mark.serial)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    figures = collected(terminalreporter, FIGURE)
    if not figures:
        return
    sizes = "full durations" if FULL else "reduced durations; `nox -s chaos` runs the full ones"
    terminalreporter.section(f"chaos figures ({sizes})")
    shown = None
    for test, outcome, line in figures:
        if test != shown:
            terminalreporter.write_line(f"{test} [{outcome}]")
            shown = test
        terminalreporter.write_line(f"    {line}")


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Figures:
    """Call with a line of text to report a measured figure."""
    assert isinstance(request.node, pytest.Item)
    return Figures(request.node, FIGURE, echo=True)


@pytest.fixture(scope="module")
def chaos_cluster() -> Iterator[OwnedCluster]:
    """A cluster of the module's own with a migrated template database."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("needs PostgreSQL's initdb and pg_ctl on this machine")
    owned = OwnedCluster(bindir, CLUSTER_SETTINGS)
    try:
        owned.init()
        owned.start()
        with psycopg.connect(owned.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE}")
        migrate.upgrade(owned.url(TEMPLATE))
        yield owned
    finally:
        owned.remove()


@pytest.fixture
def chaos_database(chaos_cluster: OwnedCluster, request: pytest.FixtureRequest) -> str:
    """A fresh database of the cluster for one scenario, cloned from the template."""
    name = "chaos_" + "".join(c if c.isalnum() else "_" for c in request.node.name).lower()[:50]
    with psycopg.connect(
        chaos_cluster.url("postgres"), autocommit=True, application_name=OBSERVER
    ) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    return chaos_cluster.url(name)
