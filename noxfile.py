"""Developer and CI sessions. `uv run nox` runs lint, typecheck and tests (what CI runs)."""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

SOURCES = ["src", "tests", "migrations", "bench", "noxfile.py"]


def sync(session: nox.Session) -> None:
    """Install the locked dependencies (with the dev group) into the session's venv."""
    session.run_install(
        "uv",
        "sync",
        "--frozen",
        "--quiet",
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    sync(session)
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy in strict mode over src and tests."""
    sync(session)
    session.run("mypy")


# pytest-xdist workers for `tests`: the suite mostly waits (on workers, receivers, the
# database), so three processes keep a 2-core machine busy without starving the
# timing-sensitive tests (the `serial` group runs on one of them).
TEST_WORKERS = os.environ.get("NOTIFIER_TEST_WORKERS", "3")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite against the PostgreSQL at 127.0.0.1:5432, in parallel (extra args go to
    pytest: `-- -n 0` runs it in one process)."""
    sync(session)
    session.run("pytest", "-n", TEST_WORKERS, "--dist", "loadgroup", *session.posargs)


@nox.session
def faults(session: nox.Session) -> None:
    """The fault-injection suite at full size, on loopback; prints its figures at the end."""
    sync(session)
    session.run(
        "pytest",
        "tests/faults",
        "-m",
        "faults and not soak",
        "-q",
        *session.posargs,
        env={"NOTIFIER_FAULTS_FULL": "1"},
    )


@nox.session
def soak(session: nox.Session) -> None:
    """Steady load with memory and latency drift, never in CI: `nox -s soak -- SECONDS` (600)."""
    sync(session)
    seconds = session.posargs[0] if session.posargs else "600"
    session.run(
        "pytest",
        "tests/faults/test_soak.py",
        "-m",
        "soak",
        "-q",
        env={"NOTIFIER_SOAK_SECONDS": seconds},
    )


@nox.session
def fuzz(session: nox.Session) -> None:
    """The schemathesis fuzz test with many more examples per operation than `tests` runs
    (NOTIFIER_FUZZ_EXAMPLES, default here 300); prints how many requests it generated."""
    sync(session)
    examples = os.environ.get("NOTIFIER_FUZZ_EXAMPLES", "300")
    session.run(
        "pytest",
        "tests/test_fuzz.py",
        "-s",
        *session.posargs,
        env={"NOTIFIER_FUZZ_EXAMPLES": examples},
    )


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suite (bench/suite.py), never part of `uv run nox`: one table of figures
    beside their baselines. `nox -s bench -- --quick` for small sizes; other args go to it."""
    session.run_install(
        "uv",
        "sync",
        "--frozen",
        "--quiet",
        "--group",
        "bench",
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )
    session.run("python", "bench/suite.py", *session.posargs)
