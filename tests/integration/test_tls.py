"""TLS to real servers, configured as the README's "Security" section says: a RabbitMQ node that
listens for amqps only and a PostgreSQL cluster that refuses connections without TLS, both with
a certificate for `localhost` from a CA of the test's. Warren runs instances over them with
verification on, and refuses a server whose certificate names another host or comes from
another CA."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from processor.errors import InfrastructureError
from processor.runtime import connect_broker
from processor.store.database import Database, is_transient
from tests.conftest import TestEnv, require_tool
from tests.integration.test_smoke import Greet, Greeting
from tests.services import Broker, Postgres, ServerCertificate, require_private_services

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> ServerCertificate:
    require_tool("openssl")
    return ServerCertificate.issue(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that signed nothing the servers present."""
    require_tool("openssl")
    return ServerCertificate.issue(tmp_path_factory.mktemp("other"), "another-ca").ca


@pytest.fixture
async def tls_broker(certificate: ServerCertificate) -> AsyncIterator[Broker]:
    require_private_services()
    async with Broker.running(certificate) as broker:
        yield broker


@pytest.fixture
async def tls_postgres(certificate: ServerCertificate) -> AsyncIterator[Postgres]:
    require_private_services()
    async with Postgres.running(certificate) as postgres:
        yield postgres


@pytest.fixture
def broker_url(tls_broker: Broker) -> str:
    return tls_broker.url


@pytest.fixture
def postgres_url(
    tls_postgres: Postgres, certificate: ServerCertificate, monkeypatch: pytest.MonkeyPatch
) -> str:
    monkeypatch.setenv("PGSSLROOTCERT", str(certificate.ca))
    return f"{tls_postgres.url}?ssl=verify-full"


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_instances_run_over_verified_tls_to_the_broker_and_the_database(
    env: TestEnv,
) -> None:
    # The broker has no plain listener and the database rejects plain connections
    # (hostnossl ... reject), so getting here at all means both connections are TLS.
    assert env.broker_url.startswith("amqps://")
    assert "ssl=verify-full" in env.backend.database_url
    await env.start_worker(Greet)
    instance = await env.client.create(Greet, Greeting(name="tls"))
    assert await instance.result(timeout=30) == {"text": "hello tls"}


async def test_a_broker_certificate_for_another_host_or_from_another_ca_is_refused(
    tls_broker: Broker, other_ca: Path
) -> None:
    by_address = tls_broker.url.replace("@localhost:", "@127.0.0.1:")  # the name is localhost
    # Not retried: without that the connect would go on for the 2 minutes allowed.
    async with asyncio.timeout(60):
        with pytest.raises(InfrastructureError, match="certificate verify failed"):
            await connect_broker(by_address, connect_for=120)
    other = tls_broker.url.split("?")[0] + f"?cafile={other_ca}"
    with pytest.raises(InfrastructureError, match="certificate verify failed"):
        await connect_broker(other, connect_for=0)


async def test_a_database_certificate_for_another_host_or_from_another_ca_is_refused(
    tls_postgres: Postgres, certificate: ServerCertificate, other_ca: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    cases = [
        (tls_postgres.url.replace("@localhost:", "@127.0.0.1:"), certificate.ca),
        (tls_postgres.url, other_ca),
    ]
    for url, ca in cases:
        monkeypatch.setenv("PGSSLROOTCERT", str(ca))
        database = Database(f"{url}?ssl=verify-full")
        try:
            with pytest.raises(Exception, match="certificate verify failed") as refused:
                await database.upgrade()
            # Not retried (no worker waits it out as an outage), and said in one line.
            assert not is_transient(refused.value.__cause__ or refused.value)
        finally:
            await database.close()
