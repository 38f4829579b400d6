"""The dashboard's pages: sign-in, sign-out, the tenant switch and the overview.

Handlers are thin: they call the same use cases as the API and the CLI
(:func:`notifier.telemetry.overview.read_overview`, :func:`notifier.auth.auth_service.list_tenants`,
the API's :class:`~notifier.auth.guard.Authenticator`) and render a template.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotFoundException
from litestar.params import Body
from litestar.response import Redirect, Template
from markupsafe import Markup

from notifier.auth import service as auth_service
from notifier.auth.guard import Authenticator
from notifier.errors import ProblemError
from notifier.services import Services
from notifier.telemetry.overview import Overview, read_overview
from notifier.tenancy import Principal, Scope
from notifier.ui import charts
from notifier.ui.auth import (
    SCOPE_OPT,
    SESSION_STATE_KEY,
    UiForbidden,
    UiSession,
    current_principal,
    current_session,
    may_switch_tenant,
)
from notifier.ui.sessions import ROTATE_STATE_KEY, PostgresStore

UI_PATH = "/ui"
# Why the sign-in page is shown, when a page sent the browser there (?why=...).
SIGN_IN_REASONS = {
    "expired": "Your session has expired. Sign in again.",
    "revoked": "The API key of your session is no longer valid (revoked or expired).",
    "signed-out": "You are signed out.",
}


@dataclass(frozen=True, slots=True)
class NavItem:
    """A navigation entry; ``route`` None: a page still to come."""

    label: str
    route: str | None
    scope: Scope | None


NAVIGATION = (
    NavItem("Overview", "ui-overview", Scope.NOTIFICATIONS_READ),
    NavItem("Notifications", "ui-notifications", Scope.NOTIFICATIONS_READ),
    NavItem("Events", "ui-events", Scope.EVENTS_READ),
    NavItem("Rules", "ui-rules", Scope.RULES_READ),
    NavItem("Templates", "ui-templates", Scope.TEMPLATES_READ),
    NavItem("Endpoints", "ui-endpoints", Scope.ENDPOINTS_READ),
    NavItem("API keys", "ui-keys", Scope.ADMIN),
)


@dataclass(frozen=True, slots=True)
class UiContext:
    """What every template sees as ``ui``."""

    principal: Principal | None
    session: UiSession | None
    # Tenants the switch offers (empty: no switch on this page).
    tenants: list[str]
    current: str | None
    path: str

    def can(self, scope: str) -> bool:
        """Whether the signed-in key holds ``scope``: templates show a control only then."""
        return self.principal is not None and self.principal.allows(Scope(scope))

    @property
    def may_switch_tenant(self) -> bool:
        """Whether the tenant switch is shown."""
        return (
            self.principal is not None
            and self.session is not None
            and may_switch_tenant(self.principal, self.session)
        )

    @property
    def navigation(self) -> list[NavItem]:
        """The entries this key may use."""
        return [item for item in NAVIGATION if item.scope is None or self.can(item.scope)]


def ui_context(
    request: Request[Any, Any, Any], *, tenants: list[str] | None = None, current: str | None = None
) -> UiContext:
    """The ``ui`` of a page (also of error pages, where the guard may not have run)."""
    session = request.state.get(SESSION_STATE_KEY)
    return UiContext(
        principal=current_principal(request),
        session=session if isinstance(session, UiSession) else None,
        tenants=tenants or [],
        current=current,
        path=request.url.path,
    )


async def page(
    request: Request[Any, Any, Any],
    template: str,
    *,
    current: str | None = None,
    status_code: int = 200,
    **context: Any,
) -> Template:
    """A signed-in page: the layout's navigation, and the tenant switch for those who may."""
    ui = ui_context(request, current=current)
    if ui.may_switch_tenant:
        services: Services = request.app.state.services
        ui = ui_context(
            request,
            current=current,
            tenants=[t.id for t in await auth_service.list_tenants(services.pool)],
        )
    return Template(template, context={"ui": ui, **context}, status_code=status_code)


def safe_next(target: str | None) -> str:
    """Where to go after a form: a dashboard path of this site, never elsewhere."""
    if (
        target
        and (target == UI_PATH or target.startswith(f"{UI_PATH}/"))
        and "//" not in target
        and "\\" not in target
        and all(c.isprintable() and not c.isspace() for c in target)
    ):
        return target
    return UI_PATH


class SignInForm(msgspec.Struct, kw_only=True):
    """The sign-in form (the CSRF field is the middleware's)."""

    key: str = ""
    next: str = UI_PATH


class TenantForm(msgspec.Struct, kw_only=True):
    """The tenant switch."""

    tenant: str = ""
    next: str = UI_PATH


SignInBody = Annotated[SignInForm, Body(media_type=RequestEncodingType.URL_ENCODED)]
TenantBody = Annotated[TenantForm, Body(media_type=RequestEncodingType.URL_ENCODED)]


@get("/sign-in", name="ui-sign-in")
async def sign_in_form(request: Request[Any, Any, Any]) -> Template:
    """The sign-in form."""
    why = request.query_params.get("why")
    return Template(
        "sign_in.html",
        context={
            "ui": ui_context(request),
            "notice": SIGN_IN_REASONS.get(why or ""),
            "error": None,
            "next": safe_next(request.query_params.get("next")),
        },
    )


