"""The Python client: create, inspect and steer instances."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Sequence
from contextlib import suppress
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict
from sqlalchemy.exc import IntegrityError

from processor.durations import Duration, parse_duration
from processor.engine import commands
from processor.engine.results import is_utf8, to_json_data
from processor.errors import InstanceExistsError, InstanceFailedError, InstanceNotFoundError
from processor.runtime import Runtime
from processor.step import ReceivedEvent
from processor.store import driver, queries
from processor.store.notifications import EndedInstances
from processor.store.tables import InstanceRow, StepRow
from processor.workflow import Workflow, workflow_name
from schemas import (
    EVENT_TYPE_PATTERN,
    ControlAction,
    ErrorInfo,
    InstanceStatus,
    InstanceStatusName,
    StepKind,
    StepRecord,
    StepStatusName,
)

MAX_BATCH = 100
MAX_LIST = 1000
#: How often `result()` reads the row when told of ended instances or of commits (see
#: notifications.py), in case a notification was lost with its connection.
RESULT_FALLBACK_POLL_S = 1.0
#: Longest idempotency key `send_event_once` takes.
MAX_IDEMPOTENCY_KEY = 200
_EVENT_TYPE = re.compile(EVENT_TYPE_PATTERN)


class InstanceSummary(BaseModel):
    """One instance in a listing: no params, output, error or steps, which may be large."""

    model_config = ConfigDict(frozen=True)

    id: str
    workflow: str
    status: InstanceStatusName
    created_at: AwareDatetime
    #: The instance's most recent step (its memo key) and that step's status; None before
    #: its first step.
    current_step: str | None = None
    current_step_status: StepStatusName | None = None
    #: Worker wall time of its step bodies and replays so far (see `InstanceStatus.compute_ms`).
    compute_ms: float


class WorkflowUsage(BaseModel):
    """One workflow's totals in `Client.usage`."""

    model_config = ConfigDict(frozen=True)

    workflow: str
    instances: int
    #: Worker wall time of step bodies and replays (see `InstanceStatus.compute_ms`).
    compute_ms: float
    #: Thread CPU time of plain-function step bodies.
    cpu_ms: float
    #: Creation to terminal status (or now), summed over the instances.
    wall_ms: float


class InstancePage(BaseModel):
    """One page of `Client.list_page`, newest instance first."""

    model_config = ConfigDict(frozen=True)

    instances: list[InstanceSummary]
    #: Pass it as `cursor` for the next page; None on the last page.
    next_cursor: str | None = None


