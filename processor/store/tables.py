"""sqlmodel tables. Created and changed only through the migrations in store/migrations."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from pydantic_core import PydanticUndefined
from sqlmodel import Field, SQLModel

M = TypeVar("M", bound=SQLModel)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _time(*, nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


def _json() -> Any:
    return Field(default=None, sa_type=sa.JSON(none_as_null=True), nullable=True)


metadata = SQLModel.metadata


def new_row(model: type[M], **values: Any) -> M:
    """A row built as the ORM builds a loaded one, without `__init__`: that sets each field
    through pydantic and the ORM's instrumentation, about 30 us a row, and the per-step path
    builds two new rows a step and loads about ten (the benchmark's ten-step workflow). Fields
    not given take their defaults; nothing is validated (the table's constraints still hold).
    The ORM inserts such a row as any other."""
    row: M = _blank(model)()
    row.__dict__.update(_defaults(model))
    row.__dict__.update(values)
    return row


@functools.cache
def _blank(model: type[SQLModel]) -> Any:
    """The ORM's constructor of an instance with its state and nothing else. The mappers are
    configured first: setting an attribute of a row needs them, as `__init__` would ensure."""
    sa.orm.configure_mappers()
    return sa.inspect(model).class_manager.new_instance


@functools.cache
def _defaults(model: type[SQLModel]) -> dict[str, Any]:
    fields = model.model_fields.values()
    assert all(field.default_factory is None for field in fields), "no factories: new_row"
    return {
        name: field.default
        for name, field in model.model_fields.items()
        if field.default is not PydanticUndefined
    }


class WorkflowRow(SQLModel, table=True):
    """A workflow some worker has registered: creates for other names are refused."""

    __tablename__ = "warren_workflows"

    name: str = Field(primary_key=True, max_length=100)
    registered_at: datetime = _time(nullable=False)
    last_seen_at: datetime = _time(nullable=False)


class WorkerRow(SQLModel, table=True):
    """A running worker process and its heartbeat: a running attempt whose worker's heartbeat
    is stale (or gone) is presumed lost and retried."""

    __tablename__ = "warren_workers"

    id: str = Field(primary_key=True, max_length=64)
    started_at: datetime = _time(nullable=False)
    heartbeat_at: datetime = _time(nullable=False)


class InstanceRow(SQLModel, table=True):
    __tablename__ = "warren_instances"
    __table_args__ = (
        sa.Index("ix_warren_instances_workflow_status", "workflow", "status"),
        # Keyset pagination of the newest instances (the HTTP API and dashboard), unfiltered
        # and by one status or workflow: each page is an index range scan, never a sort.
        sa.Index("ix_warren_instances_created_at_id", "created_at", "id"),
        sa.Index("ix_warren_instances_status_created_at_id", "status", "created_at", "id"),
        sa.Index("ix_warren_instances_workflow_created_at_id", "workflow", "created_at", "id"),
    )

    id: str = Field(primary_key=True, max_length=100)
    workflow: str = Field(max_length=100)
    status: str = Field(max_length=20, index=True)
    #: Bumped by restart: results of attempts from an older generation are fenced off.
    generation: int = 0
    pause_requested: bool = False
    params: Any = _json()
    output: Any = _json()
    error: Any = _json()
    created_at: datetime = _time(nullable=False, index=True)
    updated_at: datetime = _time(nullable=False)
    #: Set when a run message for the instance is published for now, cleared by the round that
    #: takes it: a run owed long past this was lost (say, dead-lettered), and the sweeper
    #: publishes another.
    run_due_at: datetime | None = _time(index=True)
    #: W3C traceparent of the instance's root span (its creation): every later span about
    #: the instance joins this trace, however long it sleeps and whichever worker runs it.
    traceparent: str | None = Field(default=None, max_length=64)
    #: Worker wall time spent on the instance: its step bodies and its replays of run().
    compute_ms: float = 0.0
    #: Thread CPU time of its plain-function step bodies (see `AttemptOutcome.cpu_s`).
    cpu_ms: float = 0.0


class StepRow(SQLModel, table=True):
    """One step of one instance: a `do`, a sleep or an event wait.

    `wake_at` is the step's timer: when a sleep is due, a retry may start, an event wait times
    out, or a running attempt's lease expires. The sweeper republishes overdue ones.
    """

    __tablename__ = "warren_steps"

    instance_id: str = Field(primary_key=True, max_length=100)
    #: The memo key: the step name, plus "#n" for its n-th occurrence (n >= 2).
    key: str = Field(primary_key=True, max_length=300)
    generation: int = 0
    seq: int
    name: str = Field(max_length=300)
    kind: str = Field(max_length=20)
    status: str = Field(max_length=20)
    attempt: int = 0
    #: The worker running the current attempt (crash recovery and fencing).
    claimed_by: str | None = Field(default=None, max_length=64)
    started_at: datetime | None = _time()
    ended_at: datetime | None = _time()
    wake_at: datetime | None = _time(index=True)
    swept_at: datetime | None = _time()
    event_type: str | None = Field(default=None, max_length=100)
    output: Any = _json()
    error: Any = _json()


class EventRow(SQLModel, table=True):
    """An event sent to an instance, buffered until a wait of its type takes it (FIFO per type)."""

    __tablename__ = "warren_events"
    __table_args__ = (sa.Index("ix_warren_events_instance_type", "instance_id", "type", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    instance_id: str = Field(max_length=100)
    type: str = Field(max_length=100)
    payload: Any = _json()
    received_at: datetime = _time(nullable=False)
    #: The key of the wait step that took it; NULL while buffered.
    consumed_by: str | None = Field(default=None, max_length=300)


class OutboxRow(SQLModel, table=True):
    """A message to publish, written in the same transaction as the state change it reports."""

    __tablename__ = "warren_outbox"
    # Published rows are deleted by id, possibly twice (writer and relay): SQLite must never
    # hand a deleted row's id to a new row.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=64)
    #: Outbox messages are run messages: this names the run queue they go to.
    workflow: str = Field(max_length=100)
    body: str = Field(sa_type=sa.Text)
    #: Set for a delayed message: it travels through the delay cascade until then.
    wake_at: datetime | None = _time()
    created_at: datetime = _time(nullable=False, index=True)


class AwaitedResultRow(SQLModel, table=True):
    """An instance whose result a client awaits: on PostgreSQL its end sends a notification
    (store/notifications.py), and the trigger that sends it deletes the row. A table of its
    own, not a column: marking an instance takes no lock a round of it would wait for."""

    __tablename__ = "warren_awaited_results"

    instance_id: str = Field(primary_key=True, max_length=100)


class ProcessedMessageRow(SQLModel, table=True):
    """Ids of ingress messages already applied: a redelivered copy changes nothing."""

    __tablename__ = "warren_processed_messages"

    message_id: str = Field(primary_key=True, max_length=200)
    processed_at: datetime = _time(nullable=False, index=True)
