"""The step rows a worker keeps between an instance's rounds (processor/engine/kept_steps.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import configure_mappers

from processor.engine.kept_steps import KeptSteps
from processor.store.tables import InstanceRow, StepRow, new_row

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _mapped() -> None:
    configure_mappers()  # as the first session would: rows are built without one here


def instance(instance_id: str = "i1", version: int = 3, updated_at: datetime = NOW) -> InstanceRow:
    return new_row(
        InstanceRow, id=instance_id, workflow="w", status="running", version=version,
        created_at=NOW, updated_at=updated_at,
    )  # fmt: skip


def step(seq: int) -> tuple[StepRow, dict[str, object]]:
    values = {"instance_id": "i1", "key": f"s{seq}", "seq": seq, "name": f"s{seq}"}
    values |= {"kind": "do", "status": "complete", "attempt": 1}
    return new_row(StepRow, **values), values


def test_kept_rows_come_back_in_order_once() -> None:
    kept = KeptSteps()
    rows = [step(2), step(0), step(1)]
    kept.keep(instance(), rows, shared=set())
    taken = kept.take(instance())
    assert taken is not None
    assert [row.seq for row, _ in taken] == [0, 1, 2]
    assert taken[0][0] is rows[1][0]  # the very rows: nothing rebuilt
    assert kept.take(instance()) is None  # taken: a second round cannot share them


def test_an_instance_written_since_gets_nothing() -> None:
    later = NOW + timedelta(microseconds=1)
    for written_since in (instance(version=4), instance(updated_at=later)):
        kept = KeptSteps()
        kept.keep(instance(), [step(0)], shared=set())
        assert kept.take(written_since) is None


def test_a_row_a_running_attempt_holds_is_kept_as_a_copy() -> None:
    kept = KeptSteps()
    held, other = step(0), step(1)
    kept.keep(instance(), [held, other], shared={id(held[0])})
    taken = kept.take(instance())
    assert taken is not None
    assert taken[0][0] is not held[0]
    assert taken[0][0].key == "s0"
    assert taken[0][1] == held[1]
    assert taken[0][1] is not held[1]
    assert taken[1][0] is other[0]


def test_the_least_recently_kept_go_first() -> None:
    kept = KeptSteps(size=2)
    for instance_id in ("a", "b", "c"):
        kept.keep(instance(instance_id), [step(0)], shared=set())
    assert kept.take(instance("a")) is None
    assert kept.take(instance("b")) is not None
    assert kept.take(instance("c")) is not None


def test_forgotten_instances_get_nothing() -> None:
    kept = KeptSteps()
    kept.keep(instance(), [step(0)], shared=set())
    kept.forget(["i1"])
    assert kept.take(instance()) is None
