"""The connection URLs the README's "Security" section documents: TLS with certificate
verification to RabbitMQ and PostgreSQL, as the libraries parse them (no server needed), and
passwords hidden wherever Warren prints a URL."""

from __future__ import annotations

import asyncio
import inspect
import ssl
import subprocess
from pathlib import Path

import aiormq
import asyncpg
import pytest
from aiormq.connection import SSLContextProvider, TLSTransportFactory
from asyncpg import connect_utils
from sqlalchemy.ext.asyncio import create_async_engine

from processor.config import redact_url
from processor.errors import DatabaseNotMigratedError, InfrastructureError, is_certificate_refused
from processor.store.database import Database
from tests.conftest import require_tool


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed CA certificate and its key (also usable as a client certificate)."""
    openssl = require_tool("openssl")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "ca.pem", folder / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    names = ["-subj", "/CN=warren-test-ca", "-keyout", str(key), "-out", str(cert)]
    subprocess.run([openssl, *request, *names], check=True, capture_output=True)
    return cert, key


async def test_an_amqps_url_with_a_ca_file_verifies_the_broker_certificate_and_host(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    url = (
        f"amqps://warren-worker:secret@rabbit.example.com/warren"
        f"?cafile={cert}&certfile={cert}&keyfile={key}"
    )

    connection = aiormq.Connection(url)
    context = await SSLContextProvider(
        ssl_context=None, ssl_certs=connection.ssl_certs, loop=asyncio.get_running_loop()
    ).get_context()

    assert isinstance(connection._transport_factory, TLSTransportFactory)
    assert connection.url.port == 5671
    assert connection.vhost == "warren"
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    # Only our CA is trusted: with `cafile` the system's bundle is not loaded.
    assert context.cert_store_stats()["x509_ca"] == 1


def asyncpg_parameters(url: str) -> connect_utils._ConnectionParameters:
    """What asyncpg makes of the keyword arguments SQLAlchemy passes it for `url`."""
    engine = create_async_engine(url)
    args, options = engine.dialect.create_connect_args(engine.url)
    bound = inspect.signature(asyncpg.connect).bind(*args, **options)
    bound.apply_defaults()
    accepted = inspect.signature(connect_utils._parse_connect_arguments).parameters
    arguments = {name: value for name, value in bound.arguments.items() if name in accepted}
    _, parameters, _ = connect_utils._parse_connect_arguments(**arguments)
    return parameters


def test_a_postgres_url_with_ssl_verify_full_verifies_the_server_certificate_and_host(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, _ = certificate
    monkeypatch.setenv("PGSSLROOTCERT", str(cert))

    parameters = asyncpg_parameters(
        "postgresql+asyncpg://warren:secret@db.example.com:5432/warren?ssl=verify-full"
    )

    assert isinstance(parameters.ssl, ssl.SSLContext)
    assert parameters.ssl.verify_mode == ssl.CERT_REQUIRED
    assert parameters.ssl.check_hostname
    assert parameters.ssl.cert_store_stats()["x509_ca"] == 1


def test_libpqs_sslmode_spelling_is_not_accepted_by_asyncpg() -> None:
    """Why the README says `?ssl=verify-full`: SQLAlchemy passes the query to asyncpg as
    keyword arguments, and asyncpg calls the option `ssl`."""
    with pytest.raises(TypeError, match="sslmode"):
        asyncpg_parameters("postgresql+asyncpg://warren@db.example.com/warren?sslmode=verify-full")


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/"),
        (
            "amqps://w:p%40ss@rabbit:5671/warren?cafile=/etc/ca@1.pem",
            "amqps://w:***@rabbit:5671/warren?cafile=/etc/ca@1.pem",
        ),
        ("postgresql+asyncpg://u:a/b@c@db/warren", "postgresql+asyncpg://u:***@db/warren"),
        ("amqp://user@rabbit/", "amqp://user@rabbit/"),
        ("sqlite+aiosqlite:///warren.db", "sqlite+aiosqlite:///warren.db"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_hides_the_password_and_keeps_the_rest(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_the_unmigrated_database_error_does_not_show_the_password() -> None:
    error = DatabaseNotMigratedError("postgresql+asyncpg://warren:hunter2@db/warren", None, "0001")

    assert "hunter2" not in str(error)
    assert "postgresql+asyncpg://warren:***@db/warren" in str(error)


def test_a_refused_certificate_is_found_down_an_error_chain_even_one_that_loops() -> None:
    refused = ssl.SSLCertVerificationError("certificate verify failed")
    outer = OSError("connect failed")
    outer.__cause__ = refused
    assert is_certificate_refused(outer)
    looped = KeyError("raised from itself")
    looped.__cause__ = looped
    assert not is_certificate_refused(looped)


async def test_a_sqlite_uri_filename_is_not_taken_for_a_missing_directory(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///file:{tmp_path}/uri.db?uri=true")
    try:
        await database.upgrade()
    finally:
        await database.close()
    assert (tmp_path / "uri.db").exists()


async def test_a_database_error_without_words_is_named_by_its_type(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/x.db")

    async def connect_times_out() -> None:
        raise TimeoutError  # as asyncpg's connect timeout does, with no message

    try:
        with pytest.raises(InfrastructureError, match=r"x\.db: TimeoutError$"):
            await database._first_contact(connect_times_out, connect_for=0)
    finally:
        await database.close()
