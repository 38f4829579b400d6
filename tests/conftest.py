"""Shared fixtures: a migrated template database, one clone per test, real workers and receivers.

The template is built once per session by running the Alembic migrations (never by
creating tables directly), and each test gets its own ``CREATE DATABASE ... TEMPLATE``
clone, so tests share no state.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trustme
import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from litestar.testing import AsyncTestClient
from psycopg.conninfo import make_conninfo
from pytest_postgresql import factories
from pytest_postgresql.executors.noop import NoopExecutor

from notifier import migrate
from notifier.app import create_app
from notifier.auth import service as auth_service
from notifier.bootstrap import open_services
from notifier.http.server import JoinedWritesProtocol
from notifier.services import Services
from notifier.settings import Settings
from notifier.tenancy import DEFAULT_TENANT, Scope
from notifier.worker import run_worker
from tests.databases import Clones
from tests.hostile_receiver import HostileReceiver, hostile_receiver
from tests.support import (
    LOOPBACK_NETWORKS,
    SECRETS_KEYS,
    WEBHOOK_SECRET,
    FakeSmsProvider,
    ReceivedRequest,
    SmtpServer,
    WebhookReceiver,
    bearer,
    free_port,
)

PG_HOST = os.environ.get("NOTIFIER_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("NOTIFIER_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("NOTIFIER_TEST_PG_USER", "postgres")


class TemplateLoader:
    """pytest-postgresql loader: bring the template database to head with the migrations,
    then mint the default tenant's admin key in it (as `notifier keys create` does), so that
    every clone has that key and tests need not make one each."""

    def __init__(self) -> None:
        self.api_key: str | None = None

    def __call__(
        self, host: str, port: int, user: str, dbname: str, password: str | None, **_: Any
    ) -> None:
        conninfo = make_conninfo(
            "", host=host, port=port, user=user, dbname=dbname, password=password
        )
        migrate.upgrade(conninfo)
        self.api_key = asyncio.run(_create_api_key(Settings(database_url=conninfo)))


async def _create_api_key(
    settings: Settings,
    tenant_id: str = DEFAULT_TENANT,
    scopes: Iterable[str] = (Scope.ADMIN,),
    **options: Any,
) -> str:
    """A new API key for ``tenant_id`` (created if missing), as `notifier keys create` does."""
    async with auth_service.admin_pool(settings) as pool:
        if tenant_id not in {t.id for t in await auth_service.list_tenants(pool)}:
            await auth_service.create_tenant(pool, tenant_id)
        _, token = await auth_service.create_key(
            pool, tenant_id=tenant_id, scopes=list(scopes), **options
        )
    return token


template_loader = TemplateLoader()
# A per-process database name lets several test runs share one server without colliding.
postgresql_server = factories.postgresql_noproc(
    host=PG_HOST,
    port=PG_PORT,
    user=PG_USER,
    dbname=f"notifier_test_{os.getpid()}",
    load=[template_loader],
)


@pytest.fixture(scope="session")
def clones(postgresql_server: NoopExecutor) -> Iterator[Clones]:
    """Clones of this process's template database, made ahead of the tests that take them."""
    server = postgresql_server
    conninfo = make_conninfo(
        "",
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        dbname=server.maintenance_dbname,
    )
    with Clones(conninfo, server.template_dbname) as made:
        yield made


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test a node id of its own (pytest-xdist needs them)."""
    # pytest 9.2 builds an item's node id from its originalname, which schemathesis (4.32)
    # sets to the test function's name: the items of all 32 API operations share one id.
    # pytest-xdist hands out work by node id, so it ran one operation of the 32. Each gets
    # the id its name says; a duplicate left fails the run rather than skip tests unseen.
    counts = collections.Counter(item.nodeid for item in items)
    for item in items:
        if counts[item.nodeid] > 1 and item.parent is not None:
            item._id = item.parent.id.child(item.name)
    counts = collections.Counter(item.nodeid for item in items)
    if duplicates := [nodeid for nodeid, count in counts.items() if count > 1]:
        raise pytest.UsageError(f"tests share node ids, pytest-xdist would run one: {duplicates}")
    for item in items:
        item.add_marker(tier_of(item))


# Markers of whole processes, browsers or clusters: the end-to-end tier.
END_TO_END_MARKERS = {"faults", "chaos", "browser", "soak"}


def tier_of(item: pytest.Item) -> str:
    """The tier a test is in, from what it uses (so no file can sit in the wrong one):
    ``unit`` needs no database, ``e2e`` runs real processes, a browser or a cluster of its
    own, ``integration`` is the rest (the real PostgreSQL, in-process app and workers)."""
    if END_TO_END_MARKERS & {mark.name for mark in item.iter_markers()} or (
        "live_api" in getattr(item, "fixturenames", ())
    ):
        return "e2e"
    if "postgresql_server" in getattr(item, "fixturenames", ()):
        return "integration"
    return "unit"


@pytest.fixture(autouse=True)
def restore_root_logging() -> Iterator[None]:
    """Undo the logging set-up of `notifier.cli.main` after each test that runs it.

    ``main`` sends every log record to the ``sys.stderr`` of its moment: in a test that is
    pytest's capture, closed when the test ends, so later records of pool threads would fail.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def database_url(clones: Clones, postgresql_server: NoopExecutor) -> Iterator[str]:
    """A freshly cloned, migrated database of this test's own."""
    name = clones.take()
    server = postgresql_server
    yield make_conninfo(
        "",
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        dbname=name,
    )
    clones.give_back(name)


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings tuned for fast tests: quick polling and short retry backoff."""
    return Settings(
        database_url=database_url,
        database_pool_min_size=1,
        worker_concurrency=4,
        worker_poll_interval_seconds=0.1,
        worker_shutdown_timeout_seconds=5.0,
        retry_base_seconds=0.05,
        retry_max_seconds=2.0,
        webhook_timeout_seconds=2.0,
        webhook_secret=WEBHOOK_SECRET,
        secrets_keys=SECRETS_KEYS,
        # The test receivers listen on loopback, which webhooks may not reach by default.
        webhook_allowed_networks=LOOPBACK_NETWORKS,
        # Tests read a job's history (its status, runs and events) to see what ran (worker
        # processes too: tests/support.py, tests/faults/support.py); the deleting default
        # has tests of its own (tests/queue/test_jobs.py, tests/notifications/test_batches.py,
        # tests/events/test_batches.py).
        keep_succeeded_jobs=True,
    )


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    """The services a worker process would build (its own pool)."""
    async with open_services(settings, name="notifier-test") as opened:
        yield opened


# create_api_key(tenant_id="default", scopes=("admin",), **create_key options) -> the key.
CreateApiKey = Callable[..., Awaitable[str]]


@pytest.fixture
async def create_api_key(settings: Settings) -> CreateApiKey:
    """Make an API key for any tenant (created if missing), as `notifier keys create` does."""

    async def create(
        tenant_id: str = DEFAULT_TENANT, scopes: Iterable[str] = (Scope.ADMIN,), **options: Any
    ) -> str:
        return await _create_api_key(settings, tenant_id, scopes, **options)

    return create


@pytest.fixture
def api_key(database_url: str) -> str:
    """An admin key of the default tenant: what the `client` fixture sends. Made once, in the
    template database, so every test's clone has it."""
    assert template_loader.api_key is not None, "the template database was not loaded"
    return template_loader.api_key


