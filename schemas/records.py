"""Read models: what `Instance.status()` returns and what crosses the wire for errors."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict


class InstanceStatusName(StrEnum):
    """An instance's status; a StrEnum, so it compares equal to its plain string."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    ERRORED = "errored"
    TERMINATED = "terminated"
    COMPLETE = "complete"
    WAITING = "waiting"
    WAITING_FOR_PAUSE = "waiting_for_pause"
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {InstanceStatusName.COMPLETE, InstanceStatusName.ERRORED, InstanceStatusName.TERMINATED}
)


class StepKind(StrEnum):
    DO = "do"
    SLEEP = "sleep"
    WAIT_FOR_EVENT = "wait_for_event"


class StepStatusName(StrEnum):
    RUNNING = "running"  # an attempt is executing
    RETRYING = "retrying"  # an attempt failed; the next one waits for its back-off
    SLEEPING = "sleeping"
    WAITING = "waiting"  # waiting for an event
    COMPLETE = "complete"
    FAILED = "failed"  # retries exhausted, non-retryable error, or an event wait timed out


class ErrorInfo(BaseModel):
    """An error as it crosses the wire and SQL: never a pickled exception."""

    model_config = ConfigDict(frozen=True)

    name: str
    message: str
    traceback: str | None = None


class StepRecord(BaseModel):
    """One step of an instance, as `status()` reports it."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: StepKind
    status: StepStatusName
    attempts: int
    started_at: AwareDatetime | None = None
    ended_at: AwareDatetime | None = None
    wake_at: AwareDatetime | None = None
    event_type: str | None = None
    output: Any = None
    error: ErrorInfo | None = None


class InstanceStatus(BaseModel):
    """A snapshot of one instance."""

    model_config = ConfigDict(frozen=True)

    id: str
    workflow: str
    status: InstanceStatusName
    params: Any = None
    output: Any = None
    error: ErrorInfo | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    #: Worker wall time spent executing the instance's step bodies and replays of run(), in
    #: milliseconds: what it cost in compute. Time asleep or waiting for an event is not in it.
    compute_ms: float = 0.0
    #: Thread CPU time of its plain-function step bodies, in milliseconds; async bodies and
    #: replays share the event loop's thread with other instances and are not counted here.
    cpu_ms: float = 0.0
    #: Milliseconds from creation to the terminal status (or to now, while it runs).
    wall_ms: float = 0.0
    steps: list[StepRecord] = []


__all__ = [
    "TERMINAL_STATUSES",
    "ErrorInfo",
    "InstanceStatus",
    "InstanceStatusName",
    "StepKind",
    "StepRecord",
    "StepStatusName",
]
