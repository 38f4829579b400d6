"""Keys on rules: a newer event for a key supersedes the reminders of an older one.

A rule with a ``key`` (``"{user_id}"``) names what its reminders are about. When an event
makes notifications through it, the tenant's pending notifications of the same rule and key
are superseded, in the transaction that stores the new ones; a ``cancel`` rule cancels the
pending notifications of the rules with its key template and makes none.

Order is by event time (``occurred_at``, CloudEvents ``time``; else when the event was
stored), not by arrival: ``notifier.reminder_keys`` records the latest event of each
(tenant, rule, key). An event older than that arrives late and changes nothing that stands:
its own reminders are stored ``superseded`` by the later event, and a late cancel cancels
nothing of that key.

Two events for one key processed at the same moment take a transaction-level advisory lock
on (tenant, rule, key) first, so one decides after the other has committed.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import uuid

import msgspec

from notifier.db import Connection
from notifier.events import queries
from notifier.events.queries import KeyHolder
from notifier.events.routing import RoutingError, rule_key
from notifier.events.schemas import Event
from notifier.notifications import queries as notification_queries
from notifier.notifications.scheduling import NotificationDraft, PlannedSend
from notifier.notifications.schemas import NotificationStatus
from notifier.queue import jobs
from notifier.rules.queries import rules_sharing_key
from notifier.rules.schemas import Rule, RuleAction

logger = logging.getLogger("notifier.events")

RuleKey = tuple[uuid.UUID, str]


class KeyedOutcome(msgspec.Struct, kw_only=True):
    """What an event's keys did: the drafts to store, and what they ended."""

    drafts: list[NotificationDraft]
    superseded: int = 0
    cancelled: int = 0
    # Why a cancel rule did nothing (its key is missing from the payload), for the event.
    errors: list[str] = msgspec.field(default_factory=list)


def event_time(event: Event) -> datetime.datetime:
    """When the event happened as far as ordering goes: ``occurred_at``, else when stored."""
    return event.occurred_at or event.created_at


def key_lock_id(tenant_id: str, rule_key: RuleKey) -> int:
    """A signed 64-bit advisory lock id for (tenant, rule, key)."""
    rule_id, key = rule_key
    digest = hashlib.blake2b(f"{tenant_id}\0{rule_id}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def arrives_late(holder: KeyHolder | None, time: datetime.datetime) -> bool:
    """Whether an event at ``time`` is older than the key's latest event (a tie is not)."""
    return holder is not None and time < holder.event_time


def superseded_on_arrival(
    drafts: list[NotificationDraft], late: dict[RuleKey, KeyHolder]
) -> list[NotificationDraft]:
    """``drafts`` with those of a late key stored ``superseded`` by the key's latest event."""
    result = []
    for draft in drafts:
        holder = None
        if draft.rule_id is not None and draft.key is not None and draft.error is None:
            holder = late.get((draft.rule_id, draft.key))
        if holder is None:
            result.append(draft)
            continue
        send = PlannedSend(draft.send.lead_time, draft.send.send_at, NotificationStatus.SUPERSEDED)
        result.append(
            msgspec.structs.replace(draft, send=send, cancelled_by_event_id=holder.event_id)
        )
    return result


class KeyClaims(msgspec.Struct, kw_only=True):
    """The (rule, key) pairs an event claims: those its drafts remind of, and those its
    cancel rules cancel; why a cancel rule could not name its key."""

    notify: set[RuleKey]
    cancel: set[RuleKey]
    errors: list[str] = msgspec.field(default_factory=list)

    def all(self) -> list[RuleKey]:
        """Every claimed pair, sorted."""
        return sorted(self.notify | self.cancel)


async def claim_keys(
    conn: Connection,
    tenant_id: str,
    event: Event,
    rules: list[Rule],
    drafts: list[NotificationDraft],
    *,
    sharing_key: dict[str, list[uuid.UUID]] | None = None,
) -> KeyClaims:
    """The keys ``event`` claims through ``rules`` and its (non-digest) ``drafts``; reads
    the rules sharing a cancel rule's key template, kept in ``sharing_key`` if given (a
    batch of events asks once per template)."""
    notify_keys = {
        (draft.rule_id, draft.key)
        for draft in drafts
        if draft.rule_id is not None and draft.key is not None and draft.error is None
    }
    cancel_keys: set[RuleKey] = set()
    errors = []
    for rule in rules:
        if rule.action is not RuleAction.CANCEL or rule.key is None:
            continue
        try:
            key = rule_key(rule, event.payload)
        except RoutingError as exc:
            errors.append(f"cancel rule {rule.id}: {exc}")
            continue
        assert key is not None
        targets = None if sharing_key is None else sharing_key.get(rule.key)
        if targets is None:
            targets = await rules_sharing_key(conn, tenant_id, rule.key)
            if sharing_key is not None:
                sharing_key[rule.key] = targets
        for target in targets:
            cancel_keys.add((target, key))
    cancel_keys -= notify_keys  # a new reminder of the key supersedes its old ones anyway
    return KeyClaims(notify=notify_keys, cancel=cancel_keys, errors=errors)


async def apply_keys(
    conn: Connection,
    tenant_id: str,
    event: Event,
    rules: list[Rule],
    drafts: list[NotificationDraft],
    *,
    claims: KeyClaims | None = None,
) -> KeyedOutcome:
    """Supersede and cancel by the keys of ``rules`` for ``event``, in the caller's
    transaction; the drafts to store (late ones marked superseded). ``claims``: what
    :func:`claim_keys` said of them, if asked already."""
    if claims is None:
        claims = await claim_keys(conn, tenant_id, event, rules, drafts)
    notify_keys, cancel_keys, errors = claims.notify, claims.cancel, claims.errors
    claimed = claims.all()
    if not claimed:
        return KeyedOutcome(drafts=drafts, errors=errors)

    await notification_queries.lock_keys(
        conn, sorted(key_lock_id(tenant_id, rule_key) for rule_key in claimed)
    )
    holders = await queries.key_holders(conn, tenant_id, claimed)
    time = event_time(event)
    late = {
        rule_key: holders[rule_key]
        for rule_key in claimed
        if arrives_late(holders.get(rule_key), time)
    }
    won = [rule_key for rule_key in claimed if rule_key not in late]
    await queries.hold_keys(conn, tenant_id, won, KeyHolder(event.id, time))
    superseded = await notification_queries.end_pending_of_rule_keys(
        conn,
        tenant_id,
        [rule_key for rule_key in won if rule_key in notify_keys],
        status=NotificationStatus.SUPERSEDED,
        event_id=event.id,
    )
    cancelled = await notification_queries.end_pending_of_rule_keys(
        conn,
        tenant_id,
        [rule_key for rule_key in won if rule_key in cancel_keys],
        status=NotificationStatus.CANCELLED,
        event_id=event.id,
    )
    await jobs.cancel_waiting_jobs(
        conn, sorted(ended.job_id for ended in superseded + cancelled if ended.job_id is not None)
    )
    if late:
        logger.info(
            "event %s (%s) arrived after a newer event of %d of its keys: "
            "its reminders of them are stored superseded",
            event.id,
            event.type,
            len(late),
        )
    return KeyedOutcome(
        drafts=superseded_on_arrival(drafts, late),
        superseded=len(superseded),
        cancelled=len(cancelled),
        errors=errors,
    )
