"""Which database errors a consumer waits out (transient) and which it does not."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from processor.store.database import Database, is_transient, is_unreachable


class PostgresError(Exception):
    """What asyncpg's errors carry through SQLAlchemy: a SQLSTATE code."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked")), True),
        (OperationalError("x", {}, sqlite3.OperationalError("no such column: a.b")), False),
        (OperationalError("x", {}, sqlite3.OperationalError("no such table: t")), False),
        (OperationalError("x", {}, ConnectionResetError("reset by peer")), True),
        (IntegrityError("x", {}, Exception("duplicate key")), False),
        (DBAPIError("x", {}, PostgresError("57P03")), True),  # the server is starting up
        (DBAPIError("x", {}, PostgresError("57P01")), True),  # an administrator shut it down
        (DBAPIError("x", {}, PostgresError("08006")), True),  # the connection failed
        (DBAPIError("x", {}, PostgresError("40001")), True),  # a serialization failure
        (DBAPIError("x", {}, PostgresError("42703")), False),  # no such column
        (ConnectionRefusedError(), True),
        (ValueError("bad"), False),
    ],
)
def test_transient_errors(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


@pytest.mark.parametrize(
    ("error", "unreachable"),
    [
        (OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked")), False),
        (DBAPIError("x", {}, PostgresError("40P01")), False),  # a deadlock: the server is up
        (DBAPIError("x", {}, PostgresError("57P03")), True),
        (ConnectionRefusedError(), True),
        (ValueError("bad"), False),
    ],
)
def test_only_an_unreachable_database_pauses_a_worker(
    error: BaseException, unreachable: bool
) -> None:
    assert is_unreachable(error) is unreachable


async def test_retry_runs_an_operation_again_until_a_transient_error_passes(
    tmp_path: Path,
) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/retry.db")
    failures = [ConnectionRefusedError(), ConnectionRefusedError()]
    calls = 0

    async def operation() -> str:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop()
        return "done"

    try:
        assert await database.retry(operation) == "done"
        assert calls == 3
        assert database.outage.is_set()  # a refused connection is an outage: consumers pause
    finally:
        await database.close()


async def test_retry_raises_a_lasting_error_after_one_try(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/retry.db")
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1
        raise IntegrityError("x", {}, Exception("duplicate key"))

    try:
        with pytest.raises(IntegrityError):
            await database.retry(operation)
        assert calls == 1
        assert not database.outage.is_set()
    finally:
        await database.close()
