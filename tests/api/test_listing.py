"""What the Client gained for the API: keyset pages, buffered events, idempotent events and
counts per workflow; the listing's indexes; the 10,000-instance benchmark's smoke run."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from processor import InstanceNotFoundError, InstanceStatusName
from processor.store import queries
from processor.store.database import Database
from tests.api.conftest import Approval, Other
from tests.conftest import BROKER_URL, TestEnv, require

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def test_a_page_keeps_its_place_when_instances_are_created_between_pages(
    env: TestEnv,
) -> None:
    await env.start_worker(Other)
    for i in range(5):
        await env.client.create(Other, {}, id=f"old-{i}")

    first = await env.client.list_page(limit=2)
    assert [i.id for i in first.instances] == ["old-4", "old-3"]
    assert first.next_cursor is not None
    for i in range(3):
        await env.client.create(Other, {}, id=f"new-{i}")
    second = await env.client.list_page(limit=2, cursor=first.next_cursor)
    last = await env.client.list_page(limit=2, cursor=second.next_cursor)

    assert [i.id for i in second.instances] == ["old-2", "old-1"]
    assert [i.id for i in last.instances] == ["old-0"]
    assert last.next_cursor is None
    newest = await env.client.list_page(workflow=["api-other", "api-approval"], limit=3)
    assert [i.id for i in newest.instances] == ["new-2", "new-1", "new-0"]
    with pytest.raises(ValueError, match="malformed cursor"):
        await env.client.list_page(cursor="eyJub3QiOiAiYSBjdXJzb3IifQ")


async def test_an_idempotency_key_delivers_an_event_once_per_instance_and_type(
    env: TestEnv,
) -> None:
    await env.start_worker(Other)
    await env.client.create(Other, {}, id="keyed")

    assert await env.client.send_event_once("keyed", "payment", {"n": 1}, "k-1") is True
    assert await env.client.send_event_once("keyed", "payment", {"n": 1}, "k-1") is False
    assert await env.client.send_event_once("keyed", "refund", {"n": 2}, "k-1") is True
    with pytest.raises(InstanceNotFoundError):
        await env.client.send_event_once("nobody", "payment", None, "k-2")
    with pytest.raises(ValueError, match="idempotency key"):
        await env.client.send_event_once("keyed", "payment", None, "")

    events = await env.client.events("keyed")
    assert [(e.type, e.payload) for e in events] == [("payment", {"n": 1}), ("refund", {"n": 2})]
    with pytest.raises(InstanceNotFoundError):
        await env.client.events("nobody")


async def test_workflow_counts_cover_every_registered_workflow(env: TestEnv) -> None:
    await env.start_worker(Approval, Other)
    await env.client.create_batch(Other, [{"id": "c-1"}, {"id": "c-2"}])
    await (await env.client.create(Other, {}, id="c-3")).terminate()

    counts = await env.client.workflow_counts()

    assert counts["api-approval"] == {}
    assert sum(counts["api-other"].values()) == 3
    assert counts["api-other"][InstanceStatusName.TERMINATED] == 1


@pytest.mark.parametrize(
    ("workflows", "status", "before"),
    [
        (None, None, None),
        (None, None, (datetime(2030, 1, 1, tzinfo=UTC), "x")),
        (None, "complete", (datetime(2030, 1, 1, tzinfo=UTC), "x")),
        (["api-other"], None, (datetime(2030, 1, 1, tzinfo=UTC), "x")),
    ],
)
async def test_on_sqlite_each_listing_reads_an_index_in_order_without_sorting(
    tmp_path: Path,
    workflows: list[str] | None,
    status: str | None,
    before: tuple[datetime, str] | None,
) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/plan.db")
    await database.upgrade()
    executed: list[tuple[str, Any]] = []

    @event.listens_for(database.engine.sync_engine, "before_cursor_execute")
    def capture(*args: Any) -> None:
        _connection, _cursor, statement, parameters = args[:4]
        if "FROM warren_instances" in statement:
            executed.append((statement, parameters))

    try:
        async with database.read() as session:
            await queries.page_instances(session, workflows, status, 101, before)
        ((statement, parameters),) = executed
        async with database.engine.connect() as connection:
            result = await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plan = " | ".join(row[-1] for row in result.all())
    finally:
        await database.close()
    assert "USING INDEX ix_warren_instances_" in plan
    assert "TEMP B-TREE" not in plan  # no sort: the page is a range of the index


def test_the_listing_benchmark_smoke_run_pages_through_every_instance() -> None:
    require(BROKER_URL, 5672, "RabbitMQ")
    command = [sys.executable, "-m", "bench.listing", "--instances", "250", "--page-size", "40"]
    command += ["--backend", "sqlite", "--broker-url", BROKER_URL]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    rows = [line.split() for line in run.stdout.splitlines() if line.startswith("sqlite")]
    assert [(row[1], row[2], row[3]) for row in rows] == [
        ("all", "250", "7"),
        ("status=complete", "175", "5"),
        ("workflow=bench-listing-a", "125", "4"),
    ]
