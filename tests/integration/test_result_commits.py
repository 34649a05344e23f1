"""`Instance.result()` on SQLite: told of every commit to the database file by `Commits`
(processor/store/notifications.py), it reads the row again after one, and not while nothing
commits."""

from __future__ import annotations

import asyncio

import pytest

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


async def test_no_commit_watch_for_an_sqlite_database_in_memory() -> None:
    database = Database("sqlite+aiosqlite:///:memory:")
    try:
        assert Commits.of(database) is None
    finally:
        await database.close()
