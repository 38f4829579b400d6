"""The built-in templates, one per common event type plus ``generic``.

Each is three files next to this module: ``<name>.subject``, ``<name>.txt`` and
``<name>.html``. They render with any payload (every payload field has a default), so
an event type with a built-in never fails for lack of a field. They greet ``name``, else
``user.name``, else "there".
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from notifier.templates.messages import TemplateSource

GENERIC = "generic"


@cache
def builtin_templates() -> dict[str, TemplateSource]:
    """Every built-in template by name, read once from the package's files."""
    files = resources.files(__package__)
    templates = {}
    for entry in files.iterdir():
        if not entry.name.endswith(".subject"):
            continue
        name = entry.name.removesuffix(".subject")
        templates[name] = TemplateSource(
            name=name,
            subject=entry.read_text(encoding="utf-8"),
            text_body=files.joinpath(f"{name}.txt").read_text(encoding="utf-8"),
            html_body=files.joinpath(f"{name}.html").read_text(encoding="utf-8"),
        )
    return dict(sorted(templates.items()))
