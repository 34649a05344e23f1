"""One backend's world for a run: a fresh namespace and database, a client, worker processes.

Everything it creates is removed when the `open_environment` block exits, failed or not.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika

from bench.probe import Probe
from bench.workflows import WORKFLOWS
from processor import Client
from processor.broker.topology import Topology
from processor.store.database import Database

ROOT = Path(__file__).resolve().parents[1]
#: How long a worker process may take to connect, declare its queues and say "ready".
WORKER_START_S = 60.0
#: SIGTERM gives in-flight steps this long before the worker process is killed.
WORKER_STOP_S = 30.0


def new_namespace() -> str:
    return f"bench{secrets.token_hex(6)}"


@dataclass
class Environment:
    """A namespace and a database of one backend, migrated, with a client and a probe."""

    backend: str
    broker_url: str
    database_url: str
    schema: str | None
    namespace: str
    client: Client
    probe: Probe
    workers: list[asyncio.subprocess.Process] = field(default_factory=list)

    @property
    def worker_pids(self) -> list[int]:
        return [worker.pid for worker in self.workers]

    async def ensure_workers(self, count: int, concurrency: int) -> None:
        """Start worker processes (each serving every bench workflow) until `count` run."""
        settings: dict[str, Any] = {
            "broker_url": self.broker_url,
            "database_url": self.database_url,
            "namespace": self.namespace,
            "concurrency": concurrency,
        }
        if self.schema is not None:
            settings["database_schema"] = self.schema
        while len(self.workers) < count:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.worker",
                json.dumps(settings),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
            )
            self.workers.append(process)
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), WORKER_START_S)
            if line.strip() != b"ready":
                raise RuntimeError(f"worker process {process.pid} did not start: {line!r}")

    async def stop_workers(self) -> None:
        for worker in self.workers:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                await asyncio.wait_for(worker.wait(), WORKER_STOP_S)
            except TimeoutError:
                worker.kill()
                await worker.wait()
        self.workers.clear()


@asynccontextmanager
async def open_environment(
    backend: str, broker_url: str, postgres_url: str
) -> AsyncIterator[Environment]:
    """A migrated database and a namespace of their own for `backend` ("sqlite" or
    "postgres"); workers stopped, queues, exchanges and database removed on exit."""
    namespace = new_namespace()
    async with AsyncExitStack() as cleanup:
        if backend == "sqlite":
            directory = tempfile.mkdtemp(prefix="warren-bench-")
            cleanup.callback(shutil.rmtree, directory, ignore_errors=True)
            database_url, schema = f"sqlite+aiosqlite:///{directory}/warren.db", None
        else:
            database_url, schema = postgres_url, namespace
        database = Database(database_url, schema=schema)
        cleanup.push_async_callback(database.close)
        cleanup.push_async_callback(database.drop_schema)
        await database.upgrade()
        # Registered before the client so that it runs after the client has closed.
        cleanup.push_async_callback(delete_namespace, broker_url, namespace)
        client = Client(broker_url, database_url, namespace=namespace, database_schema=schema)
        await client.__aenter__()
        cleanup.push_async_callback(client.__aexit__, None, None, None)
        probe = Probe(database_url, schema)
        cleanup.push_async_callback(probe.close)
        environment = Environment(
            backend, broker_url, database_url, schema, namespace, client, probe
        )
        cleanup.push_async_callback(environment.stop_workers)
        yield environment


async def delete_namespace(broker_url: str, namespace: str) -> None:
    """Delete the namespace's queues and exchanges (the shared delay cascade stays)."""
    topology = Topology(namespace)
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        for name in topology.queue_names([workflow.name for workflow in WORKFLOWS]):
            await channel.queue_delete(name)
        for name in (topology.ingress_exchange, topology.engine_exchange, topology.dead_exchange):
            await channel.exchange_delete(name)
