"""Finding the template a notification renders with: the tenant's, else a built-in."""

from __future__ import annotations

from notifier.db import Connection
from notifier.templates import queries
from notifier.templates.builtin import GENERIC, builtin_templates
from notifier.templates.messages import TemplateSource
from notifier.templates.schemas import Template


class TemplateNotFound(LookupError):
    """A notification or rule names a template that neither the tenant nor the built-ins have."""


def builtin_resource(source: TemplateSource) -> Template:
    """A built-in template as the API shows it."""
    return Template(
        name=source.name,
        description="built-in",
        subject=source.subject,
        text_body=source.text_body,
        html_body=source.html_body,
        builtin=True,
    )


def source_of(template: Template) -> TemplateSource:
    """What the renderer needs of a stored template."""
    return TemplateSource(
        name=template.name,
        subject=template.subject,
        text_body=template.text_body,
        html_body=template.html_body,
    )


async def find_template(conn: Connection, tenant_id: str, name: str) -> Template | None:
    """The tenant's template ``name``, else the built-in one, else None."""
    own = await queries.get_template(conn, tenant_id, name)
    if own is not None:
        return own
    builtin = builtin_templates().get(name)
    return builtin_resource(builtin) if builtin else None


async def template_for(
    conn: Connection, tenant_id: str, name: str | None, notification_type: str
) -> TemplateSource:
    """The template a notification renders with, found with one query.

    A named template must exist (the tenant's, or a built-in): sending some other text
    instead would be worse than failing visibly. Without a name, the template called
    after the notification type, else the one called ``generic`` (the tenant's or the
    built-in, in both cases).
    """
    candidates = [name] if name is not None else [notification_type, GENERIC]
    own = await queries.get_templates(conn, tenant_id, candidates)
    for candidate in candidates:
        if candidate in own:
            return source_of(own[candidate])
        if (builtin := builtin_templates().get(candidate)) is not None:
            return builtin
    if name is not None:
        raise TemplateNotFound(f"template {name!r} does not exist")
    raise AssertionError("the built-in generic template always exists")
