"""Run one step attempt, report how it ended, and record the report with fencing."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import inspect
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from processor.engine.replay import LEASE_GRACE, PendingAttempt, error_info, result_type
from processor.engine.results import encode_result
from processor.errors import NonRetryableError, SerializationError, StepTimeoutError
from processor.store.tables import StepRow
from schemas import ErrorInfo, StepReport, StepStatusName


@dataclass(frozen=True)
class AttemptOutcome:
    output: Any = None
    error: ErrorInfo | None = None
    is_retryable: bool = True
    #: What the body raised, for the attempt's span (the error itself is recorded as `error`).
    exception: BaseException | None = dataclasses.field(default=None, compare=False)
    #: Wall time of the body, in this worker.
    duration_s: float = 0.0
    #: Thread CPU time of a plain-function body (0 for an async one, which shares the event
    #: loop's thread with every other instance: its CPU time cannot be told apart).
    cpu_s: float = 0.0


def _is_async(fn: Any) -> bool:
    target = fn.func if isinstance(fn, functools.partial) else fn
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


async def run_attempt(pending: PendingAttempt, executor: Executor) -> AttemptOutcome:
    """Run the step body once, within its timeout, and measure its wall and CPU time. A plain
    function runs in `executor`, so a blocking body never stalls the event loop; on timeout its
    thread is abandoned and its late result ignored."""
    started = time.perf_counter()
    cpu_used: list[float] = []
    outcome = await _run_body(pending, executor, cpu_used)
    return dataclasses.replace(
        outcome, duration_s=time.perf_counter() - started, cpu_s=sum(cpu_used)
    )


def _timed(call: Callable[[], Any], cpu_used: list[float]) -> Any:
    """Run `call` in this thread, adding its thread CPU time to `cpu_used` however it ends."""
    started = time.thread_time()
    try:
        return call()
    finally:
        cpu_used.append(time.thread_time() - started)


async def _run_body(
    pending: PendingAttempt, executor: Executor, cpu_used: list[float]
) -> AttemptOutcome:
    step = pending.step
    seconds = pending.timeout.total_seconds()
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            if _is_async(pending.fn):
                result = await pending.fn(*pending.args)
            else:
                call = functools.partial(
                    _timed, functools.partial(pending.fn, *pending.args), cpu_used
                )
                # In a copy of this task's context: the body's logs keep their instance and
                # step tags, and its spans nest under the attempt's.
                result = await asyncio.get_running_loop().run_in_executor(
                    executor, contextvars.copy_context().run, call
                )
                if inspect.isawaitable(result):  # e.g. a lambda that returns a coroutine
                    result = await result
        # A result read back into the models `fn` is annotated to return is recorded as they
        # validate; any other keeps everything a model dumps (its computed fields, say).
        is_typed = result_type(pending.fn) is not None
        return AttemptOutcome(output=encode_result(step.name, result, round_trip=is_typed))
    except (NonRetryableError, SerializationError) as error:
        return AttemptOutcome(error=error_info(error), is_retryable=False, exception=error)
    except BaseException as error:
        if deadline.expired():
            timeout = StepTimeoutError(step.name, step.attempt, seconds)
            return AttemptOutcome(error=error_info(timeout), exception=timeout)
        if isinstance(error, KeyboardInterrupt) or _is_cancelling_us(error):
            raise  # the worker is stopping: the attempt is released, not failed
        # Anything else the body raised, even a stray CancelledError or SystemExit, is the
        # step's failure; it must not escape and strand the message.
        return AttemptOutcome(error=error_info(error), exception=error)


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


#: A report's error message and traceback are cut to this many characters (a traceback keeps
#: its end): with a result of up to MAX_JSON_BYTES, a report must fit in a run message.
MAX_ERROR_TEXT = 64 * 1024


def report_of(
    pending: PendingAttempt, outcome: AttemptOutcome, generation: int, worker_id: str
) -> StepReport:
    """How an attempt ended, for its run message. The retry decision is made here, where the
    step's RetryPolicy is at hand; the round that records the report applies it."""
    step = pending.step
    retry_after_ms = None
    if outcome.error is not None and outcome.is_retryable and step.attempt <= pending.retries.limit:
        retry_after_ms = pending.retries.delay_before(step.attempt) / timedelta(milliseconds=1)
    return StepReport(
        step=step.key,
        generation=generation,
        attempt=step.attempt,
        worker=worker_id,
        output=outcome.output,
        error=_bounded(outcome.error),
        retry_after_ms=retry_after_ms,
        duration_ms=outcome.duration_s * 1000,
        cpu_ms=outcome.cpu_s * 1000,
    )


def _bounded(error: ErrorInfo | None) -> ErrorInfo | None:
    """The error as a report can carry it: cut to size, and UTF-8 (a file name decoded with
    surrogateescape, say, keeps its odd bytes as escapes)."""
    if error is None:
        return None
    message, traceback = _utf8(error.message), error.traceback
    if len(message) > MAX_ERROR_TEXT:
        message = message[:MAX_ERROR_TEXT] + " [cut]"
    if traceback is not None:
        traceback = _utf8(traceback)
        if len(traceback) > MAX_ERROR_TEXT:
            traceback = "[cut] " + traceback[-MAX_ERROR_TEXT:]
    name = _utf8(error.name)[:MAX_ERROR_TEXT]
    return ErrorInfo(name=name, message=message, traceback=traceback)


def _utf8(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode()


def is_current(step: StepRow, report: StepReport) -> bool:
    """Fencing: only the attempt that is still the step's current one may record a result."""
    return (
        step.status == StepStatusName.RUNNING
        and step.attempt == report.attempt
        and step.claimed_by == report.worker
    )


def record_report(step: StepRow, report: StepReport, now: datetime) -> datetime | None:
    """Apply an attempt's report to its step. Returns the retry time if one is scheduled."""
    step.ended_at = now
    if report.error is None:
        step.status = StepStatusName.COMPLETE.value
        step.output = report.output
        step.error = None
        step.wake_at = None
        return None
    step.error = report.error.model_dump(mode="json")
    if report.retry_after_ms is not None:
        step.status = StepStatusName.RETRYING.value
        step.wake_at = now + timedelta(milliseconds=report.retry_after_ms)
        step.swept_at = None
        return step.wake_at
    step.status = StepStatusName.FAILED.value
    step.wake_at = None
    return None
