"""A step attempt's report: the retry decision made by the worker that ran it, error text cut
to fit a run message, and how the round that takes it records it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import configure_mappers

from processor import RetryPolicy
from processor.engine.attempts import (
    MAX_ERROR_TEXT,
    AttemptOutcome,
    is_current,
    record_report,
    report_of,
)
from processor.engine.replay import PendingAttempt
from processor.engine.results import encode_result
from processor.engine.rounds import _record_report
from processor.errors import SerializationError
from processor.runtime import Tx
from processor.store.tables import InstanceRow, StepRow, new_row
from schemas import ErrorInfo, RunInstance, StepStatusName

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
BOOM = ErrorInfo(name="ValueError", message="boom")


async def body() -> None:
    return None


def pending(attempt: int, limit: int = 2) -> PendingAttempt:
    configure_mappers()  # a session would have; the rows' attributes need it
    step = new_row(
        StepRow,
        instance_id="i-1",
        key="charge",
        seq=0,
        name="charge",
        kind="do",
        status=StepStatusName.RUNNING.value,
        attempt=attempt,
        claimed_by="w-1",
    )
    policy = RetryPolicy(limit=limit, delay="2 seconds", backoff="exponential")
    return PendingAttempt(step, body, (), policy, timedelta(minutes=1))


def test_a_result_is_reported_with_the_attempt_that_made_it() -> None:
    report = report_of(pending(1), AttemptOutcome(output={"ok": 1}, duration_s=0.5), 3, "w-1")
    assert (report.step, report.generation, report.attempt, report.worker) == (
        "charge",
        3,
        1,
        "w-1",
    )
    assert (report.output, report.error, report.retry_after_ms) == ({"ok": 1}, None, None)
    assert report.duration_ms == 500


def test_an_error_with_retries_left_is_retried_after_the_policys_back_off() -> None:
    assert report_of(pending(1), AttemptOutcome(error=BOOM), 0, "w-1").retry_after_ms == 2000
    assert report_of(pending(2), AttemptOutcome(error=BOOM), 0, "w-1").retry_after_ms == 4000


def test_an_error_without_retries_left_or_not_retryable_fails_the_step() -> None:
    assert report_of(pending(3), AttemptOutcome(error=BOOM), 0, "w-1").retry_after_ms is None
    final = AttemptOutcome(error=BOOM, is_retryable=False)
    assert report_of(pending(1), final, 0, "w-1").retry_after_ms is None


def test_a_huge_error_is_cut_so_the_report_fits_a_run_message() -> None:
    huge = ErrorInfo(name="ValueError", message="m" * 3_000_000, traceback="t" * 2_000_000 + "end")
    report = report_of(pending(1), AttemptOutcome(error=huge), 0, "w-1")
    assert report.error is not None
    assert report.error.message.startswith("m" * 100)
    assert len(report.error.message) <= MAX_ERROR_TEXT + 10
    assert report.error.traceback is not None
    assert report.error.traceback.endswith("end")
    assert len(report.error.traceback) <= MAX_ERROR_TEXT + 10
    body = RunInstance(instance_id="i-1", report=report).model_dump_json()
    assert len(body.encode()) < 2 * 1024 * 1024


def test_recording_a_report_completes_retries_or_fails_the_step() -> None:
    done = pending(1).step
    assert (
        record_report(done, report_of(pending(1), AttemptOutcome(output=7), 0, "w-1"), NOW) is None
    )
    assert (done.status, done.output, done.wake_at) == ("complete", 7, None)

    retried = pending(1).step
    retry_at = record_report(
        retried, report_of(pending(1), AttemptOutcome(error=BOOM), 0, "w-1"), NOW
    )
    assert retry_at == NOW + timedelta(seconds=2)
    assert (retried.status, retried.wake_at, retried.error["name"]) == (
        "retrying",
        retry_at,
        "ValueError",
    )

    failed = pending(3).step
    assert (
        record_report(failed, report_of(pending(3), AttemptOutcome(error=BOOM), 0, "w-1"), NOW)
        is None
    )
    assert (failed.status, failed.wake_at) == ("failed", None)


def test_only_the_steps_current_attempt_may_record() -> None:
    report = report_of(pending(1), AttemptOutcome(output=1), 0, "w-1")
    assert is_current(pending(1).step, report)
    assert not is_current(pending(2).step, report)  # a newer attempt took over
    other = pending(1).step
    other.claimed_by = "w-2"
    assert not is_current(other, report)
    done = pending(1).step
    record_report(done, report, NOW)
    assert not is_current(done, report)  # a copy of the report records nothing


def test_a_copy_of_a_report_counts_its_compute_once_and_a_fenced_one_not_at_all() -> None:
    instance = new_row(
        InstanceRow,
        id="i-1",
        workflow="w",
        status="running",
        created_at=NOW,
        updated_at=NOW,
        compute_ms=0.0,
        cpu_ms=0.0,
    )
    step = pending(1).step
    tx = Tx(session=None, now=NOW)
    report = report_of(pending(1), AttemptOutcome(output=1, duration_s=0.5, cpu_s=0.25), 0, "w-1")
    _record_report(tx, instance, [step], report)
    _record_report(tx, instance, [step], report)  # redelivered
    assert (step.status, instance.compute_ms, instance.cpu_ms) == ("complete", 500, 250)
    stale = report_of(pending(1), AttemptOutcome(output=2, duration_s=9.0), 0, "w-2")
    _record_report(tx, instance, [pending(1).step], stale)  # another worker's attempt 1
    assert instance.compute_ms == 500


def test_a_result_that_is_not_utf8_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(SerializationError, match="lone surrogate"):
        encode_result("charge", {"name": "\ud800"})


def test_an_error_whose_text_is_not_utf8_is_reported_with_escapes_and_still_retried() -> None:
    name = b"caf\xe9.csv".decode(errors="surrogateescape")
    error = ErrorInfo(name="ValueError", message=f"cannot parse {name}", traceback=f"at {name}")
    report = report_of(pending(1), AttemptOutcome(error=error), 0, "w-1")
    assert report.retry_after_ms == 2000
    assert report.error is not None
    assert report.error.message == "cannot parse caf\\udce9.csv"
    RunInstance(instance_id="i-1", report=report).model_dump_json()  # does not raise
