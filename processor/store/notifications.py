"""Word that an instance ended, pushed by PostgreSQL: a trigger (migration 0004) sends a NOTIFY
on `warren_ended` with the instance's id when it reaches a terminal status, and one connection
per client listens while any `result()` waits. SQLite has no NOTIFY: there `result()` polls.

A notification is only a hint to read the row again: one for an instance of another schema
(the channel is the database's) costs a read, and one lost with a broken connection leaves the
waiter to its fallback poll, while the next wait opens a new listening connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.util import greenlet_spawn

from processor.store.database import Database

log = logging.getLogger("warren.notifications")

CHANNEL = "warren_ended"


class EndedInstances:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._waiters: dict[str, set[asyncio.Event]] = {}
        #: The pooled connection that listens, checked out for as long as it does.
        self._pooled: Any = None
        self._starting = asyncio.Lock()

    @asynccontextmanager
    async def watch(self, instance_id: str) -> AsyncIterator[asyncio.Event | None]:
        """An event set whenever `instance_id` may have ended, for the block's duration; None
        where no notification can come (SQLite, or no listening connection could be opened)."""
        if not await self._listening():
            yield None
            return
        event = asyncio.Event()
        self._waiters.setdefault(instance_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters[instance_id]
            waiters.discard(event)
            if not waiters:
                del self._waiters[instance_id]

    async def close(self) -> None:
        pooled, self._pooled = self._pooled, None
        if pooled is not None:
            await _discard(pooled)

    async def _listening(self) -> bool:
        if self._database.is_sqlite:
            return False
        async with self._starting:
            if self._pooled is not None and not self._pooled.driver_connection.is_closed():
                return True
            await self.close()
            try:
                pooled = await self._database.engine.raw_connection()
            except Exception as error:  # the database is away: the waits poll meanwhile
                log.info("cannot listen for ended instances, polling: %r", error)
                return False
            connection: Any = pooled.driver_connection  # asyncpg's
            try:
                await connection.add_listener(CHANNEL, self._notified)
            except Exception as error:
                log.info("cannot listen for ended instances, polling: %r", error)
                await _discard(pooled)
                return False
            self._pooled = pooled
            return True

    def _notified(self, connection: Any, pid: int, channel: str, instance_id: str) -> None:
        for event in self._waiters.get(instance_id, ()):
            event.set()


async def _discard(pooled: Any) -> None:
    """Close a listening connection and give its place in the pool back: a connection that
    listened is not pooled again."""
    await greenlet_spawn(pooled.invalidate)
    await greenlet_spawn(pooled.close)
