"""At most ``NOTIFIER_WEBHOOK_MAX_IN_FLIGHT_PER_HOST`` webhook requests in flight to one host,
across every worker process.

Without a cap, a host that never answers holds a delivery slot for the whole timeout per
attempt, and with enough notifications it holds every slot of every worker: other tenants'
deliveries wait behind it (docs/reliability.md, section 6). With the cap it holds at most
``cap`` requests, whatever its backlog.

**Slots.** Slot ``i`` of a host (its origin: scheme, host and port, however the URL spells
them, :func:`notifier.channels.egress.origin_of`) is the advisory lock
``(hashtext(origin), i)``, tried without waiting on the delivery's own connection, inside
the transaction that holds the notifications' row locks. They are session-level locks, given
back the moment the batch is done with that host: a batch that waits on one hanging host
must not keep another host's slots until it commits, as transaction-level locks would. They
never outlive the transaction either (transaction pooling in PgBouncer allows nothing else):
every way out of :func:`send_within_host_caps` gives them back, and a connection that cannot
is closed, which ends its session and its locks, as a crash does.

**Lanes.** Through each slot it holds, a batch sends its notifications to that host one
after the other, while each send takes under :data:`LANE_QUICK_SECONDS` and the batch has
been sending for less than the channel's timeout: a healthy host takes a whole batch
through ``cap`` connections in milliseconds, while a hanging one costs one timeout per slot,
not one per notification. A batch holds at most :data:`MAX_SLOTS_PER_BATCH` slots at once,
however many hosts it sends to; the hosts left out get theirs as its lanes end.

**Hand-overs.** A lane that has held its slot for :data:`HAND_OVER_SECONDS` gives it back
between two sends and asks again, without waiting, for as many slots of its host as the
batch has notifications left (its other slots counted): a batch of another process waiting
in PostgreSQL for that slot gets it on the spot (PostgreSQL grants a lock given back to its
waiter before anyone else can try it), and this batch goes on through the slots still
free. So batches of several processes share a healthy host instead of the first one
keeping every slot until it has sent all it has, while the others are put off. A lane to a
hanging host hands nothing over: it ends after its one slow send.

**Waiting.** A batch that got no slot of a host asks again, every :data:`RETRY_SECONDS`,
while its other sends are in flight. Once nothing else is in flight, it waits for a slot
only where waiting pays. While this process's sends to that host have just ended quickly (or
are under way and younger than :data:`LANE_QUICK_SECONDS`), it waits for its turn: a slot
given back by a batch here goes to the batch here that has waited longest for that host
(woken alone, and a lane handing its slot over then does not take it back): the batches of a
worker queue for a busy healthy host, whose slots turn over in milliseconds, instead of going
round the queue, and without every waiting batch trying for each slot given back.
If the slots are all held by other processes, it waits in PostgreSQL (which hands a slot
over the moment it is given back) for at most :data:`ELSEWHERE_PATIENCE_SECONDS`, as those
may be sending to a hanging host; a healthy host's lanes hand a slot over sooner, and a
batch that got one this way has the whole patience again for its next wait. A host whose sends here are slow is not waited for. What
is still unsent then is handed back untouched by :func:`put_off`: no attempt is recorded or
counted; its job is due again later, after a wait that doubles with each wait of that
delivery, from :data:`FIRST_WAIT_SECONDS` up to the channel's timeout (by then every slot
taken before has come free at least once). Waiting never holds a slot: a batch waits only
once all its lanes have ended, so two batches never wait on each other's slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

from notifier.channels.webhook import MAX_REQUESTS_IN_FLIGHT
from notifier.db import Connection
from notifier.notifications import queries
from notifier.notifications.queries import DeliveryRow
from notifier.notifications.scheduling import defer_delivery
from notifier.queue import jobs
from notifier.queue.retry import backoff_seconds
from notifier.services import Services

logger = logging.getLogger("notifier.delivery")

LANE_QUICK_SECONDS = 1.0
RETRY_SECONDS = 0.25
ELSEWHERE_PATIENCE_SECONDS = 0.2
HAND_OVER_SECONDS = 0.1
FIRST_WAIT_SECONDS = 0.5
# Slots one batch holds at once, whatever its size and however many hosts it sends to: the
# process sends at most this many webhook requests at once anyway (the channel's own
# limit), and each slot is an advisory lock in PostgreSQL's shared lock table, which is
# sized by max_locks_per_transaction (64 by default) per connection.
MAX_SLOTS_PER_BATCH = MAX_REQUESTS_IN_FLIGHT


class HostBusy(NamedTuple):
    """Not sent, no attempt made: ``origin`` had no free slot (or was too slow to go on)."""

    origin: str


class Waiting(NamedTuple):
    """A notification of a batch handed back to wait for a slot of ``origin``."""

    row: DeliveryRow
    job_id: int | None
    origin: str
    # This job's own notification (its job is running), not one taken along.
    own: bool


def wait_seconds(waits: int, timeout_seconds: float) -> float:
    """How long a delivery that has waited ``waits`` times already waits this time."""
    return backoff_seconds(
        waits + 1, base=FIRST_WAIT_SECONDS, cap=max(FIRST_WAIT_SECONDS, timeout_seconds)
    )


async def send_within_host_caps(
    conn: Connection,
    origins: dict[int, str],
    send: Callable[[int], Coroutine[Any, Any, None]],
    *,
    cap: int,
    budget_seconds: float,
) -> dict[int, str]:
    """Run ``send(index)`` for the indexes of ``origins`` (index -> its host's origin), each
    host's sends through the slots of it this batch gets; the indexes left unsent, with
    their host. Indexes go through their host's lanes in the order given.

    No send starts once the batch has been sending for ``budget_seconds``.
    """
    return await _Lanes(conn, origins, send, cap=cap, budget_seconds=budget_seconds).run()


class _Traffic:
    """This process's sends to capped hosts (in one event loop): those under way, when
    each host last answered a send quickly, and the batches here waiting for a slot of
    each host, woken one per slot given back."""

    def __init__(self) -> None:
        # Per host with sends under way here: those sends (when each started), and when
        # one of its sends last ended quickly. Hosts leave when their last send ends.
        self.sends: dict[str, dict[asyncio.Task[None], float]] = {}
        self.quick_end: dict[str, float] = {}
        # Per host, the batches here waiting for one of its slots, first come first.
        self.waiting: dict[str, deque[asyncio.Future[None]]] = {}

    def begin(self, origin: str, send: asyncio.Task[None], started: float) -> None:
        self.sends.setdefault(origin, {})[send] = started

    def end(self, origin: str, send: asyncio.Task[None]) -> None:
        sends = self.sends.get(origin, {})
        started = sends.pop(send, None)
        now = time.monotonic()
        if started is not None and now - started < LANE_QUICK_SECONDS:
            self.quick_end[origin] = now
        if not sends:
            self.sends.pop(origin, None)
            # Its last quick end is kept (turning_over() lets it age): the next batch here
            # takes the slots just given back, but has ended no send of its own yet.
            for stale in [o for o, t in self.quick_end.items() if now - t >= RETRY_SECONDS]:
                del self.quick_end[stale]

    def here(self, origin: str) -> bool:
        """Whether batches of this process send to ``origin`` now."""
        return origin in self.sends

    def turning_over(self, origin: str) -> bool:
        """Whether a slot of ``origin`` is likely to come free in a moment: this process's
        sends to it have just ended quickly, or those under way here all started less than
        :data:`LANE_QUICK_SECONDS` ago (a host that hangs holds them longer). The second
        keeps a batch waiting while an event loop too busy to end a send every
        :data:`RETRY_SECONDS` still sends to a healthy host."""
        now = time.monotonic()
        ended = self.quick_end.get(origin)
        if ended is not None and now - ended < RETRY_SECONDS:
            return True
        sends = self.sends.get(origin)
        return sends is not None and now - min(sends.values()) < LANE_QUICK_SECONDS

    def wait_for_turn(self, origin: str) -> asyncio.Future[None]:
        """A future done when a batch here gives back a slot of ``origin`` for this one."""
        turn = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(origin, deque()).append(turn)
        return turn

    def stop_waiting(self, origin: str, turn: asyncio.Future[None]) -> None:
        queue = self.waiting.get(origin)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(turn)
            if not queue:
                del self.waiting[origin]

    def waiters(self, origin: str) -> bool:
        """Whether batches here wait for a slot of ``origin``."""
        return bool(self.waiting.get(origin))

    def note_given_back(self, slots: list[tuple[str, int]]) -> None:
        """Wake one waiting batch per slot given back, of its host: the others would only
        try for a slot someone else gets (a statement each)."""
        for origin, _ in slots:
            queue = self.waiting.get(origin)
            while queue:
                turn = queue.popleft()
                if not turn.done():
                    turn.set_result(None)
                    break
            if queue is not None and not queue:
                del self.waiting[origin]


_TRAFFIC: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Traffic] = (
    weakref.WeakKeyDictionary()
)


def _traffic() -> _Traffic:
    """The running event loop's :class:`_Traffic` (one per worker process)."""
    loop = asyncio.get_running_loop()
    if loop not in _TRAFFIC:
        _TRAFFIC[loop] = _Traffic()
    return _TRAFFIC[loop]


class _Lanes:
    """One batch's sends to capped hosts, and the slots it holds for them."""

    def __init__(
        self,
        conn: Connection,
        origins: dict[int, str],
        send: Callable[[int], Coroutine[Any, Any, None]],
        *,
        cap: int,
        budget_seconds: float,
    ) -> None:
        self.conn = conn
        self.send = send
        self.cap = cap
        self.budget_seconds = budget_seconds
        self.pending: dict[str, deque[int]] = {}
        for index, origin in origins.items():
            self.pending.setdefault(origin, deque()).append(index)
        # Each slot held, and since when (a lane hands it over after HAND_OVER_SECONDS).
        self.held: dict[tuple[str, int], float] = {}
        # Each send in flight: its host, the slot it uses, when it started.
        self.running: dict[asyncio.Task[None], tuple[str, int, float]] = {}
        # Hosts this batch sends no more to: their sends took LANE_QUICK_SECONDS or more, or
        # no slot came within the patience.
        self.done_with: set[str] = set()
        self.started = time.monotonic()
        self.traffic = _traffic()
        # What this batch may still spend waiting for slots other processes hold.
        self.patience_elsewhere = ELSEWHERE_PATIENCE_SECONDS

    async def run(self) -> dict[int, str]:
        try:
            await self._take(list(self.pending))
            while True:
                await self._send_while_slots_turn_over()
                if not (starved := self._starved()):
                    break
                await self._wait_for_a_slot(starved[0])
        finally:
            await self._stop()
        return {index: origin for origin, queue in self.pending.items() for index in queue}

    async def _send_while_slots_turn_over(self) -> None:
        """Run the lanes until none is left, asking again for slots of starved hosts."""
        while self.running:
            retry = bool(self._starved())
            done, _ = await asyncio.wait(
                self.running,
                timeout=RETRY_SECONDS if retry else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            lanes_ended = []
            handed_over = []
            for task in done:
                origin, slot, began = self.running.pop(task)
                self.traffic.end(origin, task)
                task.result()  # anything but a DeliveryError ends the batch
                now = time.monotonic()
                if now - began >= LANE_QUICK_SECONDS:
                    self.done_with.add(origin)
                if self._lane_goes_on(origin) and now - self.held[origin, slot] >= (
                    HAND_OVER_SECONDS
                ):
                    handed_over.append((origin, slot))
                elif not self._start(origin, slot):
                    lanes_ended.append((origin, slot))
            # A slot handed over goes to a batch here waiting for it, if there is one (woken
            # as it is given back); else to whoever waits in PostgreSQL, else back to this
            # lane. Hosts without a slot first: a batch holds at most MAX_SLOTS_PER_BATCH.
            retake = [o for o, _ in handed_over if not self.traffic.waiters(o)]
            await self._give_back(lanes_ended + handed_over)
            if again := self._starved() + list(dict.fromkeys(retake)):
                await self._take(again)

    async def _wait_for_a_slot(self, origin: str) -> None:
        """Nothing else in flight: wait for a slot of ``origin`` where waiting pays (see the
        module's documentation), and start its lane; or be done with it."""
        if not self.traffic.here(origin) and self.patience_elsewhere > 0:
            await self._wait_in_database(origin)
        while (
            not self.running
            and self.traffic.turning_over(origin)
            and self._sending_for() < self.budget_seconds
        ):
            turn = self.traffic.wait_for_turn(origin)
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RETRY_SECONDS):
                        await turn
            finally:
                self.traffic.stop_waiting(origin, turn)
            await self._take([origin])
        if not self.running:
            self.done_with.add(origin)

    async def _wait_in_database(self, origin: str) -> None:
        # Waiters spread over the slots; whichever is given back first, one of them wakes.
        slot = random.randrange(self.cap)  # noqa: S311 - spreading, not secrecy
        began = time.monotonic()
        try:
            got = await queries.wait_for_host_slot(
                self.conn, origin, slot, seconds=self.patience_elsewhere
            )
        except BaseException:
            self._maybe_held([(origin, slot)])
            raise
        self.patience_elsewhere -= time.monotonic() - began
        if got:
            # A slot came within the patience: the host turns over, and the slot may be
            # handed over again; each later wait has the whole patience again.
            self.patience_elsewhere = ELSEWHERE_PATIENCE_SECONDS
            self.held[origin, slot] = time.monotonic()
            if not self._start(origin, slot):
                await self._give_back([(origin, slot)])

    def _sending_for(self) -> float:
        return time.monotonic() - self.started

    def _lane_goes_on(self, origin: str) -> bool:
        """Whether a lane of ``origin`` has its next notification to send."""
        return (
            bool(self.pending[origin])
            and origin not in self.done_with
            and self._sending_for() < self.budget_seconds
        )

    def _start(self, origin: str, slot: int) -> bool:
        """Send ``origin``'s next notification through ``slot``; False if its lane ends."""
        if not self._lane_goes_on(origin):
            return False
        task = asyncio.create_task(self.send(self.pending[origin].popleft()))
        now = time.monotonic()
        self.running[task] = (origin, slot, now)
        self.traffic.begin(origin, task, now)
        return True

    def _starved(self) -> list[str]:
        """Hosts with notifications left and no slot held, worth asking for one again."""
        if self._sending_for() >= self.budget_seconds:
            return []
        holding = {origin for origin, _ in self.held}
        return [
            origin
            for origin, queue in self.pending.items()
            if queue and origin not in holding and origin not in self.done_with
        ]

    async def _take(self, origins: list[str]) -> None:
        """Ask for as many slots of each of ``origins`` as it has notifications left (at
        most ``cap``), beside those held already, within :data:`MAX_SLOTS_PER_BATCH`: hosts
        left without one are asked for again as slots come back (they are starved)."""
        holding = [origin for origin, _ in self.held]
        room = MAX_SLOTS_PER_BATCH - len(holding)
        wanted = {}
        for origin in origins:
            want = min(self.cap, len(self.pending[origin])) - holding.count(origin)
            if want > 0 and room > 0:
                wanted[origin] = min(want, room)
                room -= wanted[origin]
        if not wanted:
            return
        try:
            taken = await queries.take_host_slots(
                self.conn, wanted, cap=self.cap, held=list(self.held)
            )
        except BaseException:
            self._maybe_held([(origin, slot) for origin in wanted for slot in range(self.cap)])
            raise
        now = time.monotonic()
        self.held.update(dict.fromkeys(taken, now))
        await self._give_back([slot for slot in taken if not self._start(*slot)])

    def _maybe_held(self, slots: list[tuple[str, int]]) -> None:
        """A take or wait cut off (cancelled, or the connection failed) may have got these
        slots all the same: count them held, so that they are given back. Giving back a
        slot this session does not hold only makes PostgreSQL warn."""
        now = time.monotonic()
        self.held.update({slot: self.held.get(slot, now) for slot in slots})

    async def _give_back(self, slots: list[tuple[str, int]]) -> None:
        if slots:
            await queries.give_back_host_slots(self.conn, slots)
            for slot in slots:
                self.held.pop(slot, None)
            self.traffic.note_given_back(slots)

    async def _stop(self) -> None:
        """Cut off sends still running (an error ended the batch) and give every slot back;
        close the connection if that fails, which releases them as well."""
        for task in self.running:
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)
        for task, (origin, _, _) in self.running.items():
            self.traffic.end(origin, task)
        self.running.clear()
        if not self.held:
            return
        try:
            await self._give_back(list(self.held))
        except BaseException:
            logger.warning("could not give back host slots; closing the connection instead")
            await self.conn.close()
            raise


