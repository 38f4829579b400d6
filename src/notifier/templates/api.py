"""HTTP handlers for ``/api/v1/templates``: a tenant's templates, the built-ins, previews.

HTTP only: the use cases are in ``templates/service.py``. Reading needs the
``templates:read`` scope, writing and previewing ``templates:write``.
"""

from __future__ import annotations

from litestar import Controller, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody

from notifier.auth.guard import BEARER_SECURITY, requires
from notifier.http.body import StrictBody
from notifier.http.params import TemplateNameInPath
from notifier.http.problems import problem_responses
from notifier.services import Services
from notifier.templates import service
from notifier.templates.schemas import (
    InlinePreviewRequest,
    Preview,
    PreviewRequest,
    Template,
    TemplateCreate,
    TemplateReplace,
)
from notifier.tenancy import Principal, Scope


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
        dto=StrictBody[TemplateCreate],
        return_dto=None,
    )
    async def create(
        self,
        data: JSONBody[TemplateCreate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Template:
        """Stored after it compiles in the sandbox; a 422 names the part and line at fault.
        A template named like a built-in (``password.expiring``) overrides it."""
        return await service.create_template(
            services.pool, services.renderer, principal.tenant_id, data
        )

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
        return await service.list_templates(services.pool, principal.tenant_id)

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
        return await service.get_template(services.pool, principal.tenant_id, name)

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
        dto=StrictBody[TemplateReplace],
        return_dto=None,
    )
    async def replace(
        self,
        name: TemplateNameInPath,
        data: JSONBody[TemplateReplace],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Response[Template]:
        """201 if it was created, 200 if it replaced the tenant's template of that name.
        Notifications not yet sent render with the new version."""
        outcome = await service.replace_template(
            services.pool, services.renderer, principal.tenant_id, name, data
        )
        return Response(outcome.body, status_code=outcome.status)

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
        await service.delete_template(services.pool, principal.tenant_id, name)

    @post(
        "/{name:str}/preview",
        status_code=200,
        summary="Render a stored template without sending",
        responses=problem_responses(400, 404, 413, 415, 422),
        guards=[requires(Scope.TEMPLATES_READ)],
        dto=StrictBody[PreviewRequest],
        return_dto=None,
    )
    async def preview(
        self,
        name: TemplateNameInPath,
        data: JSONBody[PreviewRequest],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Preview:
        """The subject, text and HTML the template makes from ``payload`` and the
        notification fields given; a 422 names the part at fault (an undefined variable)."""
        return await service.preview(
            services.pool, services.renderer, principal.tenant_id, name, data
        )

    @post(
        "/preview",
        status_code=200,
        summary="Render a template given inline, without storing or sending it",
        responses=problem_responses(400, 413, 415, 422),
        guards=[requires(Scope.TEMPLATES_READ)],
        dto=StrictBody[InlinePreviewRequest],
        return_dto=None,
    )
    async def preview_inline(
        self,
        data: JSONBody[InlinePreviewRequest],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Preview:
        """For editors: try a template before saving it."""
        return await service.preview_inline(services.renderer, principal.tenant_id, data)
