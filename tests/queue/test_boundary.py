"""Only the queue adapter (``notifier/queue/``) touches procrastinate.

Outside it, no module of ``src/notifier`` or ``bench/`` imports procrastinate or names one of
its tables, types, functions or channels (``procrastinate_*``) in a string: SQL that needs
them asks :mod:`notifier.queue.jobs`, and the bench's own statements take the names from
:mod:`notifier.queue.tables`, which ``src`` does not use at all. A procrastinate upgrade
is then reviewed in one package (and in the migrations, which are history and not walked).
No database: this reads the source.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "notifier"
ADAPTER = SOURCE / "queue"
BENCH = ROOT / "bench"

# A table, type, function or channel of procrastinate's, as SQL names them.
PROCRASTINATE_NAME = re.compile(r"\bprocrastinate_[a-z0-9_#]+")


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the nodes that are docstrings (prose may name procrastinate's tables)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def touches_of_procrastinate(source: str, *, may_name_tables: bool = True) -> list[str]:
    """What in ``source`` touches procrastinate: its imports, and strings (docstrings aside)
    naming ``procrastinate_*``; with ``may_name_tables`` False, the adapter's table names too."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                f"line {node.lineno}: import {alias.name}"
                for alias in node.names
                if alias.name.split(".")[0] == "procrastinate"
            ]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            module = node.module
            names = {alias.name for alias in node.names}
            if module.split(".")[0] == "procrastinate":
                found.append(f"line {node.lineno}: from {module} import ...")
            elif not may_name_tables and (
                module == "notifier.queue.tables"
                or (module == "notifier.queue" and "tables" in names)
            ):
                found.append(f"line {node.lineno}: from {module} import ... (table names)")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            found += [
                f"line {node.lineno}: {match.group(0)}"
                for match in PROCRASTINATE_NAME.finditer(node.value)
            ]
    return found


def modules(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*.py") if ADAPTER not in path.parents)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import procrastinate", ["line 1: import procrastinate"]),
        ("import procrastinate.jobs as j", ["line 1: import procrastinate.jobs"]),
        (
            "from procrastinate.exceptions import X",
            ["line 1: from procrastinate.exceptions import ..."],
        ),
        ("Q = 'SELECT id FROM procrastinate_jobs'", ["line 1: procrastinate_jobs"]),
        ("Q = f'LISTEN procrastinate_any_queue_v1 {x}'", ["line 1: procrastinate_any_queue_v1"]),
        (
            "def f():\n    return 'SELECT procrastinate_finish_job_v1(1)'",
            ["line 2: procrastinate_finish_job_v1"],
        ),
        ('"""Prose about procrastinate_jobs."""\nimport notifier', []),
        ("# procrastinate_jobs, in a comment\nX = 'procrastinate'", []),
        ("from notifier.queue import jobs\nfrom notifier.queue.app import QueueApp", []),
    ],
    ids=[
        "import",
        "import-submodule",
        "from-import",
        "sql",
        "f-string",
        "nested",
        "docstring",
        "comment",
        "adapter",
    ],
)
def test_the_check_finds_what_touches_procrastinate(source: str, expected: list[str]) -> None:
    assert touches_of_procrastinate(source) == expected


def test_the_check_finds_table_names_taken_from_the_adapter_where_not_allowed() -> None:
    source = "from notifier.queue import tables\nfrom notifier.queue.tables import JOBS"
    assert touches_of_procrastinate(source) == []
    assert len(touches_of_procrastinate(source, may_name_tables=False)) == 2


def test_nothing_in_src_outside_the_adapter_touches_procrastinate() -> None:
    checked = modules(SOURCE)
    assert SOURCE / "worker.py" in checked
    assert SOURCE / "notifications" / "queries.py" in checked
    assert not any(ADAPTER in path.parents for path in checked)
    touches = {
        str(path.relative_to(ROOT)): found
        for path in checked
        if (found := touches_of_procrastinate(path.read_text(), may_name_tables=False))
    }
    assert touches == {}, "go through notifier.queue (the adapter) instead"


def test_nothing_in_the_bench_touches_procrastinate_but_through_the_adapter() -> None:
    checked = modules(BENCH)
    assert BENCH / "suite.py" in checked
    touches = {
        str(path.relative_to(ROOT)): found
        for path in checked
        if (found := touches_of_procrastinate(path.read_text()))
    }
    assert touches == {}, "take SQL from notifier.queue.jobs, names from notifier.queue.tables"


def test_the_adapter_is_where_procrastinate_is_touched() -> None:
    """The check looks at the right place: the adapter itself is full of it."""
    assert touches_of_procrastinate((ADAPTER / "jobs.py").read_text())
    assert touches_of_procrastinate((ADAPTER / "app.py").read_text())
