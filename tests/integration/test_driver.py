"""The per-step path's driver session (store/driver.py) against real SQLite and PostgreSQL:
what it writes reads back the same through the ORM and the other way round, it flushes before
each statement as the ORM does, and a failed transaction writes nothing and leaves the pool
usable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from processor.store import driver
from processor.store.database import Database, is_transient
from processor.store.tables import InstanceRow, OutboxRow, StepRow, new_row
from tests.conftest import Backend

MOMENT = datetime(2026, 11, 27, 23, 59, 58, 123456, tzinfo=UTC)


@pytest.fixture
async def database(backend: Backend) -> AsyncIterator[Database]:
    database = Database(backend.database_url, schema=backend.schema)
    yield database
    await database.close()


async def add_instance(database: Database) -> None:
    async with database.transaction() as session:
        session.add(
            InstanceRow(
                id="i1",
                workflow="w",
                status="running",
                params={"nested": [1, "two", None], "flag": True},
                created_at=MOMENT,
                updated_at=MOMENT,
                compute_ms=1.5,
            )
        )
        session.add(
            StepRow(instance_id="i1", key="a", seq=0, name="a", kind="do", status="complete")
        )


async def test_rows_written_by_the_orm_read_back_the_same_on_the_driver(
    database: Database,
) -> None:
    await add_instance(database)
    async with database.driver_transaction() as session:
        instance = (await driver.lock_instances(session, ["i1"])).get("i1")
        steps = (await driver.load_steps_of(session, ["i1"]))["i1"]
    assert instance is not None
    assert instance.params == {"nested": [1, "two", None], "flag": True}
    assert instance.created_at == MOMENT
    assert instance.created_at.tzinfo is not None
    assert instance.pause_requested is False
    assert instance.compute_ms == 1.5
    assert instance.output is None
    assert instance.run_due_at is None
    assert [(step.key, step.status) for step in steps] == [("a", "complete")]


async def test_changes_and_new_rows_on_the_driver_read_back_the_same_through_the_orm(
    database: Database,
) -> None:
    await add_instance(database)
    later = MOMENT + timedelta(seconds=90)
    async with database.driver_transaction() as session:
        instance = (await driver.lock_instances(session, ["i1"])).get("i1")
        assert instance is not None
        instance.output = {"total": 3, "items": ["x"]}
        instance.pause_requested = True
        instance.run_due_at = later
        instance.compute_ms += 2.25
        session.add(
            StepRow(instance_id="i1", key="b", seq=1, name="b", kind="sleep", status="running")
        )
        outbox = OutboxRow(message_id="m1", workflow="w", body="{}", created_at=later)
        session.add(outbox)
        await session.flush()
        assert outbox.id is not None  # the database's key, as the outbox relay needs
    async with database.read() as orm:
        stored = await orm.get(InstanceRow, "i1")
        step = await orm.get(StepRow, ("i1", "b"))
        stored_outbox = await orm.get(OutboxRow, outbox.id)
    assert stored is not None
    assert step is not None
    assert stored_outbox is not None
    assert stored.output == {"total": 3, "items": ["x"]}
    assert stored.pause_requested is True
    assert stored.run_due_at == later
    assert stored.compute_ms == 3.75
    assert (step.kind, step.status, step.seq) == ("sleep", "running", 1)
    assert stored_outbox.message_id == "m1"
    assert stored_outbox.created_at == later


@pytest.mark.parametrize("limit", ["none", "mixes", "writes"])
async def test_a_flush_is_one_statement_on_postgresql_or_one_per_kind_of_write(
    database: Database, backend: Backend, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    """Past MAX_COMBINED mixes of writes, or MAX_TOGETHER writes, a flush on PostgreSQL goes
    one round trip per kind of write."""
    if limit == "mixes":
        monkeypatch.setattr(driver, "_COMBINED", {})
        monkeypatch.setattr(driver, "MAX_COMBINED", 0)
    elif limit == "writes":
        monkeypatch.setattr(driver, "MAX_TOGETHER", 2)
    await add_instance(database)
    async with database.driver_transaction() as session:
        sent: list[str] = []
        connection = session._driver
        for name in ("fetch", "fetch_many", "write_many"):
            call = getattr(connection, name)

            async def counted(sql: str, arguments: list[Any], call: Any = call, **kw: Any) -> Any:
                sent.append(sql)
                return await call(sql, arguments, **kw)

            setattr(connection, name, counted)
        instance = (await driver.lock_instances(session, ["i1"])).get("i1")
        assert instance is not None
        instance.status = "waiting"
        first = OutboxRow(message_id="m1", workflow="w", body="{}", created_at=MOMENT)
        second = OutboxRow(message_id="m2", workflow="w", body="{}", created_at=MOMENT)
        session.add(first)
        session.add(second)
        sent.clear()
        await session.flush()
    # PostgreSQL sends the three writes as one statement, or past a limit one per kind: the
    # instance's UPDATE, the two outbox rows' INSERT; so does SQLite (the UPDATE is queued for
    # the INSERTs' hop, which fetches their keys).
    assert len(sent) == (1 if backend.name == "postgres" and limit == "none" else 2)
    assert first.id is not None
    assert second.id is not None
    assert first.id != second.id
    async with database.read() as orm:
        stored = await orm.get(InstanceRow, "i1")
        stored_first = await orm.get(OutboxRow, first.id)
        stored_second = await orm.get(OutboxRow, second.id)
    assert stored is not None
    assert stored.status == "waiting"
    assert stored_first is not None
    assert stored_first.message_id == "m1"
    assert stored_second is not None
    assert stored_second.message_id == "m2"


@pytest.mark.parametrize("limit", ["none", "writes"])
async def test_a_transaction_of_one_write_statement_sends_it_alone_and_all_or_nothing(
    database: Database, backend: Backend, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    """A transaction that only writes, in one statement (a create), sends no BEGIN or COMMIT
    on PostgreSQL; past MAX_TOGETHER writes (several statements) it does. Either way a taken
    id fails the whole of it."""
    if limit == "writes":
        monkeypatch.setattr(driver, "MAX_TOGETHER", 1)
    await add_instance(database)
    started: list[bool] = []

    class CountingTransactions:
        """asyncpg's connection, counting the transactions started on it."""

        def __init__(self, connection: Any) -> None:
            self._connection = connection

        def __getattr__(self, name: str) -> Any:
            return getattr(self._connection, name)

        def transaction(self, **options: Any) -> Any:
            started.append(True)
            return self._connection.transaction(**options)

    def instance(instance_id: str) -> InstanceRow:
        return new_row(
            InstanceRow,
            id=instance_id,
            workflow="w",
            status="queued",
            created_at=MOMENT,
            updated_at=MOMENT,
        )

    async def create(instance_id: str, message_id: str) -> None:
        async with database.driver_transaction() as session:
            if backend.name == "postgres":
                session._driver.connection = CountingTransactions(session._driver.connection)
            session.add(instance(instance_id))
            session.add(
                OutboxRow(message_id=message_id, workflow="w", body="{}", created_at=MOMENT)
            )

    await create("i2", "m2")
    with pytest.raises(IntegrityError):
        await create("i1", "m1")  # taken
    if backend.name == "postgres":
        assert len(started) == (0 if limit == "none" else 2)
    async with database.read() as orm:
        messages = (await orm.exec(select(OutboxRow.message_id))).all()
        created = await orm.get(InstanceRow, "i2")
    assert messages == ["m2"]
    assert created is not None


