"""The dashboard's rule pages: the list with enable/disable, the create and edit forms,
through :mod:`notifier.rules.service` like the REST API (same checks, same transaction).

Quiet hours are set through the API; the edit form keeps whatever a rule has.
"""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request, get, post
from litestar.datastructures import FormMultiDict
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect, Template

from notifier.errors import ProblemError
from notifier.rules import service
from notifier.rules.schemas import Rule, RuleCreate, RuleUpdate
from notifier.services import Services
from notifier.tenancy import Scope
from notifier.ui.auth import SCOPE_OPT, current_tenant
from notifier.ui.forms import FormErrors, convert_fields, service_errors
from notifier.ui.pages import UI_PATH, page

READ = {SCOPE_OPT: Scope.RULES_READ.value}
WRITE = {SCOPE_OPT: Scope.RULES_WRITE.value}
LIST_PATH = f"{UI_PATH}/rules"
TEXT_FIELDS = (
    "name",
    "event_type",
    "channel",
    "recipient_field",
    "recipient",
    "date_field",
    "lead_times",
    "template",
    "timezone",
    "timezone_field",
)
REQUIRED = frozenset({"event_type", "channel"})


def iso_duration(lead_time: Any) -> str:
    """A lead time as the form shows it: ``P7D``, ``PT12H``, ``P1DT6H``."""
    seconds = int(lead_time.total_seconds())
    sign = "-" if seconds < 0 else ""
    days, rest = divmod(abs(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    if not time:
        return f"{sign}P{days}D"
    return f"{sign}P{days}DT{time}" if days else f"{sign}PT{time}"


def rule_values(rule: Rule) -> dict[str, str]:
    """A stored rule as the form's text."""
    values = {name: str(getattr(rule, name) or "") for name in TEXT_FIELDS}
    values["lead_times"] = ", ".join(iso_duration(t) for t in rule.lead_times)
    values["enabled"] = "on" if rule.enabled else ""
    return values


def _form_values(form: FormMultiDict) -> dict[str, str]:
    values = {name: str(form.get(name, "")).strip() for name in TEXT_FIELDS}
    values["enabled"] = "on" if form.get("enabled") else ""
    return values


def _fields(values: dict[str, str], *, blank_as_none: bool) -> dict[str, Any]:
    """The form as the API's body: blank optional fields left out (create) or cleared
    (edit); lead times split at commas."""
    fields: dict[str, Any] = {}
    for name in TEXT_FIELDS:
        value = values[name]
        if name == "lead_times":
            if value:
                fields[name] = [part.strip() for part in value.split(",") if part.strip()]
        elif name == "name" or value or name in REQUIRED:
            fields[name] = value
        elif blank_as_none:
            fields[name] = None
    fields["enabled"] = values["enabled"] == "on"
    return fields


async def _form_page(
    request: Request[Any, Any, Any],
    *,
    rule: Rule | None,
    values: dict[str, str],
    errors: dict[str, str],
) -> Template:
    services: Services = request.app.state.services
    return await page(
        request,
        "rule_form.html",
        current="ui-rules",
        status_code=422 if errors else 200,
        rule=rule,
        values=values,
        errors=errors,
        channels=sorted(services.channels),
    )


@get("/rules", name="ui-rules", opt=READ)
async def rule_list(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Template:
    """Every rule of the tenant, oldest first."""
    rules = await service.list_rules(services.pool, current_tenant(request))
    return await page(
        request,
        "rules.html",
        current="ui-rules",
        rules=rules,
        lead_times={rule.id: ", ".join(iso_duration(t) for t in rule.lead_times) for rule in rules},
    )


@get("/rules/new", name="ui-rule-new", opt=WRITE)
async def rule_new(request: Request[Any, Any, Any]) -> Template:
    """An empty rule form."""
    values = dict.fromkeys(TEXT_FIELDS, "") | {"lead_times": "P0D", "enabled": "on"}
    return await _form_page(request, rule=None, values=values, errors={})


@post("/rules/new", name="ui-rule-create", opt=WRITE, status_code=303)
async def rule_create(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Template | Redirect:
    """Create it with the API's use case; the form again with each error by its field."""
    values = _form_values(await request.form())
    try:
        rule = convert_fields(RuleCreate, _fields(values, blank_as_none=False))
        await service.create_rule(services.pool, services.channels, current_tenant(request), rule)
    except FormErrors as exc:
        return await _form_page(request, rule=None, values=values, errors=exc.errors)
    except ProblemError as exc:
        return await _form_page(
            request,
            rule=None,
            values=values,
            errors=service_errors(exc, TEXT_FIELDS, fallback="name"),
        )
    return Redirect(LIST_PATH, status_code=303)


@get("/rules/{rule_id:uuid}", name="ui-rule", opt=READ)
async def rule_edit(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    rule_id: FromPath[uuid.UUID],
) -> Template:
    """The rule in its form (read-only without ``rules:write``)."""
    rule = await service.get_rule(services.pool, current_tenant(request), rule_id)
    return await _form_page(request, rule=rule, values=rule_values(rule), errors={})


@post("/rules/{rule_id:uuid}", name="ui-rule-update", opt=WRITE, status_code=303)
async def rule_update(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    rule_id: FromPath[uuid.UUID],
) -> Template | Redirect:
    """Change every field of the form (a blank optional field clears it)."""
    tenant = current_tenant(request)
    values = _form_values(await request.form())
    try:
        change = convert_fields(RuleUpdate, _fields(values, blank_as_none=True))
        await service.update_rule(services.pool, services.channels, tenant, rule_id, change)
    except (FormErrors, ProblemError) as exc:
        if isinstance(exc, ProblemError) and exc.status == 404:
            raise
        errors = (
            exc.errors
            if isinstance(exc, FormErrors)
            else service_errors(exc, TEXT_FIELDS, fallback="name")
        )
        rule = await service.get_rule(services.pool, tenant, rule_id)
        return await _form_page(request, rule=rule, values=values, errors=errors)
    return Redirect(LIST_PATH, status_code=303)


@post("/rules/{rule_id:uuid}/enabled", name="ui-rule-toggle", opt=WRITE, status_code=303)
async def rule_toggle(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    rule_id: FromPath[uuid.UUID],
) -> Redirect:
    """Enable or disable the rule (the form says which: ``enabled=on`` or not)."""
    form = await request.form()
    change = RuleUpdate(enabled=form.get("enabled") == "on")
    await service.update_rule(
        services.pool, services.channels, current_tenant(request), rule_id, change
    )
    return Redirect(LIST_PATH, status_code=303)


ROUTES = [rule_list, rule_new, rule_create, rule_edit, rule_update, rule_toggle]
