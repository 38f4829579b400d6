"""The ``notifier`` command: migrate, api, worker, dev, producer, tenants, keys, endpoints,
secrets."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import psycopg

from notifier import outbox
from notifier.auth import commands as key_commands
from notifier.auth import service as auth_service
from notifier.bootstrap import open_services
from notifier.db import connect_options
from notifier.endpoints import commands as endpoint_commands
from notifier.queue import ALL_QUEUES, DELIVERIES_QUEUE
from notifier.secret_box import SecretBox, generate_key
from notifier.settings import Settings, SettingsError
from notifier.telemetry import setup_telemetry
from notifier.telemetry.metrics import Metrics, serve_worker_metrics
from notifier.tenancy import DEFAULT_TENANT
from notifier.worker import run_worker

logger = logging.getLogger("notifier")

# The processes that trace, and the service name their spans carry by default.
SERVICE_NAMES = {"api": "notifier-api", "worker": "notifier-worker", "dev": "notifier"}


def build_parser() -> argparse.ArgumentParser:
    """The command line, one subcommand per process kind."""
    parser = argparse.ArgumentParser(prog="notifier", description=__doc__)
    parser.add_argument(
        "--log-level", help="DEBUG, INFO, WARNING (default NOTIFIER_LOG_LEVEL, or INFO)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser(
        "migrate", help="create the database if missing and upgrade it to head"
    )
    migrate.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 0 if the schema is at head (or newer), 3 if it is behind",
    )

    api = commands.add_parser("api", help="serve the REST API with uvicorn")
    api.add_argument("--host", help="bind address (default NOTIFIER_API_HOST)")
    api.add_argument("--port", type=int, help="port (default NOTIFIER_API_PORT)")

    worker = commands.add_parser("worker", help="run a worker that processes and delivers")
    worker.add_argument(
        "--concurrency", type=int, help="jobs in parallel (default NOTIFIER_WORKER_CONCURRENCY)"
    )
    worker.add_argument(
        "--queue",
        action="append",
        choices=ALL_QUEUES,
        dest="queues",
        help="queue to work on; repeat for several (default: all)",
    )

    producer = commands.add_parser(
        "producer", help="manage database roles that may only INSERT into notifier.outbox"
    )
    producer_commands = producer.add_subparsers(dest="producer_command", required=True)
    create = producer_commands.add_parser("create", help="create a login role; prints its password")
    create.add_argument("name", help="the role name")
    create.add_argument(
        "--tenant",
        default=DEFAULT_TENANT,
        help="the tenant its outbox rows belong to (default %(default)s)",
    )
    create.add_argument(
        "--password-env",
        metavar="VAR",
        help="take the password from this environment variable instead of generating one",
    )
    drop = producer_commands.add_parser("drop", help="remove a producer's login role")
    drop.add_argument("name", help="the role name")

    dev = commands.add_parser("dev", help="migrate, then run API and worker in one process")
    dev.add_argument("--host", help="bind address (default NOTIFIER_API_HOST)")
    dev.add_argument("--port", type=int, help="port (default NOTIFIER_API_PORT)")
    dev.add_argument(
        "--data-dir",
        default=".notifier-dev/pgdata",
        help="where the embedded PostgreSQL keeps its data if none answers (default %(default)s)",
    )
    dev.add_argument(
        "--key-file",
        default=".notifier-dev/api-key",
        help="where the default tenant's dev API key is kept across restarts (default %(default)s)",
    )
    dev.add_argument(
        "--secrets-key-file",
        help="where the dev key of stored secrets is kept when NOTIFIER_SECRETS_KEYS is unset "
        "(default: secrets-key beside the --key-file)",
    )
    key_commands.add_commands(commands)
    endpoint_commands.add_commands(commands)
    return parser


def freeze_startup_objects() -> None:
    """Put what start-up built (modules, the app) out of the garbage collector's sight.

    It lives as long as the process, yet every full collection walked all of it: pauses that
    made the API's p99 at 32 clients about 100 ms instead of about 30 (docs/performance.md).
    Collected first, so that no start-up garbage is kept for good.
    """
    gc.collect()
    gc.freeze()


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to completion on uvloop where it is installed, else on asyncio's loop.

    uvloop makes the worker deliver about 1.15x faster here (docs/performance.md); uvicorn
    picks it (and httptools) for the API by itself.
    """
    freeze_startup_objects()
    try:
        import uvloop  # noqa: PLC0415 - optional: not built for every platform
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


