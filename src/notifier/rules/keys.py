"""Rule keys: templates over payload fields (``"{user_id}"``, ``"sub-{subscription.id}"``).

A rule's key names what its reminders are about. A new event for the same key supersedes
the reminders a rule made for an older one; a ``cancel`` rule with the same key template
cancels them. Templates are checked when the rule is stored and rendered per event, both
in time linear in their length (which is bounded).
"""

from __future__ import annotations

import re
from typing import Any

MAX_KEY_LENGTH = 200
MAX_KEY_FIELDS = 10
_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)*")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def key_template_problem(template: str) -> str | None:
    """Why ``template`` is not a usable key template, or None.

    It holds one to :data:`MAX_KEY_FIELDS` placeholders ``{dotted.path}`` into the payload
    and, around them, any text without braces.
    """
    fields = _PLACEHOLDER.findall(template)
    if not fields:
        return 'must name at least one payload field in braces, such as "{user_id}"'
    if len(fields) > MAX_KEY_FIELDS:
        return f"must name at most {MAX_KEY_FIELDS} payload fields"
    for field in fields:
        if not _FIELD_PATH.fullmatch(field):
            return f"{{{field}}} is not a payload field path such as {{user_id}} or {{subscription.id}}"
    if "{" in _PLACEHOLDER.sub("", template) or "}" in _PLACEHOLDER.sub("", template):
        return "has a brace outside a {field} placeholder"
    return None


def render_key(template: str, payload: dict[str, Any]) -> str:
    """The key ``template`` (already checked) gives for ``payload``.

    Raises :class:`ValueError` naming the field when the payload lacks it or holds no
    string or number there (an object or ``null`` would make every event the same key),
    or when the key is longer than :data:`MAX_KEY_LENGTH`.
    """

    def value_of(match: re.Match[str]) -> str:
        path = match[1]
        value: Any = payload
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                raise ValueError(f"payload has no field {path!r} for the rule's key")
            value = value[part]
        if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
            raise ValueError(f"payload field {path!r} is no string or number for the rule's key")
        return str(value)

    key = _PLACEHOLDER.sub(value_of, template)
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"the rule's key is longer than {MAX_KEY_LENGTH} characters")
    return key
