"""Rendering tenants' templates in a pool of sandbox processes, fairly between tenants.

No template is compiled or rendered in the API's or a worker's own process: their event
loops never wait on one. Each process has a :class:`RenderPool` of at most
``NOTIFIER_TEMPLATE_RENDERERS`` children (:mod:`notifier.templates.sandbox`), started when
first needed and kept for the process's life. The bounds:

- **Time.** Each item has ``NOTIFIER_TEMPLATE_RENDER_TIMEOUT_MS`` of CPU time to render
  (and ten times that to compile a part it has not compiled before). The child's own timer
  turns most overruns into a clean error. The parent does not rely on it: when the wall
  deadline the child published (in shared memory) has passed by ``KILL_GRACE_SECONDS``
  and the child has used its CPU budget (it is stuck in one C call), the parent kills it
  with SIGKILL and starts another; the template gets a :class:`TemplateProblem` naming
  the part. A child that is late without having used its budget was slowed down by a
  saturated machine: it gets ``STARVED_WAIT_SECONDS`` more, then is killed without
  blaming the template.
- **Memory, recursion, output.** Limits the child sets on itself (see the sandbox) and
  ``MAX_RENDERED_CHARS``; the parent also refuses replies over ``MAX_MESSAGE_BYTES``.
- **Fairness.** Work waits in one queue per tenant, and free children take the next job
  round-robin over tenants. A job runs for at most one time slice (the render budget)
  plus the item in progress, then yields the child: its remaining items queue again
  behind the other tenants' work. A tenant flooding previews or slow templates delays
  another tenant's render by at most about one slice per busy tenant.

A child that dies on an item it was not killed for (an external SIGKILL, a crash) is
replaced and the item tried once more; dying on it again blames the template. Errors not
caused by the template (the pool closing, children dying twice on a job before taking an
item, a child starved of CPU twice) raise :class:`RendererUnavailable`: callers retry later
instead of failing anything.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

import msgspec

from notifier.templates import protocol
from notifier.templates.messages import (
    MessageFields,
    RenderedMessage,
    TemplateProblem,
    TemplateSource,
)

logger = logging.getLogger("notifier.templates")

# Compiling a part may take this many times the render budget: compiling is linear in the
# template's size, about 4 µs per tag or variable, so a 100,000-character body full of
# them takes about 0.4 s once per process and version.
COMPILE_BUDGET_FACTOR = 10
# How long past the deadline a child published the parent waits before killing it: room
# for the reply to travel and for the parent's own event loop to be late.
KILL_GRACE_SECONDS = 0.05
# Then one more short wait for a reply already on its way, before deciding anything.
LAST_LOOK_SECONDS = 0.01
# /proc reports CPU time in ticks of 10 ms.
CPU_MARGIN_SECONDS = 0.02
# A child past its deadline that has not used its CPU budget (a saturated machine) is
# waited for this much longer, then killed without blaming the template.
STARVED_WAIT_SECONDS = 2.0
# A new child has this long to start (import Jinja2, set its limits) and say it is ready.
START_TIMEOUT_SECONDS = 30.0
# A child asked to stop (stdin closed) has this long to exit before it is killed.
STOP_TIMEOUT_SECONDS = 1.0
# Environment variables a child inherits: what Python and the C library need, no secrets.
_INHERITED = (
    *("PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX"),
    *("LANG", "LANGUAGE", "TZ", "SYSTEMROOT"),
)


class RendererUnavailable(Exception):
    """The pool could not render for reasons not the template's: retry later."""


class ToRender(NamedTuple):
    """One message to render for ``tenant_id``: a template, a payload, the notification."""

    tenant_id: str
    source: TemplateSource
    payload: dict[str, Any]
    fields: MessageFields


@dataclass(eq=False)
class _Item:
    source: TemplateSource
    future: asyncio.Future[Any]
    payload: dict[str, Any] | None = None
    fields: MessageFields | None = None
    # Times a child died on this item while the template was not shown to be at fault.
    failures: int = 0


