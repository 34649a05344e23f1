"""Exceptions raised by processor.

ProcessorError
├── WorkflowError            raised into or out of workflow code
│   ├── NonRetryableError    raise it to fail a step at once
│   ├── StepFailedError      retries exhausted (.step_name, .attempts, __cause__)
│   ├── StepTimeoutError     one attempt ran past its timeout (retried like any error)
│   ├── SerializationError   a step result that is not JSON or is over the limit
│   ├── EventTimeoutError    wait_for_event timed out
│   └── NonDeterminismError  replay met a step other than the recorded one
├── RegistrationError        two different classes under one workflow name, bad run() signature
├── WorkflowNotFoundError    create for a workflow no worker has registered
├── InstanceNotFoundError
├── InstanceExistsError      create with an id that is taken
├── InstanceFailedError      result() of an errored or terminated instance (.error: ErrorInfo)
├── InstanceStateError       a control action the instance's status does not allow
├── DatabaseNotMigratedError the database lacks Warren's tables: run `warren db upgrade`
└── InfrastructureError      broker or database trouble; the engine retries it
"""

from __future__ import annotations

import ssl

from processor.config import redact_url
from schemas import ErrorInfo


class ProcessorError(Exception):
    """Base of every error Warren raises."""


class WorkflowError(ProcessorError):
    """Raised into or out of workflow code."""


class NonRetryableError(WorkflowError):
    """Raise it in a step to fail the step at once, without retries."""


class StepFailedError(WorkflowError):
    """A step failed for good: retries exhausted or a non-retryable error.

    The original error is `__cause__` (rebuilt from its recorded name and message on replay).
    """

    def __init__(self, step_name: str, attempts: int, cause: ErrorInfo) -> None:
        self.step_name = step_name
        self.attempts = attempts
        self.cause_info = cause
        noun = "attempt" if attempts == 1 else "attempts"
        super().__init__(
            f"step {step_name!r} failed after {attempts} {noun}: {cause.name}: {cause.message}"
        )


class StepTimeoutError(WorkflowError):
    """One attempt of a step ran past its timeout."""

    def __init__(self, step_name: str, attempt: int, timeout_s: float) -> None:
        self.step_name = step_name
        self.attempt = attempt
        super().__init__(f"step {step_name!r} attempt {attempt} timed out after {timeout_s:g}s")


class SerializationError(WorkflowError):
    """A step returned a value that is not JSON-serializable or is over the size limit."""

    def __init__(self, step_name: str, type_name: str, reason: str) -> None:
        self.step_name = step_name
        self.type_name = type_name
        super().__init__(f"step {step_name!r} returned a {type_name} that {reason}")


class EventTimeoutError(WorkflowError):
    """`wait_for_event` timed out before an event of its type arrived."""

    def __init__(self, step_name: str, event_type: str) -> None:
        self.step_name = step_name
        self.event_type = event_type
        super().__init__(
            f"step {step_name!r} timed out waiting for an event of type {event_type!r}"
        )


class RecordedError(WorkflowError):
    """An error recorded by an earlier attempt, rebuilt on replay (errors are never pickled).

    Builtin exception types are rebuilt as themselves; any other type becomes a RecordedError
    whose `name` is the original type's name.
    """

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        self.message = message
        super().__init__(f"{name}: {message}")


class NonDeterminismError(WorkflowError):
    """Replay met a step whose kind differs from the recorded one: the code changed under it."""


class RegistrationError(ProcessorError):
    """A workflow class that cannot be registered."""


class WorkflowNotFoundError(ProcessorError):
    """No worker has ever registered a workflow of this name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"workflow {name!r} is not registered: start a worker that serves it first"
        )


class InstanceNotFoundError(ProcessorError):
    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(f"no instance with id {instance_id!r}")


class InstanceExistsError(ProcessorError):
    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(f"an instance with id {instance_id!r} already exists")


class InstanceFailedError(ProcessorError):
    """`result()` of an instance that errored or was terminated."""

    def __init__(self, instance_id: str, status: str, error: ErrorInfo | None) -> None:
        self.instance_id = instance_id
        self.status = status
        self.error = error
        detail = f": {error.name}: {error.message}" if error else ""
        super().__init__(f"instance {instance_id!r} is {status}{detail}")


class InstanceStateError(ProcessorError):
    """A control action that the instance's current status does not allow."""

    def __init__(self, instance_id: str, action: str, status: str) -> None:
        self.instance_id = instance_id
        self.action = action
        self.status = status
        super().__init__(f"cannot {action} instance {instance_id!r}: it is {status}")


class DatabaseNotMigratedError(ProcessorError):
    def __init__(self, url: str, found: str | None, wanted: str) -> None:
        url = redact_url(url)  # the message reaches logs and terminals
        super().__init__(
            f"the database at {url} is at migration {found or 'none'}, Warren needs {wanted}: "
            f"run `warren db upgrade` (with WARREN_DATABASE_URL={url})"
        )


class InfrastructureError(ProcessorError):
    """Broker or database trouble; the engine retries it."""


def is_certificate_refused(error: BaseException) -> bool:
    """The server's TLS certificate failed verification (another host's, an untrusted CA's,
    expired), however the client library wrapped the error: a configuration error that no
    retry can mend, unlike the network errors it arrives among."""
    seen: BaseException | None = error
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:  # a chain may loop back on itself
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        visited.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    return False
