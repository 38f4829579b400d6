"""The cap on webhook requests in flight to one host (NOTIFIER_WEBHOOK_MAX_IN_FLIGHT_PER_HOST).

A real worker and real loopback receivers (tests/hostile_receiver.py): ``/hold`` keeps a
request open until the test releases it, ``/hang`` until the client gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import re
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from notifier.bootstrap import open_services
from notifier.channels.egress import origin_of
from notifier.db import transaction
from notifier.notifications import queries
from notifier.notifications.host_slots import wait_seconds
from notifier.notifications.scheduling import NotificationDraft, PlannedSend, create_notifications
from notifier.notifications.schemas import NotificationStatus
from notifier.queue import DELIVER_TASK
from notifier.services import Services
from notifier.settings import Settings
from notifier.tenancy import DEFAULT_TENANT
from notifier.worker import run_worker
from tests.hostile_receiver import hostile_receiver
from tests.notifications.test_delivery import running_worker, webhook_id
from tests.support import (
    LOOPBACK_NETWORKS,
    WEBHOOK_SECRET,
    eventually,
    start_worker,
    stop_workers,
    worker_environment,
)


async def due_now(services: Services, *recipients: str) -> list[str]:
    """Webhook notifications due now, one per recipient, created in one transaction."""
    now = datetime.datetime.now(datetime.UTC)
    drafts = [
        NotificationDraft(
            notification_type="host.slots",
            channel="webhook",
            recipient=recipient,
            send=PlannedSend(datetime.timedelta(0), now, NotificationStatus.PENDING),
            target_date=None,
            entity_id=f"entity-{index}",
        )
        for index, recipient in enumerate(recipients)
    ]
    async with transaction(services.pool) as conn:
        created = await create_notifications(conn, DEFAULT_TENANT, drafts)
    return [str(notification.id) for notification in created]


async def state(db: psycopg.AsyncConnection[Any], notification_id: str) -> dict[str, Any]:
    """The notification's status, attempt count, recorded attempts and current job."""
    cursor = await db.execute(
        """
        SELECT n.status, n.attempts, n.job_id, j.status::text AS job_status, j.args,
               j.scheduled_at,
               (SELECT count(*) FROM notifier.delivery_attempts a
                WHERE a.notification_id = n.id) AS recorded,
               (SELECT array_agg(a.outcome ORDER BY a.id) FROM notifier.delivery_attempts a
                WHERE a.notification_id = n.id) AS outcomes
        FROM notifier.notifications n LEFT JOIN procrastinate_jobs j ON j.id = n.job_id
        WHERE n.id = %s
        """,
        [notification_id],
    )
    row = await cursor.fetchone()
    assert row is not None
    return dict(row)