@pytest.fixture
def api_headers(api_key: str) -> dict[str, str]:
    """Headers that authenticate as the default tenant's admin, for hand-built HTTP clients."""
    return bearer(api_key)


@pytest.fixture
async def client(
    settings: Settings, api_headers: dict[str, str]
) -> AsyncIterator[AsyncTestClient[Any]]:
    """The real Litestar app (lifespan included) in front of the test database, sending
    the default tenant's admin key (pass ``headers=`` to a request to send another)."""
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        test_client.headers.update(api_headers)
        yield test_client


@pytest.fixture
def live_api(settings: Settings) -> Iterator[str]:
    """The app served by uvicorn on loopback, in a thread with its own event loop.
    Send ``api_headers`` (or another key's) with each request.

    ``AsyncTestClient`` blocks the test's event loop for the duration of each request, so
    a request that waits on a row lock held by the worker (running in that same loop)
    would wait forever, and its requests cannot overlap. A real server has neither problem.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            lifespan="on",
            log_level="warning",
            access_log=False,
            # As `notifier api` serves it.
            http=JoinedWritesProtocol,
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the API server did not start"
        assert time.monotonic() < deadline, "the API server did not start in time"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=15)
    sock.close()


@pytest.fixture
async def worker(services: Services) -> AsyncIterator[None]:
    """A real procrastinate worker on every queue, running in this event loop."""
    task = asyncio.create_task(
        run_worker(services, install_signal_handlers=False, name="test-worker")
    )
    await asyncio.sleep(0)
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        # Generous: cancelling waits for the jobs in flight (a send may take its whole
        # timeout on a loaded machine) and for a settle write being retried.
        await asyncio.wait_for(task, timeout=30)


@pytest.fixture
async def db(services: Services) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """An autocommit connection for arranging and inspecting rows."""
    async with services.pool.connection() as conn:
        await conn.set_autocommit(True)
        yield conn


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A webhook receiver on 127.0.0.1, in a thread of its own."""
    state = WebhookReceiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with state.lock:
                state.requests.append(
                    ReceivedRequest(
                        path=self.path,
                        headers={k.lower(): v for k, v in self.headers.items()},
                        body=body,
                    )
                )
            if state.delay_seconds:
                time.sleep(state.delay_seconds)
            status, headers = state.next_response()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(state.answer_body)))
            self.end_headers()
            self.wfile.write(state.answer_body)

        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output quiet."""

    with _serving(Handler) as port:
        state.url = f"http://127.0.0.1:{port}/hooks"
        yield state


class _Server(ThreadingHTTPServer):
    # A worker opens up to 32 connections at once (a batch); socketserver's default backlog
    # of 5 would drop connection attempts, which the client retries only a second later.
    request_queue_size = 128


@contextlib.contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """Serve ``handler`` on a free port of 127.0.0.1 in a thread; yields the port."""
    server = _Server(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _running_smtp(state: SmtpServer, **smtp_options: Any) -> Iterator[SmtpServer]:
    # aiosmtpd's controller checks readiness by connecting to its port, so it needs a
    # real one up front rather than port 0.
    state.port = free_port()
    controller = Controller(state, hostname=state.host, port=state.port, **smtp_options)
    controller.start()
    try:
        yield state
    finally:
        controller.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A plain SMTP server (aiosmtpd) on 127.0.0.1 keeping every message it accepts."""
    with _running_smtp(SmtpServer()) as state:
        yield state


