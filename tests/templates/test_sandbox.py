"""The template sandbox processes: time, memory and recursion bounds, replacement of dead
children, fairness between tenants, and renders identical to the in-process renderer.

Every test runs real child processes (``python -m notifier.templates.sandbox``).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import pytest

from notifier.templates.builtin import builtin_templates
from notifier.templates.messages import MessageFields, TemplateProblem, TemplateSource
from notifier.templates.pool import RendererUnavailable, RenderPool, ToRender
from notifier.templates.rendering import MAX_RENDERED_CHARS, Renderer, template_context

# The template an outside test froze the API with for 27 s.
NESTED_LOOPS = "{% for i in range(30000) %}{% for j in range(30000) %}{% endfor %}{% endfor %}"
# One C call (sorting five million strings, no Python key function) that the child's own
# timer cannot interrupt: about 0.45 s of CPU on the development machine, its list made in
# 70 ms (a join, a split and a repeat, each one C call). About 100 MB. Twenty million
# numbers sorted took 0.3-0.7 s but their list 60-270 ms, which passed a 100 ms budget on
# a slow machine: the timer then stopped the render before the sort, and nothing was killed.
STUCK_IN_C = (
    "{% set x = (range(100000) | join(',' ~ 'p' * 100)).split(',') * 50 %}"
    "{% set _ = x.sort() %}{{ x | first }}"
)
# A budget several times the list's making and well under the sort.
STUCK_BUDGET_SECONDS = 0.2
# About a million loop turns: some tens of milliseconds, within a 100 ms budget.
BUSY_25_MS = "{% for i in range(20) %}{% for j in range(50000) %}{% endfor %}{% endfor %}ok"
FIELDS = MessageFields(notification_type="report.ready", recipient="ada@example.com")


def text(body: str, *, subject: str = "s", html: str | None = None) -> TemplateSource:
    return TemplateSource(name="test", subject=subject, text_body=body, html_body=html)


@pytest.fixture
async def pool() -> AsyncIterator[RenderPool]:
    """Two sandboxes with the default budget (100 ms) and memory (256 MB)."""
    renderers = RenderPool(size=2, render_timeout_seconds=0.1, memory_mb=256)
    yield renderers
    await renderers.close()


@pytest.fixture
async def roomy_pool() -> AsyncIterator[RenderPool]:
    """Two sandboxes with the default memory and a time budget no test comes near (5 s),
    for tests of other bounds: on a slow machine a 100 ms budget can trip first."""
    renderers = RenderPool(size=2, render_timeout_seconds=5, memory_mb=256)
    yield renderers
    await renderers.close()


def sandboxes_of_this_process() -> list[int]:
    """Children of this process running the sandbox, zombies included (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_bytes().rpartition(b")")[2].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if parent == os.getpid() and b"notifier.templates.sandbox" in command:
            found.append(int(entry.name))
    return found


def proc_file(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != b"Z"


async def test_a_nested_loop_ends_in_a_clean_error_naming_the_part(pool: RenderPool) -> None:
    started = time.monotonic()

    with pytest.raises(TemplateProblem) as problem:
        await pool.render("tenant-b", text(NESTED_LOOPS), {}, FIELDS)

    assert problem.value.part == "text_body"
    assert problem.value.message == "took longer than 100 ms to render"
    assert time.monotonic() - started < 5
    # The child's own timer stopped it: nothing was killed.
    assert pool.started == 1
    rendered = await pool.render("tenant-b", text("fine"), {}, FIELDS)
    assert rendered.text == "fine"
    assert pool.started == 1


async def test_a_render_stuck_in_one_c_call_is_killed_and_its_child_replaced() -> None:
    pool = RenderPool(size=1, render_timeout_seconds=STUCK_BUDGET_SECONDS, memory_mb=512)
    try:
        await pool.render("tenant-b", text("warm"), {}, FIELDS)
        (first,) = pool.child_pids()

        with pytest.raises(TemplateProblem) as problem:
            await pool.render("tenant-b", text("x", html=STUCK_IN_C), {}, FIELDS)

        assert problem.value.part == "html_body"
        assert problem.value.message == "took longer than 200 ms to render"
        assert not alive(first)
        rendered = await pool.render("tenant-b", text("{{ 6 * 7 }}"), {}, FIELDS)
        assert rendered.text == "42"
        assert pool.started == 2
    finally:
        await pool.close()


async def test_children_limit_themselves_and_go_first_when_memory_runs_out(
    pool: RenderPool,
) -> None:
    await pool.render("tenant-a", text("warm"), {}, FIELDS)
    (pid,) = pool.child_pids()

    limits = {
        line[:26].strip(): line[26:].split()[:2]
        for line in proc_file(pid, "limits").decode().splitlines()[1:]
    }
    assert limits["Max address space"] == [str(256 * 1024 * 1024)] * 2
    assert limits["Max core file size"] == ["0", "0"]
    assert limits["Max processes"] == ["0", "0"]
    # Raised before each request just enough for it: a second or so, not unlimited.
    assert limits["Max cpu time"][0] != "unlimited"
    assert proc_file(pid, "oom_score_adj").strip() == b"1000"
    # No secrets in its environment: only what Python and the C library need.
    environment = proc_file(pid, "environ").split(b"\0")
    assert not [entry for entry in environment if entry.startswith(b"NOTIFIER_")]


@pytest.mark.parametrize(
    "body",
    [
        "{{ 'x' * 10**9 }}",
        "{% set x = [0] * 10**9 %}",
        "{% set n = 10**7 %}{% set x = [0] * n %}{% set y = x * 100 %}",
        "{{ 'x' * 10**8 }}",  # folded into a constant while compiling
    ],
)
async def test_memory_bombs_are_refused(roomy_pool: RenderPool, body: str) -> None:
    pool = roomy_pool
    with pytest.raises(TemplateProblem, match=r"more memory to (render|compile) than allowed"):
        await pool.render("tenant-b", text(body), {}, FIELDS)

    assert (await pool.render("tenant-b", text("still {{ 'here' }}"), {}, FIELDS)).text == (
        "still here"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recurses too deeply"),
        ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "is nested too deeply"),
        ("{% if a %}" * 3000 + "{% endif %}" * 3000, "is nested too deeply"),
        ("{{ 10 ** 5000 }}", "Exceeds the limit (4300 digits)"),
        ("{% for i in range(100000) %}0123456789{% endfor %}", f"more than {MAX_RENDERED_CHARS}"),
    ],
)
async def test_runaway_recursion_nesting_and_output_are_refused(
    pool: RenderPool, body: str, message: str
) -> None:
    with pytest.raises(TemplateProblem, match=re.escape(message)):
        await pool.render("tenant-b", text(body), {}, FIELDS)


