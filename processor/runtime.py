"""What the client and the worker share: the database, the broker connection, the outbox.

Every state change goes through `Runtime.transaction()`: the run messages it must publish are
written to the outbox in the same SQL transaction, published with confirms after the commit, and
their rows deleted in batches afterwards. A crash between commit and publish leaves the rows for
the relay (`relay_stale_outbox`), so a committed change always gets its message out.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from pydantic import ValidationError
from sqlmodel.ext.asyncio.session import AsyncSession
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from processor import config
from processor.broker.publisher import PUBLISH_CHANNELS, Publisher
from processor.broker.topology import Topology
from processor.errors import InfrastructureError, is_certificate_refused
from processor.failpoints import crash_point
from processor.store import queries
from processor.store.database import Database
from processor.store.driver import DriverSession
from processor.store.tables import InstanceRow, OutboxRow
from schemas import MAX_WAKE_GROUP, RunInstance

log = logging.getLogger("warren.runtime")
T = TypeVar("T")
#: A transaction's session: the ORM's, or the driver's on the per-step path.
S = TypeVar("S", AsyncSession, DriverSession)

#: An outbox row older than this was not published by its writer: the relay publishes it.
RELAY_AFTER = timedelta(seconds=5)
#: How often published outbox rows are deleted, in one statement per batch.
OUTBOX_DELETE_INTERVAL = 0.2
#: Wake-ups due this far ahead or more may share a message (`Runtime._group_wake_ups`); a
#: nearer one passes few cascade levels, and splitting a shared one costs a publish each.
GROUP_WAKE_UPS_AFTER = timedelta(seconds=1)


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on uvloop's event loop (a dependency except on Windows): a worker
    spends much of each step in socket reads and writes, which uvloop does in C (the
    benchmark's worker CPU per step fell by 10-25%)."""
    try:
        import uvloop
    except ImportError:  # Windows: uvloop does not build there
        return asyncio.run(main)
    return uvloop.run(main)


def utcnow() -> datetime:
    return datetime.now(UTC)


#: Seconds on a clock no change of the wall clock moves, and that counts the time the machine
#: was suspended (a laptop's client): Linux's boot time; elsewhere CLOCK_MONOTONIC, which
#: counts it on macOS (where `time.monotonic()` does not).
steady_seconds: Callable[[], float] = (
    functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)
    if hasattr(time, "CLOCK_BOOTTIME")
    else functools.partial(time.clock_gettime, time.CLOCK_MONOTONIC)
    if hasattr(time, "CLOCK_MONOTONIC")
    else time.monotonic
)


class Clock:
    """The database's time as this process reads it: a reading of PostgreSQL's clock, taken on
    every heartbeat, carried forward on the local steady clock.

    Timers, leases and heartbeats written by one process are read by others, so they must all
    keep one time: a worker whose clock runs an hour behind would otherwise fire every timer an
    hour early. The reading kept is the one with the shortest round trip of the last few; the
    steady clock carries it, so a step of the local wall clock (an NTP correction) moves
    nothing. With no server clock to read (SQLite, one machine), it is the local clock.
    """

    SAMPLES = 10

    def __init__(self) -> None:
        #: (round trip, server time, steady time it was read at) of the last readings.
        self._samples: deque[tuple[float, datetime, float]] = deque(maxlen=self.SAMPLES)
        self._anchor: tuple[datetime, float] | None = None

    def now(self) -> datetime:
        if self._anchor is None:
            return utcnow()
        server_time, read_at = self._anchor
        return server_time + timedelta(seconds=steady_seconds() - read_at)

    def add_sample(self, sent: float, server_time: datetime, received: float) -> None:
        """One reading of the server's clock, taken between `sent` and `received`
        (`steady_seconds()`)."""
        round_trip = received - sent
        self._samples.append((round_trip, server_time, sent + round_trip / 2))
        _, best_time, read_at = min(self._samples, key=lambda sample: sample[0])
        self._anchor = (best_time, read_at)


