"""``notifier endpoints list|disable|enable|recover`` and ``notifier secrets
generate-key|reencrypt``: what an operator does for a tenant without an API key of its own.

The same use cases as the API (notifier.endpoints.service), so the same checks and records.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
import uuid
from typing import Any

import msgspec

from notifier.bootstrap import open_services
from notifier.db import transaction
from notifier.endpoints import queries, service
from notifier.endpoints.schemas import EndpointUpdate
from notifier.endpoints.service import EndpointDeps
from notifier.errors import ProblemError
from notifier.secret_box import SecretBox, generate_key
from notifier.settings import Settings
from notifier.tenancy import DEFAULT_TENANT


def add_commands(commands: Any) -> None:
    """Add the ``endpoints`` and ``secrets`` subcommands to the ``notifier`` parser."""
    endpoints = commands.add_parser("endpoints", help="inspect and operate tenants' endpoints")
    endpoint_commands = endpoints.add_subparsers(dest="endpoints_command", required=True)
    listing = endpoint_commands.add_parser("list", help="list a tenant's endpoints")
    listing.add_argument("--tenant", default=DEFAULT_TENANT, help="(default %(default)s)")
    disable = endpoint_commands.add_parser(
        "disable", help="disable an endpoint: its notifications wait, spending no attempt"
    )
    enable = endpoint_commands.add_parser(
        "enable", help="enable an endpoint again: what waited is sent now"
    )
    recover = endpoint_commands.add_parser(
        "recover", help="replay an endpoint's failed and dead notifications since a time"
    )
    for command in (disable, enable, recover):
        command.add_argument("--tenant", default=DEFAULT_TENANT, help="(default %(default)s)")
        command.add_argument("endpoint_id", help="the endpoint's id")
    disable.add_argument("--reason", required=True, help="shown on the endpoint")
    recover.add_argument(
        "--since", required=True, help="an RFC 3339 time with a zone, e.g. 2026-12-01T00:00:00Z"
    )

    secrets = commands.add_parser("secrets", help="keys that encrypt stored secrets")
    secret_commands = secrets.add_subparsers(dest="secrets_command", required=True)
    secret_commands.add_parser("generate-key", help="print a new key for NOTIFIER_SECRETS_KEYS")
    secret_commands.add_parser(
        "reencrypt",
        help="encrypt every stored secret again with the first key of NOTIFIER_SECRETS_KEYS",
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run an ``endpoints`` or ``secrets`` command; the exit status."""
    if args.command == "secrets" and args.secrets_command == "generate-key":
        print(generate_key())  # noqa: T201 - what the operator asked for
        return 0
    try:
        return asyncio.run(_run(settings, args))
    except ProblemError as exc:
        print(f"notifier: {exc}", file=sys.stderr)  # noqa: T201 - CLI error message
        return 2


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    if args.command == "secrets":
        count = await reencrypt(settings)
        print(f"re-encrypted {count} stored secret(s) with the first key")  # noqa: T201
        return 0
    if args.endpoints_command != "list":
        try:
            args.endpoint_id = uuid.UUID(args.endpoint_id)
        except ValueError:
            print(f"notifier: {args.endpoint_id!r} is no endpoint id", file=sys.stderr)  # noqa: T201
            return 2
    async with open_services(settings, name="notifier-cli", runs_jobs=False) as services:
        tenant = args.tenant
        if args.endpoints_command == "list":
            for endpoint in await service.list_endpoints(services.pool, tenant):
                state = "enabled" if endpoint.enabled else f"disabled ({endpoint.disabled_reason})"
                print(f"{endpoint.id}  {state}  {endpoint.url}")  # noqa: T201
        elif args.endpoints_command in {"disable", "enable"}:
            changes = (
                EndpointUpdate(enabled=False, disabled_reason=args.reason)
                if args.endpoints_command == "disable"
                else EndpointUpdate(enabled=True)
            )
            endpoint = await service.update_endpoint(
                EndpointDeps.of(services), tenant, args.endpoint_id, changes, actor="cli"
            )
            print(msgspec.json.encode(endpoint).decode())  # noqa: T201
        else:
            try:
                since = msgspec.convert(args.since, datetime.datetime)
            except msgspec.ValidationError:
                print(f"notifier: --since {args.since!r} is no RFC 3339 time", file=sys.stderr)  # noqa: T201
                return 2
            if since.tzinfo is None:
                print("notifier: --since needs a zone (Z or +01:00)", file=sys.stderr)  # noqa: T201
                return 2
            recovered = await service.recover(services.pool, tenant, args.endpoint_id, since)
            print(f"recovered {recovered.recovered} notification(s)")  # noqa: T201
    return 0


async def reencrypt(settings: Settings) -> int:
    """Encrypt every stored secret again under the first key, in one transaction; how many.

    Key rotation: put the new key first in NOTIFIER_SECRETS_KEYS (the old after it), roll
    the processes, run this, then drop the old key.
    """
    box = SecretBox.from_settings(settings)
    async with (
        open_services(settings, name="notifier-cli", runs_jobs=False) as services,
        transaction(services.pool) as conn,
    ):
        rows = await queries.all_secret_tokens(conn)
        for table, key, secret, previous in rows:
            await queries.store_reencrypted(
                conn,
                table,
                key,
                box.reencrypt(secret),
                box.reencrypt(previous) if previous else None,
            )
    return len(rows)
