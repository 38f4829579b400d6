"""API keys: made and revoked with the CLI, stored as hashes, checked on every request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from notifier import cli
from notifier.app import create_app
from notifier.auth.guard import Authenticator
from notifier.auth.keys import parse_token
from notifier.errors import ProblemError
from notifier.services import Services
from notifier.settings import Settings
from tests.conftest import CreateApiKey
from tests.support import assert_problem, bearer


async def notifier(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the `notifier` command line (its real entry point) against the test database."""
    status = await asyncio.to_thread(cli.main, list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def cli_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFIER_DATABASE_URL", database_url)


@pytest.fixture
async def uncached(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app with the key cache off, so revocations and expiry show at once."""
    app = create_app(settings.replace(api_key_cache_seconds=0))
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


@pytest.mark.usefixtures("cli_database")
async def test_key_lifecycle_through_the_command_line(
    capsys: pytest.CaptureFixture[str],
    uncached: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
) -> None:
    assert (await notifier(capsys, "tenants", "create", "acme", "--name", "ACME"))[0] == 0
    status, out, _ = await notifier(capsys, "tenants", "list")
    assert status == 0
    assert [line.split("\t")[:2] for line in out.splitlines()] == [
        ["acme", "ACME"],
        ["default", "Default tenant"],
    ]

    status, out, err = await notifier(
        capsys, "keys", "create", "--tenant", "acme", "--scope", "events:write,events:read",
        "--name", "billing", "--expires-in", "90d",
    )  # fmt: skip
    assert status == 0
    token = out.strip()
    parsed = parse_token(token)
    assert parsed is not None
    key_id, secret = parsed
    assert key_id in err
    assert secret not in err

    published = await uncached.post(
        "/api/v1/events/", json={"type": "a.b", "payload": {}}, headers=bearer(token)
    )
    assert published.status_code == 201
    assert (await uncached.get("/api/v1/events/", headers=bearer(token))).json()[0]["id"] == (
        published.json()["id"]
    )
    assert (await uncached.get("/api/v1/rules/", headers=bearer(token))).status_code == 403

    status, out, _ = await notifier(capsys, "keys", "list", "--tenant", "acme")
    assert status == 0
    header, row = out.splitlines()
    assert header.startswith("id\ttenant")
    columns = row.split("\t")
    assert columns[:4] == [key_id, "acme", "billing", "events:read,events:write"]
    assert columns[5] != "-", "expires"
    assert columns[6] == "-", "not revoked"
    assert columns[7] != "-", "last used"
    assert secret not in out

    assert (await notifier(capsys, "keys", "revoke", key_id))[0] == 0
    refused = await uncached.get("/api/v1/events/", headers=bearer(token))
    assert_problem(refused, 401)
    assert "revoked" in refused.json()["detail"]
    status, out, _ = await notifier(capsys, "keys", "list")
    assert out.splitlines()[1].split("\t")[6] != "-"

    stored = await db.execute("SELECT t::text AS row FROM notifier.api_keys t")
    for row in await stored.fetchall():
        assert secret not in row["row"]
        assert token not in row["row"]


@pytest.mark.usefixtures("cli_database")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["keys", "create", "--scope", "events:delete"], "unknown or no scopes"),
        (["keys", "create", "--scope", "admin", "--tenant", "nobody"], "no tenant 'nobody'"),
        (["keys", "create", "--scope", "admin", "--expires-in", "soon"], "expiry 'soon'"),
        (["keys", "revoke", "0123456789abcdef"], "no API key"),
        (["keys", "create", "--scope", "admin", "--rate-limit", "1e-300"], "--rate-limit"),
        (["keys", "create", "--scope", "admin", "--rate-limit", "0"], "between 0.001"),
        (["keys", "create", "--scope", "admin", "--burst", "1000001"], "burst must be"),
        (["tenants", "create", "Not A Slug"], "must be 1 to 63"),
        (["tenants", "create", "default"], "exists already"),
    ],
)
async def test_admin_mistakes_are_named_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, out, err = await notifier(capsys, *argv)

    assert status == 2
    assert out == ""
    assert message in err


@pytest.mark.parametrize(
    ("authorization", "detail"),
    [
        (None, "send an API key"),
        ("Basic dXNlcjpwYXNz", "send an API key"),
        ("Bearer ", "send an API key"),
        ("Bearer not-a-key", "malformed"),
        ("Bearer ntf_0123456789abcdef_" + "A" * 43, "not valid"),
    ],
)
async def test_missing_or_bad_keys_get_401_with_a_challenge(
    client: AsyncTestClient[Any], authorization: str | None, detail: str
) -> None:
    client.headers.pop("Authorization")
    headers = {"Authorization": authorization} if authorization else {}

    response = await client.get("/api/v1/events/", headers=headers)

    assert_problem(response, 401)
    assert detail in response.json()["detail"]
    assert response.headers["www-authenticate"].startswith('Bearer realm="notifier"')


async def test_a_right_id_with_a_wrong_secret_is_refused(
    client: AsyncTestClient[Any], api_key: str
) -> None:
    forged = api_key[:-4] + ("AAAA" if not api_key.endswith("AAAA") else "BBBB")

    response = await client.get("/api/v1/events/", headers=bearer(forged))

    assert_problem(response, 401)
    assert "not valid" in response.json()["detail"]


async def test_an_expired_key_is_refused(
    uncached: AsyncTestClient[Any], create_api_key: CreateApiKey, db: psycopg.AsyncConnection[Any]
) -> None:
    key = await create_api_key(scopes=["events:read"])
    assert (await uncached.get("/api/v1/events/", headers=bearer(key))).status_code == 200
    await db.execute("UPDATE notifier.api_keys SET expires_at = now() - interval '1 second'")

    response = await uncached.get("/api/v1/events/", headers=bearer(key))

    assert_problem(response, 401)
    assert "expired" in response.json()["detail"]


async def test_revocation_takes_effect_when_the_cached_entry_ages_out(
    services: Services, create_api_key: CreateApiKey, db: psycopg.AsyncConnection[Any]
) -> None:
    now = [1000.0]
    authenticator = Authenticator(
        services.settings.replace(api_key_cache_seconds=5), lambda: now[0]
    )
    key = await create_api_key()
    header = f"Bearer {key}"
    await authenticator.authenticate(services.pool, header)

    await db.execute("UPDATE notifier.api_keys SET revoked_at = now()")
    now[0] += 4.9
    still_cached = await authenticator.authenticate(services.pool, header)
    now[0] += 0.2
    with pytest.raises(ProblemError) as refused:
        await authenticator.authenticate(services.pool, header)

    assert still_cached.revoked_at is None
    assert refused.value.status == 401


async def test_last_used_is_recorded_without_a_write_per_request(
    client: AsyncTestClient[Any], api_key: str, db: psycopg.AsyncConnection[Any]
) -> None:
    async def last_used() -> Any:
        cursor = await db.execute("SELECT last_used_at FROM notifier.api_keys")
        row = await cursor.fetchone()
        assert row is not None
        return row["last_used_at"]

    await client.get("/api/v1/events/")
    first = await last_used()
    for _ in range(5):
        await client.get("/api/v1/events/")

    assert first is not None
    assert await last_used() == first


async def test_keys_never_reach_responses_or_logs(
    client: AsyncTestClient[Any], api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, secret = parse_token(api_key) or ("", "")
    wrong = api_key[:-4] + "ZZZZ"
    caplog.set_level(logging.DEBUG)

    good = await client.get("/api/v1/events/")
    bad = await client.get("/api/v1/events/", headers=bearer(wrong))
    malformed = await client.get("/api/v1/events/", headers=bearer(secret))

    assert good.status_code == 200
    for response in (bad, malformed):
        assert response.status_code == 401
        assert secret not in response.text
        assert wrong[-20:] not in response.text
        assert secret not in str(response.headers)
    assert caplog.records, "the requests were logged at DEBUG"
    assert secret not in caplog.text
    assert wrong[-20:] not in caplog.text
