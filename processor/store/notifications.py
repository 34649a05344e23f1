"""Word that an instance ended, pushed by PostgreSQL: `result()` marks its instance awaited
(`warren_awaited_results`), and a trigger (migration 0004) sends a NOTIFY on `warren_ended`
with the id when an awaited instance reaches a terminal status; each client listens on one
connection of its pool from its first `result()` until it closes. SQLite has no NOTIFY: there
a connection of the client's own reads whether anything committed (`Commits`), and waits read
their rows again when something did.

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
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
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
#: SQLite: how often `Commits` reads whether anything committed, at first; each read makes
#: the next one 2% later, up to COMMIT_POLL_MAX_S (about 5 s into a wait), and a new wait
#: starts it again from the first.
COMMIT_POLL_S = 0.001
COMMIT_POLL_MAX_S = 0.1


@dataclass
class Hint:
    """Set when a waited instance may have ended. `exact`: told of this instance
    (PostgreSQL's NOTIFY); else of any commit to the database (SQLite's `Commits`)."""

    event: asyncio.Event
    exact: bool


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
        self._commits = Commits.of(database)

    @asynccontextmanager
    async def watch(self, instance_id: str) -> AsyncIterator[Hint | None]:
        """A hint set whenever `instance_id` may have ended, for the block's duration (on
        PostgreSQL the instance is marked awaited first); None where none can come (no
        listening connection could be opened, or an SQLite database in memory)."""
        if self._commits is not None:
            with self._commits.watch() as event:
                yield Hint(event, exact=False)
            return
        if not await self._listening():
            yield None
            return
        event = asyncio.Event()
        self._waiters.setdefault(instance_id, set()).add(event)
        try:
            await self._mark_awaited(instance_id)
            yield Hint(event, exact=True)
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
        if self._commits is not None:
            await self._commits.close()
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


class Commits:
    """SQLite: wakes its waiters whenever another connection commits to the database file.

    A connection of its own reads `PRAGMA data_version`, which changes when another connection
    has committed, on the event loop itself: a read takes a few microseconds (it reads the
    WAL index in shared memory, not the file), less than a hop to a connection's thread. It
    reads only while someone waits: every COMMIT_POLL_S at first, more rarely the longer no
    new wait starts (a steady stream of `result()` calls keeps it at 1 ms, about 5% of a
    core). A commit is only a hint for the waiter to read its row again; on a busy database
    every poll sees one, and the waiter's own gap between reads bounds what it costs.
    """

    def __init__(self, path: Path) -> None:
        self._uri = f"{path.resolve().as_uri()}?mode=ro"  # never creates the file
        self._connection: sqlite3.Connection | None = None
        self._events: set[asyncio.Event] = set()
        self._poller: asyncio.Task[None] | None = None
        self._interval = COMMIT_POLL_S
        #: The data version last read: commits after it wake the waiters.
        self._seen: int | None = None
        self._readable = True  # said once when it stops being so
        self._closed = False

    @classmethod
    def of(cls, database: Database) -> Commits | None:
        """For an SQLite database in a file; None otherwise."""
        if not database.is_sqlite:
            return None
        path = make_url(database.url).database
        if not path or path == ":memory:" or path.startswith("file:"):
            return None
        return cls(Path(path))

    @contextmanager
    def watch(self) -> Iterator[asyncio.Event]:
        """An event set whenever something commits after this call, for the block's
        duration (never, once closed)."""
        event = asyncio.Event()
        if self._closed:
            yield event
            return
        if not self._events:
            # Read now, not when the poller first reads: a commit in between (while the waiter
            # reads its row) would count as seen already.
            self._seen = self._version()
        self._events.add(event)
        # Started again from the first interval: one that had slowed for a long wait would
        # sleep up to COMMIT_POLL_MAX_S before this wait's first read.
        if self._poller is not None:
            self._poller.cancel()
        self._interval = COMMIT_POLL_S
        self._poller = asyncio.create_task(self._poll())
        try:
            yield event
        finally:
            self._events.discard(event)

    async def close(self) -> None:
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
            with suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _poll(self) -> None:
        while self._events:
            await asyncio.sleep(self._interval)
            self._interval = min(self._interval * 1.02, COMMIT_POLL_MAX_S)
            version = self._version()
            if version != self._seen:
                self._seen = version
                for event in self._events:
                    event.set()

    def _version(self) -> int | None:
        """The connection's data version; None if it cannot be read now (the waits' fallback
        reads see the end then)."""
        try:
            if self._connection is None:
                # timeout=0: on the event loop, a busy database (being recovered, say) must
                # not be waited for.
                self._connection = sqlite3.connect(
                    self._uri, uri=True, timeout=0, check_same_thread=False
                )
            version: int = self._connection.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error as error:
            if self._readable:
                log.info("cannot read whether the database changed, polling: %r", error)
            self._readable = False
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            return None
        self._readable = True
        return version


async def _discard(pooled: Any) -> None:
    """Close a listening connection and give its place in the pool back: a connection that
    listened is not pooled again."""
    await greenlet_spawn(pooled.invalidate)
    await greenlet_spawn(pooled.close)
