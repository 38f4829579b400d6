"""Developer and CI sessions. `uv run nox` runs lint, typecheck and tests (what CI runs)."""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

SOURCES = ["src", "tests", "migrations", "bench", "noxfile.py"]


def sync(session: nox.Session, *, compile_bytecode: bool = False) -> None:
    """Install the locked dependencies (with the dev group) into the session's venv.

    ``compile_bytecode`` for sessions that start many Python processes (API servers,
    workers, template sandboxes): compiled once at install, as the image is, instead of by
    every process where PYTHONDONTWRITEBYTECODE keeps Python from caching what it compiled.
    """
    session.run_install(
        "uv",
        "sync",
        "--frozen",
        "--quiet",
        *(["--compile-bytecode"] if compile_bytecode else []),
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
    """mypy in strict mode over src, tests and bench (bench rotted unchecked once)."""
    sync(session)
    session.run("mypy")


# pytest-xdist workers for `tests`: the suite mostly waits (on workers, receivers, the
# database), so three processes keep a 2-core machine busy.
TEST_WORKERS = os.environ.get("NOTIFIER_TEST_WORKERS", "3")
# Fault cases and tests marked serial (processes started, rates and deadlines measured) run
# after the rest, one at a time, on a machine the parallel part no longer loads.
SERIAL = "serial or faults"


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite against the PostgreSQL at 127.0.0.1:5432: most of it in parallel, then
    the timing-sensitive part alone (extra args go to both pytest runs)."""
    sync(session, compile_bytecode=True)
    # Exit code 5 (no test selected) passes only where extra args narrowed the run to tests
    # of the other part; the full run (CI's) must find tests in both.
    codes = [0, 5] if session.posargs else [0]
    session.run(
        "pytest", "-n", TEST_WORKERS, "-m", f"not ({SERIAL})", *session.posargs,
        success_codes=codes,
    )  # fmt: skip
    session.run("pytest", "-m", SERIAL, *session.posargs, success_codes=codes)


@nox.session
def faults(session: nox.Session) -> None:
    """The fault-injection suite at full size, on loopback; prints its figures at the end."""
    sync(session, compile_bytecode=True)
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
    session.run("python", "-m", "bench.suite", *session.posargs)


@nox.session
def screenshots(session: nox.Session) -> None:
    """PNG screenshots of every dashboard page into docs/ui/ (Debian's headless Chromium),
    which docs/ui.md shows."""
    sync(session)
    session.run("python", "-m", "tests.ui.screenshots", "docs/ui")


@nox.session
def chaos(session: nox.Session) -> None:
    """The chaos suite of issue 21 at full duration (about 25 minutes): every scenario against
    real processes on a cluster of its own, then the failover; prints the figures.
    NOTIFIER_CHAOS_RATE sets the offered load (default 50/s); args go to pytest."""
    sync(session)
    session.run(
        "pytest",
        "tests/chaos",
        "-m",
        "chaos",
        "-q",
        *session.posargs,
        env={"NOTIFIER_CHAOS_SCALE": os.environ.get("NOTIFIER_CHAOS_SCALE", "1")},
    )
