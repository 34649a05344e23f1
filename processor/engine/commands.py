"""Create, send events to and control instances: the same code for the Python client and for
messages other services publish on `warren.ingress`. Each runs inside a `Runtime.transaction`
(the client's creates inside a `Runtime.step_transaction`, on the driver)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry.trace import Span
from sqlmodel.ext.asyncio.session import AsyncSession

from processor.errors import (
    InstanceNotFoundError,
    InstanceStateError,
    WorkflowNotFoundError,
)
from processor.runtime import Tx
from processor.store import queries
from processor.store.database import Database
from processor.store.driver import DriverSession
from processor.store.tables import EventRow, InstanceRow, new_row
from processor.telemetry.tracing import (
    current_traceparent,
    instance_parent,
    instance_span,
    trace_headers,
)
from schemas import ID_PATTERN, TERMINAL_STATUSES, ControlAction, InstanceStatusName

_ID = re.compile(ID_PATTERN)


def check_instance_id(instance_id: Any) -> str:
    if not isinstance(instance_id, str) or not _ID.fullmatch(instance_id):
        raise ValueError(f"instance id {instance_id!r} must match {ID_PATTERN}")
    return instance_id


async def check_registered(session: AsyncSession, workflow: str) -> None:
    """Raises WorkflowNotFoundError unless a worker ever registered `workflow` (a
    registration is never taken back, so a caller may remember a workflow it has seen)."""
    if not await queries.is_registered(session, workflow):
        raise WorkflowNotFoundError(workflow)


async def taken_ids(database: Database, instance_ids: Sequence[str]) -> list[str]:
    """Those of `instance_ids` that some instance has, sorted: which of the ids a create gave
    made its transaction fail with IntegrityError (none: it failed for another reason)."""
    if not instance_ids:
        return []
    async with database.read() as session:
        return await queries.existing_instance_ids(session, instance_ids)


async def create_instances(
    tx: Tx[AsyncSession] | Tx[DriverSession],
    workflow: str,
    items: list[tuple[str | None, dict[str, Any] | None]],
    headers: Mapping[str, object] | None = None,
) -> list[InstanceRow]:
    """Insert queued instances of `workflow` (registered: `check_registered`) and their
    first run messages.

    Each instance starts a trace of its own, whose root span (`create {workflow}`) is a child
    of the span in `headers` (a message another service published), or else of the current
    span; its `traceparent` is stored with the instance for every later span to join.

    The rows are written with the transaction's other writes (at its commit, at the latest):
    an id that is taken fails the transaction there with IntegrityError, and the caller, who
    knows which ids it gave, says which (`InstanceExistsError`).
    """
    rows = []
    for instance_id, params in items:
        row = new_row(
            InstanceRow,
            id=instance_id or uuid.uuid4().hex,
            workflow=workflow,
            status=InstanceStatusName.QUEUED.value,
            params=params,
            created_at=tx.now,
            updated_at=tx.now,
        )
        with instance_span(
            f"create {workflow}",
            instance_id=row.id,
            workflow=workflow,
            parent=instance_parent(None, headers),
        ):
            row.traceparent = current_traceparent()
        tx.session.add(row)
        tx.emit_run(row)
        rows.append(row)
    return rows


async def send_event(
    tx: Tx[AsyncSession],
    instance_id: str,
    event_type: str,
    payload: Any,
    headers: Mapping[str, object] | None = None,
) -> None:
    """Buffer an event for the instance and wake it.

    Traced as `event {type}` in the instance's trace, linked to the sender's span (from
    `headers`, or the current span).

    Raises:
        InstanceNotFoundError: no such instance.
        InstanceStateError: the instance is finished: nothing would ever take the event.
    """
    instance = await queries.lock_instance(tx.session, instance_id)
    if instance is None:
        raise InstanceNotFoundError(instance_id)
    if instance.status in TERMINAL_STATUSES:
        raise InstanceStateError(instance_id, f"send event {event_type!r} to", instance.status)
    with _instance_span(f"event {event_type}", instance, headers):
        tx.session.add(
            EventRow(instance_id=instance_id, type=event_type, payload=payload, received_at=tx.now)
        )
        # A paused instance keeps the event for after resume.
        if instance.status != InstanceStatusName.PAUSED:
            tx.emit_run(instance)


async def control(
    tx: Tx[AsyncSession],
    instance_id: str,
    action: ControlAction,
    headers: Mapping[str, object] | None = None,
) -> InstanceRow:
    """Pause, resume, terminate or restart an instance.

    Traced as `{action} instance` in the instance's trace, linked to the sender's span (from
    `headers`, or the current span).

    Raises:
        InstanceNotFoundError: no such instance.
        InstanceStateError: the action does not apply to the instance's status.
    """
    instance = await queries.lock_instance(tx.session, instance_id)
    if instance is None:
        raise InstanceNotFoundError(instance_id)
    with _instance_span(f"{action.value} instance", instance, headers):
        return await _control(tx, instance, action)


async def _control(
    tx: Tx[AsyncSession], instance: InstanceRow, action: ControlAction
) -> InstanceRow:
    instance_id = instance.id
    status = InstanceStatusName(instance.status)

    def refuse() -> InstanceStateError:
        return InstanceStateError(instance_id, action.value, status.value)

    if action is ControlAction.PAUSE:
        if status.is_terminal:
            raise refuse()
        if status == InstanceStatusName.RUNNING:
            # Takes effect at the next step boundary: the running attempt finishes first.
            instance.pause_requested = True
            instance.status = InstanceStatusName.WAITING_FOR_PAUSE.value
        elif status in (InstanceStatusName.QUEUED, InstanceStatusName.WAITING):
            instance.status = InstanceStatusName.PAUSED.value
    elif action is ControlAction.RESUME:
        if status.is_terminal:
            raise refuse()
        instance.pause_requested = False
        if status == InstanceStatusName.WAITING_FOR_PAUSE:
            instance.status = InstanceStatusName.RUNNING.value
        elif status == InstanceStatusName.PAUSED:
            # Timers and events that came while paused are acted on by this replay.
            instance.status = InstanceStatusName.RUNNING.value
            tx.emit_run(instance)
    elif action is ControlAction.TERMINATE:
        if status.is_terminal:
            if status == InstanceStatusName.TERMINATED:
                return instance
            raise refuse()
        instance.status = InstanceStatusName.TERMINATED.value
        instance.pause_requested = False
        await queries.clear_wakeups(tx.session, instance_id)
    elif action is ControlAction.RESTART:
        if status == InstanceStatusName.TERMINATED:
            raise refuse()  # terminate is final
        await queries.erase_run(tx.session, instance_id)
        instance.generation += 1
        instance.status = InstanceStatusName.QUEUED.value
        instance.pause_requested = False
        instance.output = None
        instance.error = None
        tx.emit_run(instance)
    instance.updated_at = tx.now
    return instance


def _instance_span(
    name: str, instance: InstanceRow, headers: Mapping[str, object] | None
) -> AbstractContextManager[Span]:
    """A span in the instance's trace, linked to the span of whoever asked for the change."""
    return instance_span(
        name,
        instance_id=instance.id,
        workflow=instance.workflow,
        parent=instance_parent(instance.traceparent, headers or trace_headers()),
    )
