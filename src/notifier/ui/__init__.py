"""The operator dashboard at ``/ui``, served by the API process (docs/ui.md).

Server-rendered pages (Jinja2, plain forms, no script), inline SVG charts, every asset
served from this package. Sign-in with an API key, server-side sessions in PostgreSQL,
CSRF tokens on every form. :class:`~notifier.ui.plugin.DashboardPlugin` wires it in.
"""

from __future__ import annotations

from notifier.ui.plugin import DashboardPlugin

__all__ = ["DashboardPlugin"]
