"""Every query Warren runs. No SQL outside this package."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from processor.store.driver import DriverSession
from processor.store.tables import (
    EventRow,
    InstanceRow,
    OutboxRow,
    ProcessedMessageRow,
    StepRow,
    UTCDateTime,
    WorkerRow,
    WorkflowRow,
    new_row,
)
from schemas import RunInstance, StepStatusName

#: Instance statuses whose timers still matter.
ACTIVE_STATUSES = ("queued", "running", "waiting", "waiting_for_pause")


def new_message_id() -> str:
    return uuid.uuid4().hex


def _insert(session: AsyncSession, table: Any) -> Any:
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


async def lock_instance(session: AsyncSession, instance_id: str) -> InstanceRow | None:
    """The instance row, locked until the transaction ends (SQLite: the whole database is)."""
    result = await session.exec(
        select(InstanceRow).where(InstanceRow.id == instance_id).with_for_update()
    )
    return result.first()


async def get_instance(session: AsyncSession, instance_id: str) -> InstanceRow | None:
    return await session.get(InstanceRow, instance_id)


async def list_instances(
    session: AsyncSession, workflow: str | None, status: str | None, limit: int
) -> Sequence[InstanceRow]:
    query = select(InstanceRow)
    if workflow is not None:
        query = query.where(InstanceRow.workflow == workflow)
    if status is not None:
        query = query.where(InstanceRow.status == status)
    query = query.order_by(col(InstanceRow.created_at).desc(), col(InstanceRow.id)).limit(limit)
    return (await session.exec(query)).all()


async def load_steps(session: AsyncSession, instance_id: str) -> Sequence[StepRow]:
    """All recorded steps of an instance: one query per replay."""
    query = select(StepRow).where(StepRow.instance_id == instance_id).order_by(col(StepRow.seq))
    return (await session.exec(query)).all()


async def clear_wakeups(session: AsyncSession, instance_id: str) -> None:
    """A finished instance has no timers left: the sweeper must not wake it."""
    await session.exec(
        sa.update(StepRow).where(col(StepRow.instance_id) == instance_id).values(wake_at=None)
    )


async def erase_run(session: AsyncSession, instance_id: str) -> None:
    """Restart: forget every step and every event already taken; keep buffered events."""
    await session.exec(sa.delete(StepRow).where(col(StepRow.instance_id) == instance_id))
    await session.exec(
        sa.delete(EventRow).where(
            col(EventRow.instance_id) == instance_id, col(EventRow.consumed_by).is_not(None)
        )
    )


async def buffered_events(session: AsyncSession, instance_id: str) -> list[EventRow]:
    """Events not yet taken by a wait, oldest first."""
    query = (
        select(EventRow)
        .where(EventRow.instance_id == instance_id, col(EventRow.consumed_by).is_(None))
        .order_by(col(EventRow.id))
    )
    return list((await session.exec(query)).all())


def add_run_message(
    session: AsyncSession | DriverSession,
    instance: InstanceRow,
    now: datetime,
    wake_at: datetime | None = None,
) -> OutboxRow:
    """Record a run message for the instance in the outbox of the current transaction."""
    body = RunInstance(instance_id=instance.id, wake_at=wake_at).model_dump_json(exclude_none=True)
    row = new_row(
        OutboxRow,
        message_id=new_message_id(),
        workflow=instance.workflow,
        body=body,
        wake_at=wake_at,
        created_at=now,
    )
    session.add(row)
    return row


async def delete_outbox(session: AsyncSession, ids: Sequence[int]) -> None:
    await session.exec(sa.delete(OutboxRow).where(col(OutboxRow.id).in_(ids)))


async def stale_outbox(session: AsyncSession, older_than: datetime, limit: int) -> list[OutboxRow]:
    """Outbox rows their writer did not publish (it crashed, or the broker was down)."""
    query = (
        select(OutboxRow)
        .where(OutboxRow.created_at < older_than)
        .order_by(col(OutboxRow.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.exec(query)).all())


async def mark_processed(session: AsyncSession, message_id: str, now: datetime) -> bool:
    """Record an applied message id; False if it was applied before (a redelivered copy)."""
    statement = (
        _insert(session, ProcessedMessageRow)
        .values(message_id=message_id, processed_at=now)
        .on_conflict_do_nothing(index_elements=["message_id"])
    )
    result = await session.exec(statement)
    return bool(result.rowcount)


async def existing_instance_ids(session: AsyncSession, instance_ids: Sequence[str]) -> list[str]:
    """Those of `instance_ids` that some instance has, sorted."""
    query = select(InstanceRow.id).where(col(InstanceRow.id).in_(instance_ids))
    return sorted((await session.exec(query)).all())


async def is_registered(session: AsyncSession, workflow: str) -> bool:
    return await session.get(WorkflowRow, workflow) is not None


async def register_workflows(session: AsyncSession, names: Sequence[str], now: datetime) -> None:
    for name in names:
        statement = (
            _insert(session, WorkflowRow)
            .values(name=name, registered_at=now, last_seen_at=now)
            .on_conflict_do_update(index_elements=["name"], set_={"last_seen_at": now})
        )
        await session.exec(statement)


async def overdue_steps(
    session: AsyncSession,
    timer_cutoffs: Mapping[str, datetime],
    lease_cutoffs: Mapping[str, datetime],
    limit: int,
) -> list[tuple[StepRow, InstanceRow]]:
    """Steps whose timer is overdue, and not swept since: a sleep, back-off or event timeout
    due at or before its workflow's cutoff in `timer_cutoffs`, or a running attempt whose
    lease ran out by its workflow's cutoff in `lease_cutoffs` (a workflow without one is left
    alone).

    The instance row locks (SKIP LOCKED on PostgreSQL) keep two sweepers off the same timers;
    they are the instance's, taken first as every round takes them, so a sweep and a round
    never deadlock (and a sweep skips an instance a round holds).
    """

    def due_by(cutoff: datetime) -> sa.ColumnElement[bool]:
        return sa.and_(
            col(StepRow.wake_at) <= cutoff,
            sa.or_(col(StepRow.swept_at).is_(None), col(StepRow.swept_at) <= cutoff),
        )

    is_running = col(StepRow.status) == StepStatusName.RUNNING
    if not timer_cutoffs and not lease_cutoffs:
        return []
    latest = max([*lease_cutoffs.values(), *timer_cutoffs.values()])
    query = (
        select(StepRow, InstanceRow)
        .join(InstanceRow, col(InstanceRow.id) == col(StepRow.instance_id))
        .where(
            # Implied by the clauses below; stated so that PostgreSQL scans one range of the
            # wake_at index rather than one per workflow.
            col(StepRow.wake_at) <= latest,
            col(InstanceRow.status).in_(ACTIVE_STATUSES),
            sa.or_(
                *(
                    sa.and_(is_running, col(InstanceRow.workflow) == workflow, due_by(cutoff))
                    for workflow, cutoff in sorted(lease_cutoffs.items())
                ),
                *(
                    sa.and_(~is_running, col(InstanceRow.workflow) == workflow, due_by(cutoff))
                    for workflow, cutoff in sorted(timer_cutoffs.items())
                ),
            ),
        )
        .limit(limit)
        .with_for_update(skip_locked=True, of=InstanceRow)
    )
    return [(step, instance) for step, instance in (await session.exec(query)).all()]


async def overdue_runs(
    session: AsyncSession, cutoffs: Mapping[str, datetime], limit: int
) -> list[InstanceRow]:
    """Active instances owed a round since at or before their workflow's cutoff (the sweeper
    presumes their run message lost; see `Worker.sweep_lost_runs`). A workflow without a
    cutoff is left alone."""
    if not cutoffs:
        return []
    query = (
        select(InstanceRow)
        .where(
            col(InstanceRow.status).in_(ACTIVE_STATUSES),
            sa.or_(
                *(
                    sa.and_(
                        col(InstanceRow.workflow) == workflow,
                        col(InstanceRow.run_due_at) <= cutoff,
                    )
                    for workflow, cutoff in sorted(cutoffs.items())
                )
            ),
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.exec(query)).all())


async def delete_processed_before(session: AsyncSession, before: datetime) -> None:
    await session.exec(
        sa.delete(ProcessedMessageRow).where(col(ProcessedMessageRow.processed_at) < before)
    )


async def beat(session: AsyncSession, worker_id: str, now: datetime) -> None:
    """Record that the worker is alive (inserting it on its first beat)."""
    statement = (
        _insert(session, WorkerRow)
        .values(id=worker_id, started_at=now, heartbeat_at=now)
        .on_conflict_do_update(index_elements=["id"], set_={"heartbeat_at": now})
    )
    await session.exec(statement)


async def forget_workers_before(session: AsyncSession, before: datetime) -> None:
    """Delete the rows of workers that last beat before `before` (stopped or crashed long
    ago): their attempts are lost all the same, as they are no longer live."""
    await session.exec(sa.delete(WorkerRow).where(col(WorkerRow.heartbeat_at) < before))


async def release_attempts(
    session: AsyncSession,
    worker_id: str,
    attempts: Sequence[tuple[str, int, str, int]],
) -> list[InstanceRow]:
    """Release these running attempts of the worker, (instance id, generation, step key,
    attempt) each, which it will not report: with no worker, the next round of their instance
    takes them for lost at once. Returns the instances to wake. Those no longer running as
    given (recorded, taken for lost, restarted) are left."""
    if not attempts:
        return []
    locked = {
        instance.id: instance
        for instance in (
            await session.exec(
                select(InstanceRow)
                .where(col(InstanceRow.id).in_(sorted({a[0] for a in attempts})))
                .order_by(col(InstanceRow.id))
                .with_for_update()
            )
        ).all()
    }
    released: dict[str, InstanceRow] = {}
    for instance_id, generation, key, attempt in attempts:
        instance = locked.get(instance_id)
        if instance is None or instance.generation != generation:
            continue
        step = await session.get(StepRow, (instance_id, key))
        if (
            step is not None
            and step.status == StepStatusName.RUNNING
            and step.attempt == attempt
            and step.claimed_by == worker_id
        ):
            step.claimed_by = None
            released[instance_id] = instance
    return list(released.values())


async def orphaned_steps(
    session: AsyncSession, last_beats: Mapping[str, datetime], stale: datetime, limit: int
) -> list[tuple[StepRow, InstanceRow]]:
    """Running attempts whose worker has not beaten since `last_beats[workflow]` (it crashed
    or stopped), of those workflows, and that were not swept since `stale`."""
    if not last_beats:
        return []
    query = (
        select(StepRow, InstanceRow)
        .join(InstanceRow, col(InstanceRow.id) == col(StepRow.instance_id))
        .where(
            col(StepRow.status) == "running",
            sa.or_(
                *(
                    sa.and_(
                        col(InstanceRow.workflow) == workflow,
                        col(StepRow.claimed_by).not_in(
                            select(WorkerRow.id).where(col(WorkerRow.heartbeat_at) >= beat)
                        ),
                    )
                    for workflow, beat in sorted(last_beats.items())
                )
            ),
            sa.or_(col(StepRow.swept_at).is_(None), col(StepRow.swept_at) <= stale),
            col(InstanceRow.status).in_(ACTIVE_STATUSES),
        )
        .limit(limit)
        .with_for_update(skip_locked=True, of=InstanceRow)
    )
    return [(step, instance) for step, instance in (await session.exec(query)).all()]


#: The columns of an instance a listing shows: never params, output or error, which may be
#: large (a page of 1,000 instances must stay small).
InstanceSummaryRow = tuple[str, str, str, datetime, float]


async def page_instances(
    session: AsyncSession,
    workflows: Sequence[str] | None,
    status: str | None,
    limit: int,
    before: tuple[datetime, str] | None,
) -> list[InstanceSummaryRow]:
    """One page of instances, newest first: (id, workflow, status, created_at, compute_ms).

    Keyset pagination: `before` is the (created_at, id) of the previous page's last row, so a
    page costs the same however deep it is, and instances created meanwhile shift nothing.
    """
    # Five columns: more than sqlmodel's typed select() takes.
    query: Any = sa.select(
        col(InstanceRow.id),
        col(InstanceRow.workflow),
        col(InstanceRow.status),
        col(InstanceRow.created_at),
        col(InstanceRow.compute_ms),
    )
    if workflows is not None:
        if len(workflows) == 1:
            query = query.where(InstanceRow.workflow == workflows[0])
        else:
            query = query.where(col(InstanceRow.workflow).in_(workflows))
    if status is not None:
        query = query.where(InstanceRow.status == status)
    if before is not None:
        created_at, instance_id = before
        query = query.where(
            sa.tuple_(col(InstanceRow.created_at), col(InstanceRow.id))
            < sa.tuple_(sa.literal(created_at, UTCDateTime()), sa.literal(instance_id, sa.String()))
        )
    query = query.order_by(col(InstanceRow.created_at).desc(), col(InstanceRow.id).desc())
    rows = (await session.exec(query.limit(limit))).all()
    return [(row[0], row[1], row[2], row[3], float(row[4])) for row in rows]


async def latest_steps(
    session: AsyncSession, instance_ids: Sequence[str]
) -> dict[str, tuple[str, str]]:
    """The (key, status) of each instance's most recent step, for those that have one."""
    if not instance_ids:
        return {}
    newest = (
        select(StepRow.instance_id, sa.func.max(StepRow.seq).label("seq"))
        .where(col(StepRow.instance_id).in_(instance_ids))
        .group_by(col(StepRow.instance_id))
        .subquery()
    )
    query = select(StepRow.instance_id, StepRow.key, StepRow.status).join(
        newest,
        sa.and_(col(StepRow.instance_id) == newest.c.instance_id, col(StepRow.seq) == newest.c.seq),
    )
    return {instance_id: (key, status) for instance_id, key, status in await session.exec(query)}


