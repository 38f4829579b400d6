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
    "notifier.notifications.delivery",
    "notifier.notifications.decisions",
    "notifier.rules.service",
    "notifier.templates.service",
    "notifier.preferences.service",
    "notifier.rate_limits.service",
    "notifier.errors",
    "notifier.api_types",
    "notifier.idempotency",
    "notifier.tenancy",
    "notifier.auth.service",
    "notifier.auth.commands",
    "notifier.pagination",
]


def loaded_modules_after_import(*modules: str, then: str = "") -> set[str]:
    """Every module loaded in a fresh interpreter after importing ``modules`` and running
    the statements ``then``."""
    script = f"import sys, {', '.join(modules)}\n{then}\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(result.stdout.split())


def loaded_after_import(*modules: str) -> set[str]:
    """The top-level packages loaded in a fresh interpreter after importing ``modules``."""
    return {name.partition(".")[0] for name in loaded_modules_after_import(*modules)}


# What `notifier worker` imports as it starts and delivers: the command, the composition
# root, the worker, the delivery path and its webhook channel.
WORKER_MODULES = [
    "notifier.cli",
    "notifier.bootstrap",
    "notifier.worker",
    "notifier.notifications.tasks",
    "notifier.notifications.delivery",
    "notifier.channels.webhook",
    "notifier.templates.pool",
]
# What such a worker never needs, each a noticeable part of its start-up imports
# (docs/performance.md, "Worker start-up"): Jinja2 runs in the template sandboxes only,
# email and phone checks on first use, the OpenTelemetry SDK (and psutil with it) only
# with tracing on.
NOT_AT_WORKER_START = {"jinja2", "email_validator", "phonenumbers", "opentelemetry.sdk", "psutil"}


@pytest.mark.serial
def test_worker_and_domain_import_without_litestar() -> None:
    loaded = loaded_after_import(*WITHOUT_LITESTAR)
    assert "notifier" in loaded  # the imports themselves worked
    assert "litestar" not in loaded


@pytest.mark.serial
def test_the_command_module_loads_no_web_stack_nor_migrations() -> None:
    """`notifier worker` runs through notifier.cli: the web stack and alembic are imported by
    the commands that use them, so that a worker does not carry them (about 30 MB)."""
    loaded = loaded_after_import("notifier.cli")
    assert "notifier" in loaded
    assert loaded.isdisjoint({"litestar", "uvicorn", "alembic", "sqlalchemy"})


@pytest.mark.serial
def test_a_worker_starts_without_what_only_other_paths_use() -> None:
    loaded = loaded_modules_after_import(*WORKER_MODULES)
    assert "notifier.channels.webhook" in loaded
    assert not loaded & NOT_AT_WORKER_START


@pytest.mark.serial
def test_the_other_paths_do_load_them() -> None:
    """The check above can see each of them when it is there."""
    loaded = loaded_modules_after_import(
        "notifier.templates.sandbox", "notifier.telemetry.provider"
    )
    assert {"jinja2", "opentelemetry.sdk", "psutil"} <= loaded
    checked = loaded_modules_after_import(
        "notifier.recipients",
        then="notifier.recipients.email_address_problem('ada@example.com')\n"
        "notifier.recipients.e164_phone('9999912345', 'IN')",
    )
    assert {"email_validator", "phonenumbers"} <= checked


@pytest.mark.serial
def test_the_api_does_import_litestar() -> None:
    """The check above can see Litestar when it is there."""
    assert "litestar" in loaded_after_import("notifier.app")
    assert {"alembic", "sqlalchemy"} <= loaded_after_import("notifier.migrate")
