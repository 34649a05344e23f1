"""Word that an instance ended, pushed by PostgreSQL: `result()` marks its instance awaited
(`warren_awaited_results`), and a trigger (migration 0004) sends a NOTIFY on `warren_ended`
with the id when an awaited instance reaches a terminal status; each client listens on one
connection of its pool from its first `result()` until it closes. SQLite has no NOTIFY: there
`result()` polls.

Only awaited instances notify: a transaction that notifies takes a lock that serialises the
commits of all notifying transactions on the server, so instances nobody waits for (most, in
a service that creates and moves on) must not pay it. The mark is a row of its own table, not
a column of the instance: writing it takes no lock a round of the instance would wait for. A
mark committed while the round that ends the instance is committing may be missed: the wait
then sees the end at its fallback read.

A notification is only a hint to read the row again: one for an instance of another schema
(the channel is the database's) costs a read. A listener that misses one (its connection
closed, or silently gone) is replaced: the waiter's fallback read finds the instance ended
without having been told, long enough ago that the notification would have come, and the
next wait opens a new listening connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy.util import greenlet_spawn

from processor.store.database import Database
from schemas import TERMINAL_STATUSES

log = logging.getLogger("warren.notifications")

CHANNEL = "warren_ended"
#: Only an instance that has not ended: the trigger deletes the mark when it ends.
_ENDED = ", ".join(f"'{status.value}'" for status in sorted(TERMINAL_STATUSES))
_MARK_AWAITED = f"""
    INSERT INTO warren_awaited_results (instance_id)
    SELECT id FROM warren_instances WHERE id = $1 AND status NOT IN ({_ENDED})
    ON CONFLICT DO NOTHING
"""
_FORGET_AWAITED = "DELETE FROM warren_awaited_results WHERE instance_id = $1"
#: An end committed longer ago than this should have been told by now.
TOLD_WITHIN = timedelta(seconds=0.5)
#: Opening a listening connection gives up after this; the waits poll meanwhile.
OPEN_TIMEOUT_S = 5.0
#: After a failed open, waits poll this long before one tries again.
REOPEN_AFTER_S = 5.0


class EndedInstances:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._waiters: dict[str, set[asyncio.Event]] = {}
        #: The pooled connection that listens, checked out for as long as it does.
        self._pooled: Any = None
        #: It missed a notification: the next wait replaces it.
        self._is_deaf = False
        self._closed = False
        self._reopen_at = 0.0  # time.monotonic()
        self._lock = asyncio.Lock()
        self._marking = asyncio.Lock()

    @asynccontextmanager
    async def watch(self, instance_id: str) -> AsyncIterator[asyncio.Event | None]:
        """An event set whenever `instance_id` may have ended, for the block's duration (the
        instance is marked awaited first); None where no notification can come (SQLite, or
        no listening connection could be opened)."""
        if not await self._listening():
            yield None
            return
        event = asyncio.Event()
        self._waiters.setdefault(instance_id, set()).add(event)
        try:
            await self._mark_awaited(instance_id)
            yield event
        finally:
            waiters = self._waiters[instance_id]
            waiters.discard(event)
            if not waiters:
                del self._waiters[instance_id]

    async def _mark_awaited(self, instance_id: str) -> None:
        """One statement on the listening connection (an idle one, in autocommit): the
        instance's end will notify. If it fails, the connection is replaced by the next wait,
        and this one sees the end at its fallback read."""
        if not await self._on_listener(_MARK_AWAITED, instance_id):
            log.info("cannot mark %s awaited: its wait polls", instance_id)

    async def untold(self, instance_id: str, ended_ago: timedelta) -> None:
        """A waiter found its instance ended without being told. If the end is older than
        TOLD_WITHIN, the notification was lost: the listener is deaf, and the next wait opens
        another. Else the mark may have been written while the end was committing, after the
        trigger looked for it: it is deleted, or it would stay."""
        if ended_ago > TOLD_WITHIN:
            self._is_deaf = True
        await self._on_listener(_FORGET_AWAITED, instance_id)

    async def _on_listener(self, sql: str, instance_id: str) -> bool:
        """Run one statement on the listening connection; False, and the connection taken
        for deaf, if it fails."""
        pooled = self._pooled
        if pooled is None:
            return False
        try:
            async with self._marking:  # one statement at a time on a connection
                await pooled.driver_connection.execute(sql, instance_id)
        except Exception as error:
            log.info("the listening connection failed: %r", error)
            if self._pooled is pooled:  # not one opened since
                self._is_deaf = True
            return False
        return True

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            await self._stop_listening()

    async def _listening(self) -> bool:
        if self._database.is_sqlite:
            return False
        async with self._lock:
            if self._closed:
                return False
            if self._pooled is not None:
                if not self._is_deaf and not self._pooled.driver_connection.is_closed():
                    return True
                await self._stop_listening()
            if time.monotonic() < self._reopen_at:
                return False
            pooled = None
            try:
                async with asyncio.timeout(OPEN_TIMEOUT_S):
                    pooled = await self._database.engine.raw_connection()
                    connection: Any = pooled.driver_connection  # asyncpg's
                    await connection.add_listener(CHANNEL, self._notified)
            except BaseException as error:  # cancelled too: the connection goes back
                if pooled is not None:
                    await _discard(pooled)
                if not isinstance(error, Exception):
                    raise
                log.info("cannot listen for ended instances, polling: %r", error)
                self._reopen_at = time.monotonic() + REOPEN_AFTER_S
                return False
            self._pooled, self._is_deaf = pooled, False
            return True

    async def _stop_listening(self) -> None:
        pooled, self._pooled = self._pooled, None
        if pooled is not None:
            await _discard(pooled)

    def _notified(self, connection: Any, pid: int, channel: str, instance_id: str) -> None:
        for event in self._waiters.get(instance_id, ()):
            event.set()


async def _discard(pooled: Any) -> None:
    """Close a listening connection and give its place in the pool back: a connection that
    listened is not pooled again."""
    await greenlet_spawn(pooled.invalidate)
    await greenlet_spawn(pooled.close)
