"""HTTP handlers for ``/api/v1/preferences`` and the public ``/unsubscribe/{token}`` link."""

from __future__ import annotations

import html
import uuid
from typing import Any

import psycopg
from litestar import Controller, MediaType, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody

from notifier.api_types import check_storable, checked_channel, decode_strictly
from notifier.auth.guard import BEARER_SECURITY, requires
from notifier.db import transaction
from notifier.pagination import DEFAULT_LIMIT, Cursor, Limit, next_link, paginate
from notifier.preferences import queries
from notifier.preferences.links import InvalidToken, UnsubscribeScope, verify_token
from notifier.preferences.schemas import OptOut, OptOutCreate, OptOutSource
from notifier.problems import ProblemError, field_error, not_found, problem_responses
from notifier.services import Services
from notifier.tenancy import Principal, Scope


class PreferenceController(Controller):
    """Opt recipients out of notifications, per channel and per type, and back in."""

    path = "/api/v1/preferences"
    tags = ["preferences"]  # noqa: RUF012 - litestar reads it from the class
    security = BEARER_SECURITY

    @post(
        "/",
        summary="Opt a recipient out",
        responses={
            200: ResponseSpec(
                OptOut,
                description="The same scope was already opted out: the stored opt-out",
                generate_examples=False,
            ),
            **problem_responses(400, 413, 415, 422),
        },
        guards=[requires(Scope.PREFERENCES_WRITE)],
    )
    async def opt_out(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[OptOutCreate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Response[OptOut]:
        """From now on, matching notifications end ``suppressed`` instead of being sent,
        including ones already scheduled. 201 when new, 200 when the same scope was
        already opted out (the stored opt-out is returned)."""
        data = decode_strictly(await request.body(), OptOutCreate)
        check_storable(data)
        if data.channel is not None:
            checked_channel(services, data.channel, None)
        async with transaction(services.pool) as conn:
            opt_out, created = await queries.upsert_opt_out(
                conn, principal.tenant_id, data, OptOutSource.API
            )
        return Response(opt_out, status_code=201 if created else 200)

    @get(
        "/",
        summary="List opt-outs, newest first",
        responses=problem_responses(400, 422),
        guards=[requires(Scope.PREFERENCES_READ)],
    )
    async def list_opt_outs(
        self,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        limit: Limit = DEFAULT_LIMIT,
        cursor: FromQuery[str | None] = None,
        recipient: FromQuery[str | None] = None,
    ) -> Response[list[OptOut]]:
        """Every opt-out of the tenant, or one recipient's (compared case-insensitively)."""
        check_storable({"recipient": recipient}, source="query")
        after = Cursor.decode(cursor) if cursor else None
        async with transaction(services.pool) as conn:
            rows = await queries.list_opt_outs(
                conn, principal.tenant_id, limit=limit + 1, recipient=recipient, after=after
            )
        page, following = paginate(rows, limit)
        query = {"limit": str(limit)} | ({"recipient": recipient} if recipient else {})
        return Response(page, headers=next_link(self.path + "/", query, following))

    @delete(
        "/{opt_out_id:uuid}",
        status_code=204,
        summary="Opt back in",
        responses=problem_responses(400, 404),
        guards=[requires(Scope.PREFERENCES_WRITE)],
    )
    async def opt_in(
        self,
        opt_out_id: FromPath[uuid.UUID],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> None:
        """Remove the opt-out; notifications not yet delivered are sent again when due."""
        async with transaction(services.pool) as conn:
            if not await queries.delete_opt_out(conn, principal.tenant_id, opt_out_id):
                raise not_found("opt-out", opt_out_id)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><h1>{title}</h1>{body}</body></html>
"""


def _page(title: str, body: str) -> Response[str]:
    return Response(
        _PAGE.format(title=html.escape(title), body=body),
        media_type=MediaType.HTML,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


class UnsubscribeController(Controller):
    """The link in emails: no API key, the signed token is the authority."""

    path = "/unsubscribe"
    tags = ["preferences"]  # noqa: RUF012 - litestar reads it from the class
    security = BEARER_SECURITY

    @staticmethod
    def _scope(services: Services, token: str) -> UnsubscribeScope:
        secret = services.settings.unsubscribe_secret
        if not secret:
            raise ProblemError(404, "Not Found", "unsubscribe links are not enabled")
        try:
            return verify_token(secret, token)
        except InvalidToken as exc:
            raise field_error(
                "token", f"is not a valid unsubscribe link: {exc}", status=400, source="path"
            ) from None

    @get(
        "/{token:str}",
        summary="Confirm an unsubscribe (changes nothing)",
        responses=problem_responses(400, 404),
    )
    async def confirm(
        self, token: FromPath[str], services: NamedDependency[Services]
    ) -> Response[str]:
        """A page with one button that POSTs back. GET changes nothing, because mail
        scanners follow links in messages."""
        self._scope(services, token)
        form = (
            '<p>Stop receiving these notifications?</p><form method="post">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>'
        )
        return _page("Unsubscribe", form)

    @post(
        "/{token:str}",
        status_code=200,
        summary="Unsubscribe (RFC 8058 one-click)",
        responses=problem_responses(400, 404),
    )
    async def unsubscribe(
        self, token: FromPath[str], services: NamedDependency[Services]
    ) -> Response[str]:
        """Record the opt-out the token names; repeating it changes nothing.

        Mail clients POST ``List-Unsubscribe=One-Click`` here (RFC 8058); the body is not
        needed, since the signed token alone says who opts out of what.
        """
        scope = self._scope(services, token)
        opt_out = OptOutCreate(
            recipient=scope.recipient,
            channel=scope.channel,
            notification_type=scope.notification_type,
            reason="unsubscribe link",
        )
        try:
            async with transaction(services.pool) as conn:
                await queries.upsert_opt_out(
                    conn, scope.tenant_id, opt_out, OptOutSource.UNSUBSCRIBE_LINK
                )
        except psycopg.errors.ForeignKeyViolation:
            # Signed for a tenant that has since been removed.
            raise ProblemError(404, "Not Found", "this unsubscribe link has expired") from None
        return _page("Unsubscribed", "<p>You will no longer receive these notifications.</p>")
