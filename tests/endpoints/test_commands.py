"""``notifier endpoints ...`` and ``notifier secrets ...``, through the real entry point."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import psycopg
import pytest
from cryptography.fernet import Fernet
from litestar.testing import AsyncTestClient

from notifier import cli
from tests.endpoints.support import create_endpoint, notify_endpoint
from tests.support import SECRETS_KEYS

URL = "https://hooks.example.com/notifier"


async def notifier(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = await asyncio.to_thread(cli.main, list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def cli_environment(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFIER_DATABASE_URL", database_url)
    monkeypatch.setenv("NOTIFIER_SECRETS_KEYS", SECRETS_KEYS)


@pytest.mark.usefixtures("cli_environment")
async def test_an_operator_disables_enables_and_recovers_an_endpoint(
    capsys: pytest.CaptureFixture[str],
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
) -> None:
    endpoint = await create_endpoint(client, URL)
    status, out, _ = await notifier(capsys, "endpoints", "list")
    assert (status, out.split()) == (0, [endpoint["id"], "enabled", URL])

    status, _, _ = await notifier(
        capsys, "endpoints", "disable", endpoint["id"], "--reason", "receiver on fire"
    )
    assert status == 0
    shown = (await client.get(f"/api/v1/endpoints/{endpoint['id']}")).json()
    assert (shown["enabled"], shown["disabled_reason"]) == (False, "receiver on fire")
    waiting = await notify_endpoint(client, endpoint["id"])
    await db.execute(
        "UPDATE notifier.notifications SET held_since = now(), job_id = NULL WHERE id = %s",
        [waiting["id"]],
    )
    assert (await notifier(capsys, "endpoints", "enable", endpoint["id"]))[0] == 0
    row = await (
        await db.execute(
            "SELECT held_since, job_id FROM notifier.notifications WHERE id = %s", [waiting["id"]]
        )
    ).fetchone()
    assert row is not None
    assert row["held_since"] is None
    assert row["job_id"] is not None

    await db.execute(
        "UPDATE notifier.notifications SET status = 'dead' WHERE id = %s", [waiting["id"]]
    )
    since = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)).isoformat()
    status, out, _ = await notifier(
        capsys, "endpoints", "recover", endpoint["id"], "--since", since
    )
    assert (status, out.strip()) == (0, "recovered 1 notification(s)")
    # Another tenant's endpoint is unknown to a command naming the wrong tenant.
    status, _, err = await notifier(
        capsys, "endpoints", "disable", endpoint["id"], "--tenant", "acme", "--reason", "x"
    )
    assert status == 2
    assert "does not exist" in err


@pytest.mark.usefixtures("cli_environment")
async def test_key_rotation_reencrypts_every_stored_secret(
    capsys: pytest.CaptureFixture[str],
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint = await create_endpoint(client, URL)
    tenant_secret = (await client.get("/api/v1/webhook-secret/")).json()["secret"]
    status, out, _ = await notifier(capsys, "secrets", "generate-key")
    new_key = out.strip()
    assert status == 0
    Fernet(new_key.encode())  # a usable key

    monkeypatch.setenv("NOTIFIER_SECRETS_KEYS", f"{new_key},{SECRETS_KEYS}")
    status, out, _ = await notifier(capsys, "secrets", "reencrypt")
    assert (status, out.strip()) == (0, "re-encrypted 2 stored secret(s) with the first key")

    only_new = Fernet(new_key.encode())
    row = await (
        await db.execute("SELECT secret FROM notifier.endpoints WHERE id = %s", [endpoint["id"]])
    ).fetchone()
    assert row is not None
    assert only_new.decrypt(row["secret"].encode()).decode() == endpoint["secret"]
    row = await (await db.execute("SELECT secret FROM notifier.tenant_webhook_secrets")).fetchone()
    assert row is not None
    assert only_new.decrypt(row["secret"].encode()).decode() == tenant_secret


async def test_api_and_worker_refuse_to_start_without_a_key(
    capsys: pytest.CaptureFixture[str], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFIER_DATABASE_URL", database_url)
    monkeypatch.delenv("NOTIFIER_SECRETS_KEYS", raising=False)
    for command in ("api", "worker"):
        status, _, err = await notifier(capsys, command)
        assert status == 2
        assert "NOTIFIER_SECRETS_KEYS is not set" in err
