"""Which outbox rows `Runtime._group_wake_ups` sends as one wake-up: the same workflow and due
time, far enough ahead; everything else goes as it is."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import sqlalchemy.orm

from processor.runtime import GROUP_WAKE_UPS_AFTER, Runtime
from processor.store.tables import OutboxRow, new_row
from schemas import MAX_WAKE_GROUP, RunInstance

# Rows built without a session (store/tables.py new_row) need the mappers configured.
sqlalchemy.orm.configure_mappers()


def row(instance_id: str, workflow: str, wake_at: datetime | None) -> OutboxRow:
    body = RunInstance(instance_id=instance_id, wake_at=wake_at)
    return new_row(
        OutboxRow,
        message_id=f"m-{instance_id}",
        workflow=workflow,
        body=body.model_dump_json(exclude_none=True),
        wake_at=wake_at,
    )


def runtime() -> Runtime:
    return Runtime(
        broker_url=None, database_url="sqlite+aiosqlite://", namespace="t", database_schema=None
    )


def test_wake_ups_of_one_workflow_due_together_later_go_as_one() -> None:
    rt = runtime()
    later = rt.clock.now() + GROUP_WAKE_UPS_AFTER + timedelta(seconds=5)
    soon = rt.clock.now() + timedelta(milliseconds=100)
    rows = [
        row("a", "w", later),
        row("b", "w", later),
        row("c", "other", later),  # another workflow's queue
        row("d", "w", later + timedelta(milliseconds=1)),  # another due time
        row("e", "w", soon),  # too near to be worth it
        row("f", "w", soon),
        row("g", "w", None),  # a run now
        row("h", "w", later),
    ]

    messages = rt._group_wake_ups(rows)

    by_rows = {tuple(r.message_id for r in group): json.loads(body) for group, body in messages}
    assert sorted(by_rows) == sorted(
        [("m-a", "m-b", "m-h"), ("m-c",), ("m-d",), ("m-e",), ("m-f",), ("m-g",)]
    )
    assert by_rows["m-a", "m-b", "m-h"]["instance_id"] == "a"
    assert by_rows["m-a", "m-b", "m-h"]["more_instance_ids"] == ["b", "h"]
    assert by_rows["m-g",] == {"kind": "run", "instance_id": "g"}  # unchanged, no new key


def test_a_group_larger_than_a_message_may_carry_is_cut() -> None:
    rt = runtime()
    later = rt.clock.now() + GROUP_WAKE_UPS_AFTER + timedelta(seconds=5)
    rows = [row(f"i{n}", "w", later) for n in range(MAX_WAKE_GROUP + 3)]

    messages = rt._group_wake_ups(rows)

    assert [len(group) for group, _ in messages] == [MAX_WAKE_GROUP + 1, 2]
    for group, body in messages:
        wake_up = RunInstance.model_validate_json(body)
        assert [wake_up.instance_id, *(wake_up.more_instance_ids or [])] == [
            json.loads(r.body)["instance_id"] for r in group
        ]


def test_a_row_whose_body_this_version_cannot_read_goes_alone() -> None:
    rt = runtime()
    later = rt.clock.now() + GROUP_WAKE_UPS_AFTER + timedelta(days=1)
    rows = [row("a", "w", later), row("b", "w", later), row("c", "w", later)]
    newer = json.loads(rows[2].body) | {"priority": 1}  # a later version's row, say
    rows[2].body = json.dumps(newer)

    messages = rt._group_wake_ups(rows)

    assert sorted(tuple(r.message_id for r in group) for group, _ in messages) == [
        ("m-a",),
        ("m-b",),
        ("m-c",),
    ]
