"""Fuzzing: schemathesis generates requests from the API's own OpenAPI document, and a second
generator sends the byte-level junk a schema never describes.

Every operation gets ``NOTIFIER_FUZZ_EXAMPLES`` generated requests (a bounded number in the
normal suite; ``uv run nox -s fuzz`` runs many more), sent to the real app on loopback.
Each answer must not be a 5xx and must match the document: status, content type, headers,
body schema, ``Allow`` of unsupported methods; requests the document calls invalid must be
refused, and requests it calls valid accepted (schemathesis's ``positive_data_acceptance``).

The one exception to the last: a refusal whose every error is in :data:`SEMANTIC_REJECTIONS`,
each a reason no OpenAPI document can state (a cursor the API never issued, a channel this
deployment does not configure, a key reused with another body...). Any other refusal of a
schema-valid request fails, so the document must say what the server checks.
"""

from __future__ import annotations

import collections
import os
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import msgspec
import pytest
import schemathesis
from hypothesis import strategies as st

from notifier.app import create_app
from notifier.rate_limits.gcra import MAX_BURST, MAX_PER_SECOND
from notifier.settings import Settings
from tests.conftest import CreateApiKey
from tests.support import PROBLEM_JSON, bearer

EXAMPLES_PER_OPERATION = int(os.environ.get("NOTIFIER_FUZZ_EXAMPLES", "10"))
# What the fuzzing sent and got, by operation and status, printed after the run (`-s`).
SENT: collections.Counter[tuple[str, int]] = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def fuzz_report() -> Iterator[None]:
    """Print how many requests were generated, by operation and status."""
    yield
    by_operation: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    for (operation, status), count in SENT.items():
        by_operation[operation][status] += count
    print(f"\nfuzz: {SENT.total()} generated requests, {EXAMPLES_PER_OPERATION} max per operation")
    for operation, statuses in sorted(by_operation.items()):
        print(f"  {operation}: {dict(sorted(statuses.items()))}")


@pytest.fixture
async def api_headers(create_api_key: CreateApiKey) -> dict[str, str]:
    """An admin key whose rate limit the fuzzing never reaches: 429s would hide the answers."""
    return bearer(
        await create_api_key(rate_limit_per_second=MAX_PER_SECOND, rate_limit_burst=MAX_BURST)
    )


# The document the app serves at /schema/openapi.json. Building the app connects nothing;
# schemathesis needs the document when it collects the tests, before any fixture exists.
# (Its from_fixture loader does not work with pytest 9.)
DOCUMENT = create_app(Settings()).openapi_schema.to_schema()
# 413 refuses a schema-violating body too: one longer than NOTIFIER_API_MAX_BODY_BYTES.
_REJECTING = schemathesis.Config().projects.default.checks.negative_data_rejection
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "negative_data_rejection": {"expected-statuses": [*_REJECTING.expected_statuses, "413"]}
        }
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)

# (field, message) patterns of refusals that no OpenAPI document can rule out, with why.
SEMANTIC_REJECTIONS = [
    # Opaque: only cursors the API issued decode to a position.
    (r"cursor", r"is not a cursor returned by this API"),
    # The generator repeats keys across requests with other bodies (draft-ietf-httpapi-
    # idempotency-key-header: 422).
    (r"Idempotency-Key", r"was first used with a different request"),
    # Channels depend on the deployment's settings, templates on what the tenant stored.
    (r"channel", r"unknown channel "),
    (r"template", r"no template "),
    # What a recipient may be depends on the channel chosen in another field.
    (r"recipient", r".*"),
    (r"recipient", r"give exactly one of recipient and recipient_field"),
    # The tz database's zone names; quiet hours whose start equals their end.
    (r"timezone", r"unknown IANA time zone "),
    (r"quiet_hours", r"start and end must differ"),
    # Email syntax beyond what `format: email` says (email_validator's rules).
    (r"email", r"is not a valid email address"),
    # An ISO 8601 duration's grammar and range; instants PostgreSQL and Python both hold.
    (r"lead_times\[\d+\]", r"is not an ISO 8601 duration|must not be negative|must not exceed"),
    (r"target_date|occurred_at|expires_at|since|\[\d+\]\.occurred_at", r"must be between "),
    # Endpoints: a URL vetted like every webhook target; another field decides whether a
    # reason or an endpoint may be given; headers notifier sets itself; a rotation's overlap.
    (r"url", r".*"),
    (r"endpoint", r"no endpoint |give endpoint, recipient or recipient_field"),
    (r"channel", r"an endpoint is reached by webhook"),
    (r"recipient", r"give either recipient or endpoint"),
    (r"disabled_reason", r"only a disabled endpoint has one"),
    (r"headers(\..*)?", r"is set by notifier itself|names a header twice"),
    (r"overlap", r"is not an ISO 8601 duration|must be at most P7D|must not be negative"),
    (r"since", r"must be between "),
    # Sizes of encoded JSON (bytes, not characters), nesting, NUL (PostgreSQL's text refuses it).
    (r"body", r"must be at most \d+ bytes$"),
    (r".*", r"must be at most \d+ bytes as JSON|must not nest deeper than|NUL character"),
    # A rule key's template grammar (placeholders naming payload paths); which fields a rule
    # needs depends on its action; a cancel by query needs one of two parameters.
    (r"key", r"payload field|brace outside|a cancel rule needs|give key or entity_id"),
    (r"channel|recipient|recipient_field", r"a cancel rule makes no notification"),
    (r"channel", r"a notify rule needs the channel"),
    # A digest's window grammar and range, and the fields a digest needs or cannot have.
    (r"digest\.window", r"is not an ISO 8601 duration|must be from PT1S to P7D"),
    (r"key", r"a digest collects the events of one key"),
    (r"date_field", r"a digest goes out when its window ends"),
    # Whether a phone reads as a number is the numbering plans' to say, and matters only
    # when it is the SMS recipient (a channel chosen in another field).
    (r"phone", r"phone number"),
    # What a CloudEvent's base64 data decodes to (notifier stores a JSON object only).
    (r"data_base64|\[\d+\]\.data_base64", r"base64 of a JSON object|data or data_base64"),
    # Template source the sandbox cannot compile, or a preview that cannot render.
    (r"subject|text_body|html_body", r".*"),
]
_SEMANTIC = [(re.compile(f), re.compile(m)) for f, m in SEMANTIC_REJECTIONS]


