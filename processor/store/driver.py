"""The per-step path's SQL on the database driver itself (asyncpg, or aiosqlite), and its queries.

Every step costs one transaction: the round that records the report of the step before,
replays the instance and claims the step. Through the ORM it costs the worker several times
the CPU of the same statements on the driver (`python -m bench.sql_path`), and on a small
machine that CPU is the engine's throughput. So rounds run here, on a connection borrowed from
SQLAlchemy's pool, and so do the client's creates and its reads of one instance (what a caller
waits on); everything else (commands, sweeps, listings) keeps the ORM.

What stays the same: the statements are SQLAlchemy Core, compiled once per dialect, and every
value goes through its column's own SQLAlchemy type processors, so rows written here read back
the same through the ORM and the other way round. `DriverSession` keeps the part of the ORM's
behaviour the engine relies on: rows come back as table-model objects, `add` queues new rows,
and changed or added rows are written before each statement (autoflush) and at commit.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement
from sqlalchemy.util import greenlet_spawn
from sqlmodel import SQLModel, col, select

from processor.store.tables import EventRow, InstanceRow, StepRow, WorkerRow, new_row
from processor.telemetry.tracing import is_tracing, sql_span

M = TypeVar("M", bound=SQLModel)
T = TypeVar("T")
Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class _Compiled:
    """A statement compiled for one dialect: its SQL, its parameters in order with their
    type processors and fixed values, and its result columns with theirs."""

    sql: str
    names: tuple[str, ...]
    binds: tuple[Processor, ...]
    fixed: dict[str, Any]
    columns: tuple[str, ...]
    results: tuple[Processor, ...]

    @classmethod
    def of(cls, statement: ClauseElement, dialect: sa.Dialect) -> _Compiled:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        names = tuple(compiled.positiontup or ())
        parameters = [compiled.binds[name] for name in names]
        exported = getattr(statement, "exported_columns", ())
        return cls(
            sql=compiled.string,
            names=names,
            binds=tuple(p.type.dialect_impl(dialect).bind_processor(dialect) for p in parameters),
            fixed={n: p.value for n, p in zip(names, parameters, strict=True) if not p.required},
            columns=tuple(column.key for column in exported),
            results=tuple(_result_processor(column.type, dialect) for column in exported),
        )

    def arguments(self, params: dict[str, Any]) -> list[Any]:
        values = []
        for name, process in zip(self.names, self.binds, strict=True):
            value = params[name] if name in params else self.fixed[name]
            values.append(value if process is None else process(value))
        return values

    def row(self, raw: Sequence[Any]) -> dict[str, Any]:
        return {
            name: value if process is None else process(value)
            for name, process, value in zip(self.columns, self.results, raw, strict=True)
        }


def _result_processor(column_type: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> Processor:
    impl = column_type.dialect_impl(dialect)
    if isinstance(impl, sa.Float) and dialect.name == "postgresql":
        # asyncpg returns float columns as floats; SQLAlchemy's processor would want the
        # column's type OID from a cursor description to tell.
        return None
    processor: Processor = impl.result_processor(dialect, None)
    return processor


class _Postgres:
    """asyncpg: one transaction at a time on one connection. Every statement is a round trip,
    so a flush's writes go as one statement (`DriverSession._write_together`), or a few
    (`DriverSession._write_grouped`)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self._transaction: Any = None
        self._begin_pending = False

    async def begin(self) -> None:
        """Deferred until the transaction's first statement; if that is also its last (a
        flush of writes in one statement, and nothing before it: a create), that statement
        runs alone, as a transaction of its own: one round trip instead of three. (As with
        any COMMIT, a connection lost while it runs leaves the caller unsure whether it
        committed.)"""
        self._begin_pending = True

    async def commit(self) -> None:
        if self._transaction is not None:
            await self._transaction.commit()

    async def rollback(self) -> None:
        if self._transaction is not None:
            await self._transaction.rollback()

    async def fetch(
        self, sql: str, arguments: list[Any], *, last: bool = False
    ) -> list[Sequence[Any]]:
        await self._begin_unless(last)
        rows: list[Sequence[Any]] = await self.connection.fetch(sql, *arguments)
        return rows

    async def fetch_many(
        self, sql: str, arguments: list[list[Any]], *, last: bool = False
    ) -> list[Sequence[Any]]:
        """`sql` run once for each list of arguments, in one round trip: the rows of all."""
        await self._begin_unless(last)
        rows: list[Sequence[Any]] = await self.connection.fetchmany(sql, arguments)
        return rows

    async def write_many(self, sql: str, arguments: list[list[Any]], *, last: bool = False) -> None:
        await self._begin_unless(last)
        await self.connection.executemany(sql, arguments)

    async def _begin_unless(self, last: bool) -> None:
        """Start the pending transaction before its first statement, unless that statement is
        its last: PostgreSQL runs a statement outside a transaction as one of its own."""
        if self._begin_pending:
            self._begin_pending = False
            if not last:
                self._transaction = self.connection.transaction()
                await self._transaction.start()


