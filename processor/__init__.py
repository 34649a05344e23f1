"""Warren: durable workflows for Python on RabbitMQ and SQL.

The public API: define a `Workflow`, run `Worker`s, and steer instances with a `Client`.
"""

from processor.client import Client, Instance
from processor.errors import (
    DatabaseNotMigratedError,
    EventTimeoutError,
    InfrastructureError,
    InstanceExistsError,
    InstanceFailedError,
    InstanceNotFoundError,
    InstanceStateError,
    NonDeterminismError,
    NonRetryableError,
    ProcessorError,
    RecordedError,
    RegistrationError,
    SerializationError,
    StepFailedError,
    StepTimeoutError,
    WorkflowError,
    WorkflowNotFoundError,
)
from processor.retry import RetryPolicy
from processor.step import ReceivedEvent, WorkflowStep
from processor.worker import Worker
from processor.workflow import Workflow, WorkflowEvent
from schemas import ErrorInfo, InstanceStatus, InstanceStatusName, StepRecord

__all__ = [
    "Client",
    "DatabaseNotMigratedError",
    "ErrorInfo",
    "EventTimeoutError",
    "InfrastructureError",
    "Instance",
    "InstanceExistsError",
    "InstanceFailedError",
    "InstanceNotFoundError",
    "InstanceStateError",
    "InstanceStatus",
    "InstanceStatusName",
    "NonDeterminismError",
    "NonRetryableError",
    "ProcessorError",
    "ReceivedEvent",
    "RecordedError",
    "RegistrationError",
    "RetryPolicy",
    "SerializationError",
    "StepFailedError",
    "StepRecord",
    "StepTimeoutError",
    "Worker",
    "Workflow",
    "WorkflowError",
    "WorkflowEvent",
    "WorkflowNotFoundError",
    "WorkflowStep",
]
