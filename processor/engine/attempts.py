"""Run one step attempt, and record its outcome with fencing."""

from __future__ import annotations

import asyncio
import functools
import inspect
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from processor.engine.replay import LEASE_GRACE, PendingAttempt, error_info
from processor.engine.results import encode_result
from processor.errors import NonRetryableError, SerializationError, StepTimeoutError
from processor.store.tables import StepRow
from schemas import ErrorInfo, StepStatusName


@dataclass(frozen=True)
class AttemptOutcome:
    output: Any = None
    error: ErrorInfo | None = None
    is_retryable: bool = True


def _is_async(fn: Any) -> bool:
    target = fn.func if isinstance(fn, functools.partial) else fn
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


async def run_attempt(pending: PendingAttempt, executor: Executor) -> AttemptOutcome:
    """Run the step body once, within its timeout. A plain function runs in `executor`, so a
    blocking body never stalls the event loop; on timeout its thread is abandoned and its late
    result ignored."""
    step = pending.step
    seconds = pending.timeout.total_seconds()
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            if _is_async(pending.fn):
                result = await pending.fn(*pending.args)
            else:
                call = functools.partial(pending.fn, *pending.args)
                result = await asyncio.get_running_loop().run_in_executor(executor, call)
                if inspect.isawaitable(result):  # e.g. a lambda that returns a coroutine
                    result = await result
        return AttemptOutcome(output=encode_result(step.name, result))
    except (NonRetryableError, SerializationError) as error:
        return AttemptOutcome(error=error_info(error), is_retryable=False)
    except BaseException as error:
        if deadline.expired():
            timeout = StepTimeoutError(step.name, step.attempt, seconds)
            return AttemptOutcome(error=error_info(timeout))
        if isinstance(error, KeyboardInterrupt) or _is_cancelling_us(error):
            raise  # the worker is stopping: the attempt is released, not failed
        # Anything else the body raised, even a stray CancelledError or SystemExit, is the
        # step's failure; it must not escape and strand the message.
        return AttemptOutcome(error=error_info(error))


def _is_cancelling_us(error: BaseException) -> bool:
    task = asyncio.current_task()
    return isinstance(error, asyncio.CancelledError) and task is not None and task.cancelling() > 0


def claim(step: StepRow, pending: PendingAttempt, claimed_by: str, now: datetime) -> None:
    """Start the next attempt: counted from here, so a crash during it still counts."""
    step.status = StepStatusName.RUNNING.value
    step.attempt += 1
    step.claimed_by = claimed_by
    step.started_at = now
    step.ended_at = None
    step.wake_at = now + pending.timeout + LEASE_GRACE
    step.swept_at = None


def is_current(step: StepRow, pending: PendingAttempt, claimed_by: str) -> bool:
    """Fencing: only the attempt that is still the step's current one may record a result."""
    return (
        step.status == StepStatusName.RUNNING
        and step.attempt == pending.step.attempt
        and step.claimed_by == claimed_by
    )


def record_outcome(
    step: StepRow, pending: PendingAttempt, outcome: AttemptOutcome, now: datetime
) -> datetime | None:
    """Apply an attempt's outcome to its step. Returns the retry time if one is scheduled."""
    step.ended_at = now
    if outcome.error is None:
        step.status = StepStatusName.COMPLETE.value
        step.output = outcome.output
        step.error = None
        step.wake_at = None
        return None
    step.error = outcome.error.model_dump(mode="json")
    if outcome.is_retryable and step.attempt <= pending.retries.limit:
        step.status = StepStatusName.RETRYING.value
        step.wake_at = now + pending.retries.delay_before(step.attempt)
        step.swept_at = None
        return step.wake_at
    step.status = StepStatusName.FAILED.value
    step.wake_at = None
    return None
