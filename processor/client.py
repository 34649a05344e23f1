"""The Python client: create, inspect and steer instances."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

from pydantic import BaseModel

from processor.durations import Duration, parse_duration
from processor.engine import commands
from processor.engine.results import to_json_data
from processor.errors import InstanceFailedError, InstanceNotFoundError
from processor.runtime import Runtime
from processor.store import queries
from processor.store.tables import InstanceRow, StepRow
from processor.workflow import Workflow, workflow_name
from schemas import (
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

    async def __aenter__(self) -> Self:
        await self.runtime.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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
            As `create`; an InstanceExistsError creates none of them.
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
        async with self.runtime.transaction() as tx:
            rows = await commands.create_instances(tx, name, prepared)
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
        async with self.runtime.database.read() as session:
            rows = await queries.list_instances(session, workflow, status, limit)
        return [_status(row, []) for row in rows]

    async def status(self, instance_id: str) -> InstanceStatus:
        async with self.runtime.database.read() as session:
            row = await queries.get_instance(session, instance_id)
            if row is None:
                raise InstanceNotFoundError(instance_id)
            steps = await queries.load_steps(session, instance_id)
        return _status(row, steps)

    async def send_event(self, instance_id: str, event_type: str, payload: Any = None) -> None:
        if not isinstance(event_type, str) or not 1 <= len(event_type) <= 100:
            raise ValueError(
                f"event type must be a string of 1 to 100 characters, got {event_type!r}"
            )
        try:
            data = to_json_data(payload)
        except ValueError as error:
            raise ValueError(f"the payload of event {event_type!r} {error}") from None
        async with self.runtime.transaction() as tx:
            await commands.send_event(tx, instance_id, event_type, data)

    async def control(self, instance_id: str, action: ControlAction) -> None:
        async with self.runtime.transaction() as tx:
            await commands.control(tx, instance_id, action)

    async def _row(self, instance_id: str) -> InstanceRow:
        async with self.runtime.database.read() as session:
            row = await queries.get_instance(session, instance_id)
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
        delay = 0.01
        while True:
            row = await self._client._row(self.id)
            if row.status == InstanceStatusName.COMPLETE:
                return row.output
            if row.status in (InstanceStatusName.ERRORED, InstanceStatusName.TERMINATED):
                error = ErrorInfo.model_validate(row.error) if row.error else None
                raise InstanceFailedError(self.id, row.status, error)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"instance {self.id!r} is still {row.status}")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)


def _status(row: InstanceRow, steps: Sequence[StepRow]) -> InstanceStatus:
    return InstanceStatus(
        id=row.id,
        workflow=row.workflow,
        status=InstanceStatusName(row.status),
        params=row.params,
        output=row.output,
        error=ErrorInfo.model_validate(row.error) if row.error else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
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
