"""Warren's wire contract: pydantic models for every JSON message and status record.

This package imports only pydantic, so other services can depend on it alone. The JSON Schemas
in `schemas/json/` are generated from these models by `python -m schemas` and a test keeps them
in step.
"""

from schemas.commands import (
    EVENT_TYPE_PATTERN,
    ID_PATTERN,
    INGRESS_ROUTES,
    MAX_MESSAGE_BYTES,
    MAX_WAKE_GROUP,
    ControlAction,
    ControlInstance,
    CreateInstance,
    RunInstance,
    SendEvent,
    StepReport,
    WireModel,
)
from schemas.records import (
    TERMINAL_STATUSES,
    ErrorInfo,
    InstanceStatus,
    InstanceStatusName,
    StepKind,
    StepRecord,
    StepStatusName,
)

__all__ = [
    "EVENT_TYPE_PATTERN",
    "ID_PATTERN",
    "INGRESS_ROUTES",
    "MAX_MESSAGE_BYTES",
    "MAX_WAKE_GROUP",
    "TERMINAL_STATUSES",
    "ControlAction",
    "ControlInstance",
    "CreateInstance",
    "ErrorInfo",
    "InstanceStatus",
    "InstanceStatusName",
    "RunInstance",
    "SendEvent",
    "StepKind",
    "StepRecord",
    "StepReport",
    "StepStatusName",
    "WireModel",
]
