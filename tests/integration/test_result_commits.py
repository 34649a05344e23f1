"""`Instance.result()` on SQLite: told of every commit to the database file by `Commits`
(processor/store/notifications.py), it reads the row again after one, and not while nothing
commits."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from processor import client as client_module
from processor.store.database import Database
from processor.store.notifications import Commits
from tests.conftest import TestEnv
from tests.integration.test_result_notifications import GATE, Gated, count_reads


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_result_reads_the_row_again_when_something_commits_and_not_meanwhile(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "RESULT_FALLBACK_POLL_S", 60.0)
    await env.start_worker(Gated)
    instance = await env.client.create(Gated)
    GATE[instance.id] = asyncio.Event()
    reads = count_reads(env.client, monkeypatch)
    task = asyncio.ensure_future(instance.result(timeout=30))
    await asyncio.sleep(0.5)  # the first round has committed; the step waits at the gate
    assert not task.done()
    quiet = len(reads)
    await asyncio.sleep(1.0)
    # Only the worker's own commits meanwhile (its heartbeat, every 2 s): polling from
    # every 2 ms, growing by a tenth, read 8 times in this second.
    assert len(reads) - quiet <= 2
    GATE[instance.id].set()
    # Without a word of the commit that ends it, the wait would read again in 60 s.
    assert await asyncio.wait_for(task, 10) == "done"
    assert len(reads) > quiet


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_an_end_just_before_the_deadline_is_returned_not_timed_out(env: TestEnv) -> None:
    """On a busy database the gap between reads grows to 0.5 s: a deadline that passes during
    one ends the wait with one more read, not with TimeoutError."""
    await env.start_worker(Gated)
    instance = await env.client.create(Gated)
    GATE[instance.id] = asyncio.Event()  # never opened: the instance stays running
    path = make_url(env.client.runtime.database.url).database
    assert path is not None
    other = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    await asyncio.to_thread(other.execute, "CREATE TABLE busy (x INTEGER)")
    stop = asyncio.Event()

    async def commit_often() -> None:  # as other instances' rounds would
        while not stop.is_set():
            await asyncio.to_thread(other.execute, "INSERT INTO busy VALUES (1)")
            await asyncio.sleep(0.002)

    busy = asyncio.ensure_future(commit_often())
    timeout = 3.0
    started = time.monotonic()
    task = asyncio.ensure_future(instance.result(timeout=timeout))
    try:
        await asyncio.sleep(timeout - 0.05)
        await asyncio.to_thread(
            other.execute,
            "UPDATE warren_instances SET status = 'complete', output = '\"done\"' WHERE id = ?",
            (instance.id,),
        )
        assert time.monotonic() - started < timeout
        assert await task == "done"
    finally:
        stop.set()
        await busy
        GATE[instance.id].set()
        other.close()


async def test_no_commit_watch_for_an_sqlite_database_in_memory() -> None:
    database = Database("sqlite+aiosqlite:///:memory:")
    try:
        assert Commits.of(database) is None
    finally:
        await database.close()


@pytest.fixture
def other(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to a new SQLite file in WAL mode, with a table `t` to commit rows to."""
    other = sqlite3.connect(tmp_path / "watched.db", isolation_level=None)
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("CREATE TABLE t (x INTEGER)")
    yield other
    other.close()


@pytest.fixture
async def commits(tmp_path: Path, other: sqlite3.Connection) -> AsyncIterator[Commits]:
    """Watching the file `other` writes to."""
    commits = Commits(tmp_path / "watched.db")
    yield commits
    await commits.close()


async def test_commits_wakes_waiters_on_another_connections_commit_until_closed(
    commits: Commits, other: sqlite3.Connection
) -> None:
    with commits.watch() as event:
        await asyncio.sleep(0.05)
        assert not event.is_set()  # nothing committed since the watch began
        other.execute("INSERT INTO t VALUES (1)")
        await asyncio.wait_for(event.wait(), 5)
    await commits.close()
    with commits.watch() as event:
        other.execute("INSERT INTO t VALUES (2)")
        await asyncio.sleep(0.05)
        assert not event.is_set()
        assert commits._poller is None  # closed: no poller, no connection reopened
        assert commits._connection is None


async def test_a_new_wait_is_told_at_once_though_a_long_one_slowed_the_reads(
    commits: Commits, other: sqlite3.Connection
) -> None:
    with commits.watch() as long_wait:
        commits._interval = 60.0  # as after minutes of waiting (capped lower in use)
        await asyncio.sleep(0.05)  # the poller sleeps that long now
        with commits.watch() as new_wait:
            other.execute("INSERT INTO t VALUES (1)")
            await asyncio.wait_for(new_wait.wait(), 5)
        assert long_wait.is_set()
