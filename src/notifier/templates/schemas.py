"""The template resource at the API boundary."""

from __future__ import annotations

import datetime
from typing import Annotated, Any

import msgspec

from notifier.api_types import AwareDatetime, EventType, Payload
from notifier.patterns import whole

# Built-in names are event types ("password.expiring"); tenants' names follow the same shape.
TEMPLATE_NAME_PATTERN = whole(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
TemplateName = Annotated[
    str, msgspec.Meta(pattern=TEMPLATE_NAME_PATTERN, min_length=1, max_length=100)
]
Subject = Annotated[str, msgspec.Meta(max_length=2_000)]
TextBody = Annotated[str, msgspec.Meta(max_length=100_000)]
HtmlBody = Annotated[str, msgspec.Meta(max_length=200_000)]
Description = Annotated[str, msgspec.Meta(max_length=1_000)]


class TemplateReplace(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``PUT /api/v1/templates/{name}``: the whole template. Jinja2 syntax in every part."""

    subject: Subject
    text_body: TextBody
    html_body: HtmlBody | None = None
    description: Description = ""


class TemplateCreate(TemplateReplace, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/v1/templates/``."""

    name: TemplateName


class Template(msgspec.Struct, kw_only=True):
    """A template: a tenant's own, or a built-in (``builtin``: true, no timestamps)."""

    name: str
    description: str
    subject: str
    text_body: str
    html_body: str | None
    builtin: bool
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None


class PreviewRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/v1/templates/{name}/preview``: what to render with. Nothing is sent.

    ``payload`` stands for the event's payload; the other fields for the notification's.
    """

    payload: Payload = msgspec.field(default_factory=dict)
    notification_type: EventType | None = None
    recipient: Annotated[str, msgspec.Meta(max_length=2048)] = "recipient@example.com"
    entity_id: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    target_date: AwareDatetime | None = None
    lead_time_days: Annotated[float, msgspec.Meta(ge=0, le=3650)] = 0
    channel: Annotated[str, msgspec.Meta(max_length=100)] | None = None


class InlinePreviewRequest(PreviewRequest, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/v1/templates/preview``: render a template given in the request itself."""

    subject: Subject
    text_body: TextBody
    html_body: HtmlBody | None = None


class Preview(msgspec.Struct, kw_only=True):
    """A rendered template."""

    template: str
    subject: str
    text: str
    html: str | None


def template_from_row(row: dict[str, Any]) -> Template:
    """The response struct from a ``notifier.templates`` row."""
    return Template(
        builtin=False, **{name: row[name] for name in Template.__struct_fields__ if name in row}
    )