@post("/sign-in", name="ui-sign-in-submit", status_code=303)
async def sign_in(request: Request[Any, Any, Any], data: SignInBody) -> Template | Redirect:
    """Check the key as the API would; on success a new session holding the key's id."""
    app_state = request.app.state
    services: Services = app_state.services
    authenticator: Authenticator = app_state.authenticator
    token = data.key.strip()
    try:
        if not token:
            raise ProblemError(401, "Unauthorized", "enter an API key")
        key = await authenticator.authenticate(services.pool, f"Bearer {token}")
        authenticator.check_rate(key)
    except ProblemError as error:
        return Template(
            "sign_in.html",
            context={
                "ui": ui_context(request),
                "notice": None,
                "error": error.detail,
                "next": safe_next(data.next),
            },
            status_code=error.status,
        )
    store: PostgresStore = app_state.ui_session_store
    await store.delete_expired()
    session = UiSession(
        key_id=key.id, key_tenant=key.tenant_id, tenant=key.tenant_id, signed_in_at=time.time()
    )
    request.set_session(session.to_dict())
    request.state[ROTATE_STATE_KEY] = True
    return Redirect(safe_next(data.next), status_code=303)


@post("/sign-out", name="ui-sign-out", status_code=303)
async def sign_out(request: Request[Any, Any, Any]) -> Redirect:
    """End the session, on the server too: its cookie no longer works anywhere."""
    request.clear_session()
    return Redirect(f"{UI_PATH}/sign-in?why=signed-out", status_code=303)


@post("/tenant", name="ui-switch-tenant", status_code=303)
async def switch_tenant(
    request: Request[Any, Any, Any], services: NamedDependency[Services], data: TenantBody
) -> Redirect:
    """Show another tenant from now on (an admin key of the operator's tenant only)."""
    session = current_session(request)
    principal = current_principal(request)
    if principal is None or not may_switch_tenant(principal, session):
        raise UiForbidden(
            "only an admin key of the operator's tenant ('default') may switch tenant"
        )
    if data.tenant not in {t.id for t in await auth_service.list_tenants(services.pool)}:
        raise NotFoundException(f"no tenant {data.tenant!r}")
    request.set_session(msgspec.structs.replace(session, tenant=data.tenant).to_dict())
    return Redirect(safe_next(data.next), status_code=303)


@get("/", name="ui-overview", opt={SCOPE_OPT: Scope.NOTIFICATIONS_READ.value})
async def overview(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Template:
    """Queues, workers and the tenant's deliveries of the last hour and day."""
    principal = current_principal(request)
    assert principal is not None  # the guard put it there
    data = await read_overview(
        services.pool,
        services.settings,
        principal.tenant_id,
        history=services.delivery_history,
    )
    return await page(
        request, "overview.html", current="ui-overview", overview=data, charts=overview_charts(data)
    )


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def overview_charts(data: Overview) -> dict[str, Markup]:
    """The overview's four charts."""
    result: dict[str, Markup] = {}
    for name, window, label_every, span in (
        ("hour", data.deliveries.hour, 10, "hour"),
        ("day", data.deliveries.day, 16, "day"),
    ):
        minutes = window.bucket_minutes
        delivered = [c.delivered / minutes for c in window.attempts]
        retry = [c.retry / minutes for c in window.attempts]
        failed = [c.failed / minutes for c in window.attempts]
        total = window.total_attempts

        def describe_rate(total: Any = total, span: str = span) -> str:
            return (
                f"Over the last {span}: {total.delivered} delivered, {total.retry} to be "
                f"retried, {total.failed} failed attempts."
            )

        result[f"rate_{name}"] = charts.stacked_bars(
            f"rate-{name}",
            f"Delivery attempts per minute by outcome, last {span}",
            window.starts,
            [
                charts.Series("Delivered", "delivered", delivered),
                charts.Series("Retry", "retry", retry),
                charts.Series("Failed", "failed", failed),
            ],
            x_labels_every=label_every,
            describe=describe_rate,
        )
        lag = window.total_lag

        def describe_lag(lag: Any = lag, span: str = span) -> str:
            if not lag.count:
                return f"No notification was sent in the last {span}."
            return (
                f"{lag.count} notifications sent in the last {span}: median lag "
                f"{lag.p50_seconds:.3f} s, 95th percentile {lag.p95_seconds:.3f} s."
            )

        result[f"lag_{name}"] = charts.lines(
            f"lag-{name}",
            f"Delivery lag (sent minus due), p50 and p95, last {span}",
            window.starts,
            [
                charts.Series("p50", "p50", [_seconds(s.p50_seconds) for s in window.lags]),
                charts.Series("p95", "p95", [_seconds(s.p95_seconds) for s in window.lags]),
            ],
            x_labels_every=label_every,
            unit=" s",
            describe=describe_lag,
        )
    return result


def duration(seconds: float | None) -> str:
    """A short human duration: ``850 ms``, ``12.5 s``, ``3 min``, ``2.0 h``."""
    if seconds is None:
        return "\u2013"  # an en dash: no value
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def utc(moment: datetime.datetime) -> str:
    """A timestamp as the pages show it."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def utc_seconds(moment: datetime.datetime) -> str:
    """A timestamp to the second (timelines, where minutes are too coarse)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


ROUTES = [sign_in_form, sign_in]
SIGNED_IN_ROUTES = [overview, sign_out, switch_tenant]
