"""The benchmark's own instruments (bench/), checked against the real things they stand for.

A benchmark that measures the wrong thing is worse than none: the pgbench baseline must run
what a publish runs, the bulk-loaded backlog must be what scheduling writes, CPU must be
counted for the processes it claims, and the load generators must send what they say.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from bench import bulk, code_sql, wrk
from bench.cpu import CpuWatch, ServerElsewhere, database_of, postmaster_pid
from litestar.testing import AsyncTestClient
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from notifier.queue import EVENTS_QUEUE, PROCESS_EVENT_TASK

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = {"user_id": 7, "email": "ada@example.com"}


def rows(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query.encode() if params is None else query, params).fetchall()


def pgbench_binary() -> str:
    found = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    if not Path(found).exists():
        pytest.skip("pgbench is not installed")
    return found


def test_publish_script_publishes_an_event_and_its_job_per_transaction(
    database_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "publish.sql"
    script.write_text(code_sql.publish_script(database_url, "bench.pgbench", PAYLOAD))
    info = conninfo_to_dict(database_url)
    subprocess.run(
        [
            *(pgbench_binary(), "-n", "-M", "prepared", "-t", "3", "-f", str(script)),
            *("-h", str(info["host"]), "-p", str(info["port"]), "-U", str(info["user"])),
            str(info["dbname"]),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )

    events = rows(
        database_url, "SELECT id::text, payload FROM notifier.events WHERE type = 'bench.pgbench'"
    )
    assert len(events) == 3
    assert all(payload == PAYLOAD for _, payload in events)
    jobs = rows(
        database_url,
        "SELECT args->>'event_id' FROM procrastinate_jobs"
        " WHERE queue_name = %s AND task_name = %s AND status = 'todo'",
        [EVENTS_QUEUE, PROCESS_EVENT_TASK],
    )
    assert sorted(job for (job,) in jobs) == sorted(event_id for event_id, _ in events)


# What a pending notification, its job and the job's events look like, column by column.
SHAPE = """
SELECT n.status, n.channel, n.tenant_id, n.job_id IS NOT NULL,
       j.queue_name, j.task_name, j.priority, j.status::text, j.lock, j.queueing_lock,
       j.attempts, array(SELECT jsonb_object_keys(j.args) ORDER BY 1),
       j.args->>'notification_id' = n.id::text, j.scheduled_at = n.send_at,
       array(SELECT e.type::text || CASE WHEN e.at = j.scheduled_at THEN ' at due time' ELSE '' END
             FROM procrastinate_events AS e WHERE e.job_id = j.id ORDER BY 1)
FROM notifier.notifications AS n JOIN procrastinate_jobs AS j ON j.id = n.job_id
WHERE n.notification_type = %s
"""


async def test_bulk_load_writes_what_scheduling_through_the_api_writes(
    client: AsyncTestClient[Any], database_url: str
) -> None:
    created = await client.post(
        "/api/v1/notifications/",
        json={
            "notification_type": "bench.api",
            "entity_id": "one",
            "target_date": "2099-01-01T00:00:00+00:00",
            "lead_time_days": 0,
            "channel": "webhook",
            "recipient": "https://hooks.example.com/notify",
        },
    )
    assert created.status_code == 201, created.text

    bulk.load_pending(database_url, 5, notification_type="bench.bulk", chunk=2)

    (scheduled,) = rows(database_url, SHAPE, ["bench.api"])
    loaded = rows(database_url, SHAPE, ["bench.bulk"])
    assert len(loaded) == 5
    assert scheduled[-1] == ["deferred", "scheduled at due time"]
    assert all(row == scheduled for row in loaded)


def test_auto_explain_sends_the_plans_of_nested_statements(database_url: str) -> None:
    rows(
        database_url,
        "INSERT INTO procrastinate_jobs (queue_name, task_name, args)"
        " VALUES ('deliveries', 'notifier.deliver', '{}') RETURNING id",
    )
    with psycopg.connect(database_url) as conn:
        plans = code_sql.enable_auto_explain(conn)
        with conn.transaction(force_rollback=True):
            fetched = conn.execute(
                code_sql.FETCHES["notifier"], code_sql.FETCH_PARAMETERS
            ).fetchone()
    assert fetched is not None
    texts = [plan["plan"]["Query Text"] for plan in plans]
    # The statement inside notifier.fetch_job (migration 0009), and the call around it.
    assert any("scheduled_and_due AS" in text for text in texts)
    assert any("notifier.fetch_job(" in text for text in texts)
    assert all(plan["ms"] >= 0 and "Shared Hit Blocks" in plan["plan"]["Plan"] for plan in plans)


BURN = """
import time
while time.process_time() < 0.5:
    pass
