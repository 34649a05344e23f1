"""Which database errors a consumer waits out (transient) and which it does not."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from processor.store.database import is_transient


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked")), True),
        (OperationalError("x", {}, sqlite3.OperationalError("no such column: a.b")), False),
        (OperationalError("x", {}, sqlite3.OperationalError("no such table: t")), False),
        (OperationalError("x", {}, ConnectionResetError("reset by peer")), True),
        (IntegrityError("x", {}, Exception("duplicate key")), False),
        (ConnectionRefusedError(), True),
        (ValueError("bad"), False),
    ],
)
def test_transient_errors(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
