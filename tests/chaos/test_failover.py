"""A database failover under load: a primary with a synchronous streaming standby, the
primary killed, the standby promoted; notifier follows through a multi-host URL.

The pair is two clusters the test owns (``tests/faults/cluster.py``): the standby is a
``pg_basebackup -R`` copy, and the primary names it in ``synchronous_standby_names``, so a
commit is acknowledged only once the standby has it. notifier's processes (one API, two
workers, default settings) get ``host=A,B port=P,Q target_session_attrs=read-write
connect_timeout=2``: libpq tries both and keeps the one that accepts writes. The test
plays the operator (or Patroni / CloudNativePG): it kills the primary with
``pg_ctl stop -m immediate`` and promotes the standby a few seconds later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from notifier import migrate
from tests.chaos.harness import (
    Run,
    check_nothing_lost,
    record,
    run_scenario,
    scaled,
)
from tests.faults.cluster import OwnedCluster, find_bindir
from tests.figures import Figures
from tests.support import eventually

# How long the primary is gone before the standby is promoted: the detection time of
# whatever manages the pair (CloudNativePG's, Patroni's TTL).
DETECTION_SECONDS = 3.0
# The bound: service back within this long of the promotion, without restarts.
RESUME_BOUND = 15.0
# The API's default NOTIFIER_DATABASE_TIMEOUT_SECONDS (5 s), plus as much again for a
# request queued behind others on a busy machine.
API_TIMEOUT_BOUND = 5.0 + 5.0


@pytest.fixture
def pair() -> Iterator[tuple[OwnedCluster, OwnedCluster]]:
    """A primary with a migrated ``notifier`` database and its synchronous standby."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("needs PostgreSQL's initdb, pg_ctl and pg_basebackup on this machine")
    primary = OwnedCluster(bindir)
    standby = OwnedCluster(bindir)
    try:
        primary.init()
        primary.start()
        with psycopg.connect(primary.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE notifier")
        migrate.upgrade(primary.url("notifier"))
        standby.base_backup_from(primary)
        standby.start()
        # Only now: with no standby connected, a synchronous primary's commits would wait.
        with psycopg.connect(primary.url("postgres"), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'standby'")
            conn.execute("SELECT pg_reload_conf()")

        async def synchronous() -> bool:
            async with await psycopg.AsyncConnection.connect(primary.url("postgres")) as conn:
                cursor = await conn.execute(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'"
                )
                row = await cursor.fetchone()
            return row is not None and row[0] == "sync"

        asyncio.run(eventually(synchronous, timeout=30, interval=0.2))
        yield primary, standby
    finally:
        standby.remove()
        primary.remove()


def multi_host_url(primary: OwnedCluster, standby: OwnedCluster) -> str:
    """What an operator gives notifier for a pair without a proxy in front."""
    return make_conninfo(
        "",
        host="127.0.0.1,127.0.0.1",
        port=f"{primary.port},{standby.port}",
        user="postgres",
        dbname="notifier",
        target_session_attrs="read-write",
        connect_timeout=2,
    )


async def test_failover_to_a_synchronous_standby_loses_nothing_acknowledged(
    pair: tuple[OwnedCluster, OwnedCluster], tmp_path: Path, figure: Figures
) -> None:
    primary, standby = pair
    moments: dict[str, float] = {}

    async def fail_over(run: Run) -> None:
        moments["killed"] = time.monotonic()
        await asyncio.to_thread(primary.stop, "immediate")
        await asyncio.sleep(DETECTION_SECONDS)
        await asyncio.to_thread(standby.promote)
        moments["promoted"] = time.monotonic()

    outcome = await run_scenario(
        "failover",
        primary,
        multi_host_url(primary, standby),
        tmp_path,
        fail_over,
        warmup=scaled(15, 3),
        recovery=scaled(30, 8),
        drain=scaled(150, 30),
    )
    record(outcome)
    promoted, killed = moments["promoted"], moments["killed"]
    first_ack = min(
        (r.finished for r in outcome.acknowledged if r.started >= promoted), default=None
    )
    first_delivery = min((t for t in outcome.arrivals.values() if t >= promoted), default=None)
    switch = [r for r in outcome.requests if killed <= r.started <= promoted]
    for line in outcome.lines():
        figure(line)

    def after(moment: float | None) -> str:
        return f"{moment - promoted:.2f}s" if moment is not None else "never"

    figure(
        f"primary killed, standby promoted {promoted - killed:.1f}s later; first 2xx "
        f"{after(first_ack)} and first delivery {after(first_delivery)} after the promotion; "
        f"requests during the switch: {len(switch)}, "
        f"{sum(r.status == 503 for r in switch)} answered 503, "
        f"max {max((r.finished - r.started for r in switch), default=0):.2f}s"
    )
    statuses = {r.status for r in outcome.requests}
    assert statuses <= {201, 503}, statuses  # never a 500, never a hang past the timeout
    # During the switch no request waits past the API's timeout (outside it, on a busy
    # machine, CPU queueing is not the database's doing: a figure, not an assertion).
    assert all(r.finished - r.started <= API_TIMEOUT_BOUND for r in switch)
    assert first_ack is not None
    assert first_ack - promoted <= RESUME_BOUND
    assert first_delivery is not None
    assert first_delivery - promoted <= RESUME_BOUND
    assert "a service process exited by itself during the run" not in outcome.notes
    check_nothing_lost(outcome)
