"""Workflows for the tracing and metering tests, importable by worker processes."""

from __future__ import annotations

import logging
import time
from typing import Any

from processor import RetryPolicy, Workflow, WorkflowEvent, WorkflowStep

#: Instances whose flaky step has failed once already (the retry runs in the same process).
_failed_once: set[str] = set()


def fail_once(instance_id: str) -> str:
    if instance_id not in _failed_once:
        _failed_once.add(instance_id)
        raise ConnectionError("the first attempt fails")
    return "reserved"


def busy(milliseconds: float) -> float:
    """Keep a CPU busy for `milliseconds` of wall time; a plain function, run in a thread."""
    deadline = time.perf_counter() + milliseconds / 1000
    while time.perf_counter() < deadline:
        pass
    return milliseconds


class TracedOrder(Workflow):
    """A step that is retried once, a sleep long enough to swap workers, then a last step."""

    name = "traced-order"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        reservation = await step.do(
            "reserve stock",
            fail_once,
            event.instance_id,
            retries=RetryPolicy(limit=2, delay="500 ms", backoff="constant"),
        )
        await step.sleep("cooling-off", "3 seconds")
        return await step.do("ship", str.upper, reservation)


class SleepyCompute(Workflow):
    """Computes for `compute_ms`, then sleeps `sleep_s`: its compute time must not count the
    sleep."""

    name = "sleepy-compute"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> float:
        spent = await step.do("compute", busy, float(event.payload["compute_ms"]))
        await step.sleep("nap", float(event.payload["sleep_s"]))
        return spent


def log_progress(message: str) -> None:
    """A plain function (run in a thread) that logs, as step bodies do."""
    logging.getLogger("tests.shop").warning(message)


class LoggingOrder(Workflow):
    name = "logging-order"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> None:
        await step.do("log progress", log_progress, "charging the card")