@dataclass(eq=False)
class _Job:
    """Items of one tenant, in one request to one child."""

    tenant_id: str
    kind: Literal["render", "check"]
    items: list[_Item]
    # Times a child died on this job before taking any of its items.
    failures: int = 0


class _Timeout:
    """What :meth:`_Child.next_reply` returns when no reply came in time."""


TIMED_OUT = _Timeout()


class _Child(asyncio.SubprocessProtocol):
    """One sandbox process: its pipes (replies decoded as they arrive, no reader task) and
    its progress block."""

    def __init__(self, progress: protocol.ProgressBlock) -> None:
        loop = asyncio.get_running_loop()
        self.progress = progress
        self.transport: asyncio.SubprocessTransport | None = None
        self.pid = 0
        self._buffer = bytearray()
        # Decoded replies not yet taken; None at the end (stdout closed, or nonsense).
        self._replies: collections.deque[protocol.Reply | None] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._exited: asyncio.Future[None] = loop.create_future()
        self._stopped = False

    # --- asyncio.SubprocessProtocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transport has the methods without being an asyncio subclass.
        self.transport = cast(asyncio.SubprocessTransport, transport)
        self.pid = self.transport.get_pid()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if fd != 1 or self._ended:
            return
        assert isinstance(data, bytes)
        self._buffer += data
        header = protocol.HEADER.size
        while len(self._buffer) >= header:
            (length,) = protocol.HEADER.unpack_from(self._buffer)
            if length > protocol.MAX_MESSAGE_BYTES:
                logger.warning("template sandbox %d sent %d bytes", self.pid, length)
                self._end()
                return
            if len(self._buffer) < header + length:
                break
            try:
                reply = protocol.reply_decoder.decode(self._buffer[header : header + length])
            except msgspec.MsgspecError:
                logger.warning("template sandbox %d sent a malformed reply", self.pid)
                self._end()
                return
            del self._buffer[: header + length]
            self._replies.append(reply)
        self._wake()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._end()

    def process_exited(self) -> None:
        if not self._exited.done():
            self._exited.set_result(None)

    # --- the parent's side -------------------------------------------------------------

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._replies.append(None)
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_reply(self, within_seconds: float) -> protocol.Reply | _Timeout | None:
        """The next reply, :data:`TIMED_OUT` if none comes within that long, None once gone."""
        if not self._replies:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(within_seconds):
                    await self._waiter
            except TimeoutError:
                if not self._replies:  # it may have come in the very turn the time ran out
                    return TIMED_OUT
            finally:
                self._waiter = None
        return self._replies.popleft()

    def send(self, body: bytes) -> None:
        """Write a request. A dead child's pipe is closed: the reply then reads as None."""
        assert self.transport is not None
        stdin = self.transport.get_pipe_transport(0)
        if stdin is not None and not stdin.is_closing():
            cast(asyncio.WriteTransport, stdin).write(protocol.frame(body))

    def gone(self) -> bool:
        """Whether the child has closed its end (died, or was killed from outside)."""
        return self._ended or self._exited.done()

    def returncode(self) -> int | None:
        return None if self.transport is None else self.transport.get_returncode()

    def cpu_seconds(self) -> float | None:
        """The child's CPU time so far, from /proc (None where there is no /proc)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_bytes()
        except OSError:
            return None
        # Fields after the command name (which may hold spaces): state is field 3, utime 14.
        fields = stat.rpartition(b")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def stop(self, *, kill: bool) -> None:
        """End the process (closing stdin lets an idle child exit by itself) and reap it."""
        if self._stopped:
            return
        self._stopped = True
        assert self.transport is not None
        stdin = self.transport.get_pipe_transport(0)
        if stdin is not None:
            stdin.close()
        if not kill:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                    await asyncio.shield(self._exited)
        if self.transport.get_returncode() is None:
            with contextlib.suppress(ProcessLookupError):
                self.transport.kill()
        await asyncio.shield(self._exited)
        self.transport.close()
        self.progress.close()


def _child_environment() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if name in _INHERITED or name.startswith("LC_")
    }


class RenderPool:
    """Template sandboxes for one process; see the module's docstring for the bounds."""

    def __init__(self, *, size: int, render_timeout_seconds: float, memory_mb: int) -> None:
        self.size = size
        self.render_seconds = render_timeout_seconds
        self.compile_seconds = render_timeout_seconds * COMPILE_BUDGET_FACTOR
        self.memory_mb = memory_mb
        self.render_message = f"took longer than {render_timeout_seconds * 1000:.0f} ms to render"
        self.compile_message = f"took longer than {self.compile_seconds * 1000:.0f} ms to compile"
        self._queues: dict[str, collections.deque[_Job]] = {}
        self._turns: collections.deque[str] = collections.deque()
        self._queued = 0
        self._idle = 0
        self._work = asyncio.Event()
        self._runners: set[asyncio.Task[None]] = set()
        self._children: set[_Child] = set()
        self._closed = False
        # Children started and requests sent, for tests: a kill shows as one more child.
        self.started = 0
        self.requests_sent = 0

    def child_pids(self) -> list[int]:
        """The process ids of the children running now."""
        return [child.pid for child in self._children]

    # --- the API ---------------------------------------------------------------------

    async def check(self, tenant_id: str, source: TemplateSource) -> None:
        """Raise :class:`TemplateProblem` naming the first part that does not compile."""
        future = asyncio.get_running_loop().create_future()
        self._enqueue(_Job(tenant_id, "check", [_Item(source, future)]))
        await future

    async def render(
        self,
        tenant_id: str,
        source: TemplateSource,
        payload: dict[str, Any],
        fields: MessageFields,
    ) -> RenderedMessage:
        """Render every part; raises :class:`TemplateProblem` or :class:`RendererUnavailable`."""
        (future,) = self.render_many([ToRender(tenant_id, source, payload, fields)])
        return await future

    def render_many(self, work: Sequence[ToRender]) -> list[asyncio.Future[RenderedMessage]]:
        """Queue every message to render; one future each, in order, resolved as soon as
        its own render is done (a batch's fast ones need not wait for its slow ones).

        Each tenant's messages go out in one request (a delivery batch is mostly one
        tenant's: one round trip for all of them), queued fairly with other tenants' work.
        """
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[RenderedMessage]] = []
        jobs: dict[str, _Job] = {}
        for tenant_id, source, payload, fields in work:
            future: asyncio.Future[RenderedMessage] = loop.create_future()
            futures.append(future)
            job = jobs.setdefault(tenant_id, _Job(tenant_id, "render", []))
            job.items.append(_Item(source, future, payload, fields))
        for job in jobs.values():
            self._enqueue(job)
        return futures

    def start_children(self) -> None:
        """Start every child now, in the background, instead of when first needed.

        A worker calls this as it starts: starting a child (Python, then Jinja2) takes a
        few hundred milliseconds of CPU, which the first deliveries would otherwise wait
        for, a burst due just after a deploy among them. A child that cannot start is
        started again when work needs it, as before.
        """
        while not self._closed and len(self._runners) < self.size:
            self._add_runner(start_child=True)

    async def close(self) -> None:
        """Stop every child; work still queued or in progress gets RendererUnavailable."""
        self._closed = True
        for queue in self._queues.values():
            for job in queue:
                self._fail(job.items, RendererUnavailable("the template renderer is closing"))
        self._queues.clear()
        self._turns.clear()
        self._work.set()
        for runner in list(self._runners):
            runner.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        for child in list(self._children):  # none should be left; no process outlives us
            await self._stop_child(child, kill=True)

    # --- the fair queue ----------------------------------------------------------------

    def _enqueue(self, job: _Job, *, front: bool = False) -> None:
        if self._closed:
            self._fail(job.items, RendererUnavailable("the template renderer is closed"))
            return
        queue = self._queues.get(job.tenant_id)
        if queue is None:
            queue = self._queues[job.tenant_id] = collections.deque()
            self._turns.append(job.tenant_id)
        if front:
            queue.appendleft(job)
        else:
            queue.append(job)
        self._queued += 1
        self._work.set()
        if self._queued > self._idle and len(self._runners) < self.size:
            self._add_runner(start_child=False)

    def _add_runner(self, *, start_child: bool) -> None:
        runner = asyncio.get_running_loop().create_task(
            self._run(start_child=start_child), name="notifier-template-runner"
        )
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)

    def _take(self) -> _Job | None:
        """The next tenant's oldest job (that still has callers waiting), round-robin."""
        while self._turns:
            tenant_id = self._turns.popleft()
            queue = self._queues[tenant_id]
            job = queue.popleft()
            self._queued -= 1
            if queue:
                self._turns.append(tenant_id)
            else:
                del self._queues[tenant_id]
            job.items = [item for item in job.items if not item.future.done()]
            if job.items:
                return job
        return None

    # --- the children ------------------------------------------------------------------

    async def _run(self, *, start_child: bool) -> None:
        """One child's life: take the next job, serve it, replace the child if it died.
        ``start_child``: start it before there is work (else when the first job comes)."""
        child: _Child | None = None
        try:
            if start_child:
                try:
                    child = await self._start_child()
                except Exception:
                    # Work starts one when it needs it; that failure reaches the callers.
                    logger.exception("could not start a template sandbox ahead of work")
            while not self._closed:
                job = self._take()
                if job is None:
                    self._work.clear()
                    self._idle += 1
                    try:
                        await self._work.wait()
                    finally:
                        self._idle -= 1
                    continue
                try:
                    child = await self._serve_on(child, job)
                except asyncio.CancelledError:
                    self._fail(job.items, RendererUnavailable("the template renderer is closing"))
                    raise
        finally:
            if child is not None:
                await self._stop_child(child, kill=False)

    async def _serve_on(self, child: _Child | None, job: _Job) -> _Child | None:
        """Serve ``job`` on ``child``, started or replaced first if need be; the child to
        use next (None: start one when next needed)."""
        if child is not None and child.gone():
            # Killed from outside while idle: replace it before it is asked anything.
            await self._stop_child(child, kill=True)
            child = None
        if child is None:
            try:
                child = await self._start_child()
            except Exception as exc:
                # Callers must not wait for ever; they may retry (a 503, a job retry).
                logger.exception("could not start a template sandbox")
                self._fail(job.items, RendererUnavailable(f"cannot start: {exc!r}"))
                return None
        try:
            usable = await self._serve(child, job)
        except Exception as exc:
            # A defect here must not leave callers waiting for ever.
            logger.exception("template sandbox runner failed")
            self._fail(job.items, RendererUnavailable(f"template renderer: {exc!r}"))
            usable = False
        if usable:
            return child
        await self._stop_child(child, kill=True)
        return None

    async def _start_child(self) -> _Child:
        progress = protocol.ProgressBlock.create()
        child = _Child(progress)
        try:
            await asyncio.get_running_loop().subprocess_exec(
                lambda: child,
                *(sys.executable, "-m", "notifier.templates.sandbox"),
                *("--render-ms", str(self.render_seconds * 1000)),
                *("--compile-ms", str(self.compile_seconds * 1000)),
                *("--slice-ms", str(self.render_seconds * 1000)),
                *("--memory-mb", str(self.memory_mb)),
                *("--progress-fd", str(progress.fd)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,
                pass_fds=(progress.fd,),
                # Its own session: a terminal's Ctrl-C goes to the parent only, which
                # stops its children itself.
                start_new_session=True,
                env=_child_environment(),
            )
        except BaseException:
            progress.close()
            raise
        self._children.add(child)
        self.started += 1
        try:
            ready = await child.next_reply(START_TIMEOUT_SECONDS)
        except asyncio.CancelledError:
            await self._stop_child(child, kill=True)
            raise
        if not isinstance(ready, protocol.Ready):
            await self._stop_child(child, kill=True)
            raise RendererUnavailable(
                f"the template sandbox did not start (exit status {child.returncode()})"
            )
        return child

    async def _stop_child(self, child: _Child, *, kill: bool) -> None:
        self._children.discard(child)
        await child.stop(kill=kill)

    async def _serve(self, child: _Child, job: _Job) -> bool:
        """Send ``job`` to ``child`` and resolve its items as replies come; whether the child
        is still usable."""
        items = job.items
        try:
            body = self._encode(job)
        except (TypeError, ValueError) as exc:  # a payload JSON cannot carry
            self._fail(items, exc)
            return True
        done = 0
        try:
            since = time.monotonic()
            self.requests_sent += 1
            child.send(body)
            while True:
                reply = await self._next_reply(child, since)
                if not isinstance(reply, protocol.Results):
                    await self._child_died(child, job, done, overran=reply is TIMED_OUT)
                    return False
                for offset, outcome in enumerate(reply.outcomes):
                    self._resolve(items[reply.first + offset], outcome)
                done = reply.first + len(reply.outcomes)
                since = time.monotonic()
                if not reply.more:
                    break
        except asyncio.CancelledError:
            self._fail(items[done:], RendererUnavailable("the template renderer is closing"))
            await self._stop_child(child, kill=True)
            raise
        if done < len(items):
            # The child's time slice is used up: the rest waits behind other tenants.
            self._enqueue(_Job(job.tenant_id, job.kind, items[done:]), front=True)
        return True

    async def _next_reply(self, child: _Child, since: float) -> protocol.Reply | _Timeout | None:
        """The child's next reply, :data:`TIMED_OUT` when it missed its deadline, None if it
        died.

        The deadline is the one the child published, plus a grace. Past it, a child that
        has not yet used its CPU budget (read from /proc) was slowed down by a busy machine,
        not by the template: it gets up to ``STARVED_WAIT_SECONDS`` more. One that has used
        it is stuck in a single C call its own timer cannot interrupt.
        """
        # A child may give itself at most this long per item (three compiles and the
        # render); the parent never waits longer, whatever the child published.
        longest = 3 * self.compile_seconds + 2 * self.render_seconds
        while True:
            progress = child.progress.read()
            if progress.phase == protocol.IDLE:
                # Between items, or not yet started on the request: decoding and writing
                # take far less than a render budget.
                deadline = max(progress.deadline, since + self.render_seconds)
            else:
                deadline = progress.deadline
            deadline = min(deadline, since + longest) + KILL_GRACE_SECONDS
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                # A last look, in case this event loop was late rather than the child: the
                # reply may be waiting in the pipe, read within a few loop turns.
                reply = await child.next_reply(LAST_LOOK_SECONDS)
                if reply is not TIMED_OUT:
                    return reply
                starved = self._starved_for(child, progress, deadline)
                if starved is None:
                    return TIMED_OUT
                timeout = starved
            reply = await child.next_reply(timeout)
            if reply is not TIMED_OUT:
                return reply
            # The deadline may have moved since (a compile ended): look again.

    @staticmethod
    def _starved_for(child: _Child, progress: protocol.Progress, deadline: float) -> float | None:
        """How much longer to wait for a child past its deadline that has not used its CPU
        budget yet; None to kill it now."""
        if time.monotonic() > deadline + STARVED_WAIT_SECONDS:
            return None
        if progress.phase == protocol.IDLE:
            # Decoding a request or writing replies, bounded in size and no template's code:
            # only a saturated machine makes it late. Look again shortly.
            return 5 * LAST_LOOK_SECONDS
        cpu = child.cpu_seconds()
        if cpu is None or cpu >= progress.cpu_limit + CPU_MARGIN_SECONDS:
            return None
        # It needs at least this much more wall time to reach its budget.
        return max(progress.cpu_limit + CPU_MARGIN_SECONDS - cpu, LAST_LOOK_SECONDS)

    async def _child_died(self, child: _Child, job: _Job, done: int, *, overran: bool) -> None:
        """Kill (if needed) and reap a child that overran or died during ``job``; decide
        what becomes of the job's items from where it was and what it used."""
        progress = child.progress.read()
        cpu = child.cpu_seconds() if overran else None
        await self._stop_child(child, kill=True)
        status = child.returncode()
        items = job.items
        rest = items[done:]
        if progress.phase == protocol.IDLE or not done <= progress.item < len(items):
            # It died before taking an item, or between two: nothing to blame.
            job.failures += 1
            logger.warning("template sandbox %d died (status %s)", child.pid, status)
            if job.failures >= 2:
                self._fail(rest, RendererUnavailable("the template renderer keeps failing"))
            elif rest:
                self._enqueue(_Job(job.tenant_id, job.kind, rest, job.failures), front=True)
            return
        culprit = items[progress.item]
        compiling = progress.phase == protocol.COMPILING
        if overran:
            # /proc's CPU times are in ticks (10 ms): a child whose timer had fired is
            # at most that far below its limit.
            used_budget = cpu is None or cpu + CPU_MARGIN_SECONDS >= progress.cpu_limit
            logger.warning(
                "template sandbox %d killed: %s of a template overran its deadline (%s)",
                child.pid,
                progress.part,
                "CPU budget used" if used_budget else "starved of CPU",
            )
            if used_budget:
                message = self.compile_message if compiling else self.render_message
                culprit.future.set_exception(TemplateProblem(progress.part, message))
            else:
                culprit.failures += 1
                if culprit.failures >= 2:
                    culprit.future.set_exception(
                        RendererUnavailable("the template renderer got too little CPU time")
                    )
        else:
            logger.warning(
                "template sandbox %d died (status %s) on %s",
                child.pid,
                status,
                progress.part,
            )
            culprit.failures += 1
            if culprit.failures >= 2:
                culprit.future.set_exception(
                    TemplateProblem(progress.part, "made the template renderer crash")
                )
        rest = [item for item in rest if not item.future.done()]
        if rest:
            self._enqueue(_Job(job.tenant_id, job.kind, rest), front=True)

    # --- messages ----------------------------------------------------------------------

    @staticmethod
    def _encode(job: _Job) -> bytes:
        if job.kind == "check":
            return protocol.request_encoder.encode(
                protocol.CheckRequest([item.source for item in job.items])
            )
        index: dict[TemplateSource, int] = {}
        sources: list[TemplateSource] = []
        items = []
        for item in job.items:
            position = index.get(item.source)
            if position is None:
                position = index[item.source] = len(sources)
                sources.append(item.source)
            assert item.payload is not None
            assert item.fields is not None
            items.append(protocol.RenderItem(position, item.payload, item.fields))
        return protocol.request_encoder.encode(protocol.RenderRequest(sources, items))

    @staticmethod
    def _resolve(item: _Item, outcome: protocol.Outcome) -> None:
        if item.future.done():  # its caller gave up waiting
            return
        if isinstance(outcome, protocol.Rendered):
            item.future.set_result(
                RenderedMessage(subject=outcome.subject, text=outcome.text, html=outcome.html)
            )
        elif isinstance(outcome, protocol.Failed):
            item.future.set_exception(TemplateProblem(outcome.part, outcome.message, outcome.line))
        else:
            item.future.set_result(None)

    @staticmethod
    def _fail(items: Sequence[_Item], exc: BaseException) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(exc)