def is_semantic_rejection(response: httpx.Response | Any) -> bool:
    """Whether ``response`` refuses a request for reasons listed in SEMANTIC_REJECTIONS only."""
    if response.status_code not in {400, 413, 422}:
        return False
    try:
        errors = msgspec.json.decode(response.content)["errors"]
    except (msgspec.DecodeError, KeyError, TypeError):
        return False
    return bool(errors) and all(
        any(f.fullmatch(e["field"]) and m.search(e["message"]) for f, m in _SEMANTIC)
        for e in errors
    )


@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    # The same requests on every run, so CI cannot turn red by chance; `nox -s fuzz` explores
    # further by asking for more examples.
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_api_answers_every_generated_request_as_documented(
    case: schemathesis.Case[Any], live_api: str, api_headers: dict[str, str]
) -> None:
    # The key replaces whatever Authorization the case carries, but for a negative case
    # that leaves the header out to be refused for it (a 401): adding the key back would make
    # it valid, and schemathesis would then call the answer an accepted invalid request.
    leaves_out_key = (
        case.meta is not None
        and case.meta.generation.mode.is_negative
        and "Authorization" not in (case.headers or {})
    )
    headers = {} if leaves_out_key else api_headers
    response = case.call(base_url=live_api, headers=headers)
    SENT[(case.operation.label, response.status_code)] += 1
    semantic = is_semantic_rejection(response)
    case.validate_response(
        response,
        headers=headers,
        excluded_checks=[schemathesis.checks.positive_data_acceptance] if semantic else [],
    )


# Templates beyond the sandbox's bounds (time to render, time to compile, memory), through
# each operation that compiles or renders one: answered as documented, a 422, never a 5xx.
NESTED_LOOPS = "{% for i in range(30000) %}{% for j in range(30000) %}{% endfor %}{% endfor %}"
OVER_BUDGET_TEMPLATES = [
    ("/api/v1/templates/preview", None, {"subject": "s", "text_body": NESTED_LOOPS}),
    ("/api/v1/templates/preview", None, {"subject": "{{ 'x' * 10**9 }}", "text_body": "t"}),
    ("/api/v1/templates/{name}", "slow", {"subject": "s", "text_body": "{{ 10 ** (10 ** 8) }}"}),
]


@pytest.mark.parametrize(("path", "name", "body"), OVER_BUDGET_TEMPLATES)
def test_over_budget_templates_are_refused_as_documented(
    path: str, name: str | None, body: dict[str, Any], live_api: str, api_headers: dict[str, str]
) -> None:
    (operation,) = (op for op in schema[path].values() if op.method.upper() in {"POST", "PUT"})
    case = operation.Case(
        path_parameters={"name": name} if name else None, body=body, media_type="application/json"
    )
    response = case.call(base_url=live_api, headers=api_headers)
    SENT[(case.operation.label, response.status_code)] += 1

    case.validate_response(
        response,
        headers=api_headers,
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )
    assert response.status_code == 422, response.text


# --- byte-level junk ----------------------------------------------------------------------

