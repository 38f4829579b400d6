"""Rate limits know nothing of notifications: the delivery asks them for a slot, and writes
its own rows itself."""

from __future__ import annotations

import ast
from pathlib import Path

import notifier.rate_limits

PACKAGE = Path(notifier.rate_limits.__file__).parent


def test_rate_limits_neither_import_nor_write_notifications() -> None:
    for module in sorted(PACKAGE.glob("*.py")):
        source = module.read_text()
        imported = [
            node.module or ""
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ImportFrom)
        ] + [
            alias.name
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Import)
            for alias in node.names
        ]
        assert not [name for name in imported if name.startswith("notifier.notifications")], (
            module.name
        )
        assert "notifier.notifications" not in source, module.name