async def test_a_compile_that_overruns_its_budget_is_a_problem_naming_the_part(
    pool: RenderPool,
) -> None:
    # Jinja2 folds constants while compiling: this power is computed then.
    with pytest.raises(TemplateProblem) as problem:
        await pool.check("tenant-b", text("fine", subject="{{ (10 ** (10 ** 8)) > 1 }}"))

    assert problem.value.part == "subject"
    assert problem.value.message == "took longer than 1000 ms to compile"


async def test_check_names_the_part_and_line_that_does_not_compile(pool: RenderPool) -> None:
    await pool.check("tenant-a", builtin_templates()["payment.failed"])

    with pytest.raises(TemplateProblem) as problem:
        await pool.check("tenant-a", text("fine", html="<p>\n{% if %}</p>"))

    assert (problem.value.part, problem.value.line) == ("html_body", 2)


async def test_a_child_killed_from_outside_is_replaced_without_losing_a_render() -> None:
    pool = RenderPool(size=1, render_timeout_seconds=5, memory_mb=256)
    try:
        await pool.render("tenant-a", text("warm"), {}, FIELDS)
        (idle,) = pool.child_pids()
        os.kill(idle, signal.SIGKILL)
        assert (await pool.render("tenant-a", text("{{ 1 + 1 }}"), {}, FIELDS)).text == "2"
        (busy,) = pool.child_pids()
        assert busy != idle

        # Killed in the middle of a render: the render is done again by the next child.
        slow = text(
            "{% for i in range(500) %}{% for j in range(100000) %}{% endfor %}{% endfor %}ok"
        )
        rendering = asyncio.ensure_future(pool.render("tenant-a", slow, {}, FIELDS))
        await asyncio.sleep(0.3)  # about a second of work: well under way
        assert not rendering.done()
        os.kill(busy, signal.SIGKILL)

        assert (await rendering).text == "ok"
        assert pool.started == 3
        assert not alive(idle)
        assert not alive(busy)
    finally:
        await pool.close()


async def test_a_tenant_flooding_slow_renders_does_not_starve_another() -> None:
    pool = RenderPool(size=1, render_timeout_seconds=0.1, memory_mb=256)
    try:
        await pool.render("tenant-a", text("warm"), {}, FIELDS)
        flood = [
            asyncio.ensure_future(pool.render("tenant-b", text(NESTED_LOOPS), {}, FIELDS))
            for _ in range(10)
        ]
        await asyncio.sleep(0)  # every one of them queued before tenant A asks

        rendered = await pool.render("tenant-a", text("{{ n }}"), {"n": 7}, FIELDS)

        assert rendered.text == "7"
        # Round-robin: tenant A waited for at most the one render in progress and one more.
        assert sum(render.done() for render in flood) <= 2
        for render in flood:
            with pytest.raises(TemplateProblem, match="took longer than 100 ms"):
                await render
    finally:
        await pool.close()


async def test_a_batch_is_one_request_unless_it_outlasts_its_time_slice() -> None:
    # A budget (and so a slice) of 300 ms: each render of the slow batch stays far within
    # it even on a machine several times slower, and the batch (60 x ~25 ms) still outlasts it several times.
    pool = RenderPool(size=2, render_timeout_seconds=0.3, memory_mb=256)
    try:
        await _check_batch_slices(pool)
    finally:
        await pool.close()