# Placeholders for path parameters: the junk goes in the body, the query and the headers.
PATH_VALUES = {"channel": "log", "name": "welcome", "token": "t"}
OPERATIONS = sorted(
    (method.upper(), path, operation)
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
    if method in {"get", "post", "put", "patch", "delete"}
)
MEDIA_TYPES = sorted(
    {
        media_type
        for _, _, operation in OPERATIONS
        for media_type in operation.get("requestBody", {}).get("content", {})
    }
)
# Each is not UTF-8: a stray continuation byte, a lead byte without its continuation, an
# encoded surrogate, an overlong encoding, a byte UTF-8 never uses, a truncated sequence.
NOT_UTF8 = st.sampled_from(
    [b"\x80", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xff", b"\xe2\x82"]
)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_DOCUMENTS = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
MARK = "\N{SNOWMAN}"


@st.composite
def not_utf8_json(draw: st.DrawFn) -> bytes:
    """A JSON document shaped like a request, with bytes that are not UTF-8 in a string."""
    shape = draw(
        st.sampled_from(
            [
                {"type": MARK, "payload": {"k": "v"}},
                {"specversion": "1.0", "id": "1", "source": MARK, "type": "t"},
                [{"type": "t"}, {"type": "t", "payload": {MARK: 1}}],
                {
                    "notification_type": "t",
                    "entity_id": MARK,
                    "target_date": "2030-01-01T00:00:00Z",
                },
                {"event_type": "t", "channel": "log", "recipient": MARK},
                {"subject": MARK, "text_body": "t", "name": "n"},
                {"per_second": 1, MARK: 1},
                {"recipient": MARK},
                {"enabled": False, "name": MARK},
            ]
        )
    )
    return msgspec.json.encode(shape).replace(MARK.encode(), draw(NOT_UTF8))


JUNK_BODIES = st.one_of(
    st.binary(max_size=200),
    not_utf8_json(),
    JSON_DOCUMENTS.map(msgspec.json.encode),
    # Truncated, prefixed with a byte order mark, or with raw control bytes in a string.
    JSON_DOCUMENTS.map(msgspec.json.encode).flatmap(
        lambda body: st.integers(0, len(body)).map(lambda n: body[:n])
    ),
    st.sampled_from([b"\xef\xbb\xbf{}", b'{"type": "a\x00b"}', b'{"type": "a\nb"}', b"\x00" * 8]),
    # Deeper than any limit: msgspec gives up at Python's recursion limit.
    st.integers(100, 100_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(100, 100_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    # Numbers no float or int of ours holds.
    st.sampled_from([b'{"per_second": 1e400}', b'{"payload": {"n": 1' + b"0" * 5000 + b"}}"]),
)
# Header values: any byte HTTP lets through (RFC 9110 field-vchar, obs-text, SP and HTAB;
# h11 refuses the other control bytes before sending, and the server's would answer itself).
_HEADER_BYTES = [9, *range(0x20, 0x7F), *range(0x80, 0x100)]
HEADER_VALUES = st.lists(st.sampled_from(_HEADER_BYTES), max_size=80).map(
    lambda octets: bytes(octets).strip(b" \t")
)
CONTENT_TYPES = st.one_of(
    st.none(),
    st.sampled_from(MEDIA_TYPES),
    st.sampled_from(
        [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin-1",
            "application/json; charset",
            "application/merge-patch+json",
            ";;;",
        ]
    ),
    HEADER_VALUES.map(lambda value: value.decode("latin-1")),
)
# Query values: any bytes, percent-encoded, so the server sees invalid UTF-8 and controls.
QUERY_VALUES = st.binary(max_size=80).map(urllib.parse.quote_from_bytes)


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES.get(m[1], str(uuid.uuid4())), path)


@hypothesis.settings(
    max_examples=EXAMPLES_PER_OPERATION * 10,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
)
@hypothesis.given(
    operation=st.sampled_from(OPERATIONS),
    body=st.none() | JUNK_BODIES,
    content_type=CONTENT_TYPES,
    query=st.lists(st.tuples(QUERY_VALUES, QUERY_VALUES), max_size=3),
    idempotency_key=st.none() | HEADER_VALUES,
    extra_header=HEADER_VALUES,
)
def test_byte_level_junk_gets_a_documented_4xx_never_a_5xx(
    live_api: str,
    api_headers: dict[str, str],
    operation: tuple[str, str, dict[str, Any]],
    body: bytes | None,
    content_type: str | None,
    query: list[tuple[str, str]],
    idempotency_key: bytes | None,
    extra_header: bytes,
) -> None:
    """Bodies that are not UTF-8 or not JSON, in undeclared media types; query strings and
    headers with invalid UTF-8 and control bytes; each answered as the document says."""
    method, path, spec = operation
    # The operation's own query parameters, with junk values, and some it does not have.
    names = [p["name"] for p in spec.get("parameters", []) if p["in"] == "query"]
    pairs = [
        (names[i % len(names)] if names and i % 2 == 0 else key, value)
        for i, (key, value) in enumerate(query)
    ]
    url = concrete(path) + ("?" + "&".join(f"{k}={v}" for k, v in pairs) if pairs else "")
    headers: dict[bytes, bytes] = {k.encode(): v.encode() for k, v in api_headers.items()}
    headers[b"x-junk"] = extra_header
    if content_type is not None:
        headers[b"content-type"] = content_type.encode("latin-1")
    if idempotency_key is not None:
        headers[b"idempotency-key"] = idempotency_key

    with httpx.Client(base_url=live_api, timeout=30) as http:
        response = http.request(method, url, content=body, headers=headers)
    SENT[(f"junk {method} {path}", response.status_code)] += 1

    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith(PROBLEM_JSON), response.text
        assert str(response.status_code) in spec["responses"], (method, path, response.text)
