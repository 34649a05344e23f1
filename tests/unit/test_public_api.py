"""`processor.__all__` is the public surface: a new export must show up in review here."""

from __future__ import annotations

import processor

PUBLIC_API = [
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


def test_the_public_api_is_exactly_the_pinned_list() -> None:
    assert sorted(processor.__all__) == PUBLIC_API
    assert len(set(processor.__all__)) == len(processor.__all__)


def test_every_public_name_is_importable() -> None:
    for name in processor.__all__:
        assert getattr(processor, name) is not None, name


def test_every_public_error_derives_from_processor_error() -> None:
    errors = [getattr(processor, n) for n in processor.__all__ if n.endswith("Error")]
    assert errors
    for error in errors:
        assert issubclass(error, processor.ProcessorError), error
