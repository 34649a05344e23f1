"""The SQL engine: SQLite (WAL, one writer at a time) or PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    stop_never,
    wait_exponential,
)

from processor.config import redact_url
from processor.errors import DatabaseNotMigratedError, InfrastructureError, is_certificate_refused
from processor.store import migrations
from processor.store.driver import DriverSession, driver_transaction

T = TypeVar("T")
log = logging.getLogger("warren.database")


#: PostgreSQL error classes that pass: connection exceptions (08), a server shutting down or
#: starting up (57P), too many connections (53300), serialization failures and deadlocks (40).
TRANSIENT_SQLSTATES = ("08", "57P", "53300", "40001", "40P01")


def _sqlstate(error: BaseException) -> str:
    code = getattr(getattr(error, "orig", None), "sqlstate", None)
    return code if isinstance(code, str) else ""


def is_transient(error: BaseException) -> bool:
    """Database errors that pass: a restart, a dropped connection, SQLite's busy lock, a full
    pool. Integrity and data errors are not, nor a server certificate that fails TLS
    verification: retrying them cannot help."""
    if is_certificate_refused(error):
        return False
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if _sqlstate(error).startswith(TRANSIENT_SQLSTATES):
        return True
    if isinstance(error, OperationalError) and isinstance(error.orig, sqlite3.OperationalError):
        # SQLite reports a missing table or column as an OperationalError too.
        return "locked" in str(error.orig) or "busy" in str(error.orig)
    return isinstance(error, OperationalError | InterfaceError | PoolTimeoutError | OSError)


def is_unreachable(error: BaseException) -> bool:
    """A transient error that means the database is away (down, restarting, cut off), not
    merely busy: a lock timeout, a deadlock or a full pool does not stop a worker consuming."""
    if not is_transient(error) or isinstance(error, PoolTimeoutError):
        return False
    if _sqlstate(error).startswith(("40", "53300")):
        return False
    return not isinstance(getattr(error, "orig", None), sqlite3.OperationalError)


#: How long one operation waits for the database before giving up.
PATIENCE_S = 120.0
#: How often a worker paused by an outage checks whether the database is back.
PROBE_INTERVAL_S = 1.0
#: The drivers the engine runs on (its per-step path talks to them directly: driver.py).
SUPPORTED_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")


class Database:
    """One SQLAlchemy async engine plus Warren's session conventions.

    Args:
        url: a SQLAlchemy URL, `sqlite+aiosqlite:///path` or `postgresql+asyncpg://...`.
        schema: PostgreSQL only: the schema holding Warren's tables (tests use one each).
    """

    def __init__(self, url: str, *, schema: str | None = None, pool_size: int = 20) -> None:
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError:
            parsed = None
        if parsed is None or parsed.drivername not in SUPPORTED_DRIVERS:
            raise ValueError(
                f"database URL {redact_url(url)!r}: Warren runs on sqlite+aiosqlite:///PATH "
                "or postgresql+asyncpg://USER:PASSWORD@HOST/DATABASE"
            )
        self.url = url
        self.schema = schema
        self.is_sqlite = parsed.drivername == "sqlite+aiosqlite"
        path = parsed.database or ":memory:"
        #: The SQLite file, if the URL names one by its path (not `:memory:`, not a `file:` URI).
        self._sqlite_file = (
            Path(path)
            if self.is_sqlite and path != ":memory:" and not path.startswith("file:")
            else None
        )
        if self._sqlite_file is not None and not self._sqlite_file.parent.is_dir():
            # Said here: SQLite would only say "unable to open database file" (and aiosqlite's
            # thread would print a traceback if the process exits right after).
            raise ValueError(
                f"database URL {redact_url(url)!r}: the directory "
                f"{self._sqlite_file.parent} does not exist"
            )
        connect_args: dict[str, Any] = {}
        options: dict[str, Any] = {}
        if self.is_sqlite:
            if schema:
                raise ValueError("a database schema is a PostgreSQL option")
            connect_args["timeout"] = 30
        else:
            # No overflow: an overflow connection is closed on check-in, and reconnecting for
            # each transaction under load costs more than waiting for a pooled one. A round
            # holds one connection at a time, so waiting cannot deadlock.
            options["pool_size"] = pool_size
            options["max_overflow"] = 0
            options["pool_recycle"] = 1800
            if schema:
                connect_args["server_settings"] = {"search_path": schema}
        self.engine: AsyncEngine = create_async_engine(url, connect_args=connect_args, **options)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self._reader = self.engine.execution_options(warren_read_only=True)
        #: Set when an operation meets a transient error, cleared by `wait_until_available`:
        #: a worker stops taking messages while it is set.
        self.outage = asyncio.Event()

    async def retry(
        self, operation: Callable[[], Awaitable[T]], *, patience_s: float | None = PATIENCE_S
    ) -> T:
        """Run `operation` (a whole transaction), retrying while the database is unreachable
        (for up to `patience_s`; None: for as long as it takes), and report the outage
        meanwhile.

        A consumer's message stays unacked meanwhile, so a database outage pauses consumption
        instead of dead-lettering work.
        """
        # The first try runs bare: tenacity's machinery took 5% of a busy worker's CPU when
        # every transaction went through it, and nearly every transaction succeeds at once.
        try:
            return await operation()
        except Exception as error:
            if not is_transient(error):
                raise
            if is_unreachable(error):
                self.outage.set()
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential(multiplier=0.05, max=5),
            stop=stop_never if patience_s is None else stop_after_delay(patience_s),
            before_sleep=self._note_outage,
            reraise=True,
        ):
            with attempt:
                return await operation()
        raise AssertionError("unreachable")

    def _note_outage(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if error is not None and is_unreachable(error):
            self.outage.set()

    async def wait_until_available(self) -> None:
        """Return once the database answers a query again, and clear `outage`."""
        while True:
            try:
                async with self.engine.connect() as conn:
                    await conn.execute(sa.text("SELECT 1"))
            except Exception as error:
                if not is_transient(error):
                    log.warning("probing the database failed: %r", error)
                await asyncio.sleep(PROBE_INTERVAL_S)
            else:
                self.outage.clear()
                return

    async def server_time(self, session: AsyncSession) -> datetime | None:
        """PostgreSQL's clock now; None for SQLite, whose clock is this machine's."""
        if self.is_sqlite:
            return None
        query = select(sa.func.clock_timestamp(type_=sa.DateTime(timezone=True)))
        moment: datetime = (await session.exec(query)).one()
        return moment

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in one transaction: committed on exit, rolled back on an exception.

        On SQLite the transaction starts with BEGIN IMMEDIATE, so it holds the write lock from
        its first statement and two writers never deadlock upgrading a read lock.
        """
        async with AsyncSession(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def driver_transaction(self) -> AbstractAsyncContextManager[DriverSession]:
        """A transaction on the driver itself, for the per-step path (see store/driver.py)."""
        return driver_transaction(self.engine)

    def driver_reads(self) -> AbstractAsyncContextManager[DriverSession]:
        """Reads on the driver outside any transaction: each statement on its own, the
        cheapest read there is (a waiting `result()` reads an instance's row again and again)."""
        return driver_transaction(self.engine, reads_only=True)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only transaction. On SQLite it takes no write lock (a deferred BEGIN), so
        status reads never queue behind writers."""
        async with (
            AsyncSession(self._reader, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    async def create_schema(self) -> None:
        """PostgreSQL: create `schema` if it does not exist (tests)."""
        if self.schema:
            async with self.engine.begin() as conn:
                await conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))

    async def drop_schema(self) -> None:
        if self.schema:
            async with self.engine.begin() as conn:
                await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))

    async def upgrade(self, *, connect_for: float = 0.0) -> tuple[str | None, str | None]:
        """Apply every migration not yet applied; returns the revisions before and after.
        Raises InfrastructureError as `check_migrated` does."""

        async def apply() -> tuple[str | None, str | None]:
            await self.create_schema()
            async with self.engine.begin() as conn:
                return await conn.run_sync(migrations.upgrade)

        return await self._first_contact(apply, connect_for)

    async def check_migrated(self, *, connect_for: float = 0.0) -> None:
        """Raises DatabaseNotMigratedError unless the database is at the newest migration, and
        InfrastructureError if it cannot be reached or refuses (after retrying a transient
        error for `connect_for` seconds: a worker may start before its database)."""

        async def read_revision() -> str | None:
            async with self.engine.connect() as conn:
                return await conn.run_sync(migrations.current_revision)

        wanted = migrations.head_revision()
        if self._sqlite_file is not None and not self._sqlite_file.exists():
            # Not connected to: SQLite would create an empty file, and leave it behind.
            raise DatabaseNotMigratedError(self.url, None, wanted)
        found = await self._first_contact(read_revision, connect_for)
        if found != wanted:
            raise DatabaseNotMigratedError(self.url, found, wanted)

    async def _first_contact(self, operation: Callable[[], Awaitable[T]], connect_for: float) -> T:
        """`operation`, a process's first use of the database: its failure, once retried,
        becomes one line that names the database (its password hidden) and says why, rather
        than a driver's traceback."""
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(is_transient),
                wait=wait_exponential(multiplier=0.2, max=5),
                stop=stop_after_delay(connect_for),
                reraise=True,
            ):
                with attempt:
                    return await operation()
        except (DBAPIError, OSError) as error:
            cause = error.orig if isinstance(error, DBAPIError) and error.orig else error
            raise InfrastructureError(
                f"cannot use the database at {redact_url(self.url)}: "
                f"{str(cause) or type(cause).__name__}"  # a connect timeout says nothing
            ) from error
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self.engine.dispose()


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event issue BEGIN itself (pysqlite's own is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get("warren_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
