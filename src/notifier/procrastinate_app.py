"""For the stock ``procrastinate`` CLI only: ``procrastinate --app=notifier.procrastinate_app.app``.

Reads ``NOTIFIER_*`` settings when imported (the CLI can only load a module attribute);
the connector connects when the CLI opens it. Run workers with ``notifier worker``.
"""

from __future__ import annotations

from notifier.bootstrap import create_queue_app
from notifier.settings import Settings

app = create_queue_app(Settings.from_env())