async def count_instances(session: AsyncSession) -> list[tuple[str, str, int]]:
    """(workflow, status, number of instances) for every pair that has instances."""
    query = select(InstanceRow.workflow, InstanceRow.status, sa.func.count()).group_by(
        col(InstanceRow.workflow), col(InstanceRow.status)
    )
    return [(workflow, status, count) for workflow, status, count in await session.exec(query)]


async def registered_workflows(session: AsyncSession) -> list[str]:
    """The names of every workflow a worker has registered."""
    query = select(WorkflowRow.name).order_by(col(WorkflowRow.name))
    return list((await session.exec(query)).all())


async def count_outbox(session: AsyncSession) -> int:
    """Outbox rows not yet deleted: committed messages awaiting publication (or deletion)."""
    return (await session.exec(select(sa.func.count()).select_from(OutboxRow))).one()


#: (workflow, instances, compute_ms, cpu_ms, wall_ms): one workflow's totals.
UsageRow = tuple[str, int, float, float, float]


async def usage_by_workflow(
    session: AsyncSession, workflow: str | None, since: datetime | None, now: datetime
) -> list[UsageRow]:
    """Compute and wall time totals per workflow, of the instances created since `since`.

    An instance's wall time runs from its creation to its terminal status, or to `now`.
    """
    created = col(InstanceRow.created_at)
    end = sa.case(
        (
            col(InstanceRow.status).in_(("complete", "errored", "terminated")),
            InstanceRow.updated_at,
        ),
        else_=sa.literal(now, UTCDateTime()),
    )
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    if dialect == "postgresql":
        wall_ms: Any = sa.func.extract("epoch", end - created) * 1000
    else:
        wall_ms = (sa.func.julianday(end) - sa.func.julianday(created)) * 86_400_000
    # Five columns: more than sqlmodel's typed select() takes.
    query: Any = sa.select(
        col(InstanceRow.workflow),
        sa.func.count(),
        sa.func.sum(InstanceRow.compute_ms),
        sa.func.sum(InstanceRow.cpu_ms),
        sa.func.sum(wall_ms),
    ).group_by(col(InstanceRow.workflow))
    if workflow is not None:
        query = query.where(col(InstanceRow.workflow) == workflow)
    if since is not None:
        query = query.where(created >= sa.literal(since, UTCDateTime()))
    rows = await session.exec(query.order_by(col(InstanceRow.workflow)))
    return [
        (name, count, float(compute or 0), float(cpu or 0), float(wall or 0))
        for name, count, compute, cpu, wall in rows
    ]
