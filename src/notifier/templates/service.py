"""The template use cases: create, list, get, replace, delete and preview.

Each function that touches the database is one transaction of its own, on a connection
from ``pool``; templates are compiled and rendered in the sandbox processes (``renderer``)
outside any transaction. The API, the CLI and the dashboard call these. Invalid input
raises :class:`notifier.errors.ProblemError`: a template that does not compile is a 422
naming the part and line at fault; a sandbox that cannot answer is a 503.
"""

from __future__ import annotations

import datetime

from notifier.api_types import check_storable
from notifier.db import Pool, transaction
from notifier.errors import ProblemError, field_error, not_found
from notifier.idempotency import Outcome
from notifier.templates import catalog, queries
from notifier.templates.builtin import builtin_templates
from notifier.templates.messages import MessageFields, TemplateProblem, TemplateSource
from notifier.templates.pool import RendererUnavailable, RenderPool
from notifier.templates.schemas import (
    InlinePreviewRequest,
    Preview,
    PreviewRequest,
    Template,
    TemplateCreate,
    TemplateReplace,
)


def template_error(problem: TemplateProblem) -> ProblemError:
    """A 422 naming the template part at fault (``subject``, ``text_body``, ``html_body``)."""
    where = f"line {problem.line}: " if problem.line is not None else ""
    return field_error(problem.part, where + problem.message)


def renderer_unavailable(exc: RendererUnavailable) -> ProblemError:
    """A 503: the sandbox could not answer, through no fault of the template."""
    return ProblemError(
        503,
        "Service Unavailable",
        f"templates cannot be rendered right now ({exc}); retry later",
        headers={"Retry-After": "1"},
    )


async def checked_source(
    renderer: RenderPool,
    tenant_id: str,
    name: str,
    data: TemplateReplace | InlinePreviewRequest,
) -> TemplateSource:
    """The template in a request, compiled once in the sandbox; a 422 if it does not."""
    check_storable(data)
    source = TemplateSource(
        name=name, subject=data.subject, text_body=data.text_body, html_body=data.html_body
    )
    try:
        await renderer.check(tenant_id, source)
    except TemplateProblem as exc:
        raise template_error(exc) from None
    except RendererUnavailable as exc:
        raise renderer_unavailable(exc) from None
    return source


async def render_preview(
    renderer: RenderPool, tenant_id: str, source: TemplateSource, request: PreviewRequest
) -> Preview:
    """Render ``source`` as a notification with the request's fields would; sends nothing."""
    check_storable(request.payload, source="body")
    fields = MessageFields(
        notification_type=request.notification_type or source.name,
        recipient=request.recipient,
        entity_id=request.entity_id,
        target_date=request.target_date,
        lead_time=datetime.timedelta(days=request.lead_time_days),
        channel=request.channel,
    )
    try:
        rendered = await renderer.render(tenant_id, source, request.payload, fields)
    except TemplateProblem as exc:
        raise template_error(exc) from None
    except RendererUnavailable as exc:
        raise renderer_unavailable(exc) from None
    return Preview(
        template=source.name, subject=rendered.subject, text=rendered.text, html=rendered.html
    )


async def create_template(
    pool: Pool, renderer: RenderPool, tenant_id: str, data: TemplateCreate
) -> Template:
    """Store the tenant's template once it compiles in the sandbox; a 409 if the tenant has
    one of that name. One named like a built-in overrides it."""
    await checked_source(renderer, tenant_id, data.name, data)
    async with transaction(pool) as conn:
        template = await queries.insert_template(conn, tenant_id, data.name, data)
    if template is None:
        raise ProblemError(409, "Conflict", f"template {data.name!r} exists; PUT replaces it")
    return template


async def list_templates(pool: Pool, tenant_id: str) -> list[Template]:
    """The tenant's templates and the built-ins they do not override, by name."""
    async with transaction(pool) as conn:
        own = await queries.list_templates(conn, tenant_id)
    names = {template.name for template in own}
    builtins = [
        catalog.builtin_resource(source)
        for name, source in builtin_templates().items()
        if name not in names
    ]
    return sorted(own + builtins, key=lambda template: template.name)


async def get_template(pool: Pool, tenant_id: str, name: str) -> Template:
    """The tenant's template, else the built-in of that name; a 404 if neither exists."""
    async with transaction(pool) as conn:
        template = await catalog.find_template(conn, tenant_id, name)
    if template is None:
        raise not_found("template", name)
    return template


async def replace_template(
    pool: Pool, renderer: RenderPool, tenant_id: str, name: str, data: TemplateReplace
) -> Outcome[Template]:
    """Create (201) or replace (200) the tenant's template ``name`` once it compiles.
    Notifications not yet sent render with the new version."""
    await checked_source(renderer, tenant_id, name, data)
    async with transaction(pool) as conn:
        template, created = await queries.upsert_template(conn, tenant_id, name, data)
    return Outcome(201 if created else 200, template)


async def delete_template(pool: Pool, tenant_id: str, name: str) -> None:
    """Delete the tenant's template ``name`` (a 404 if none). A 409 while routing rules
    name it, unless a built-in of the same name would take its place."""
    async with transaction(pool) as conn:
        if name not in builtin_templates():
            rules = await queries.rules_using(conn, tenant_id, name)
            if rules:
                raise ProblemError(
                    409,
                    "Conflict",
                    f"template {name!r} is used by routing rules "
                    f"{', '.join(str(rule) for rule in rules)}; change them first",
                )
        if not await queries.delete_template(conn, tenant_id, name):
            raise not_found("template", name)


async def preview(
    pool: Pool, renderer: RenderPool, tenant_id: str, name: str, request: PreviewRequest
) -> Preview:
    """Render the template ``name`` (the tenant's or a built-in; a 404 if neither) with the
    request's payload and notification fields; sends nothing."""
    template = await get_template(pool, tenant_id, name)
    return await render_preview(renderer, tenant_id, catalog.source_of(template), request)


async def preview_inline(
    renderer: RenderPool, tenant_id: str, request: InlinePreviewRequest
) -> Preview:
    """Compile and render the template the request carries, without storing or sending."""
    source = await checked_source(renderer, tenant_id, "preview", request)
    return await render_preview(renderer, tenant_id, source, request)
