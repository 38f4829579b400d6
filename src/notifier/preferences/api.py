"""HTTP handlers for ``/api/v1/preferences`` and the public ``/unsubscribe/{token}`` link:
HTTP only, the use cases are in ``preferences/service.py``."""

from __future__ import annotations

import html
import uuid

from litestar import Controller, MediaType, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody

from notifier.api_types import check_storable
from notifier.auth.guard import BEARER_SECURITY, requires
from notifier.http.body import StrictBody
from notifier.http.params import Limit
from notifier.http.problems import problem_responses
from notifier.pagination import DEFAULT_LIMIT, Cursor, next_link
from notifier.preferences import service
from notifier.preferences.schemas import OptOut, OptOutCreate
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
        dto=StrictBody[OptOutCreate],
        return_dto=None,
    )
    async def opt_out(
        self,
        data: JSONBody[OptOutCreate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Response[OptOut]:
        """From now on, matching notifications end ``suppressed`` instead of being sent,
        including ones already scheduled. 201 when new, 200 when the same scope was
        already opted out (the stored opt-out is returned)."""
        outcome = await service.opt_out(services.pool, services.channels, principal.tenant_id, data)
        return Response(outcome.body, status_code=outcome.status)

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
        page, following = await service.list_opt_outs(
            services.pool,
            principal.tenant_id,
            limit=limit,
            after=Cursor.decode(cursor) if cursor else None,
            recipient=recipient,
        )
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
        await service.opt_in(services.pool, principal.tenant_id, opt_out_id)


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
        service.unsubscribe_scope(services.settings.unsubscribe_secret, token)
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
        await service.unsubscribe(services.pool, services.settings.unsubscribe_secret, token)
        return _page("Unsubscribed", "<p>You will no longer receive these notifications.</p>")