# The web stack (Litestar, uvicorn) and the migrations' (alembic, SQLAlchemy) are imported by
# the commands that use them only: `notifier worker` would otherwise carry about 30 MB of
# modules it never runs (docs/performance.md, "Memory"; tests/test_imports.py).


def serve_api(settings: Settings) -> None:
    """Run uvicorn in the foreground."""
    import uvicorn  # noqa: PLC0415 - the web stack, for the commands that serve only

    from notifier.app import create_app  # noqa: PLC0415
    from notifier.http.server import JoinedWritesProtocol  # noqa: PLC0415

    app = create_app(settings)
    freeze_startup_objects()
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        http=JoinedWritesProtocol,
    )


async def work(settings: Settings, queues: Sequence[str], concurrency: int | None) -> None:
    """Run one worker until SIGINT/SIGTERM."""
    async with open_services(settings, name="notifier-worker") as services:
        if DELIVERIES_QUEUE in queues:
            # Ready before the first delivery: a burst due just after a start would wait
            # for the sandboxes to start otherwise.
            services.renderer.start_children()
        stop_metrics = None
        if settings.worker_metrics_port:
            stop_metrics = serve_worker_metrics(
                services.metrics, settings.worker_metrics_host, settings.worker_metrics_port
            )
        try:
            await run_worker(services, queues=queues, concurrency=concurrency)
        finally:
            if stop_metrics is not None:
                stop_metrics()


async def develop(settings: Settings) -> None:
    """API and worker in one event loop; Ctrl-C stops both. ``/metrics`` counts for both."""
    import uvicorn  # noqa: PLC0415 - the web stack, for the commands that serve only

    from notifier.app import create_app  # noqa: PLC0415
    from notifier.http.server import JoinedWritesProtocol  # noqa: PLC0415

    metrics = Metrics()
    config = uvicorn.Config(
        create_app(settings, metrics=metrics),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        http=JoinedWritesProtocol,
    )
    server = uvicorn.Server(config)
    async with open_services(settings, name="notifier-dev-worker", metrics=metrics) as services:
        worker = asyncio.create_task(
            run_worker(services, install_signal_handlers=False, name="dev-worker")
        )
        try:
            await server.serve()  # returns on Ctrl-C
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)


def develop_locally(settings: Settings, args: argparse.Namespace) -> None:
    """``notifier dev``: a database (the configured one, or an embedded one), migrated, then
    API and worker in one process until Ctrl-C or SIGTERM."""
    from notifier import migrate as migrations  # noqa: PLC0415 - alembic, when migrating only
    from notifier.devserver import local_database  # noqa: PLC0415 - dev-only dependency

    # SIGTERM stops it like Ctrl-C, so that the embedded PostgreSQL is stopped too. uvicorn
    # handles both while it serves, then raises the signal again: SIGTERM's default action
    # would end the process there, before any cleanup.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if not settings.secrets_keys:
        key_file = Path(args.secrets_key_file or Path(args.key_file).parent / "secrets-key")
        settings = settings.replace(secrets_keys=dev_secrets_key(key_file))
    with contextlib.suppress(KeyboardInterrupt), local_database(settings, args.data_dir) as dev:
        migrations.migrate(dev)
        key = dev_key(dev, Path(args.key_file))
        # stdout, not the log: it is what the developer copies (and nothing else is there).
        print(f"NOTIFIER_KEY={key}", flush=True)  # noqa: T201
        logger.info(
            "the default tenant's admin key is printed above and kept in %s; send it as "
            "'Authorization: Bearer $NOTIFIER_KEY'",
            args.key_file,
        )
        logger.info("API on http://%s:%d (docs at /schema)", dev.api_host, dev.api_port)
        run_loop(develop(dev))


def dev_secrets_key(key_file: Path) -> str:
    """The key of stored secrets for ``notifier dev``, made once and kept in ``key_file``
    (owner-only): a production process refuses to start without NOTIFIER_SECRETS_KEYS."""
    if key_file.is_file():
        return key_file.read_text().strip()
    key = generate_key()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    logger.info("made a key for stored secrets in %s (NOTIFIER_SECRETS_KEYS unset)", key_file)
    return key


