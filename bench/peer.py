"""Scenario 7: DBOS Transact for Python as the peer, on the same database in the same run.

The peer runs in a process of its own (`bench.dbos_peer`): DBOS is a process-wide singleton
with background threads, and its own process makes its CPU and memory measurable as Warren's
workers' are. Its system tables go beside Warren's: a SQLite file in the environment's
temporary directory, or a schema of its own in the PostgreSQL database, dropped at the end.
Warren's worker processes are stopped first, so that the peer has the machine to itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from bench.environment import ROOT, WORKER_START_S, WORKER_STOP_S, Environment
from bench.scenarios import Sizes
from bench.system import DATABASE_PROCESS, CpuMeter, pids_named

#: How long one scenario may take in the peer (the full throughput run takes tens of seconds).
SCENARIO_TIMEOUT_S = 1800.0


class DbosPeer:
    """A running `bench.dbos_peer` process that measures a scenario when asked."""

    def __init__(self, process: asyncio.subprocess.Process, backend: str) -> None:
        self.process = process
        self.backend = backend

    async def measure(self, scenario: str) -> dict[str, float]:
        """Scenario 1, 2 or 3 ("throughput", "latency", "event_latency") in the peer; for
        throughput also the CPU of the peer, the database and this process meanwhile."""
        groups = {"workers": lambda: [self.process.pid], "bench": lambda: [os.getpid()]}
        if self.backend == "postgres":
            groups["database"] = lambda: pids_named(DATABASE_PROCESS)
        meter = CpuMeter(groups)
        meter.start()
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"{scenario}\n".encode())
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), SCENARIO_TIMEOUT_S)
        cpu = meter.stop()
        if not line:
            raise RuntimeError(f"the DBOS peer exited with status {await self.process.wait()}")
        answer = json.loads(line)
        if answer.get("error"):
            raise RuntimeError(f"in the DBOS peer: {answer['error']}")
        metrics: dict[str, float] = answer["metrics"]
        return metrics | cpu if scenario == "throughput" else metrics


@asynccontextmanager
async def open_peer(environment: Environment, sizes: Sizes) -> AsyncIterator[DbosPeer]:
    """Start the DBOS peer on the environment's database; stop it and drop its tables on exit."""
    await environment.stop_workers()
    if environment.schema is None:
        database = make_url(environment.database_url).database
        assert database is not None
        url, schema = f"sqlite:///{Path(database).with_name('dbos.db')}", None
    else:
        # DBOS speaks psycopg 3 (a dependency of dbos) rather than asyncpg.
        url = (
            make_url(environment.database_url)
            .set(drivername="postgresql+psycopg")
            .render_as_string(hide_password=False)
        )
        schema = f"{environment.namespace}_dbos"
    settings = {"system_database_url": url, "schema": schema, "sizes": asdict(sizes)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.dbos_peer",
        json.dumps(settings),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), WORKER_START_S)
        if line.strip() != b"ready":
            raise RuntimeError(f"the DBOS peer did not start: {line!r} (see its stderr above)")
        yield DbosPeer(process, environment.backend)
    finally:
        await _stop(process)
        if schema is not None:
            await _drop_schema(environment.database_url, schema)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """End of stdin stops the peer; one that does not stop in time is killed."""
    if process.stdin is not None:
        process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), WORKER_STOP_S)
    except TimeoutError:
        process.kill()
        await process.wait()


async def _drop_schema(database_url: str, schema: str) -> None:
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()
