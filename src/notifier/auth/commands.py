"""``notifier tenants create|list`` and ``notifier keys create|list|revoke``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

import psycopg

from notifier.auth import service as auth_service
from notifier.auth.queries import ApiKey
from notifier.settings import Settings
from notifier.tenancy import DEFAULT_TENANT, Scope

logger = logging.getLogger("notifier.keys")


def add_commands(commands: Any) -> None:
    """Add the ``tenants`` and ``keys`` subcommands to the ``notifier`` parser."""
    tenants = commands.add_parser("tenants", help="manage tenants")
    tenant_commands = tenants.add_subparsers(dest="tenants_command", required=True)
    create_tenant = tenant_commands.add_parser("create", help="create a tenant")
    create_tenant.add_argument("tenant_id", help="a slug: lowercase letters, digits, - and _")
    create_tenant.add_argument("--name", default="", help="a human-readable name")
    tenant_commands.add_parser("list", help="list tenants")

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create an API key; prints it once")
    create.add_argument("--tenant", default=DEFAULT_TENANT, help="its tenant (default %(default)s)")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        dest="scopes",
        help=f"repeat or comma-separate; one of {', '.join(s.value for s in Scope)}",
    )
    create.add_argument("--name", default="", help="what the key is for")
    create.add_argument("--expires-in", help="lifetime such as 90d, 12h, 2w (default: none)")
    create.add_argument("--rate-limit", type=float, help="requests per second (default: the API's)")
    create.add_argument("--burst", type=int, help="burst size (default: the API's)")
    listing = key_commands.add_parser("list", help="list API keys (never their secrets)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    revoke = key_commands.add_parser("revoke", help="revoke an API key")
    revoke.add_argument("key_id", help="the id shown by `keys list` (the part after ntf_)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run a ``tenants`` or ``keys`` command; the exit status."""
    try:
        return asyncio.run(_run(settings, args))
    except auth_service.AdminError as exc:
        print(f"notifier: {exc}", file=sys.stderr)  # noqa: T201 - CLI error message
        return 2
    except psycopg.OperationalError as exc:
        print(  # noqa: T201 - CLI error message
            f"notifier: cannot reach the database at NOTIFIER_DATABASE_URL: {_why(settings, exc)}"
            " (`notifier dev` prints the URL of the embedded database it starts)",
            file=sys.stderr,
        )
        return 1


def _why(settings: Settings, timeout: psycopg.OperationalError) -> str:
    """The pool only says that it gave up waiting; one direct attempt says what failed."""
    error: psycopg.Error = timeout
    try:
        with psycopg.connect(settings.database_url, connect_timeout=3):
            pass
    except psycopg.Error as direct:
        error = direct
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    if args.command == "keys" and args.keys_command == "create":
        # Validate before connecting, so a typo fails fast and names itself.
        expires_in = auth_service.parse_expiry(args.expires_in) if args.expires_in else None
        auth_service.checked_scopes(args.scopes)
    async with auth_service.admin_pool(settings) as pool:
        if args.command == "tenants" and args.tenants_command == "create":
            tenant = await auth_service.create_tenant(pool, args.tenant_id, args.name)
            logger.info("created tenant %s", tenant.id)
        elif args.command == "tenants":
            for tenant in await auth_service.list_tenants(pool):
                print(f"{tenant.id}\t{tenant.name}\t{tenant.created_at.isoformat()}")  # noqa: T201
        elif args.keys_command == "create":
            key, token = await auth_service.create_key(
                pool,
                tenant_id=args.tenant,
                scopes=args.scopes,
                name=args.name,
                expires_in=expires_in,
                rate_limit_per_second=args.rate_limit,
                rate_limit_burst=args.burst,
            )
            logger.info(
                "created API key %s for tenant %s with scopes %s; it is shown once",
                key.id,
                key.tenant_id,
                ",".join(key.scopes),
            )
            print(token)  # noqa: T201 - shown once, to the operator who asked for it
        elif args.keys_command == "list":
            print("id\ttenant\tname\tscopes\tcreated\texpires\trevoked\tlast used")  # noqa: T201
            for key in await auth_service.list_keys(pool, args.tenant):
                print(_key_line(key))  # noqa: T201
        else:
            key = await auth_service.revoke_key(pool, args.key_id)
            logger.info(
                "revoked API key %s of tenant %s; API processes stop accepting it within %ss",
                key.id,
                key.tenant_id,
                settings.api_key_cache_seconds,
            )
    return 0


def _key_line(key: ApiKey) -> str:
    def when(value: Any) -> str:
        return value.isoformat(timespec="seconds") if value else "-"

    return "\t".join(
        [
            key.id,
            key.tenant_id,
            key.name or "-",
            ",".join(key.scopes),
            when(key.created_at),
            when(key.expires_at),
            when(key.revoked_at),
            when(key.last_used_at),
        ]
    )