class Client:
    """Create and steer instances. Use it as an async context manager.

    Args:
        broker_url: default `WARREN_BROKER_URL`.
        database_url: default `WARREN_DATABASE_URL`.
        namespace: prefix of queues and exchanges (default `WARREN_NAMESPACE` or "warren").
    """

    def __init__(
        self,
        broker_url: str | None = None,
        database_url: str | None = None,
        *,
        namespace: str | None = None,
        database_schema: str | None = None,
    ) -> None:
        self.runtime = Runtime(
            broker_url=broker_url,
            database_url=database_url,
            namespace=namespace,
            database_schema=database_schema,
        )
        #: Workflows seen registered: a create of one skips the check (registrations stay).
        self._registered: set[str] = set()
        self._ended = EndedInstances(self.runtime.database)

    async def __aenter__(self) -> Self:
        await self.runtime.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._ended.close()
        finally:
            await self.runtime.close()

    async def create(
        self,
        workflow: type[Workflow[Any]] | str,
        params: BaseModel | dict[str, Any] | None = None,
        id: str | None = None,
    ) -> Instance:
        """Create an instance. When this returns, the instance exists for every other call.

        Works while no worker runs: the instance waits `queued` for one.

        Raises:
            ValueError: a malformed id or workflow name (nothing is sent).
            pydantic.ValidationError: params that the workflow's params model rejects.
            WorkflowNotFoundError: no worker has ever registered the workflow.
            InstanceExistsError: the id is taken.
        """
        (instance,) = await self.create_batch(workflow, [{"id": id, "params": params}])
        return instance

    async def create_batch(
        self, workflow: type[Workflow[Any]] | str, items: Sequence[dict[str, Any]]
    ) -> list[Instance]:
        """Create up to 100 instances at once, all or none.

        Args:
            items: dicts with optional keys "id" and "params".

        Raises:
            As `create`; an InstanceExistsError names the ids taken and creates none.
        """
        name = workflow_name(workflow)
        if not 1 <= len(items) <= MAX_BATCH:
            raise ValueError(f"create_batch takes 1 to {MAX_BATCH} items, got {len(items)}")
        model = workflow if isinstance(workflow, type) else Workflow
        prepared: list[tuple[str | None, dict[str, Any] | None]] = []
        for item in items:
            unknown = set(item) - {"id", "params"}
            if unknown:
                raise ValueError(f"unknown keys in a create_batch item: {sorted(unknown)}")
            instance_id = item.get("id")
            if instance_id is not None:
                commands.check_instance_id(instance_id)
            prepared.append((instance_id, model.dump_params(item.get("params"))))
        ids = [i for i, _ in prepared if i is not None]
        if len(ids) != len(set(ids)):
            raise ValueError("create_batch got the same id twice")
        if name not in self._registered:
            async with self.runtime.database.read() as session:
                await commands.check_registered(session, name)
            self._registered.add(name)
        try:
            # On the driver, as rounds are: a create costs the ORM's CPU several times over.
            async with self.runtime.step_transaction() as tx:
                rows = await commands.create_instances(tx, name, prepared)
        except IntegrityError:  # an id is taken: which ones, for the error
            taken = await commands.taken_ids(self.runtime.database, ids)
            if not taken:
                raise
            raise InstanceExistsError(", ".join(taken)) from None
        return [Instance(self, row.id) for row in rows]

    async def get(self, instance_id: str) -> Instance:
        """Raises InstanceNotFoundError if there is no such instance."""
        commands.check_instance_id(instance_id)
        await self._row(instance_id)
        return Instance(self, instance_id)

    async def list(
        self, workflow: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[InstanceStatus]:
        """The newest instances, optionally of one workflow or status (without their steps)."""
        if not 1 <= limit <= MAX_LIST:
            raise ValueError(f"limit must be between 1 and {MAX_LIST}, got {limit}")
        if status is not None:
            status = InstanceStatusName(status).value
        if workflow is not None:
            workflow_name(workflow)  # raises ValueError for a malformed name
        async with self.runtime.database.read() as session:
            rows = await queries.list_instances(session, workflow, status, limit)
        now = self.runtime.clock.now()
        return [_status(row, [], now) for row in rows]

    async def status(self, instance_id: str) -> InstanceStatus:
        commands.check_instance_id(instance_id)
        async with self.runtime.database.read() as session:
            row = await queries.get_instance(session, instance_id)
            if row is None:
                raise InstanceNotFoundError(instance_id)
            steps = await queries.load_steps(session, instance_id)
        return _status(row, steps, self.runtime.clock.now())

    async def usage(
        self, workflow: str | None = None, since: datetime | None = None
    ) -> Sequence[WorkflowUsage]:
        """Compute and wall time per workflow, totalled over its instances.

        Args:
            workflow: only this workflow.
            since: only instances created at or after this moment (aware).

        Raises:
            ValueError: a naive `since`.
        """
        if since is not None and since.tzinfo is None:
            raise ValueError("since must be an aware datetime")
        async with self.runtime.database.read() as session:
            rows = await queries.usage_by_workflow(
                session, workflow, since, self.runtime.clock.now()
            )
        return [
            WorkflowUsage(
                workflow=name, instances=count, compute_ms=compute, cpu_ms=cpu, wall_ms=wall
            )
            for name, count, compute, cpu, wall in rows
        ]

    async def send_event(self, instance_id: str, event_type: str, payload: Any = None) -> None:
        commands.check_instance_id(instance_id)
        data = _event_payload(event_type, payload)
        async with self.runtime.transaction() as tx:
            await commands.send_event(tx, instance_id, event_type, data)

    async def control(self, instance_id: str, action: ControlAction | str) -> None:
        """Raises ValueError for an action that is not a ControlAction (or its value)."""
        commands.check_instance_id(instance_id)
        action = ControlAction(action)
        async with self.runtime.transaction() as tx:
            await commands.control(tx, instance_id, action)

    async def list_page(
        self,
        workflow: str | Sequence[str] | None = None,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> InstancePage:
        """A page of instances, newest first, each with its current step.

        Pages are keyed on the last instance of the previous one, so each costs the same however
        deep it is, and instances created while paging neither repeat nor shift a page.

        Args:
            workflow: a workflow name, or several: instances of any of them.
            status: only instances with this status.
            limit: instances per page, 1 to 1000.
            cursor: the previous page's `next_cursor`; None for the first page.

        Raises:
            ValueError: a limit out of range, an unknown status or a malformed cursor.
        """
        if not 1 <= limit <= MAX_LIST:
            raise ValueError(f"limit must be between 1 and {MAX_LIST}, got {limit}")
        if status is not None:
            status = InstanceStatusName(status).value
        workflows = [workflow] if isinstance(workflow, str) else workflow
        for name in workflows or []:
            workflow_name(name)  # raises ValueError for a malformed name
        before = _decode_cursor(cursor) if cursor is not None else None
        async with self.runtime.database.read() as session:
            # One row more than asked says whether a next page exists.
            rows = await queries.page_instances(session, workflows, status, limit + 1, before)
            page = rows[:limit]
            current = await queries.latest_steps(session, [row[0] for row in page])
        instances = []
        for instance_id, workflow_of, status_name, created_at, compute_ms in page:
            step_key, step_status = current.get(instance_id, (None, None))
            instances.append(
                InstanceSummary(
                    id=instance_id,
                    workflow=workflow_of,
                    status=InstanceStatusName(status_name),
                    created_at=created_at,
                    current_step=step_key,
                    current_step_status=StepStatusName(step_status) if step_status else None,
                    compute_ms=compute_ms,
                )
            )
        has_more = len(rows) > limit
        return InstancePage(
            instances=instances,
            next_cursor=_encode_cursor(page[-1][3], page[-1][0]) if has_more else None,
        )

    async def events(self, instance_id: str) -> Sequence[ReceivedEvent]:
        """Events sent to the instance that no `wait_for_event` has taken yet, oldest first.

        Raises:
            InstanceNotFoundError: no such instance.
        """
        commands.check_instance_id(instance_id)
        async with self.runtime.database.read() as session:
            if await queries.get_instance(session, instance_id) is None:
                raise InstanceNotFoundError(instance_id)
            rows = await queries.buffered_events(session, instance_id)
        return [ReceivedEvent(row.type, row.payload, row.received_at) for row in rows]

    async def send_event_once(
        self, instance_id: str, event_type: str, payload: Any, idempotency_key: str
    ) -> bool:
        """Deliver an event unless one with the same idempotency key was delivered to this
        instance and event type before; a retried webhook delivers its event once.

        Keys are kept as long as ingress message ids (7 days), in the same table.

        Returns:
            True if the event was delivered now, False if the key was used before.

        Raises:
            InstanceNotFoundError: no such instance (the key is not recorded).
            ValueError: a bad event type, payload or key.
        """
        if not isinstance(idempotency_key, str) or not (
            1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
        ):
            raise ValueError(f"an idempotency key has 1 to {MAX_IDEMPOTENCY_KEY} characters")
        commands.check_instance_id(instance_id)
        data = _event_payload(event_type, payload)
        # Hashed: any key fits the message id column, and one sender's key cannot collide
        # with another instance's or event type's.
        scoped = "\n".join((instance_id, event_type, idempotency_key))
        message_id = "event-key:" + hashlib.sha256(scoped.encode()).hexdigest()
        async with self.runtime.transaction() as tx:
            if not await queries.mark_processed(tx.session, message_id, tx.now):
                return False
            await commands.send_event(tx, instance_id, event_type, data)
        return True

    async def workflow_counts(self) -> dict[str, dict[InstanceStatusName, int]]:
        """Instances per status of every registered workflow (and of any other workflow that
        has instances); statuses with no instances are left out."""
        async with self.runtime.database.read() as session:
            names = await queries.registered_workflows(session)
            counts = await queries.count_instances(session)
        result: dict[str, dict[InstanceStatusName, int]] = {name: {} for name in names}
        for workflow, status, count in counts:
            result.setdefault(workflow, {})[InstanceStatusName(status)] = count
        return result

    async def _row(self, instance_id: str) -> InstanceRow:
        async with self.runtime.database.driver_reads() as session:
            row = await driver.get_instance(session, instance_id)
        if row is None:
            raise InstanceNotFoundError(instance_id)
        return row


class Instance:
    """A handle on one instance; every method reads or changes its persisted state."""

    def __init__(self, client: Client, instance_id: str) -> None:
        self._client = client
        self.id = instance_id

    def __repr__(self) -> str:
        return f"Instance({self.id!r})"

    async def status(self) -> InstanceStatus:
        return await self._client.status(self.id)

    async def pause(self) -> None:
        """Pause at the next step boundary (at once if sleeping or waiting)."""
        await self._client.control(self.id, ControlAction.PAUSE)

    async def resume(self) -> None:
        await self._client.control(self.id, ControlAction.RESUME)

    async def terminate(self) -> None:
        """Stop for good: no step starts again and no result of a running one is recorded."""
        await self._client.control(self.id, ControlAction.TERMINATE)

    async def restart(self) -> None:
        """Erase recorded steps and run again from the start, same id and params."""
        await self._client.control(self.id, ControlAction.RESTART)

    async def send_event(self, type: str, payload: Any = None) -> None:
        """Deliver an event; buffered until a `wait_for_event` of this type takes it."""
        await self._client.send_event(self.id, type, payload)

    async def result(self, timeout: Duration | None = None) -> Any:
        """Wait for a terminal status and return the output.

        Raises:
            InstanceFailedError: the instance errored or was terminated.
            TimeoutError: no terminal status within `timeout`.
        """
        deadline = (
            None
            if timeout is None
            else (time.monotonic() + parse_duration(timeout, what="timeout").total_seconds())
        )
        ended_instances = self._client._ended
        async with ended_instances.watch(self.id) as hint:
            # Told of this instance (PostgreSQL's NOTIFY): the row is read again each time it
            # may have ended, and every RESULT_FALLBACK_POLL_S in case a notification was lost.
            # Else reads are spaced by a gap that starts at 1 ms and grows by a tenth up to
            # 0.5 s, so that a long wait costs two reads a second; told of any commit (SQLite:
            # a local file), a read also waits for one, or for RESULT_FALLBACK_POLL_S.
            gap = 0.001
            told = True  # the first read needs no notification
            while True:
                row = await self._client._row(self.id)
                is_terminal = InstanceStatusName(row.status).is_terminal
                if is_terminal and not told:
                    ended_ago = self._client.runtime.clock.now() - row.updated_at
                    await ended_instances.untold(self.id, ended_ago)
                if row.status == InstanceStatusName.COMPLETE:
                    return row.output
                if is_terminal:
                    error = ErrorInfo.model_validate(row.error) if row.error else None
                    raise InstanceFailedError(self.id, row.status, error)
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"instance {self.id!r} is still {row.status}")
                # The deadline is checked after a read only: a wait that runs out reads once more.
                if hint is None or not hint.exact:
                    await asyncio.sleep(_until(deadline, gap))
                    gap = min(gap * 1.1, 0.5)
                    if hint is None:
                        continue
                with suppress(TimeoutError):
                    async with asyncio.timeout(_until(deadline, RESULT_FALLBACK_POLL_S)):
                        await hint.event.wait()
                told = hint.event.is_set() or not hint.exact
                hint.event.clear()


def _until(deadline: float | None, wait: float) -> float:
    """`wait`, or less if `deadline` (time.monotonic()) comes first."""
    return wait if deadline is None else max(0.0, min(wait, deadline - time.monotonic()))


def _status(row: InstanceRow, steps: Sequence[StepRow], now: datetime) -> InstanceStatus:
    end = row.updated_at if InstanceStatusName(row.status).is_terminal else now
    return InstanceStatus(
        id=row.id,
        workflow=row.workflow,
        status=InstanceStatusName(row.status),
        params=row.params,
        output=row.output,
        error=ErrorInfo.model_validate(row.error) if row.error else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        compute_ms=row.compute_ms,
        cpu_ms=row.cpu_ms,
        wall_ms=max((end - row.created_at).total_seconds() * 1000, 0.0),
        steps=[
            StepRecord(
                name=step.key,
                kind=StepKind(step.kind),
                status=StepStatusName(step.status),
                attempts=step.attempt,
                started_at=step.started_at,
                ended_at=step.ended_at,
                wake_at=step.wake_at,
                event_type=step.event_type,
                output=step.output,
                error=ErrorInfo.model_validate(step.error) if step.error else None,
            )
            for step in steps
        ],
    )


def _event_payload(event_type: str, payload: Any) -> Any:
    """Check an event's type and turn its payload into JSON data."""
    if (
        not isinstance(event_type, str)
        or not _EVENT_TYPE.fullmatch(event_type)
        or not is_utf8(event_type)
    ):
        raise ValueError(
            "event type must be 1 to 100 characters of UTF-8 and no control characters, "
            f"got {event_type!r:.60}"
        )
    try:
        return to_json_data(payload)
    except ValueError as error:
        raise ValueError(f"the payload of event {event_type!r} {error}") from None


def _encode_cursor(created_at: datetime, instance_id: str) -> str:
    data = json.dumps([created_at.isoformat(), instance_id]).encode()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        created_at, instance_id = data
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None:
            raise ValueError
        moment.astimezone(UTC)  # in range there too: the database compares it as UTC
        commands.check_instance_id(instance_id)
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error):
        raise ValueError(f"malformed cursor {cursor!r}") from None
    return moment, instance_id