"""
# About a second of a backend's CPU, whatever the machine.
HEAVY_QUERY = "SELECT count(*) FROM generate_series(1, 4000000)"


def backend_cpu(conn: psycopg.Connection[Any]) -> float:
    times = psutil.Process(conn.info.backend_pid).cpu_times()
    return float(times.user + times.system)


def test_cpu_watch_counts_its_processes_and_its_database_s_backends_only(
    database_url: str,
) -> None:
    database = str(conninfo_to_dict(database_url)["dbname"])
    other_url = make_conninfo(database_url, dbname="postgres")
    try:
        postmaster = postmaster_pid(database_url)
    except ServerElsewhere as exc:  # CI's PostgreSQL runs in a container
        pytest.skip(str(exc))
    with (
        psycopg.connect(database_url, autocommit=True) as watched,
        psycopg.connect(database_url, autocommit=True) as excluded,
        psycopg.connect(other_url, autocommit=True) as other,
    ):
        watch = CpuWatch(
            postmaster,
            [database],
            exclude=[excluded.info.backend_pid],
            interval=0.05,
        )
        with watch:
            # A process that starts after the watch, burns half a second of CPU and exits.
            child = subprocess.Popen([sys.executable, "-c", BURN])
            watch.watch(child.pid)
            assert child.wait(timeout=60) == 0

            start, before = time.time(), backend_cpu(watched)
            watched.execute(HEAVY_QUERY)
            end, used_watched = time.time(), backend_cpu(watched) - before

            before_other, before_excluded = backend_cpu(other), backend_cpu(excluded)
            other.execute(HEAVY_QUERY)
            excluded.execute(HEAVY_QUERY)
            used_elsewhere = (
                backend_cpu(other) - before_other + backend_cpu(excluded) - before_excluded
            )
            after_elsewhere = time.time()
            time.sleep(0.2)  # a sample after the last query

    assert watch.samples[-1].processes >= 0.4
    counted = watch.between(start, end)
    assert counted.backends >= 0.7 * used_watched
    assert counted.server >= counted.backends
    assert used_elsewhere > 0.5
    assert watch.between(end, after_elsewhere).backends < 0.3 * used_elsewhere


def test_database_of_reads_postgresql_process_titles() -> None:
    assert database_of("postgres: 15/main: postgres notifier_bench 127.0.0.1(5432) idle") == (
        "notifier_bench"
    )
    assert database_of("postgres: app shop [local] SELECT") == "shop"
    assert database_of("postgres: 15/main: autovacuum worker notifier_bench") == "notifier_bench"
    assert database_of("postgres: 15/main: walwriter ") is None


@pytest.fixture
def receiver() -> Iterator[str]:
    """bench/receiver.py on a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "receiver.py"), str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                get(url + "/reset")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read() or b"null")


def test_load_generator_stops_after_the_requests_asked_for(receiver: str) -> None:
    body = json.dumps({"data": {"notification_id": "n-1"}, "pad": "x" * 100})
    out = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "loadgen.py"), receiver + "/hooks"),
            *("--clients", "8", "--seconds", "60", "--expect", "200", "--requests", "37"),
            *("--body", body),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    result = json.loads(out.stdout)
    assert result["requests"] == 37
    assert result["errors"] == 0
    assert result["seconds"] < 30
    stats = get(receiver + "/stats")
    assert stats["count"] == 37
    assert stats["bytes"] == 37 * len(body)
    # The first POST is kept whole: the pg-boss peer sends it again with its own ids.
    sample = get(receiver + "/sample")
    assert sample["body"] == body
    assert sample["headers"]["content-type"] == "application/json"


def test_wrk_is_read_as_it_counted(receiver: str) -> None:
    if not wrk.available():
        pytest.skip("wrk is not installed")
    result = wrk.run(
        receiver + "/hooks",
        4,
        1,
        body=json.dumps({"pad": "x" * 50}),
        headers={"Content-Type": "application/json"},
    )
    stats = get(receiver + "/stats")
    assert result["errors"] == 0
    assert result["requests"] > 0
    # What was in flight when wrk's time was up reached the receiver, uncounted by wrk.
    assert result["requests"] <= stats["count"] <= result["requests"] + 4
    assert 0 < result["p50_ms"] <= result["p99_ms"]


def test_wrk_durations_in_every_unit() -> None:
    assert wrk.milliseconds("850.00us") == pytest.approx(0.85)
    assert wrk.milliseconds("12.31ms") == pytest.approx(12.31)
    assert wrk.milliseconds("1.02s") == pytest.approx(1020)
    assert wrk.milliseconds("1.50m") == pytest.approx(90_000)
    with pytest.raises(ValueError, match="not a wrk duration"):
        wrk.milliseconds("12 ms")