@dataclass
class Tx(Generic[S]):
    """One SQL transaction plus the run messages it will publish once committed."""

    session: S
    now: datetime
    outbox: list[OutboxRow] = field(default_factory=list)

    def start_now(self, now: datetime) -> None:
        """Count the transaction's time from `now`, once it holds its instances' locks: on
        SQLite the write lock comes with the first statement, and the wait for it (another
        writer's transaction) would otherwise come out of every sleep and back-off the
        transaction starts."""
        if self.outbox:
            raise RuntimeError("the transaction has emitted messages at its earlier time")
        self.now = now

    def emit_run(self, instance: InstanceRow, wake_at: datetime | None = None) -> None:
        """Publish a run message for `instance` after commit (at `wake_at`, if given; a timer's
        due time is also on its step row, for the sweeper)."""
        self.outbox.append(queries.add_run_message(self.session, instance, self.now, wake_at))
        if wake_at is None and instance.run_due_at is None:
            instance.run_due_at = self.now


class Runtime:
    def __init__(
        self,
        *,
        broker_url: str | None,
        database_url: str | None,
        namespace: str | None,
        database_schema: str | None,
    ) -> None:
        self.broker_url = config.broker_url(broker_url)
        self.database = Database(config.database_url(database_url), schema=database_schema)
        self.topology = Topology(config.namespace(namespace))
        self.clock = Clock()
        self.connection: AbstractRobustConnection | None = None
        self._publisher: Publisher | None = None
        self._published: list[int] = []
        self._deleter: asyncio.Task[None] | None = None

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError("the runtime is not open")
        return self._publisher

    async def open(self, *, connect_for: float = 10.0) -> None:
        """Check the database schema, connect to the broker and declare the exchanges; each
        is tried for `connect_for` seconds while it is unreachable."""
        await self.database.check_migrated(connect_for=connect_for)
        for _ in range(3):  # a few readings of the database's clock: the quickest one counts
            async with self.database.read() as session:
                await self.sync_clock(session)
        self.connection = await connect_broker(self.broker_url, connect_for)
        channels = [
            await self.connection.channel(publisher_confirms=True, on_return_raises=True)
            for _ in range(PUBLISH_CHANNELS)
        ]
        await self.topology.declare_exchanges(channels[0])
        self._publisher = Publisher(channels, self.topology, self.clock.now)
        self._deleter = asyncio.create_task(self._delete_published_forever())

    async def close(self) -> None:
        if self._deleter is not None:
            self._deleter.cancel()
            with suppress(asyncio.CancelledError):
                await self._deleter
            self._deleter = None
            await self._delete_published()
        if self.connection is not None:
            await self.connection.close()
            self.connection = None
        await self.database.close()

    def transaction(self) -> AbstractAsyncContextManager[Tx[AsyncSession]]:
        """A transaction whose outbox is published, with confirms, after it commits."""
        return self._transaction(self.database.transaction())

    def step_transaction(self) -> AbstractAsyncContextManager[Tx[DriverSession]]:
        """`transaction` on the driver itself: the per-step path (see store/driver.py)."""
        return self._transaction(self.database.driver_transaction())

    @asynccontextmanager
    async def _transaction(self, opened: AbstractAsyncContextManager[S]) -> AsyncIterator[Tx[S]]:
        async with opened as session:
            tx = Tx(session, self.clock.now())
            yield tx
            crash_point("before_commit")
        await self._publish_committed(tx.outbox)

    async def _publish_committed(self, outbox: list[OutboxRow]) -> None:
        if outbox:
            crash_point("after_commit")
            # Await first: the deleter swaps `_published` for a new list meanwhile, and ids
            # added to the old one would never be deleted (and be relayed again).
            published = await self.publish_outbox(outbox)
            crash_point("after_publish")
            self._published.extend(published)

    async def sync_clock(self, session: AsyncSession) -> None:
        """Measure the database's clock against ours (see `Clock`)."""
        sent = steady_seconds()
        server_time = await self.database.server_time(session)
        if server_time is not None:
            self.clock.add_sample(sent, server_time, steady_seconds())

    async def publish_outbox(self, rows: list[OutboxRow]) -> list[int]:
        """Publish committed outbox rows concurrently; returns the ids of those published. A
        failure leaves its rows for the relay."""
        messages = self._group_wake_ups(rows)
        results = await asyncio.gather(
            *(
                self.publisher.publish_run(first.workflow, body, first.message_id, first.wake_at)
                for (first, *_), body in messages
            ),
            return_exceptions=True,
        )
        published = []
        for (group, _), result in zip(messages, results, strict=True):
            if isinstance(result, BaseException):
                log.warning(
                    "publish of outbox rows %s failed, the relay will retry: %r",
                    [row.id for row in group],
                    result,
                )
            else:
                published += [row.id for row in group if row.id is not None]
        return published

    def _group_wake_ups(self, rows: list[OutboxRow]) -> list[tuple[list[OutboxRow], bytes]]:
        """The messages for `rows`, each with the rows it stands for: one per row, except that
        wake-ups of one workflow due at the same time, GROUP_WAKE_UPS_AFTER or more from now
        (the instances a round transaction parks on the same sleep), go as one. Each passes
        one cascade level per 1 bit of its delay in ms, a dead-lettering in the broker: for
        many instances waking at once that work, not the workers, made them late (README,
        Performance)."""
        messages: list[tuple[list[OutboxRow], bytes]] = []
        groups: dict[tuple[str, datetime], list[OutboxRow]] = {}
        later = self.clock.now() + GROUP_WAKE_UPS_AFTER
        for row in rows:
            if row.wake_at is not None and row.wake_at >= later:
                groups.setdefault((row.workflow, row.wake_at), []).append(row)
            else:
                messages.append(([row], row.body.encode()))
        for group in groups.values():
            for start in range(0, len(group), MAX_WAKE_GROUP + 1):
                part = group[start : start + MAX_WAKE_GROUP + 1]
                if len(part) == 1:
                    messages.append((part, part[0].body.encode()))
                    continue
                try:
                    ids = [RunInstance.model_validate_json(row.body).instance_id for row in part]
                except ValidationError:  # not written by this version: each goes as it is
                    messages += [([row], row.body.encode()) for row in part]
                    continue
                body = RunInstance(
                    instance_id=ids[0], wake_at=part[0].wake_at, more_instance_ids=ids[1:]
                )
                messages.append((part, body.model_dump_json(exclude_none=True).encode()))
        return messages

    async def relay_stale_outbox(self, limit: int = 500) -> int:
        """Publish outbox rows their writer left behind. Returns how many were published.

        The rows stay locked (SKIP LOCKED on PostgreSQL) until they are deleted, so two
        workers' relays never publish the same row.
        """
        async with self.database.transaction() as session:
            rows = await queries.stale_outbox(session, self.clock.now() - RELAY_AFTER, limit)
            published = await self.publish_outbox(rows) if rows else []
            if published:
                await queries.delete_outbox(session, published)
        return len(published)

    async def _delete_published_forever(self) -> None:
        while True:
            await asyncio.sleep(OUTBOX_DELETE_INTERVAL)
            try:
                await self._delete_published()
            except Exception as error:  # the rows stay; the next round deletes them
                log.warning("deleting published outbox rows failed: %r", error)

    async def _delete_published(self) -> None:
        ids, self._published = self._published, []
        if ids:
            try:
                async with self.database.transaction() as session:
                    await queries.delete_outbox(session, ids)
            except BaseException:
                self._published.extend(ids)
                raise


def _worth_reconnecting(error: BaseException) -> bool:
    connection_error = isinstance(error, OSError | aio_pika.exceptions.AMQPError)
    return connection_error and not is_certificate_refused(error)


async def connect_broker(url: str, connect_for: float) -> AbstractRobustConnection:
    """Connect to RabbitMQ, retrying for `connect_for` seconds (but not a certificate that
    fails verification); the connection then reconnects by itself after a broker restart."""
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_worth_reconnecting),
            wait=wait_exponential(multiplier=0.2, max=5),
            stop=stop_after_delay(connect_for),
            reraise=True,
        ):
            with attempt:
                return await aio_pika.connect_robust(url)
    except (OSError, aio_pika.exceptions.AMQPError) as error:
        raise InfrastructureError(
            f"cannot connect to RabbitMQ at {config.redact_url(url)}: {error}"
        ) from error
    raise AssertionError("unreachable")
