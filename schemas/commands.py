"""Wire commands: the JSON messages other services publish to the `warren.ingress` exchange.

Routing keys: `instance.create` (CreateInstance), `instance.event` (SendEvent) and
`instance.control` (ControlInstance). Internal engine messages (RunInstance) travel on the
engine exchange; they are documented here too because they are JSON on the wire as well.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from schemas.records import ErrorInfo

#: Instance ids and workflow names: safe in a URL, a routing key and a log line.
ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,99}$"

InstanceId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
WorkflowName = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
#: Event types are names: no control characters (PostgreSQL cannot store a NUL byte in text,
#: and a newline would forge log lines).
EVENT_TYPE_PATTERN = r"^[^\x00-\x1f\x7f]{1,100}$"
EventType = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=EVENT_TYPE_PATTERN)
]

#: Largest message body Warren accepts; bigger ones are dead-lettered.
MAX_MESSAGE_BYTES = 1024 * 1024
#: Most instances one wake-up carries (ids of up to 100 characters: far under the byte limit).
MAX_WAKE_GROUP = 1000


class WireModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CreateInstance(WireModel):
    """Create an instance of a workflow. A create for an id that exists creates nothing."""

    workflow: WorkflowName
    id: InstanceId | None = None
    params: dict[str, Any] | None = None


class SendEvent(WireModel):
    """Deliver an event to an instance; buffered until a `wait_for_event` of its type takes it."""

    instance_id: InstanceId
    type: EventType
    payload: Any = None


class ControlAction(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    TERMINATE = "terminate"
    RESTART = "restart"


class ControlInstance(WireModel):
    """Pause, resume, terminate or restart an instance."""

    instance_id: InstanceId
    action: ControlAction


class StepReport(WireModel):
    """Internal: how one step attempt ended, sent by the worker that ran it.

    The round that takes the message records it, if the attempt is still the step's current
    one (same generation, attempt and worker; else it is fenced off), then replays on from it.
    """

    step: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    generation: Annotated[int, Field(ge=0)]
    attempt: Annotated[int, Field(ge=1)]
    #: The worker that ran the attempt (the step's `claimed_by`).
    worker: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    output: Any = None
    error: ErrorInfo | None = None
    #: With an error: retry after this many milliseconds (the step's RetryPolicy, applied by
    #: the worker that ran it); None: the step failed for good.
    retry_after_ms: Annotated[float, Field(ge=0)] | None = None
    #: The body's wall time, and its thread CPU time (0 for an async body).
    duration_ms: Annotated[float, Field(ge=0)] = 0.0
    cpu_ms: Annotated[float, Field(ge=0)] = 0.0


class RunInstance(WireModel):
    """Internal: advance an instance by one replay. Published by the engine, never by services.

    `wake_at` is set on timer wake-ups (sleeps, retry back-offs, event timeouts); a copy that
    arrives early is delayed again, and a stale one changes nothing because the replay reads
    the due times from SQL. `more_instance_ids`: other instances due at the same `wake_at`
    (parked in one transaction), carried by one wake-up through the delay cascade instead of
    one each; the consumer keeps as many as it expects to give a slot soon, wakes them as
    slots free, and publishes the rest again as one wake-up each.
    `report` is set when a step attempt ended: the round records it first (a copy is fenced
    off, as the attempt is no longer running).
    """

    kind: Literal["run"] = "run"
    instance_id: InstanceId
    wake_at: AwareDatetime | None = None
    #: None, not empty, when alone: then absent from the JSON, which workers of versions
    #: before it (extra="forbid") take as before.
    more_instance_ids: (
        Annotated[list[InstanceId], Field(min_length=1, max_length=MAX_WAKE_GROUP)] | None
    ) = None
    report: StepReport | None = None


#: The routing key of each ingress command.
INGRESS_ROUTES: dict[str, type[WireModel]] = {
    "instance.create": CreateInstance,
    "instance.event": SendEvent,
    "instance.control": ControlInstance,
}

__all__ = [
    "EVENT_TYPE_PATTERN",
    "ID_PATTERN",
    "INGRESS_ROUTES",
    "MAX_MESSAGE_BYTES",
    "MAX_WAKE_GROUP",
    "ControlAction",
    "ControlInstance",
    "CreateInstance",
    "EventType",
    "InstanceId",
    "RunInstance",
    "SendEvent",
    "StepReport",
    "WireModel",
    "WorkflowName",
]
