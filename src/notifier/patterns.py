"""Regular expressions that the server and the OpenAPI document read alike.

msgspec checks a ``pattern`` with Python's ``re`` (``re.search``); the document's readers,
schemathesis and client-side validators among them, use ECMAScript's dialect. The two differ
where it matters here, so our patterns avoid the differences:

- ``$`` in Python also matches before a final newline: ``"abc\\n"`` passed ``^[a-z]+$`` on the
  server (an event type, a rule's ``recipient_field``, a template name: the last then broke
  the table's CHECK, a 500), though the document refused it. :func:`whole` anchors a pattern
  so that neither dialect lets a trailing newline through.
- ``\\s`` in Python adds ``\\x1c``-``\\x1f`` and ``\\x85``, ECMAScript's adds ``\\ufeff``: a
  type the document allowed was refused for a character only Python calls space.
  :data:`WHITESPACE` is the union, spelled out.
"""

from __future__ import annotations

WHITESPACE = r"\s\x1c-\x1f\x85\ufeff"
NO_WHITESPACE = f"[^{WHITESPACE}]"


def whole(pattern: str) -> str:
    """``pattern`` matching whole strings only, in both dialects."""
    return rf"^(?:{pattern})$(?!\n)"
