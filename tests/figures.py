"""Figures that long-running test suites (faults, chaos) measure and print in a section of
their own at the end of the run.

A figure travels in its test's report's ``user_properties`` under the suite's name, so it
reaches the terminal summary of the controlling process under pytest-xdist too.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest


class Figures:
    """Call with a line of text to report a measured figure under ``name``; ``echo`` also
    prints it as it is measured (seen with ``-s``)."""

    def __init__(self, node: pytest.Item, name: str, *, echo: bool = False) -> None:
        self.node = node
        self.name = name
        self.echo = echo

    def __call__(self, line: str) -> None:
        self.node.user_properties.append((self.name, line))
        if self.echo:
            print(line)


class Figure(NamedTuple):
    test: str
    outcome: str
    line: str


def collected(terminalreporter: pytest.TerminalReporter, name: str) -> list[Figure]:
    """Every figure reported under ``name`` in the run, in report order."""
    return [
        Figure(
            report.nodeid.rpartition("::")[2],
            "xfailed" if hasattr(report, "wasxfail") else report.outcome,
            str(value),
        )
        for reports in terminalreporter.stats.values()
        for report in reports
        if isinstance(report, pytest.TestReport) and report.when == "call"
        for key, value in report.user_properties
        if key == name
    ]