async def test_rows_built_without_init_are_written_as_built_ones_by_the_orm_and_the_driver(
    database: Database,
) -> None:
    await add_instance(database)
    fields = {"instance_id": "i1", "seq": 1, "name": "n", "kind": "do", "status": "running"}
    built = StepRow(key="by-init", **fields)
    assert new_row(StepRow, key="by-init", **fields).model_dump() == built.model_dump()
    async with database.transaction() as orm:
        orm.add(new_row(StepRow, key="orm", **fields))
    async with database.driver_transaction() as session:
        session.add(new_row(StepRow, key="driver", **fields))
    async with database.read() as orm:
        stored = [await orm.get(StepRow, ("i1", key)) for key in ("orm", "driver")]
    for row in stored:
        assert row is not None
        assert row.model_dump(exclude={"key"}) == built.model_dump(exclude={"key"})


async def test_a_changed_row_is_written_before_the_next_statement(database: Database) -> None:
    await add_instance(database)
    async with database.driver_transaction() as session:
        (step,) = (await driver.load_steps_of(session, ["i1"]))["i1"]
        step.wake_at = MOMENT
        # The next query must see the change, as the ORM's autoflush makes it.
        (again,) = (await driver.load_steps_of(session, ["i1"]))["i1"]
        assert again is not step
        assert again.wake_at == MOMENT


