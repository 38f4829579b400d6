"""The dashboard's template pages: the list, and one template's editor with a preview
against a sample payload, through :mod:`notifier.templates.service` like the REST API.

The preview renders what the form holds (saved or not) in the same sandbox as deliveries
(``preview_inline``); the pages run no script (the CSP allows none), so "Preview" is a
button that renders the page again with the result next to the form.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect, Template

from notifier.errors import ProblemError
from notifier.services import Services
from notifier.templates import service
from notifier.templates.schemas import InlinePreviewRequest, Preview, TemplateReplace
from notifier.tenancy import Scope
from notifier.ui.auth import SCOPE_OPT, current_tenant
from notifier.ui.forms import FormErrors, convert_fields
from notifier.ui.pages import UI_PATH, page

READ = {SCOPE_OPT: Scope.TEMPLATES_READ.value}
WRITE = {SCOPE_OPT: Scope.TEMPLATES_WRITE.value}
LIST_PATH = f"{UI_PATH}/templates"
SOURCE_FIELDS = ("subject", "text_body", "html_body", "description")
SAMPLE_PAYLOAD = '{\n  "name": "Ada",\n  "amount": "42.00 EUR"\n}'


@get("/templates", name="ui-templates", opt=READ)
async def template_list(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Template:
    """The tenant's templates and the built-ins they do not override."""
    templates = await service.list_templates(services.pool, current_tenant(request))
    return await page(request, "templates.html", current="ui-templates", templates=templates)


@get("/templates/{template_name:str}", name="ui-template", opt=READ)
async def template_edit(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    template_name: FromPath[str],
) -> Template:
    """The template in its editor (read only without ``templates:write``)."""
    name = template_name
    template = await service.get_template(services.pool, current_tenant(request), name)
    values = {field: getattr(template, field) or "" for field in SOURCE_FIELDS}
    return await page(
        request,
        "template_form.html",
        current="ui-templates",
        name=name,
        builtin=template.builtin,
        values=values | {"payload": SAMPLE_PAYLOAD},
        errors={},
        preview=None,
        saved=request.query_params.get("saved") == "1",
    )


def _source_fields(values: dict[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {f: values[f] for f in SOURCE_FIELDS}
    fields["html_body"] = values["html_body"] or None
    return fields


def _problem_errors(exc: ProblemError) -> dict[str, str]:
    if exc.status >= 500 or exc.status == 404:
        raise exc
    if not exc.errors:
        return {"text_body": exc.detail or exc.title}
    errors: dict[str, str] = {}
    for problem in exc.errors:
        field = problem.field.split(".")[0].split("[")[0]
        errors.setdefault(
            field if field in {*SOURCE_FIELDS, "payload"} else "text_body", problem.message
        )
    return errors


async def _form_again(
    request: Request[Any, Any, Any],
    name: str,
    builtin: bool,
    values: dict[str, str],
    errors: dict[str, str],
    preview: Preview | None,
) -> Template:
    return await page(
        request,
        "template_form.html",
        current="ui-templates",
        status_code=422 if errors else 200,
        name=name,
        builtin=builtin,
        values=values,
        errors=errors,
        preview=preview,
        saved=False,
    )


async def _form_values(request: Request[Any, Any, Any]) -> dict[str, str]:
    form = await request.form()
    return {field: str(form.get(field, "")) for field in (*SOURCE_FIELDS, "payload")}


@post(
    "/templates/{template_name:str}/preview", name="ui-template-preview", opt=READ, status_code=200
)
async def template_preview(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    template_name: FromPath[str],
) -> Template:
    """Render the form's template (saved or not) against its sample payload, in the
    sandbox deliveries use; nothing is stored or sent."""
    name = template_name
    tenant = current_tenant(request)
    template = await service.get_template(services.pool, tenant, name)  # a 404 first
    values = await _form_values(request)
    errors: dict[str, str] = {}
    preview: Preview | None = None
    try:
        try:
            payload = msgspec.json.decode(values["payload"].strip().encode() or b"{}")
        except msgspec.DecodeError as exc:
            raise FormErrors({"payload": f"not JSON: {exc}"}) from None
        if not isinstance(payload, dict):
            raise FormErrors({"payload": "give a JSON object, such as {}"})
        source = {k: v for k, v in _source_fields(values).items() if k != "description"}
        request_body = convert_fields(
            InlinePreviewRequest, source | {"payload": payload, "notification_type": name}
        )
        preview = await service.preview_inline(services.renderer, tenant, request_body)
    except FormErrors as exc:
        errors = exc.errors
    except ProblemError as exc:
        errors = _problem_errors(exc)
    return await _form_again(request, name, template.builtin, values, errors, preview)


@post("/templates/{template_name:str}", name="ui-template-save", opt=WRITE, status_code=303)
async def template_save(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    template_name: FromPath[str],
) -> Template | Redirect:
    """Store the form as the tenant's template ``name`` once it compiles (overriding a
    built-in of that name), as ``PUT /api/v1/templates/{name}``."""
    name = template_name
    tenant = current_tenant(request)
    template = await service.get_template(services.pool, tenant, name)  # a 404 first
    values = await _form_values(request)
    try:
        data = convert_fields(TemplateReplace, _source_fields(values))
        await service.replace_template(services.pool, services.renderer, tenant, name, data)
    except FormErrors as exc:
        return await _form_again(request, name, template.builtin, values, exc.errors, None)
    except ProblemError as exc:
        errors = _problem_errors(exc)
        return await _form_again(request, name, template.builtin, values, errors, None)
    return Redirect(f"{LIST_PATH}/{name}?saved=1", status_code=303)


ROUTES = [template_list, template_edit, template_preview, template_save]