async def put_off(
    services: Services, conn: Connection, waiting: list[Waiting], *, own_waits: int
) -> None:
    """Hand back, untouched, the notifications of a batch that waited for a host slot.

    The job's own notification gets a new job, due after its wait, which becomes its job
    (for cancel), as a rate limit's wait does: a new job keeps procrastinate's run count,
    which bounds unexpected failures, free of waits. The jobs of notifications taken along
    just become due again later. ``own_waits``: how often this job's notification has waited.
    """
    timeout = services.settings.webhook_timeout_seconds
    taken_along = [w.job_id for w in waiting if not w.own and w.job_id is not None]
    # How often each delivery taken along has waited already, as its job's arguments count.
    waits = {
        job_id: int(args.get("slot_waits", 0))
        for job_id, args in (await jobs.job_args(conn, taken_along)).items()
    }
    now = datetime.datetime.now(datetime.UTC)
    postponed: dict[int, datetime.datetime] = {}
    postponed_waits: dict[int, dict[str, Any]] = {}
    delays: dict[str, list[float]] = {}
    for wait in waiting:
        before = own_waits if wait.own else waits.get(wait.job_id or 0, 0)
        delay = wait_seconds(before, timeout)
        at = now + datetime.timedelta(seconds=delay)
        if wait.own:
            notification_id = wait.row.id
            new_job = await defer_delivery(
                conn,
                notification_id,
                at,
                tenant_id=wait.row.tenant_id,
                slot_waits=before + 1,
            )
            await queries.hand_over_job(conn, notification_id, wait.job_id, new_job)
        elif wait.job_id is not None:
            postponed[wait.job_id] = at
            postponed_waits[wait.job_id] = {"slot_waits": before + 1}
        services.metrics.host_slot_waits.labels(channel=wait.row.channel).inc()
        delays.setdefault(wait.origin, []).append(delay)
    # Their runs and their notifications' attempts stay as they were.
    await jobs.reschedule_jobs(conn, postponed, merge_args=postponed_waits)
    for origin, put_off_for in delays.items():
        logger.info(
            "%d notification(s) waited for a host slot: no request slot of %s free (at most "
            "%d in flight per host); due again in %.2f to %.2fs, no attempt spent",
            len(put_off_for),
            origin,
            services.settings.webhook_max_in_flight_per_host,
            min(put_off_for),
            max(put_off_for),
        )