def dev_key(settings: Settings, key_file: Path) -> str:
    """The dev API key of the default tenant, kept in ``key_file`` (owner-only) across restarts."""
    previous = key_file.read_text().strip() if key_file.is_file() else None

    async def ensure() -> str:
        async with auth_service.admin_pool(settings) as pool:
            return await auth_service.ensure_dev_key(pool, previous)

    key = asyncio.run(ensure())
    if key != previous:
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a file that existed keeps its mode otherwise
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
    return key


def manage_producer(settings: Settings, args: argparse.Namespace) -> int:
    """``notifier producer create|drop NAME``."""
    try:
        if args.producer_command == "drop":
            outbox.drop_producer(
                settings.database_url, args.name, connect=connect_options(settings)
            )
            logger.info("dropped producer role %s", args.name)
            return 0
        given = os.environ.get(args.password_env) if args.password_env else None
        if args.password_env and not given:
            print(f"notifier: {args.password_env} is not set", file=sys.stderr)  # noqa: T201
            return 2
        password = outbox.create_producer(
            settings.database_url,
            args.name,
            given,
            tenant_id=args.tenant,
            connect=connect_options(settings),
        )
    except ValueError as exc:
        print(f"notifier: {exc}", file=sys.stderr)  # noqa: T201 - CLI error message
        return 2
    logger.info(
        "created producer role %s for tenant %s; it may only INSERT into notifier.outbox",
        args.name,
        args.tenant,
    )
    if given is None:
        print(password)  # noqa: T201 - shown once, to the operator who asked for it
    return 0


def check_migrations(settings: Settings) -> int:
    """``notifier migrate --check``: for init containers and deploy scripts that must wait."""
    from notifier import migrate as migrations  # noqa: PLC0415 - alembic, when migrating only

    try:
        pending = migrations.pending_revisions(settings.database_url, connect_options(settings))
    except psycopg.OperationalError as exc:
        logger.error("cannot read the schema version: %s", exc)
        return 3
    except migrations.UnknownRevisionError as exc:
        # A newer release has migrated already; revisions stay compatible with the release
        # before them, so this one may run (as it does during a rollout or a rollback).
        logger.warning("%s, newer than this release knows; continuing", exc)
        return 0
    if pending:
        logger.error("schema behind head; pending revisions: %s", ", ".join(pending))
        return 3
    logger.info("schema at head")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``notifier`` script."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        overrides = {
            key: value
            for key, value in {
                "api_host": getattr(args, "host", None),
                "api_port": getattr(args, "port", None),
                "log_level": args.log_level,
            }.items()
            if value is not None
        }
        settings = settings.replace(**overrides)
        # Long-running services log JSON for collectors; commands run by hand log text and
        # never trace (the SQL of `producer create` carries a password).
        service = SERVICE_NAMES.get(args.command)
        telemetry = setup_telemetry(
            settings,
            service or "notifier",
            log_format="json" if args.command in {"api", "worker"} else "text",
            environ=os.environ if service else {},
        )
    except SettingsError as exc:
        print(f"notifier: {exc}", file=sys.stderr)  # noqa: T201 - CLI error message
        return 2
    try:
        return run_command(settings, args)
    except SettingsError as exc:  # NOTIFIER_SECRETS_KEYS, read by the commands that need it
        print(f"notifier: {exc}", file=sys.stderr)  # noqa: T201 - CLI error message
        return 2
    finally:
        telemetry.shutdown()


def run_command(settings: Settings, args: argparse.Namespace) -> int:
    """Run the subcommand ``args`` names."""
    if args.command == "migrate" and args.check:
        return check_migrations(settings)
    if args.command == "migrate":
        from notifier import migrate as migrations  # noqa: PLC0415 - alembic, when migrating only

        created = migrations.migrate(settings)
        logger.info("database %s; schema at head", "created" if created else "exists")
    elif args.command == "producer":
        return manage_producer(settings, args)
    elif args.command in {"tenants", "keys"}:
        return key_commands.run(settings, args)
    elif args.command in {"endpoints", "secrets"}:
        return endpoint_commands.run(settings, args)
    elif args.command == "api":
        SecretBox.from_settings(settings)  # refuse to start without a key, before serving
        serve_api(settings)
    elif args.command == "worker":
        SecretBox.from_settings(settings)
        run_loop(work(settings, args.queues or ALL_QUEUES, args.concurrency))
    elif args.command == "dev":
        develop_locally(settings, args)
    return 0
