"""What a template is and what it gives, shared by the processes that ask for renders (the
API, the workers) and the sandboxes that render (:mod:`notifier.templates.rendering`).

Free of Jinja2, so that a process that only sends renders to its sandboxes does not import
it: a worker's start does not pay for it (docs/performance.md, "Worker start-up";
tests/test_imports.py).
"""

from __future__ import annotations

import datetime

import msgspec

# The parts of a template, by the name the API and the database give them.
PARTS = ("subject", "text_body", "html_body")


class TemplateSource(msgspec.Struct, frozen=True, kw_only=True):
    """A template's parts as written. ``html_body`` is optional (SMS and webhooks use text)."""

    name: str
    subject: str
    text_body: str
    html_body: str | None = None


class RenderedMessage(msgspec.Struct, frozen=True, kw_only=True):
    """What a template produced for one notification."""

    subject: str
    text: str
    html: str | None = None


class MessageFields(msgspec.Struct, frozen=True, kw_only=True):
    """The notification's own fields a template sees (see :func:`template_context`)."""

    notification_type: str
    recipient: str
    notification_id: str | None = None
    entity_id: str | None = None
    target_date: datetime.datetime | None = None
    lead_time: datetime.timedelta = datetime.timedelta(0)
    channel: str | None = None
    unsubscribe_url: str | None = None


class TemplateProblem(Exception):
    """A template that does not compile or cannot render with the context given.

    ``part`` names the part at fault (``subject``, ``text_body``, ``html_body``) and
    ``line`` the line in it, when Jinja2 knows.
    """

    def __init__(self, part: str, message: str, line: int | None = None) -> None:
        where = f"{part} line {line}" if line is not None else part
        super().__init__(f"{where}: {message}")
        self.part = part
        self.message = message
        self.line = line
