"""`Instance.result()` on PostgreSQL: told by a NOTIFY when the instance ends (migration 0004,
processor/store/notifications.py), it reads the row again then, not on a poll; only awaited
instances notify; a listening connection that closed or went deaf leaves the wait to its
fallback poll, and the next wait listens again."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.util import greenlet_spawn

from processor import Client, Instance, InstanceFailedError, Workflow, WorkflowEvent, WorkflowStep
from processor import client as client_module
from processor.store import notifications
from processor.store.database import Database
from processor.store.notifications import CHANNEL
from tests.conftest import TestEnv, assert_eventually

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)

GATE: dict[str, asyncio.Event] = {}


async def gated(instance_id: str) -> str:
    await GATE[instance_id].wait()
    return "done"


class Gated(Workflow[dict[str, Any]]):
    name = "notified-gated"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        return await step.do("gated", gated, event.instance_id)


def count_reads(client: Client, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    read = client._row

    async def counted(instance_id: str) -> Any:
        reads.append(instance_id)
        return await read(instance_id)

    monkeypatch.setattr(client, "_row", counted)
    return reads


async def a_waiting_result(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch, fallback_s: float
) -> tuple[Instance, asyncio.Task[Any]]:
    """A gated instance, and its result() waiting: untold, it reads the row every
    `fallback_s`."""
    monkeypatch.setattr(client_module, "RESULT_FALLBACK_POLL_S", fallback_s)
    instance = await env.client.create(Gated)
    GATE[instance.id] = asyncio.Event()
    task = asyncio.ensure_future(instance.result(timeout=30))
    await asyncio.sleep(0.5)  # result() has read the row and waits
    assert not task.done()
    return instance, task


async def test_result_reads_the_row_again_when_the_instance_ends(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    await env.start_worker(Gated)
    reads = count_reads(env.client, monkeypatch)
    instance, task = await a_waiting_result(env, monkeypatch, 60.0)
    GATE[instance.id].set()
    assert await asyncio.wait_for(task, 10) == "done"
    assert len(reads) == 2  # the first read, and the one the notification asked for


async def test_a_terminated_instance_ends_a_waiting_result(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    await env.start_worker(Gated)
    instance, task = await a_waiting_result(env, monkeypatch, 60.0)
    await instance.terminate()
    with pytest.raises(InstanceFailedError, match="terminated"):
        await asyncio.wait_for(task, 10)
    GATE[instance.id].set()


async def test_a_lost_listening_connection_falls_back_to_polling_then_listens_again(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    await env.start_worker(Gated)
    instance, task = await a_waiting_result(env, monkeypatch, 0.3)
    await terminate_listener(env)
    GATE[instance.id].set()
    assert await asyncio.wait_for(task, 10) == "done"  # its fallback poll saw it
    await assert_listening_again(env, monkeypatch)


async def assert_listening_again(env: TestEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next wait is told of its instance's end: it has listened again."""
    instance, task = await a_waiting_result(env, monkeypatch, 60.0)
    GATE[instance.id].set()
    assert await asyncio.wait_for(task, 10) == "done"


async def terminate_listener(env: TestEnv) -> None:
    """Kill the connection this test's client listens on."""
    pooled = env.client._ended._pooled
    assert pooled is not None
    pid = pooled.driver_connection.get_server_pid()
    database = Database(env.backend.database_url, schema=env.backend.schema)
    try:
        async with database.engine.begin() as connection:
            query = sa.text("SELECT pg_terminate_backend(:pid)")
            assert (await connection.execute(query, {"pid": pid})).scalar()
    finally:
        await database.close()


async def test_a_deaf_listener_is_replaced(env: TestEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its connection stays open but hears nothing (a half-open socket, say): the fallback
    read finds the instance ended untold, and the next wait listens on a new connection."""
    monkeypatch.setattr(notifications, "TOLD_WITHIN", timedelta(0))  # no notification in flight
    await env.start_worker(Gated)
    instance, task = await a_waiting_result(env, monkeypatch, 0.3)
    ended = env.client._ended
    await ended._pooled.driver_connection.remove_listener(CHANNEL, ended._notified)
    GATE[instance.id].set()
    assert await asyncio.wait_for(task, 10) == "done"
    await assert_listening_again(env, monkeypatch)


async def test_only_awaited_instances_notify(env: TestEnv) -> None:
    heard: list[str] = []
    database = Database(env.backend.database_url, schema=env.backend.schema)
    pooled = await database.engine.raw_connection()
    try:
        await pooled.driver_connection.add_listener(
            CHANNEL, lambda connection, pid, channel, payload: heard.append(payload)
        )
        await env.start_worker(Gated)
        unawaited, awaited = await env.client.create(Gated), await env.client.create(Gated)
        for instance in (unawaited, awaited):
            GATE[instance.id] = asyncio.Event()
            GATE[instance.id].set()
        assert await awaited.result(timeout=30) == "done"

        async def unawaited_complete() -> bool:
            return (await unawaited.status()).status == "complete"

        await assert_eventually(unawaited_complete, what="the unawaited instance to complete")
        await asyncio.sleep(0.5)  # a notification sent at its commit has arrived by now
        assert awaited.id in heard
        assert unawaited.id not in heard
    finally:
        await greenlet_spawn(pooled.invalidate)
        await greenlet_spawn(pooled.close)
        await database.close()


async def test_awaiting_an_ended_instance_leaves_no_mark(env: TestEnv) -> None:
    await env.start_worker(Gated)
    instance = await env.client.create(Gated)
    GATE[instance.id] = asyncio.Event()
    GATE[instance.id].set()
    assert await instance.result(timeout=20) == "done"  # marked, then the end took the mark
    assert await instance.result(timeout=20) == "done"  # ended already: not marked
    database = Database(env.backend.database_url, schema=env.backend.schema)
    try:
        async with database.engine.connect() as connection:
            query = sa.text("SELECT count(*) FROM warren_awaited_results")
            assert (await connection.execute(query)).scalar() == 0
    finally:
        await database.close()