class _Sqlite:
    """aiosqlite in autocommit mode (database.py): BEGIN IMMEDIATE takes the write lock at
    once, as the ORM's transactions do, so two writers never deadlock upgrading a read lock.

    Each call into SQLite is a hop to the connection's thread and back through the event loop,
    and SQLite's one write lock is held across every hop of a transaction, so hops are what
    limits SQLite's throughput. Hence: a statement and its fetch run in one hop, BEGIN goes
    with the transaction's first statement, and the writes of a flush (whose results nobody
    reads) wait for the next hop, at the latest the COMMIT's. A round then takes 3 hops when
    it reads nothing else: BEGIN with the lock, the steps' load, and the writes with the COMMIT.
    A statement's `last` (`_Postgres.begin`) is ignored here: BEGIN costs no hop of its own.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection  # aiosqlite's Connection
        self._pending: list[tuple[str, Sequence[Any]]] = []

    async def begin(self) -> None:
        self._pending.append(("BEGIN IMMEDIATE", ()))

    async def commit(self) -> None:
        if self._pending == [("BEGIN IMMEDIATE", ())]:
            self._pending.clear()  # nothing was read or written
            return
        self._pending.append(("COMMIT", ()))
        await self._hop([])

    async def rollback(self) -> None:
        self._pending.clear()
        await self.connection._execute(_roll_back_on_thread, self.connection._conn)

    async def fetch(
        self, sql: str, arguments: list[Any], *, last: bool = False
    ) -> list[Sequence[Any]]:
        return await self._hop([(sql, arguments)])

    async def fetch_many(
        self, sql: str, arguments: list[list[Any]], *, last: bool = False
    ) -> list[Sequence[Any]]:
        """`sql` run once for each list of arguments, in one hop: the rows of all."""
        return await self._hop([(sql, each) for each in arguments])

    async def write_many(self, sql: str, arguments: list[list[Any]], *, last: bool = False) -> None:
        """Queued for the next hop: a span around this call only covers the queueing."""
        self._pending += [(sql, each) for each in arguments]

    async def _hop(self, queries: list[tuple[str, Sequence[Any]]]) -> list[Sequence[Any]]:
        """Run the pending statements, then `queries` (their rows, in order), in one call on
        the connection's thread (aiosqlite's `_execute`)."""
        pending, self._pending = self._pending, []
        rows: list[Sequence[Any]] = await self.connection._execute(
            _run_on_thread, self.connection._conn, pending, queries
        )
        return rows


def _roll_back_on_thread(connection: sqlite3.Connection) -> None:
    if connection.in_transaction:
        connection.execute("ROLLBACK")


def _run_on_thread(
    connection: sqlite3.Connection,
    pending: list[tuple[str, Sequence[Any]]],
    queries: list[tuple[str, Sequence[Any]]],
) -> list[Sequence[Any]]:
    for sql, arguments in pending:
        connection.execute(sql, arguments)
    rows: list[Sequence[Any]] = []
    for sql, arguments in queries:
        rows += connection.execute(sql, arguments).fetchall()
    return rows


class DriverSession:
    """One transaction on the driver connection (see the module's docstring)."""

    def __init__(self, driver: _Postgres | _Sqlite, dialect: sa.Dialect) -> None:
        self._driver = driver
        self._dialect = dialect
        #: SQL spans, as `tracing.trace_sql` gives the ORM's statements.
        self._traced = is_tracing()
        self._compiled: dict[Any, _Compiled] = _CACHE.setdefault(dialect.name, {})
        self._combined: dict[Any, _Compiled] = _COMBINED.setdefault(dialect.name, {})
        #: Loaded rows and their column values as last written.
        self._loaded: list[tuple[SQLModel, dict[str, Any]]] = []
        self._added: list[SQLModel] = []

    def add(self, row: SQLModel) -> None:
        """Insert `row` at the next flush (its autoincrement key is filled in then)."""
        self._added.append(row)

    async def rows(self, model: type[M], statement: ClauseElement, **params: Any) -> list[M]:
        """The rows of `statement` (a select of `model`'s table) as `model` objects; changes
        made to them are written at the next flush."""
        found = []
        for values in await self._fetch(statement, params):
            row = new_row(model, **values)  # as the ORM loads a row: no __init__
            self._loaded.append((row, values))
            found.append(row)
        return found

    async def values(self, statement: ClauseElement, **params: Any) -> list[Any]:
        """The first column of each row of `statement`: plain values, not tracked."""
        return [next(iter(values.values())) for values in await self._fetch(statement, params)]

    async def flush(self, *, closing: bool = False) -> None:
        """Write the added rows and the changed columns of the loaded ones: on PostgreSQL in
        one statement (each write a data-modifying CTE), or past MAX_TOGETHER writes or
        MAX_COMBINED mixes one round trip per kind of write; on SQLite the INSERTs that return
        a generated key one hop per kind, at once, and the others with the next hop
        (`_write_grouped`). `closing`: the transaction's last statements (`_Postgres.begin`)."""
        added, self._added = self._added, []
        inserts = [_Write.insert(row) for row in added]
        writes = list(inserts)
        for row, written in self._loaded:
            if not instance_state(row).modified:
                continue  # never set since it was loaded or built (only `__dict__` filled it)
            # The state dict, not getattr: the instrumented attributes' __get__ ran 300 times
            # a step (cProfile) when every flush compared every column of every loaded row.
            current = row.__dict__
            changed = {
                name: current[name] for name, value in written.items() if current[name] != value
            }
            if changed:
                writes.append(_Write.update(row, changed))
                written.update(changed)
        # In the order of their keys: a mix of writes is then one statement whatever order the
        # rows were loaded and changed in (the CTEs write different rows, so order is free),
        # and each kind's writes are adjacent for `_write_grouped`.
        writes.sort(key=lambda write: write.key)
        combine = isinstance(self._driver, _Postgres) and 1 < len(writes) <= MAX_TOGETHER
        if combine and self._may_combine(mix := tuple(write.key for write in writes)):
            await self._write_together(writes, mix, last=closing)
        else:
            await self._write_grouped(writes, closing=closing)
        for write in inserts:
            self._loaded.append((write.row, {**write.values, **write.generated_values()}))

    async def _fetch(
        self, statement: ClauseElement, params: dict[str, Any]
    ) -> list[dict[str, Any]]:
        await self.flush()
        compiled = self._compile(statement, statement)
        raw: list[Sequence[Any]] = await self._traced_call(
            compiled, self._driver.fetch(compiled.sql, compiled.arguments(params))
        )
        return [compiled.row(values) for values in raw]

    def _may_combine(self, mix: tuple[Any, ...]) -> bool:
        """Whether these writes go as one statement: each mix of writes is its own statement
        (compiled here, prepared by PostgreSQL), so past MAX_COMBINED mixes new ones go a
        round trip per kind of write (`_write_grouped`)."""
        return mix in self._combined or len(self._combined) < MAX_COMBINED

    async def _write_together(
        self, writes: list[_Write], mix: tuple[Any, ...], *, last: bool
    ) -> None:
        """One round trip for a flush's writes on PostgreSQL, where each statement of a
        transaction is one: `WITH w0 AS (UPDATE ...), w1 AS (INSERT ... RETURNING id) SELECT
        (SELECT id FROM w1)`. A flush never writes one row twice, so the CTEs, which all see
        the same snapshot, cannot conflict; each runs once and to completion."""
        compiled = self._combined.get(mix)
        if compiled is None:
            compiled = self._combined[mix] = _Compiled.of(_together(writes), self._dialect)
        params: dict[str, Any] = {}
        for i, write in enumerate(writes):
            params.update(write.params(f"w{i}_"))
        (returned,) = await self._traced_call(
            compiled, self._driver.fetch(compiled.sql, compiled.arguments(params), last=last)
        )
        values = compiled.row(returned)
        for i, write in enumerate(writes):
            if write.generated:
                write.set_generated({name: values[f"w{i}_{name}"] for name in write.generated})

    async def _write_grouped(self, writes: list[_Write], *, closing: bool) -> None:
        """The writes of each key (sorted, so adjacent) together, each key's statement run
        once per write: a round trip per key on PostgreSQL; on SQLite, a hop per key of
        INSERTs that return a generated key, and the others wait for the next hop (`_Sqlite`)."""
        groups = [list(group) for _, group in itertools.groupby(writes, lambda w: w.key)]
        last = closing and len(groups) == 1
        for group in groups:
            first = group[0]
            key = first.key
            # Built only if not compiled yet: building a statement costs more than running it.
            compiled = self._compiled.get(key) or self._compile(key, first.statement(""))
            arguments = [compiled.arguments(write.params("")) for write in group]
            if first.generated:
                returned = await self._traced_call(
                    compiled, self._driver.fetch_many(compiled.sql, arguments, last=last)
                )
                for write, values in zip(group, returned, strict=True):
                    write.set_generated(compiled.row(values))
            else:
                await self._traced_call(
                    compiled, self._driver.write_many(compiled.sql, arguments, last=last)
                )

    async def _traced_call(self, compiled: _Compiled, call: Awaitable[Any]) -> Any:
        """The call's result; a driver error comes out as SQLAlchemy's (`_wrapped`), so that a
        caller tells a taken key (IntegrityError) as it would from the ORM."""
        try:
            if not self._traced:
                return await call
            with sql_span(self._dialect.name, compiled.sql):
                return await call
        except Exception as error:
            wrapped = _wrapped(error)
            if wrapped is error:
                raise
            raise wrapped from error

    def _compile(self, key: Any, statement: ClauseElement) -> _Compiled:
        """Compiled once per process and dialect: a module-level statement is its own key; a
        flush's INSERT or UPDATE is keyed by its table and columns (`_Write.key`)."""
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = _Compiled.of(statement, self._dialect)
        return compiled


#: Compiled statements by dialect name, shared by every session of the process.
_CACHE: dict[str, dict[Any, _Compiled]] = {}
#: The same for a flush's writes as one statement, by their keys; at most MAX_COMBINED.
_COMBINED: dict[str, dict[Any, _Compiled]] = {}
#: Within asyncpg's cache of 100 prepared statements per connection, with the others.
MAX_COMBINED = 64
#: A flush of more writes than this (a busy worker's batch of rounds, a batch of creates) goes
#: a round trip per kind of write (`_write_grouped`): as one statement, each new mix of writes
#: was compiled and prepared, and past MAX_COMBINED mixes they went one statement per write.
#: PostgreSQL, 1,000 x 10 steps, one worker: 724 / 700 -> 868 / 879 steps/s side by side.
MAX_TOGETHER = 16


@dataclass
class _Write:
    """One INSERT or UPDATE of a flush: `values` are the columns it sets, `generated` the
    primary key columns the database fills in (an INSERT's autoincrement key)."""

    row: SQLModel
    table: sa.Table
    values: dict[str, Any]
    generated: tuple[str, ...] = ()
    is_insert: bool = False

    @classmethod
    def insert(cls, row: SQLModel) -> _Write:
        table = _table_of(type(row))
        values = {column.key: getattr(row, column.key) for column in table.columns}
        generated = tuple(c.key for c in table.primary_key.columns if values[c.key] is None)
        for name in generated:
            del values[name]
        return cls(row, table, values, generated, is_insert=True)

    @classmethod
    def update(cls, row: SQLModel, changed: dict[str, Any]) -> _Write:
        return cls(row, _table_of(type(row)), changed)

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.is_insert, self.table.name, tuple(self.values), self.generated)

    def statement(self, prefix: str) -> sa.Insert | sa.Update:
        """The statement, its bind parameters named `{prefix}set_*` and `{prefix}key_*`."""
        sets: dict[str, Any] = {name: sa.bindparam(f"{prefix}set_{name}") for name in self.values}
        if self.is_insert:
            insert = sa.insert(self.table).values(sets)
            if self.generated:
                insert = insert.returning(*(self.table.c[name] for name in self.generated))
            return insert
        keys = self.table.primary_key
        return (
            sa.update(self.table)
            .where(*(c == sa.bindparam(f"{prefix}key_{c.key}") for c in keys))
            .values(sets)
        )

    def params(self, prefix: str) -> dict[str, Any]:
        params = {f"{prefix}set_{name}": value for name, value in self.values.items()}
        if not self.is_insert:
            for column in self.table.primary_key:
                params[f"{prefix}key_{column.key}"] = getattr(self.row, column.key)
        return params

    def generated_values(self) -> dict[str, Any]:
        return {name: getattr(self.row, name) for name in self.generated}

    def set_generated(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            setattr(self.row, name, value)


@functools.cache
def _table_of(model: type[SQLModel]) -> sa.Table:
    table: sa.Table = sa.inspect(model).local_table
    return table


def _together(writes: list[_Write]) -> sa.Select[Any]:
    """Writes as the CTEs of one SELECT that returns their generated keys (`w{i}_{column}`)."""
    ctes = [write.statement(f"w{i}_").cte(f"w{i}") for i, write in enumerate(writes)]
    returned: list[sa.ColumnElement[Any]] = [
        sa.select(cte.c[name]).scalar_subquery().label(f"w{i}_{name}")
        for i, (write, cte) in enumerate(zip(writes, ctes, strict=True))
        for name in write.generated
    ]
    # A CTE no SELECT reads is rendered only if added; PostgreSQL runs it all the same.
    unread = [cte for cte, write in zip(ctes, writes, strict=True) if not write.generated]
    return sa.select(*(returned or [sa.literal_column("1")])).add_cte(*unread)


def _is_disconnect(error: BaseException) -> bool:
    sqlstate = getattr(error, "sqlstate", None) or ""
    if sqlstate.startswith(("08", "57P")):
        return True
    # asyncpg's client-side errors (InterfaceError and its kin: a closed connection, one
    # broken mid-operation) and socket errors all leave the connection unusable.
    return isinstance(error, OSError) or type(error).__name__.endswith("InterfaceError")


@asynccontextmanager
async def driver_transaction(
    engine: AsyncEngine, *, reads_only: bool = False
) -> AsyncIterator[DriverSession]:
    """A `DriverSession` in one transaction on a pooled connection: committed on exit,
    rolled back on an exception. With `reads_only`, no transaction: each statement is its
    own, so a single read costs one round trip (PostgreSQL), not three, and nothing is written.

    Driver errors come out wrapped as SQLAlchemy's (DBAPIError, OperationalError for SQLite's
    busy lock), so `database.is_transient` judges them as it judges the ORM's. A connection
    whose transaction failed is discarded rather than pooled: it may be broken or mid-query;
    but one whose write the database refused (IntegrityError) is rolled back and kept.
    """
    # A pooled DBAPI connection, not an AsyncConnection: the latter costs more CPU to check
    # out than some of the transactions it would carry.
    pooled = await engine.raw_connection()
    try:
        raw = pooled.driver_connection
        driver: _Postgres | _Sqlite = (
            _Sqlite(raw) if engine.dialect.name == "sqlite" else _Postgres(raw)
        )
        session = DriverSession(driver, engine.dialect)
        try:
            if reads_only:
                yield session
                return
            await driver.begin()
            yield session
            await session.flush(closing=True)
            await driver.commit()
        except BaseException as error:
            wrapped = _wrapped(error) if isinstance(error, Exception) else error
            kept = False
            try:
                kept = isinstance(wrapped, sa.exc.IntegrityError) and await _rolled_back(driver)
            finally:  # a rollback cancelled midway leaves the transaction open: discard it
                if not kept:
                    await greenlet_spawn(pooled.invalidate)
            if wrapped is error:
                raise
            raise wrapped from error
    finally:
        await greenlet_spawn(pooled.close)  # back to the pool (or discarded, if invalidated)


async def _rolled_back(driver: _Postgres | _Sqlite) -> bool:
    """Roll back a transaction the database refused a write in (a taken id: the client's
    create-or-get): its connection is sound and goes back to the pool. False if that fails."""
    try:
        await driver.rollback()
    except Exception:
        return False
    return True


def _wrapped(error: Exception) -> Exception:
    """Driver errors as SQLAlchemy's; anything else (the caller's own errors) unchanged."""
    driver_error = isinstance(error, sqlite3.Error) or type(error).__module__.startswith("asyncpg")
    if not driver_error and not isinstance(error, OSError):
        return error
    if (getattr(error, "sqlstate", None) or "").startswith("23"):  # asyncpg: a constraint
        return sa.exc.IntegrityError(None, None, error)
    wrapped = DBAPIError.instance(
        None, None, error, Exception, connection_invalidated=_is_disconnect(error)
    )
    return wrapped if isinstance(wrapped, Exception) else error


# The per-step path's queries; their ORM twins in queries.py serve everyone else. Bind
# parameters are named `the_*`: SQLAlchemy reserves a column's own name for its SET value.

_INSTANCE = select(InstanceRow).where(col(InstanceRow.id) == sa.bindparam("the_instance"))
_WORKER_BEAT = select(WorkerRow.heartbeat_at).where(col(WorkerRow.id) == sa.bindparam("the_worker"))
_BUFFERED_EVENTS = (
    select(EventRow)
    .where(
        col(EventRow.instance_id) == sa.bindparam("the_instance"),
        col(EventRow.consumed_by).is_(None),
    )
    .order_by(col(EventRow.id))
)


async def lock_instances(
    session: DriverSession, instance_ids: Sequence[str]
) -> dict[str, InstanceRow]:
    """The rows of the instances that exist, by id, locked until the transaction ends (SQLite:
    the whole database is); in the order of their ids, so that two transactions locking
    overlapping sets cannot deadlock."""
    params = _instance_params(instance_ids)
    rows = await session.rows(InstanceRow, _lock_instances(len(params)), **params)
    return {row.id: row for row in rows}


def _padded(values: list[T]) -> list[T]:
    """`values` (not empty) padded with repeats of the last to a power of two: a statement of
    many values is compiled (and prepared by asyncpg) once per size class, not per count."""
    size = 1 << (len(values) - 1).bit_length()
    return values + values[-1:] * (size - len(values))


def _instance_params(instance_ids: Sequence[str]) -> dict[str, str]:
    """The ids, sorted and padded (`_padded`), as the parameters `the_instance_{i}` of
    `_instance_binds`."""
    ids = _padded(sorted(set(instance_ids)))
    return {f"the_instance_{i}": instance_id for i, instance_id in enumerate(ids)}


def _instance_binds(size: int) -> list[Any]:
    return [sa.bindparam(f"the_instance_{i}") for i in range(size)]


@functools.cache
def _lock_instances(size: int) -> ClauseElement:
    return (
        select(InstanceRow)
        .where(col(InstanceRow.id).in_(_instance_binds(size)))
        .order_by(col(InstanceRow.id))
        .with_for_update()
    )


@functools.cache
def _load_steps_of(size: int) -> ClauseElement:
    return (
        select(StepRow)
        .where(col(StepRow.instance_id).in_(_instance_binds(size)))
        .order_by(col(StepRow.instance_id), col(StepRow.seq))
    )


async def load_steps_of(
    session: DriverSession, instance_ids: Sequence[str]
) -> dict[str, list[StepRow]]:
    """All recorded steps of each instance, in order, by instance id (none for an instance
    with no steps): one query per batch of replays."""
    if not instance_ids:
        return {}
    params = _instance_params(instance_ids)
    steps: dict[str, list[StepRow]] = {}
    for row in await session.rows(StepRow, _load_steps_of(len(params)), **params):
        steps.setdefault(row.instance_id, []).append(row)
    return steps


async def last_beats(session: DriverSession, worker_ids: Iterable[str]) -> dict[str, datetime]:
    """When each of these workers last beat; one without a row (forgotten) is left out."""
    beats = {}
    for worker_id in sorted(set(worker_ids)):
        for beat in await session.values(_WORKER_BEAT, the_worker=worker_id):
            beats[worker_id] = beat
    return beats


async def get_instance(session: DriverSession, instance_id: str) -> InstanceRow | None:
    rows = await session.rows(InstanceRow, _INSTANCE, the_instance=instance_id)
    return rows[0] if rows else None


async def buffered_events(session: DriverSession, instance_id: str) -> list[EventRow]:
    """Events not yet taken by a wait, oldest first."""
    return await session.rows(EventRow, _BUFFERED_EVENTS, the_instance=instance_id)
