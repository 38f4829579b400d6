"""HTTP handlers for ``/api/v1/templates``: a tenant's templates, the built-ins, previews.

Reading needs the ``templates:read`` scope, writing and previewing ``templates:write``.
"""

from __future__ import annotations

import datetime
from typing import Any

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody

from notifier.api_types import check_storable, decode_strictly
from notifier.auth.guard import BEARER_SECURITY, requires
from notifier.db import transaction
from notifier.problems import ProblemError, field_error, not_found, problem_responses
from notifier.services import Services
from notifier.templates import catalog, queries
from notifier.templates.builtin import builtin_templates
from notifier.templates.pool import RendererUnavailable
from notifier.templates.rendering import MessageFields, TemplateProblem, TemplateSource
from notifier.templates.schemas import (
    InlinePreviewRequest,
    Preview,
    PreviewRequest,
    Template,
    TemplateCreate,
    TemplateNameInPath,
    TemplateReplace,
)
from notifier.tenancy import Principal, Scope


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
    services: Services,
    principal: Principal,
    name: str,
    data: TemplateReplace | InlinePreviewRequest,
) -> TemplateSource:
    """The template in a request, compiled once in the sandbox; a 422 if it does not."""
    check_storable(data)
    source = TemplateSource(
        name=name, subject=data.subject, text_body=data.text_body, html_body=data.html_body
    )
    try:
        await services.renderer.check(principal.tenant_id, source)
    except TemplateProblem as exc:
        raise template_error(exc) from None
    except RendererUnavailable as exc:
        raise renderer_unavailable(exc) from None
    return source


async def render_preview(
    services: Services, principal: Principal, source: TemplateSource, request: PreviewRequest
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
        rendered = await services.renderer.render(
            principal.tenant_id, source, request.payload, fields
        )
    except TemplateProblem as exc:
        raise template_error(exc) from None
    except RendererUnavailable as exc:
        raise renderer_unavailable(exc) from None
    return Preview(
        template=source.name, subject=rendered.subject, text=rendered.text, html=rendered.html
    )


class TemplateController(Controller):
    """Manage message templates and preview them without sending."""

    path = "/api/v1/templates"
    tags = ["templates"]  # noqa: RUF012 - litestar reads it from the class
    security = BEARER_SECURITY

    @post(
        "/",
        status_code=201,
        summary="Create a template",
        responses=problem_responses(400, 409, 413, 415, 422),
        guards=[requires(Scope.TEMPLATES_WRITE)],
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[TemplateCreate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Template:
        """Stored after it compiles in the sandbox; a 422 names the part and line at fault.
        A template named like a built-in (``password.expiring``) overrides it."""
        data = decode_strictly(await request.body(), TemplateCreate)
        await checked_source(services, principal, data.name, data)
        async with transaction(services.pool) as conn:
            template = await queries.insert_template(conn, principal.tenant_id, data.name, data)
        if template is None:
            raise ProblemError(409, "Conflict", f"template {data.name!r} exists; PUT replaces it")
        return template

    @get(
        "/",
        summary="List templates",
        responses=problem_responses(),
        guards=[requires(Scope.TEMPLATES_READ)],
    )
    async def list_templates(
        self, services: NamedDependency[Services], principal: NamedDependency[Principal]
    ) -> list[Template]:
        """The tenant's templates and the built-ins they do not override, by name."""
        async with transaction(services.pool) as conn:
            own = await queries.list_templates(conn, principal.tenant_id)
        names = {template.name for template in own}
        builtins = [
            catalog.builtin_resource(source)
            for name, source in builtin_templates().items()
            if name not in names
        ]
        return sorted(own + builtins, key=lambda template: template.name)

    @get(
        "/{name:str}",
        summary="One template",
        responses=problem_responses(400, 404, 422),
        guards=[requires(Scope.TEMPLATES_READ)],
    )
    async def get_template(
        self,
        name: TemplateNameInPath,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Template:
        """The tenant's template, else the built-in of that name, else 404."""
        async with transaction(services.pool) as conn:
            template = await catalog.find_template(conn, principal.tenant_id, name)
        if template is None:
            raise not_found("template", name)
        return template

    @put(
        "/{name:str}",
        summary="Create or replace a template",
        responses={
            201: ResponseSpec(
                Template, description="The tenant had no such template", generate_examples=False
            ),
            **problem_responses(400, 413, 415, 422),
        },
        guards=[requires(Scope.TEMPLATES_WRITE)],
    )
    async def replace(
        self,
        request: Request[Any, Any, Any],
        name: TemplateNameInPath,
        data: JSONBody[TemplateReplace],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Response[Template]:
        """201 if it was created, 200 if it replaced the tenant's template of that name.
        Notifications not yet sent render with the new version."""
        data = decode_strictly(await request.body(), TemplateReplace)
        await checked_source(services, principal, name, data)
        async with transaction(services.pool) as conn:
            template, created = await queries.upsert_template(conn, principal.tenant_id, name, data)
        return Response(template, status_code=201 if created else 200)

    @delete(
        "/{name:str}",
        status_code=204,
        summary="Delete a template",
        responses=problem_responses(400, 404, 409, 422),
        guards=[requires(Scope.TEMPLATES_WRITE)],
    )
    async def delete_template(
        self,
        name: TemplateNameInPath,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> None:
        """Refused (409) while routing rules name it, unless a built-in of the same name
        would take its place. Built-ins cannot be deleted."""
        async with transaction(services.pool) as conn:
            if name not in builtin_templates():
                rules = await queries.rules_using(conn, principal.tenant_id, name)
                if rules:
                    raise ProblemError(
                        409,
                        "Conflict",
                        f"template {name!r} is used by routing rules "
                        f"{', '.join(str(rule) for rule in rules)}; change them first",
                    )
            if not await queries.delete_template(conn, principal.tenant_id, name):
                raise not_found("template", name)

    @post(
        "/{name:str}/preview",
        status_code=200,
        summary="Render a stored template without sending",
        responses=problem_responses(400, 404, 413, 415, 422),
        guards=[requires(Scope.TEMPLATES_READ)],
    )
    async def preview(
        self,
        request: Request[Any, Any, Any],
        name: TemplateNameInPath,
        data: JSONBody[PreviewRequest],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Preview:
        """The subject, text and HTML the template makes from ``payload`` and the
        notification fields given; a 422 names the part at fault (an undefined variable)."""
        data = decode_strictly(await request.body(), PreviewRequest)
        async with transaction(services.pool) as conn:
            template = await catalog.find_template(conn, principal.tenant_id, name)
        if template is None:
            raise not_found("template", name)
        return await render_preview(services, principal, catalog.source_of(template), data)

    @post(
        "/preview",
        status_code=200,
        summary="Render a template given inline, without storing or sending it",
        responses=problem_responses(400, 413, 415, 422),
        guards=[requires(Scope.TEMPLATES_READ)],
    )
    async def preview_inline(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[InlinePreviewRequest],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Preview:
        """For editors: try a template before saving it."""
        data = decode_strictly(await request.body(), InlinePreviewRequest)
        source = await checked_source(services, principal, "preview", data)
        return await render_preview(services, principal, source, data)
