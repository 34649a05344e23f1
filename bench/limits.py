"""Scenario 6: the physical limits under Warren, measured with the plain clients.

Warren's throughput is reported as a fraction of these, measured in the same run on the same
broker and database. Each mimics what Warren does per step, minus Warren:

- broker: consume a persistent message, publish the next one with a publisher confirm, then
  ack (commit-publish-ack, DESIGN.md), with many chains in flight, in one process;
- SQL: BEGIN, insert one row, COMMIT, with the same SQLite settings as Warren's engine.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aio_pika
import aiosqlite
import asyncpg  # type: ignore[import-untyped]
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy.engine import make_url

SQLITE_VERSION = sqlite3.sqlite_version
#: About the size of a Warren run message.
BODY = b'{"instance_id": "' + b"0" * 32 + b'", "wake_at": null, "attempt": 1}'


async def broker_round_trips(
    broker_url: str, queue_name: str, seconds: float, in_flight: int
) -> dict[str, float]:
    """Consume-then-publish round trips per second through one quorum queue.

    `in_flight` chains circulate: each consumed message has its successor published (and
    confirmed) before it is acked, as a step's run message leads to the next step's.
    """
    connection = await aio_pika.connect(broker_url)
    async with connection:
        publishing = await connection.channel(publisher_confirms=True)
        consuming = await connection.channel()
        await consuming.set_qos(prefetch_count=in_flight)
        queue = await consuming.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        try:
            return await _circulate(publishing, queue, seconds, in_flight)
        finally:
            await consuming.queue_delete(queue_name)


async def _circulate(
    publishing: aio_pika.abc.AbstractChannel,
    queue: aio_pika.abc.AbstractQueue,
    seconds: float,
    in_flight: int,
) -> dict[str, float]:
    async def publish() -> None:
        message = aio_pika.Message(
            BODY,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=uuid.uuid4().hex,
        )
        await publishing.default_exchange.publish(message, routing_key=queue.name)

    round_trips = 0
    chains = in_flight
    finished = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def handle(message: AbstractIncomingMessage) -> None:
        nonlocal round_trips, chains
        if time.perf_counter() < deadline:
            await publish()
            await message.ack()
            round_trips += 1
        else:  # the chain ends here
            await message.ack()
            chains -= 1
            if chains == 0:
                finished.set()

    async def on_message(message: AbstractIncomingMessage) -> None:
        # A task per message, as Warren's worker does, so that chains run concurrently.
        task = asyncio.create_task(handle(message))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(publish() for _ in range(in_flight)))
    tag = await queue.consume(on_message)
    # A chain whose publish failed never ends: give up rather than hang.
    await asyncio.wait_for(finished.wait(), seconds + 60)
    elapsed = min(time.perf_counter(), deadline) - start
    await queue.cancel(tag)
    return {"round_trips_per_s": round_trips / elapsed}


async def broker_version(broker_url: str) -> str:
    connection = await aio_pika.connect(broker_url)
    async with connection:
        assert connection.transport is not None
        version = connection.transport.connection.server_properties.get("version", "")
    return version.decode() if isinstance(version, bytes) else str(version)


async def sqlite_commits(path: Path, seconds: float, connections: int) -> float:
    """One-row commits per second on a SQLite file, with Warren's settings (WAL,
    synchronous=NORMAL, BEGIN IMMEDIATE, a 30 s busy timeout) and `connections` writers."""
    opened = [
        await aiosqlite.connect(path, timeout=30, isolation_level=None) for _ in range(connections)
    ]
    try:
        await opened[0].execute("PRAGMA journal_mode=WAL")
        await opened[0].execute(
            "CREATE TABLE IF NOT EXISTS bench_commits (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"
        )
        for db in opened:
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA busy_timeout=30000")

        def committer(db: aiosqlite.Connection) -> Callable[[], Awaitable[None]]:
            async def commit() -> None:
                await db.execute("BEGIN IMMEDIATE")
                await db.execute("INSERT INTO bench_commits (body) VALUES (?)", (BODY.decode(),))
                await db.execute("COMMIT")

            return commit

        return await _commit_rate([committer(db) for db in opened], seconds)
    finally:
        for db in opened:
            await db.close()


async def postgres_commits(url: str, schema: str, seconds: float, connections: int) -> float:
    """One-row commits per second on PostgreSQL, each BEGIN, INSERT, COMMIT as SQLAlchemy
    sends them, over `connections` connections."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    opened = [
        await asyncpg.connect(dsn, server_settings={"search_path": schema})
        for _ in range(connections)
    ]
    try:
        await opened[0].execute(
            "CREATE TABLE IF NOT EXISTS bench_commits"
            " (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)"
        )

        def committer(db: asyncpg.Connection) -> Callable[[], Awaitable[None]]:
            async def commit() -> None:
                async with db.transaction():
                    await db.execute("INSERT INTO bench_commits (body) VALUES ($1)", BODY.decode())

            return commit

        return await _commit_rate([committer(db) for db in opened], seconds)
    finally:
        for db in opened:
            await db.close()


async def _commit_rate(committers: list[Callable[[], Awaitable[None]]], seconds: float) -> float:
    deadline = time.perf_counter() + seconds

    async def loop(commit: Callable[[], Awaitable[None]]) -> int:
        done = 0
        while time.perf_counter() < deadline:
            await commit()
            done += 1
        return done

    start = time.perf_counter()
    total = sum(await asyncio.gather(*(loop(commit) for commit in committers)))
    return total / (time.perf_counter() - start)


async def postgres_version(url: str) -> str:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()
