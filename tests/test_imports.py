"""The worker and the domain types run without the web stack: importing them loads no Litestar.

The HTTP edge (notifier.http, the feature ``api.py`` modules, the dashboard) is the only code
that imports Litestar; a schema or the worker that pulled it in would tie every process to
it (and slow the worker's start). Checked in a fresh interpreter, since this test process
has long imported everything.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

WITHOUT_LITESTAR = [
    "notifier.worker",
    "notifier.bootstrap",
    "notifier.events.schemas",
    "notifier.events.service",
    "notifier.events.tasks",
    "notifier.notifications.schemas",
    "notifier.notifications.service",
    "notifier.notifications.tasks",
    "notifier.rules.service",
    "notifier.templates.service",
    "notifier.preferences.service",
    "notifier.rate_limits.service",
    "notifier.errors",
    "notifier.api_types",
    "notifier.idempotency",
]


def loaded_after_import(module: str) -> set[str]:
    """The top-level packages loaded in a fresh interpreter after ``import module``."""
    script = (
        f"import sys, {module}\n"
        "print('\\n'.join(sorted({name.partition('.')[0] for name in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(result.stdout.split())


@pytest.mark.parametrize("module", WITHOUT_LITESTAR, ids=WITHOUT_LITESTAR)
def test_module_imports_without_litestar(module: str) -> None:
    loaded = loaded_after_import(module)
    assert "notifier" in loaded  # the import itself worked
    assert "litestar" not in loaded


def test_the_api_does_import_litestar() -> None:
    """The check above can see Litestar when it is there."""
    assert "litestar" in loaded_after_import("notifier.app")