SMTP_TEST_LOGIN = ("notifier", "smtp-test-password")


def _server_tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for 127.0.0.1 with a certificate from a CA made for this test,
    and that CA's PEM file for the client to trust."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return context, ca_file


@pytest.fixture
def implicit_tls_smtp_server(tmp_path: Path) -> Iterator[tuple[SmtpServer, Path]]:
    """An SMTP server speaking TLS from the first byte (port 465 style); yields the server
    and the PEM file of the CA that signed its certificate."""
    context, ca_file = _server_tls(tmp_path)
    with _running_smtp(SmtpServer(), ssl_context=context) as state:
        yield state, ca_file


@pytest.fixture
def tls_smtp_server(tmp_path: Path) -> Iterator[tuple[SmtpServer, Path]]:
    """An SMTP server that requires STARTTLS and a login; yields the server and the PEM
    file of the CA that signed its certificate."""
    context, ca_file = _server_tls(tmp_path)
    state = SmtpServer()

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        login = (data.login.decode(), data.password.decode())
        state.logins.append(login)
        # handled=False: the server itself answers 535 to a refused login.
        return AuthResult(success=login == SMTP_TEST_LOGIN, handled=False)

    with _running_smtp(
        state,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        authenticator=authenticate,
    ):
        yield state, ca_file


@pytest.fixture
def sms_provider() -> Iterator[FakeSmsProvider]:
    """A fake SMS provider: a real HTTP server on 127.0.0.1 that records and answers."""
    state = FakeSmsProvider()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            request = ReceivedRequest(
                path=self.path, headers={k.lower(): v for k, v in self.headers.items()}, body=body
            )
            status, headers, answer = state.answer(request)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output quiet."""

    with _serving(Handler) as port:
        state.url = f"http://127.0.0.1:{port}"
        yield state


@pytest.fixture
def hostile() -> Iterator[HostileReceiver]:
    """A receiver on 127.0.0.1 that misbehaves by path (tests/hostile_receiver.py)."""
    with hostile_receiver() as running:
        yield running
