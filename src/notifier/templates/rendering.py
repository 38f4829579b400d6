"""Rendering a template's subject, text and HTML in Jinja2's sandbox.

Templates are written by tenants through the API, so they run in
:class:`jinja2.sandbox.SandboxedEnvironment` (no attribute access to internals, no
unsafe calls), with :class:`jinja2.StrictUndefined` (a misspelt variable is an error,
not an empty string) and autoescaping for the HTML part only.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable
from typing import Any, Literal

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from notifier.templates.messages import (
    PARTS,
    RenderedMessage,
    TemplateProblem,
    TemplateSource,
)

# Rendered text longer than this is a runaway loop, not a message.
MAX_RENDERED_CHARS = 200_000
DEFAULT_DATE_FORMAT = "%-d %B %Y"
DEFAULT_DATETIME_FORMAT = "%-d %B %Y, %H:%M %Z"


class RenderInterrupted(BaseException):
    """Raised into a compile or render from outside (the sandbox's CPU timer).

    A BaseException, so that nothing between the timer and the renderer (Jinja2 catches
    ``Exception`` in places) can swallow it; the renderer turns it into a
    :class:`TemplateProblem` naming the part it interrupted. Its text says why.
    """


# What the renderer is about to do, for whoever watches it (the sandbox): compile a part
# that is not cached yet, be done compiling it, or render it.
Phase = Literal["compile", "compiled", "render"]
PhaseHook = Callable[[Phase, str], None]


def _as_datetime(value: Any) -> datetime.datetime | datetime.date:
    """A date filter's input: a datetime, a date, or an ISO 8601 string (payloads hold strings)."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises, naming the missing variable
    if isinstance(value, datetime.datetime | datetime.date):
        return value
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 date or date-time") from None
    if value is None:
        raise ValueError("cannot format an empty value (none) as a date")
    raise ValueError(f"cannot format {type(value).__name__} as a date")


def format_date(value: Any, fmt: str = DEFAULT_DATE_FORMAT) -> str:
    """``{{ expires_at | date }}`` -> ``24 December 2026``; ``| date('%Y-%m-%d')`` for others."""
    return _as_datetime(value).strftime(fmt)


def format_datetime(value: Any, fmt: str = DEFAULT_DATETIME_FORMAT) -> str:
    """``{{ expires_at | datetime }}`` -> ``24 December 2026, 09:00 UTC``."""
    moment = _as_datetime(value)
    if isinstance(moment, datetime.datetime) and moment.tzinfo is not None:
        moment = moment.astimezone(datetime.UTC)
    return moment.strftime(fmt)


def _environment(*, autoescape: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,
        # Templates come from the database, never from files: nothing to load or reload.
        auto_reload=False,
        keep_trailing_newline=True,
    )
    env.filters["date"] = format_date
    env.filters["datetime"] = format_datetime
    return env


class Renderer:
    """Compiles and renders templates. Runs in the sandbox processes only
    (:mod:`notifier.templates.sandbox`); the API and workers ask them through
    :class:`notifier.templates.pool.RenderPool`.

    ``on_phase`` is told before each part is compiled (only when not cached) or rendered,
    and after a compile: the sandbox keeps its timer and its progress report by it.
    """

    def __init__(self, *, cache_size: int = 512, on_phase: PhaseHook | None = None) -> None:
        self._text = _environment(autoescape=False)
        self._html = _environment(autoescape=True)
        self._on_phase = on_phase
        # Compiling costs far more than rendering, and the same few templates render for
        # every notification. Keyed by the source itself, so an edited template recompiles.
        self._compile = functools.lru_cache(maxsize=cache_size)(self._compile_uncached)

    def _env(self, part: str) -> SandboxedEnvironment:
        return self._html if part == "html_body" else self._text

    def _compile_uncached(self, part: str, body: str) -> jinja2.Template:
        if self._on_phase is not None:
            self._on_phase("compile", part)
        try:
            return self._env(part).from_string(body)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateProblem(part, exc.message or "syntax error", exc.lineno) from None
        except (ValueError, TypeError, ArithmeticError, LookupError) as exc:
            # Raised while folding constants ({{ 10 ** 5000 }} cannot become source text).
            raise TemplateProblem(part, str(exc) or type(exc).__name__) from None
        except RecursionError:
            raise TemplateProblem(part, "is nested too deeply") from None
        except MemoryError:
            raise TemplateProblem(part, "needs more memory to compile than allowed") from None
        except RenderInterrupted as exc:
            raise TemplateProblem(part, str(exc)) from None
        finally:
            if self._on_phase is not None:
                self._on_phase("compiled", part)

    def check(self, source: TemplateSource) -> None:
        """Raise :class:`TemplateProblem` naming the first part that does not compile."""
        for part in PARTS:
            body = getattr(source, part)
            if body is not None:
                self._compile(part, body)

    def render(self, source: TemplateSource, context: dict[str, Any]) -> RenderedMessage:
        """Render every part; a syntax error, undefined variable or failing filter raises
        :class:`TemplateProblem`."""
        rendered = {}
        for part in PARTS:
            body = getattr(source, part)
            rendered[part] = None if body is None else self._render_part(part, body, context)
        subject = " ".join((rendered["subject"] or "").split())  # a header is one line
        return RenderedMessage(
            subject=subject, text=rendered["text_body"] or "", html=rendered["html_body"]
        )

    def _render_part(self, part: str, body: str, context: dict[str, Any]) -> str:
        template = self._compile(part, body)
        if self._on_phase is not None:
            self._on_phase("render", part)
        try:
            text = template.render(context)
        except jinja2.TemplateError as exc:
            raise TemplateProblem(part, exc.message or type(exc).__name__, _line(exc)) from None
        except RecursionError as exc:
            # A macro calling itself: caught before the interpreter's own stack runs out.
            raise TemplateProblem(part, "recurses too deeply", _line(exc)) from None
        except (ValueError, TypeError, ArithmeticError, LookupError) as exc:
            # Raised by filters and operators on the payload's values (a bad date, 1/0).
            raise TemplateProblem(part, str(exc) or type(exc).__name__, _line(exc)) from None
        except MemoryError:
            raise TemplateProblem(part, "needs more memory to render than allowed") from None
        except RenderInterrupted as exc:
            raise TemplateProblem(part, str(exc)) from None
        if len(text) > MAX_RENDERED_CHARS:
            raise TemplateProblem(part, f"renders to more than {MAX_RENDERED_CHARS} characters")
        return text


def _line(exc: BaseException) -> int | None:
    """The template line an error was raised on: Jinja2 rewrites tracebacks to point there."""
    lineno = getattr(exc, "lineno", None)
    if isinstance(lineno, int):
        return lineno
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _days(lead_time: datetime.timedelta) -> int | float:
    days = lead_time.total_seconds() / 86400
    return int(days) if days.is_integer() else days


def template_context(
    payload: dict[str, Any],
    *,
    notification_type: str,
    recipient: str,
    notification_id: str | None = None,
    entity_id: str | None = None,
    target_date: datetime.datetime | None = None,
    lead_time: datetime.timedelta = datetime.timedelta(0),
    channel: str | None = None,
    unsubscribe_url: str | None = None,
) -> dict[str, Any]:
    """The variables a template sees: the payload's top-level fields, then the
    notification's own fields (which win on a clash), ``payload`` (the whole payload) and
    ``notification`` (the notification's fields, whatever the payload holds).

    ``unsubscribe_url`` is the signed one-click link (None when links are off), the same
    one email's ``List-Unsubscribe`` header carries."""
    notification = {
        "notification_id": notification_id,
        "notification_type": notification_type,
        "recipient": recipient,
        "entity_id": entity_id,
        "target_date": target_date,
        "lead_time": lead_time,
        "lead_time_days": _days(lead_time),
        "channel": channel,
        "unsubscribe_url": unsubscribe_url,
    }
    return {**payload, **notification, "payload": payload, "notification": notification}
