"""Fuzzing: schemathesis generates requests from the API's own OpenAPI document.

Every operation gets ``NOTIFIER_FUZZ_EXAMPLES`` generated requests (a bounded number in the
normal suite; ``uv run nox -s fuzz`` runs many more), sent to the real app on loopback.
Each answer must not be a 5xx and must match the document: status, content type, headers,
body schema, ``Allow`` of unsupported methods; and requests the document calls invalid
must be refused.

Schema-valid requests may still be refused (so schemathesis's ``positive_data_acceptance``
is left out): the API rightly rejects values for reasons no OpenAPI document can state, such
as a cursor it never issued, a channel this deployment does not configure, a recipient the
chosen channel cannot reach, or a key reused with another body.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis

from notifier.app import create_app
from notifier.settings import Settings

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


# The document the app serves at /schema/openapi.json. Building the app connects nothing;
# schemathesis needs the document when it collects the tests, before any fixture exists.
# (Its from_fixture loader does not work with pytest 9.)
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi_schema.to_schema())


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
    response = case.call(base_url=live_api, headers=api_headers)
    SENT[(case.operation.label, response.status_code)] += 1
    case.validate_response(
        response,
        headers=api_headers,
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
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