async def complete_and_add_a_duplicate_step(database: Database) -> None:
    async with database.driver_transaction() as session:
        instance = (await driver.lock_instances(session, ["i1"])).get("i1")
        assert instance is not None
        instance.status = "complete"
        # The same primary key twice: the driver's integrity error, wrapped.
        session.add(
            StepRow(instance_id="i1", key="a", seq=5, name="a", kind="do", status="running")
        )


async def test_a_failed_transaction_writes_nothing_and_the_pool_still_works(
    database: Database,
) -> None:
    await add_instance(database)
    invalidated: list[object] = []
    sa.event.listen(database.engine.sync_engine, "invalidate", lambda *_: invalidated.append(1))
    with pytest.raises(IntegrityError) as raised:
        await complete_and_add_a_duplicate_step(database)
    assert not is_transient(raised.value)  # retrying cannot help
    # A refused write leaves a sound connection: rolled back and pooled, not reconnected.
    assert invalidated == []
    async with database.driver_transaction() as session:
        instance = (await driver.lock_instances(session, ["i1"])).get("i1")
    assert instance is not None
    assert instance.status == "running"


async def test_a_rollback_cancelled_midway_discards_the_connection(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused write is rolled back and its connection kept, unless the rollback is
    cancelled (the caller timed out, the worker is stopping): the transaction may still be
    open, with its locks, so the connection is discarded, and the next user gets a clean one."""
    database = Database(backend.database_url, schema=backend.schema, pool_size=1)
    try:
        await add_instance(database)
        driver_type = driver._Postgres if backend.name == "postgres" else driver._Sqlite
        rollback = driver_type.rollback

        async def cancelled_midway(self: Any) -> None:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await rollback(self)

        monkeypatch.setattr(driver_type, "rollback", cancelled_midway)
        attempt = asyncio.create_task(complete_and_add_a_duplicate_step(database))
        with pytest.raises(asyncio.CancelledError):
            await attempt
        monkeypatch.undo()
        async with database.driver_transaction() as session:
            instance = (await driver.lock_instances(session, ["i1"])).get("i1")
        assert instance is not None
        assert instance.status == "running"
    finally:
        await database.close()


async def error_after_a_flush(database: Database) -> None:
    async with database.driver_transaction() as session:
        instance = (await driver.lock_instances(session, ["i1"])).get("i1")
        assert instance is not None
        instance.status = "errored"
        await session.flush()
        raise LookupError("not a database error")


async def test_an_error_of_the_callers_own_passes_through_and_rolls_back(
    database: Database,
) -> None:
    await add_instance(database)
    with pytest.raises(LookupError) as raised:
        await error_after_a_flush(database)
    assert raised.value.__cause__ is None  # as raised, not wrapped in itself
    async with database.read() as orm:
        stored = await orm.get(InstanceRow, "i1")
    assert stored is not None
    assert stored.status == "running"


async def test_driver_reads_see_committed_rows_without_waiting_for_a_writer(
    database: Database,
) -> None:
    """A read outside any transaction takes no lock: it answers while a round holds the
    instance (and, on SQLite, the write lock), with the row as last committed."""
    await add_instance(database)
    async with database.driver_transaction() as writer:
        (locked,) = (await driver.lock_instances(writer, ["i1"])).values()
        locked.status = "waiting"
        await driver.load_steps_of(writer, ["i1"])  # a query: SQLite's UPDATE runs before it
        async with asyncio.timeout(5), database.driver_reads() as reader:
            row = await driver.get_instance(reader, "i1")
            missing = await driver.get_instance(reader, "nobody")
        assert row is not None
        assert (row.status, row.params) == ("running", {"nested": [1, "two", None], "flag": True})
        assert missing is None
    async with database.driver_reads() as reader:
        row = await driver.get_instance(reader, "i1")
    assert row is not None
    assert row.status == "waiting"