async def advisory_locks(db: psycopg.AsyncConnection[Any]) -> int:
    """Host slots anyone holds in this database: advisory locks of the two-key form (the
    maintenance task's lock, taken now and then, has one key)."""
    cursor = await db.execute(
        """
        SELECT count(*) AS held FROM pg_locks
        WHERE locktype = 'advisory' AND objsubid = 2
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row["held"])


async def wait_for(check: Any, timeout: float = 20) -> Any:
    return await eventually(check, timeout=timeout, interval=0.02)


async def test_a_delivery_finding_its_host_full_waits_without_an_attempt(
    settings: Settings, services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    with hostile_receiver() as host:
        async with running_worker(
            settings,
            worker_concurrency=2,
            delivery_batch_size=1,
            webhook_max_in_flight_per_host=1,
        ) as worker:
            (holding,) = await due_now(services, host.url + "/hold")
            await wait_for(lambda: _true(webhook_id(holding) in host.ids("/hold")))
            (waiting,) = await due_now(services, host.url + "/later")
            first_job = (await state(db, waiting))["job_id"]

            # Its own job found no slot: a new job took over, due later; nothing was sent.
            async def waited_twice() -> dict[str, Any] | None:
                now = await state(db, waiting)
                return now if now["args"].get("slot_waits", 0) >= 2 else None

            waited = await wait_for(waited_twice)
            assert waited["job_id"] != first_job
            assert (waited["status"], waited["attempts"], waited["recorded"]) == ("pending", 0, 0)
            assert webhook_id(waiting) not in host.ids()
            counted = worker.metrics.registry.get_sample_value(
                "notifier_host_slot_waits_total", {"channel": "webhook"}
            )
            assert counted is not None
            assert counted >= 2
            assert host.max_open_requests == 1

            host.release()

            async def sent() -> dict[str, Any] | None:
                now = await state(db, waiting)
                return now if now["status"] == "sent" else None

            delivered = await wait_for(sent)
            assert (delivered["attempts"], delivered["outcomes"]) == (1, ["delivered"])
            assert [a.webhook_id for a in host.snapshot()].count(webhook_id(waiting)) == 1
            assert host.max_open_requests == 1
        assert await advisory_locks(db) == 0


async def test_one_taken_along_whose_host_is_full_is_handed_back_untouched(
    settings: Settings, services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    with hostile_receiver() as full, hostile_receiver() as free:
        async with running_worker(settings, worker_concurrency=2, webhook_max_in_flight_per_host=1):
            (holding,) = await due_now(services, full.url + "/hold")
            await wait_for(lambda: _true(webhook_id(holding) in full.ids("/hold")))
            # The older job (to the free host) is fetched and takes the other along.
            own, taken_along = await due_now(services, free.url + "/now", full.url + "/later")
            job = (await state(db, taken_along))["job_id"]

            await wait_for(lambda: _true(webhook_id(own) in free.ids()))

            async def put_off() -> dict[str, Any] | None:
                now = await state(db, taken_along)
                return now if now["args"].get("slot_waits") else None

            waited = await wait_for(put_off)
            # Same job, due again later; no attempt spent, nothing sent.
            assert waited["job_id"] == job
            assert (waited["status"], waited["attempts"], waited["recorded"]) == ("pending", 0, 0)
            assert webhook_id(taken_along) not in full.ids()
            assert (await state(db, own))["outcomes"] == ["delivered"]

            full.release()

            async def sent() -> dict[str, Any] | None:
                now = await state(db, taken_along)
                return now if now["status"] == "sent" else None

            delivered = await wait_for(sent)
            assert (delivered["attempts"], delivered["outcomes"]) == (1, ["delivered"])
            assert full.max_open_requests == 1
        assert await advisory_locks(db) == 0


async def test_a_batch_hanging_on_one_host_gives_the_other_hosts_slots_back_at_once(
    settings: Settings, services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    # One batch: a notification to a host that never answers, and one to a healthy host.
    # The healthy one arrives at once; and the batch, though it waits out the timeout for
    # the hanging one, holds no slot of the healthy host meanwhile: another worker's
    # delivery there, every host capped at 1, goes through at once too.
    timeout = 4.0
    capped = settings.replace(webhook_max_in_flight_per_host=1, webhook_timeout_seconds=timeout)
    with hostile_receiver() as hanging, hostile_receiver() as healthy:
        stuck, in_same_batch = await due_now(services, hanging.url + "/hang", healthy.url)
        started = time.monotonic()
        # One job at a time: the first job fetched (the older) takes the other along.
        async with running_worker(capped, worker_concurrency=1):
            await wait_for(lambda: _true(webhook_id(in_same_batch) in healthy.ids()))
            first_arrival = time.monotonic() - started
            assert webhook_id(stuck) in hanging.ids()

            async with running_worker(capped, worker_concurrency=1):
                scheduled = time.monotonic()
                (later,) = await due_now(services, healthy.url + "/later")
                await wait_for(lambda: _true(webhook_id(later) in healthy.ids()))
                second_arrival = time.monotonic() - scheduled
                # The batch is still waiting for the hanging host: nothing of it recorded.
                assert (await state(db, in_same_batch))["recorded"] == 0

            # Both arrived well within the timeout the batch waits for.
            assert first_arrival < timeout / 2, first_arrival
            assert second_arrival < timeout / 2, second_arrival

            async def recorded() -> dict[str, Any] | None:
                now = await state(db, stuck)
                return now if now["recorded"] else None

            # The batch ends with the timeout: both of its attempts recorded together.
            assert (await wait_for(recorded))["outcomes"] == ["retry"]
            assert (await state(db, in_same_batch))["outcomes"] == ["delivered"]
            assert time.monotonic() - started >= timeout
        assert await advisory_locks(db) == 0


async def test_a_batch_cut_off_mid_send_gives_its_slots_back_before_its_connection_does(
    settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    # A worker stopping with a send to a hanging host under way cancels the job: the batch
    # rolls back, and its slot is given back on the way out, while its connection goes back
    # to the pool, still open (a connection that kept it would keep it from every worker).
    stopping = settings.replace(
        webhook_timeout_seconds=30,
        worker_shutdown_timeout_seconds=0.2,
        webhook_max_in_flight_per_host=2,
    )
    with hostile_receiver() as hanging:
        async with open_services(stopping, name="notifier-test-stopping") as services:
            (stuck,) = await due_now(services, hanging.url + "/hang")
            worker = asyncio.create_task(
                run_worker(services, install_signal_handlers=False, name="stopping-worker")
            )
            await wait_for(lambda: _true(webhook_id(stuck) in hanging.ids()))
            assert await advisory_locks(db) == 1

            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(worker, timeout=10)

            assert await advisory_locks(db) == 0
            assert services.pool.get_stats()["pool_size"] >= 1  # its connections live on
            after = await state(db, stuck)
            assert (after["status"], after["attempts"], after["recorded"]) == ("pending", 0, 0)


async def test_slots_are_shared_by_every_connection_and_tried_only_as_far_as_needed(
    services: Services,
) -> None:
    origin = origin_of("http://hooks.example.com/a")
    other = origin_of("https://hooks.example.com/a")
    async with (
        transaction(services.pool) as first,
        transaction(services.pool) as second,
        transaction(services.pool) as third,
    ):
        taken = await queries.take_host_slots(first, {origin: 2}, cap=3)
        assert taken == [(origin, 0), (origin, 1)]
        # Another session gets what is left, and no more than the cap.
        assert await queries.take_host_slots(second, {origin: 3}, cap=3) == [(origin, 2)]
        assert await queries.take_host_slots(third, {origin: 1}, cap=3) == []
        await queries.give_back_host_slots(first, [(origin, 1)])
        assert await queries.take_host_slots(third, {origin: 1, other: 1}, cap=3) == [
            (origin, 1),
            (other, 0),  # hosts are counted apart
        ]
        await queries.give_back_host_slots(first, [(origin, 0)])
        await queries.give_back_host_slots(second, [(origin, 2)])
        await queries.give_back_host_slots(third, [(origin, 1), (other, 0)])
        cursor = await first.execute(
            "SELECT count(*) AS held FROM pg_locks WHERE locktype = 'advisory' AND pid = ANY(%s)",
            [[conn.info.backend_pid for conn in (first, second, third)]],
        )
        assert await cursor.fetchone() == {"held": 0}


# --- two worker processes ----------------------------------------------------------------


async def start_delivery_workers(
    database_url: str, tmp_path: Path, db: psycopg.AsyncConnection[Any], **settings: str
) -> list[asyncio.subprocess.Process]:
    """Two `notifier worker` processes on the deliveries queue, both running."""
    env = worker_environment(
        database_url,
        NOTIFIER_WEBHOOK_SECRET=WEBHOOK_SECRET,
        NOTIFIER_WEBHOOK_ALLOWED_NETWORKS=LOOPBACK_NETWORKS,
        NOTIFIER_WORKER_POLL_INTERVAL_SECONDS="0.1",
        **settings,
    )
    processes = [
        await start_worker(env, tmp_path / f"worker-{index}.log", queues=("deliveries",))
        for index in range(2)
    ]

    async def both_running() -> bool:
        cursor = await db.execute("SELECT count(*) AS n FROM procrastinate_workers")
        return (await cursor.fetchone()) == {"n": 2}

    await eventually(both_running, timeout=60)
    return processes


def put_off_in_logs(tmp_path: Path) -> int:
    """Notifications the two workers handed back to wait for a host slot, as they logged."""
    logs = "".join((tmp_path / f"worker-{index}.log").read_text() for index in range(2))
    found = re.findall(r"(\d+) notification\(s\) waited for a host slot", logs)
    return sum(int(count) for count in found)


@pytest.mark.serial
async def test_two_worker_processes_share_a_fast_host_without_putting_batches_off(
    services: Services, db: psycopg.AsyncConnection[Any], database_url: str, tmp_path: Path
) -> None:
    # Both processes fetch batches of 50 to one host with 8 slots at once. Each lane hands
    # its slot over every HAND_OVER_SECONDS, so a batch of the other process waiting for
    # one gets it within its patience. Before hand-overs, a batch held its slots until it
    # had sent all it had, and most of the other process's batches were put off (about
    # 60% of the notifications, docs/performance.md).
    count = 1000
    with hostile_receiver() as host:
        processes = await start_delivery_workers(
            database_url, tmp_path, db, NOTIFIER_WORKER_CONCURRENCY="4"
        )
        try:
            # Warmed up: each process has its connections to the host open.
            warm = await due_now(services, *(f"{host.url}/warm-{i}" for i in range(8)))
            await wait_for(lambda: _true(host.ids() >= {webhook_id(n) for n in warm}), 60)
            ids = await due_now(services, *(f"{host.url}/n-{i}" for i in range(count)))
            await wait_for(lambda: _true(host.ids() >= {webhook_id(n) for n in ids}), 120)
            # Read before they stop: a worker that stops takes its id off its jobs.
            cursor = await db.execute(
                "SELECT count(DISTINCT worker_id) AS workers FROM procrastinate_jobs "
                "WHERE task_name = %s AND worker_id IS NOT NULL",
                [DELIVER_TASK],
            )
            workers = await cursor.fetchone()
        finally:
            await stop_workers(processes)
    put_off = put_off_in_logs(tmp_path)
    assert workers == {"workers": 2}  # both processes delivered
    # Alone on the machine 0 to a few dozen, under a parallel test run up to 150 (the first
    # batches of both processes take the host at once, and the first sends are slow); 481
    # before hand-overs, alone.
    assert put_off <= count // 5, put_off
    assert len(host.snapshot()) == count + len(warm)  # each sent once
    assert host.max_open_requests <= 8
    assert await advisory_locks(db) == 0


@pytest.mark.serial
async def test_a_hanging_host_holds_at_most_its_cap_across_two_worker_processes(
    services: Services, db: psycopg.AsyncConnection[Any], database_url: str, tmp_path: Path
) -> None:
    # Slots are handed over only between sends, and a lane ends after a slow one: two
    # processes together still hold at most `cap` requests to a host that never answers,
    # and a healthy host's deliveries go through meanwhile.
    timeout, cap = 3.0, 2
    with hostile_receiver() as hanging, hostile_receiver() as healthy:
        processes = await start_delivery_workers(
            database_url,
            tmp_path,
            db,
            NOTIFIER_WORKER_CONCURRENCY="4",
            NOTIFIER_DELIVERY_BATCH_SIZE="5",
            NOTIFIER_WEBHOOK_TIMEOUT_SECONDS=str(timeout),
            NOTIFIER_WEBHOOK_MAX_IN_FLIGHT_PER_HOST=str(cap),
        )
        try:
            await due_now(services, *(f"{hanging.url}/{i}/hang" for i in range(40)))
            await wait_for(lambda: _true(hanging.open_requests == cap), 60)
            scheduled = time.monotonic()
            ids = await due_now(services, *(f"{healthy.url}/ok-{i}" for i in range(10)))
            await wait_for(lambda: _true(healthy.ids() >= {webhook_id(n) for n in ids}), 60)
            arrived = time.monotonic() - scheduled
            # Two timeouts more: the hanging requests end and are retried, slots change hands.
            await asyncio.sleep(2 * timeout)
        finally:
            await stop_workers(processes)
    assert arrived < timeout, arrived
    assert hanging.max_open_requests == cap
    assert len(hanging.snapshot()) > cap  # the slots did change hands
    assert await advisory_locks(db) == 0


@pytest.mark.parametrize(
    ("waits", "low", "high"),
    [(0, 0.25, 0.5), (1, 0.5, 1.0), (2, 1.0, 2.0), (3, 1.0, 2.0), (10, 1.0, 2.0)],
)
def test_the_wait_doubles_up_to_the_timeout(waits: int, low: float, high: float) -> None:
    for _ in range(20):
        assert low <= wait_seconds(waits, timeout_seconds=2.0) <= high


def test_one_host_is_one_origin_however_its_urls_are_written() -> None:
    assert (
        origin_of("http://Hooks.Example.com./a?b")
        == origin_of("HTTP://hooks.example.com:80/c")
        == "http://hooks.example.com:80"
    )
    assert origin_of("http://127.1:8080/") == origin_of("http://127.0.0.1:8080/x")
    assert origin_of("https://[0:0::1]/") == "https://[::1]:443"
    assert origin_of("https://bücher.example/") == "https://xn--bcher-kva.example:443"
    assert origin_of("https://example.com/") != origin_of("http://example.com/")
    assert origin_of("http://\u2100.com/") == "http://\u2100.com/"  # unparsable: its own


async def _true(value: bool) -> bool:
    return value
