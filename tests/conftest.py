"""Fixtures: a real RabbitMQ, and each test against SQLite and PostgreSQL in its own namespace
(queue prefix) and database (a SQLite file, or a PostgreSQL schema)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aio_pika
import pytest

from processor import Client, Worker, Workflow
from processor.broker.topology import Topology
from processor.store.database import Database
from processor.store.tables import StepRow

BROKER_URL = os.environ.get("WARREN_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_URL = os.environ.get(
    "WARREN_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url.replace("+asyncpg", ""))
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=2
        ):
            return True
    except OSError:
        return False


def require(url: str, default_port: int, what: str) -> None:
    """A missing service skips the test locally and fails it in CI."""
    if not _reachable(url, default_port):
        reason = f"{what} is not reachable at {url}: start it with ./scripts/services"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def require_tool(name: str) -> str:
    """The path of a command-line tool; a missing one skips the test locally and fails it in
    CI."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (it is in Debian's packages)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@dataclass
class Backend:
    name: str
    database_url: str
    schema: str | None


@pytest.fixture
def broker_url() -> str:
    """The broker the test's workers and client use; a module whose tests restart the broker
    overrides it with a node of its own (tests/services.py)."""
    return BROKER_URL


@pytest.fixture
def postgres_url() -> str:
    """The PostgreSQL the `postgres` backend uses; overridable like `broker_url`."""
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str
) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        backend = Backend("sqlite", f"sqlite+aiosqlite:///{tmp_path}/warren.db", None)
    else:
        require(postgres_url, 5432, "PostgreSQL")
        backend = Backend("postgres", postgres_url, f"t_{uuid.uuid4().hex[:12]}")
    database = Database(backend.database_url, schema=backend.schema)
    await database.upgrade()
    await database.close()
    yield backend
    database = Database(backend.database_url, schema=backend.schema)
    await database.drop_schema()
    await database.close()


@dataclass
class TestEnv:
    __test__ = False

    """Workers and a client on one namespace and one database; everything torn down after."""

    backend: Backend
    namespace: str
    broker_url: str = BROKER_URL
    workers: list[Worker] = field(default_factory=list)
    _client: Client | None = None
    _workflows: set[str] = field(default_factory=set)

    def settings(self) -> dict[str, Any]:
        return {
            "broker_url": self.broker_url,
            "database_url": self.backend.database_url,
            "namespace": self.namespace,
            "database_schema": self.backend.schema,
        }

    async def start_worker(self, *workflows: type[Workflow[Any]], **options: Any) -> Worker:
        worker = Worker(workflows, **self.settings(), **options)
        await worker.start()
        self.workers.append(worker)
        self._workflows.update(w.name for w in workflows)
        return worker

    async def step_row(self, instance_id: str, key: str) -> StepRow | None:
        """The step's row as the database holds it (what `status()` does not show: its claim)."""
        database = Database(self.backend.database_url, schema=self.backend.schema)
        try:
            async with database.read() as session:
                return await session.get(StepRow, (instance_id, key))
        finally:
            await database.close()

    async def stop_worker(self, worker: Worker) -> None:
        self.workers.remove(worker)
        await worker.stop()

    @property
    def client(self) -> Client:
        assert self._client is not None, "call `await env.open_client()` first"
        return self._client

    async def open_client(self) -> Client:
        if self._client is None:
            self._client = Client(**self.settings())
            await self._client.__aenter__()
        return self._client

    async def close(self) -> None:
        for worker in self.workers:
            await worker.stop()
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
        await delete_namespace(self.namespace, sorted(self._workflows), self.broker_url)


async def delete_namespace(namespace: str, workflows: list[str], url: str = BROKER_URL) -> None:
    topology = Topology(namespace)
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in topology.queue_names(workflows):
            await channel.queue_delete(name)
        for name in (topology.ingress_exchange, topology.engine_exchange, topology.dead_exchange):
            await channel.exchange_delete(name)


@pytest.fixture
async def env(backend: Backend, broker_url: str) -> AsyncIterator[TestEnv]:
    require(broker_url, 5672, "RabbitMQ")
    test_env = TestEnv(backend, f"t{uuid.uuid4().hex[:12]}", broker_url)
    try:
        await test_env.open_client()
        yield test_env
    finally:
        await test_env.close()


async def assert_eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll `check` until it is true; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