async def _check_batch_slices(pool: RenderPool) -> None:
    source = builtin_templates()["user.signup"]
    batch = [ToRender("tenant-a", source, {"name": f"user {n}"}, FIELDS) for n in range(50)]

    rendered = await asyncio.gather(*pool.render_many(batch))

    assert [message.text.splitlines()[0] for message in rendered] == [
        f"Hi user {n}," for n in range(50)
    ]
    assert pool.requests_sent == 1

    slow = [ToRender("tenant-a", text(BUSY_25_MS), {}, FIELDS) for _ in range(60)]
    assert {m.text for m in await asyncio.gather(*pool.render_many(slow))} == {"ok"}
    # A slice is one render budget (300 ms), the batch's work several times that: it went
    # out in several requests, each time behind whatever other tenants had queued.
    assert pool.requests_sent >= 1 + 2


async def test_a_batch_of_several_tenants_is_one_request_per_tenant(pool: RenderPool) -> None:
    source = text("{{ tenant }}")
    batch = [ToRender(t, source, {"tenant": t}, FIELDS) for t in ["a", "b", "a", "c", "b"]]

    rendered = await asyncio.gather(*pool.render_many(batch))

    assert [message.text for message in rendered] == ["a", "b", "a", "c", "b"]
    assert pool.requests_sent == 3


async def test_renders_are_identical_to_the_in_process_renderer(pool: RenderPool) -> None:
    payload = {
        "name": "Ada <Lovelace>",
        "user": {"name": "Ada"},
        "big": 10**30,
        "ratio": 0.1,
        "items": [1, "two", None, True],
        "expires_at": "2030-12-24T09:00:00+01:00",
    }
    fields = MessageFields(
        notification_id="0b6d1c1e-1111-4222-8333-444455556666",
        notification_type="password.expiring",
        recipient="ada@example.com",
        entity_id="user-1",
        target_date=datetime.datetime(2030, 12, 24, 23, 30, tzinfo=ZoneInfo("Asia/Kolkata")),
        lead_time=datetime.timedelta(days=7, hours=12),
        channel="email",
        unsubscribe_url="https://n.example/u/abc",
    )
    own = text(
        "{{ big }} {{ ratio }} {{ items }} {{ target_date }} {{ target_date | date }} "
        "{{ target_date | datetime }} {{ lead_time }} {{ lead_time_days }} {{ payload.name }} "
        "{{ notification.entity_id }} {{ unsubscribe_url }}",
        subject="{{ expires_at | date('%Y-%m-%d') }} {{ name }}",
        html="<p>{{ name }} {{ items | join(', ') }}</p>",
    )
    context = template_context(payload, **msgspec.structs.asdict(fields))
    in_process = Renderer()

    for source in [own, *builtin_templates().values()]:
        assert await pool.render("tenant-a", source, payload, fields) == in_process.render(
            source, context
        )


async def test_children_started_ahead_of_work_serve_it_without_starting_more(
    pool: RenderPool,
) -> None:
    pool.start_children()
    await eventually_true(lambda: len(pool.child_pids()) == 2, timeout=60)
    started = set(pool.child_pids())

    rendered = await asyncio.gather(
        *pool.render_many([ToRender(t, text("{{ t }}"), {"t": t}, FIELDS) for t in "ab"])
    )

    assert [message.text for message in rendered] == ["a", "b"]
    assert pool.started == 2
    assert set(pool.child_pids()) == started
    pool.start_children()  # all running already: nothing more to start
    assert pool.started == 2


async def test_closing_fails_waiting_work_and_leaves_no_process() -> None:
    pool = RenderPool(size=1, render_timeout_seconds=5, memory_mb=256)
    await pool.render("tenant-a", text("warm"), {}, FIELDS)
    (pid,) = pool.child_pids()
    in_progress = asyncio.ensure_future(pool.render("tenant-a", text(BUSY_25_MS * 40), {}, FIELDS))
    waiting = asyncio.ensure_future(pool.render("tenant-b", text("b"), {}, FIELDS))
    await asyncio.sleep(0.05)

    await pool.close()

    for render in (in_progress, waiting):
        with pytest.raises(RendererUnavailable):
            await render
    assert not alive(pid)
    assert sandboxes_of_this_process() == []
    with pytest.raises(RendererUnavailable):
        await pool.render("tenant-a", text("too late"), {}, FIELDS)


async def test_closing_while_a_child_starts_leaves_no_process() -> None:
    pool = RenderPool(size=2, render_timeout_seconds=0.1, memory_mb=256)
    renders = [asyncio.ensure_future(pool.render(tenant, text("t"), {}, FIELDS)) for tenant in "ab"]
    await eventually_true(lambda: len(sandboxes_of_this_process()) == 2)

    await pool.close()

    for render in renders:
        with pytest.raises(RendererUnavailable):
            await render
    assert sandboxes_of_this_process() == []


async def eventually_true(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.001)
