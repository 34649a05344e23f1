"""Step semantics against the real broker, on SQLite and PostgreSQL: memoization, retries and
back-off, failures, timeouts, sleeps, events, parallel steps, serialization, threads.

The worker runs in the test's process and event loop, so step bodies report to the test through
module-level state, keyed by instance id so the SQLite and PostgreSQL runs never mix.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any, Literal

import pytest
from pydantic import AwareDatetime, BaseModel

from processor import (
    EventTimeoutError,
    Instance,
    InstanceFailedError,
    InstanceStatus,
    NonRetryableError,
    RecordedError,
    RetryPolicy,
    StepFailedError,
    StepRecord,
    Workflow,
    WorkflowEvent,
    WorkflowStep,
)
from tests.conftest import TestEnv, assert_eventually
from tests.models import Quote

pytestmark = pytest.mark.integration

#: Step bodies run, in order, per instance.
CALLS: defaultdict[str, list[str]] = defaultdict(list)
#: How many times `run` was entered (replays), per instance.
REPLAYS: Counter[str] = Counter()
#: time.monotonic() at the start of each attempt, per instance.
ATTEMPT_TIMES: defaultdict[str, list[float]] = defaultdict(list)
#: Gated steps that have started, and the gates the test opens to let them finish.
HELD: set[str] = set()
GATES: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
#: Parallel steps that have started, per instance.
STARTED: defaultdict[str, set[str]] = defaultdict(set)
#: Blocking (time.sleep) step bodies that have returned, per instance.
BLOCKERS_DONE: defaultdict[str, list[float]] = defaultdict(list)
#: event.timestamp as each replay of `run` saw it, per instance.
TIMESTAMPS: defaultdict[str, list[datetime]] = defaultdict(list)


# --- helpers -----------------------------------------------------------------------------------


async def eventually_status(
    instance: Instance, check: Callable[[InstanceStatus], bool], what: str, timeout: float = 20
) -> InstanceStatus:
    """Poll the instance's status until `check` holds; returns the status that satisfied it."""
    seen: list[InstanceStatus] = []

    async def probe() -> bool:
        seen.append(await instance.status())
        return check(seen[-1])

    await assert_eventually(probe, timeout=timeout, what=what)
    return seen[-1]


def step_named(status: InstanceStatus, name: str) -> StepRecord:
    matches = [s for s in status.steps if s.name == name]
    assert matches, f"no step {name!r} in {[s.name for s in status.steps]}"
    return matches[0]


def has_step(status: InstanceStatus, name: str, kind: str, step_status: str) -> bool:
    return any(s.name == name and s.kind == kind and s.status == step_status for s in status.steps)


async def waiting_for_event(instance: Instance, step_name: str) -> InstanceStatus:
    """Once the instance waits, in its event wait `step_name`."""
    return await eventually_status(
        instance,
        lambda s: s.status == "waiting" and has_step(s, step_name, "wait_for_event", "waiting"),
        f"the instance to wait in {step_name!r}",
    )


async def _true_if(value: object) -> bool:
    return bool(value)


async def failure_of(instance: Instance) -> InstanceFailedError:
    with pytest.raises(InstanceFailedError) as info:
        await instance.result(timeout=20)
    return info.value


async def watch_backoffs(instance: Instance) -> dict[int, float]:
    """The back-off each failed attempt recorded (its step's wake_at - ended_at, in seconds),
    by attempt number, polled until the instance ends. Reads SQL, measures no time."""
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = await instance.status()
        if status.steps:
            step = status.steps[0]
            if step.status == "retrying" and step.wake_at and step.ended_at:
                seen[step.attempts] = (step.wake_at - step.ended_at).total_seconds()
        if status.status.is_terminal:
            break
        await asyncio.sleep(0.01)
    return seen


def assert_backoffs_match(
    seen: dict[int, float], schedule: dict[int, float], must_see: set[int]
) -> None:
    """Every recorded back-off the watcher saw is the schedule's, and it saw at least one of
    `must_see` (a poll may miss one 0.2 s window on a loaded machine, hardly all of them)."""
    assert seen.keys() & must_see, f"no retry among attempts {must_see} was seen: {seen}"
    for attempt, seconds in seen.items():
        assert seconds == pytest.approx(schedule[attempt]), (
            f"attempt {attempt} recorded a {seconds}s back-off, expected {schedule[attempt]}s"
        )


# --- step bodies -------------------------------------------------------------------------------


def record(instance_id: str, label: str) -> str:
    CALLS[instance_id].append(label)
    return f"{label} done"


async def arecord(instance_id: str, label: str) -> str:
    CALLS[instance_id].append(label)
    return f"{label} done"


async def gated(instance_id: str) -> str:
    """Runs until the test opens the instance's gate (or fails after 10 s)."""
    CALLS[instance_id].append("gated")
    HELD.add(instance_id)
    await asyncio.wait_for(GATES[instance_id].wait(), 10)
    return "released"


async def flaky(instance_id: str, failures: int) -> str:
    ATTEMPT_TIMES[instance_id].append(time.monotonic())
    attempt = len(ATTEMPT_TIMES[instance_id])
    if attempt <= failures:
        raise RuntimeError(f"flaky failure {attempt}")
    return f"succeeded on attempt {attempt}"


async def always_fails(instance_id: str) -> None:
    CALLS[instance_id].append("always fails")
    raise ValueError("the ledger is locked")


async def refuses(instance_id: str) -> None:
    CALLS[instance_id].append("refuses")
    raise NonRetryableError("card declined")


class InventoryError(Exception):
    pass


class LedgerMismatchError(Exception):
    pass


async def raises_value_error(instance_id: str) -> None:
    CALLS[instance_id].append("value error")
    raise ValueError("bad quantity")


async def raises_custom_error(instance_id: str) -> None:
    CALLS[instance_id].append("custom error")
    raise InventoryError("out of stock")


async def hangs(instance_id: str) -> None:
    CALLS[instance_id].append("hangs")
    await asyncio.Event().wait()


def blocks(instance_id: str) -> str:
    CALLS[instance_id].append("blocks")
    time.sleep(2)
    BLOCKERS_DONE[instance_id].append(time.monotonic())
    return "woke"


async def meet(instance_id: str, me: str, other: str) -> str:
    """Starts, then waits for `other` to start too: two sequential steps would never meet."""
    STARTED[instance_id].add(me)
    deadline = time.monotonic() + 5
    while other not in STARTED[instance_id]:
        if time.monotonic() > deadline:
            raise NonRetryableError(f"step {other!r} did not start while {me!r} was running")
        await asyncio.sleep(0.01)
    return me


async def unserializable(kind: str) -> Any:
    if kind == "set":
        return {object(), object()}
    if kind == "object":
        return object()
    if kind == "surrogate":
        return "\ud800"
    return "x" * (1024 * 1024 + 1)


class Point(BaseModel):
    x: int
    y: int


async def typed_point(x: int, y: int) -> Point:
    return Point(x=x, y=y)


async def untyped_point(x: int, y: int):  # type: ignore[no-untyped-def]  # deliberately bare
    return Point(x=x, y=y)


async def points(count: int) -> list[Point]:
    return [Point(x=i, y=i) for i in range(count)]


async def maybe_point(found: bool) -> Point | None:
    return Point(x=5, y=6) if found else None


def thread_of_sync_step() -> int:
    return threading.get_ident()


async def thread_of_async_step() -> int:
    return threading.get_ident()


# --- workflows ---------------------------------------------------------------------------------


class Memo(Workflow[dict[str, Any]]):
    name = "steps-memo"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        iid = event.instance_id
        REPLAYS[iid] += 1
        first = await step.do("first", record, iid, "first")
        await step.sleep("pause", 0.3)
        second = await step.do("second", arecord, iid, "second")
        go = await step.wait_for_event("go", type="go")
        third = await step.do("third", record, iid, "third")
        return [first, second, go.payload, third]


class RetryParams(BaseModel):
    backoff: Literal["constant", "linear", "exponential"]
    failures: int
    limit: int
    max_delay: float | None = None


class Flaky(Workflow[RetryParams]):
    name = "steps-flaky"

    async def run(self, event: WorkflowEvent[RetryParams], step: WorkflowStep) -> Any:
        p = event.payload
        policy = RetryPolicy(limit=p.limit, delay=0.2, backoff=p.backoff, max_delay=p.max_delay)
        return await step.do(
            "flaky", flaky, event.instance_id, p.failures, retries=policy, timeout=10
        )


class AlwaysFails(Workflow[dict[str, Any]]):
    name = "steps-always-fails"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        return await step.do(
            "post ledger",
            always_fails,
            event.instance_id,
            retries=RetryPolicy(limit=2, delay=0.1),
        )


class Refuses(Workflow[dict[str, Any]]):
    name = "steps-refuses"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        return await step.do(
            "charge card",
            refuses,
            event.instance_id,
            retries=RetryPolicy(limit=3, delay=0.1),
        )


class CatchParams(BaseModel):
    custom: bool


class CatchesFailure(Workflow[CatchParams]):
    name = "steps-catches-failure"

    async def run(self, event: WorkflowEvent[CatchParams], step: WorkflowStep) -> Any:
        body = raises_custom_error if event.payload.custom else raises_value_error
        try:
            await step.do(
                "reserve", body, event.instance_id, retries=RetryPolicy(limit=1, delay=0.1)
            )
        except StepFailedError as err:
            cause = err.__cause__
            return {
                "fallback": True,
                "step": err.step_name,
                "attempts": err.attempts,
                "cause_type": type(cause).__name__,
                "cause_message": str(cause),
                "recorded_name": cause.name if isinstance(cause, RecordedError) else None,
                "recorded_message": cause.message if isinstance(cause, RecordedError) else None,
            }
        return {"fallback": False}


class HangsAsync(Workflow[dict[str, Any]]):
    name = "steps-hangs-async"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        return await step.do(
            "hang",
            hangs,
            event.instance_id,
            retries=RetryPolicy(limit=1, delay=0.1),
            timeout=0.3,
        )


class BlocksSync(Workflow[dict[str, Any]]):
    name = "steps-blocks-sync"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        return await step.do(
            "block",
            blocks,
            event.instance_id,
            retries=RetryPolicy(limit=1, delay=0.1),
            timeout=0.3,
        )


class Trivial(Workflow[dict[str, Any]]):
    name = "steps-trivial"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        return await step.do("only", arecord, event.instance_id, "only")


class Nap(Workflow[dict[str, Any]]):
    name = "steps-nap"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        await step.sleep("nap", 3)  # long enough for a poll to see it under parallel load
        return "rested"


class Until(BaseModel):
    at: AwareDatetime


class NapUntil(Workflow[Until]):
    name = "steps-nap-until"

    async def run(self, event: WorkflowEvent[Until], step: WorkflowStep) -> Any:
        await step.sleep_until("alarm", event.payload.at)
        return await step.do("after alarm", arecord, event.instance_id, "after alarm")


class WaitsAfterGate(Workflow[dict[str, Any]]):
    """Holds in a step until the test opens the gate, then waits for "go"."""

    name = "steps-waits-after-gate"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        await step.do("hold", gated, event.instance_id)
        go = await step.wait_for_event("go", type="go")
        return go.payload


class WaitsAtOnce(Workflow[dict[str, Any]]):
    name = "steps-waits-at-once"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        go = await step.wait_for_event("go", type="go")
        return go.payload


class Fifo(Workflow[dict[str, Any]]):
    name = "steps-fifo"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        await step.do("hold", gated, event.instance_id)
        first_a = await step.wait_for_event("first a", type="a")
        only_b = await step.wait_for_event("only b", type="b")
        second_a = await step.wait_for_event("second a", type="a")
        return [first_a.payload, only_b.payload, second_a.payload]


class EventFields(Workflow[dict[str, Any]]):
    name = "steps-event-fields"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        ping = await step.wait_for_event("ping", type="ping")
        # One more round, so that the last replay returns `ping` from the memo.
        await step.do("after ping", arecord, event.instance_id, "after ping")
        stamp = ping.timestamp
        is_datetime = isinstance(stamp, datetime)
        return {
            "type": ping.type,
            "payload": ping.payload,
            "timestamp_type": type(stamp).__name__,
            "timestamp": stamp.isoformat() if is_datetime else str(stamp),
            "is_utc": is_datetime and stamp.utcoffset() == timedelta(0),
        }


class EventTimeoutCaught(Workflow[dict[str, Any]]):
    name = "steps-event-timeout-caught"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        try:
            await step.wait_for_event("approval", type="approval", timeout=0.3)
        except EventTimeoutError as err:
            return {"caught": type(err).__name__, "message": str(err)}
        return {"caught": None}


class EventTimeoutUncaught(Workflow[dict[str, Any]]):
    name = "steps-event-timeout-uncaught"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        approval = await step.wait_for_event("approval", type="approval", timeout=0.3)
        return approval.payload


class ParallelSteps(Workflow[dict[str, Any]]):
    name = "steps-parallel"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        iid = event.instance_id
        once = RetryPolicy(limit=0)
        a, b = await asyncio.gather(
            step.do("a", meet, iid, "a", "b", retries=once),
            step.do("b", meet, iid, "b", "a", retries=once),
        )
        return {"a": a, "b": b}


class NestedGathers(Workflow[dict[str, Any]]):
    """A step, then two branches of two steps each: all four must be in flight together."""

    name = "steps-nested-gathers"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        iid = event.instance_id
        once = RetryPolicy(limit=0)
        partners = {"x 1": "y 2", "y 2": "x 1", "x 2": "y 1", "y 1": "x 2"}

        async def branch(prefix: str) -> list[str]:
            names = [f"{prefix} 1", f"{prefix} 2"]
            return list(
                await asyncio.gather(
                    *(
                        step.do(name, meet, iid, name, partners[name], retries=once)
                        for name in names
                    )
                )
            )

        await step.do("first", echo, "first")
        return list(await asyncio.gather(branch("x"), branch("y")))


class StepAlongsideSleep(Workflow[dict[str, Any]]):
    name = "steps-step-alongside-sleep"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        work, _ = await asyncio.gather(
            step.do("work", gated, event.instance_id, retries=RetryPolicy(limit=0)),
            step.sleep("nap", 0.3),
        )
        return work


class BadResult(BaseModel):
    kind: Literal["set", "object", "huge", "surrogate"]


class ReturnsBadResult(Workflow[BadResult]):
    name = "steps-returns-bad-result"

    async def run(self, event: WorkflowEvent[BadResult], step: WorkflowStep) -> Any:
        return await step.do(
            "produce", unserializable, event.payload.kind, retries=RetryPolicy(limit=3, delay=0.1)
        )


class ModelResults(Workflow[dict[str, Any]]):
    name = "steps-model-results"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        typed = await step.do("typed", typed_point, 1, 2)
        untyped = await step.do("untyped", untyped_point, 3, 4)
        listed = await step.do("listed", points, 2)
        found = await step.do("found", maybe_point, True)
        missing = await step.do("missing", maybe_point, False)
        return {
            "typed_is_point": isinstance(typed, Point),
            "typed_x": typed.x if isinstance(typed, Point) else None,
            "untyped_type": type(untyped).__name__,
            "untyped": untyped if isinstance(untyped, dict) else None,
            "listed": [type(item).__name__ for item in listed],
            "found": type(found).__name__,
            "missing": missing,
        }


class Threads(Workflow[dict[str, Any]]):
    name = "steps-threads"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        sync_thread = await step.do("sync", thread_of_sync_step)
        async_thread = await step.do("async", thread_of_async_step)
        return {"sync": sync_thread, "async": async_thread}


class RaisesInRun(Workflow[dict[str, Any]]):
    name = "steps-raises-in-run"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        await step.do("count", arecord, event.instance_id, "count")
        raise LedgerMismatchError("ledger is off by 3 cents")


class Untyped(Workflow):  # type: ignore[type-arg]  # deliberately without a params type
    name = "steps-untyped"

    async def run(self, event: WorkflowEvent[Any], step: WorkflowStep) -> Any:
        TIMESTAMPS[event.instance_id].append(event.timestamp)
        await step.do("touch", arecord, event.instance_id, "touch")
        await step.sleep("short nap", 0.2)
        return {
            "payload": event.payload,
            "payload_type": type(event.payload).__name__,
            "instance_id": event.instance_id,
            "workflow": event.workflow,
        }


# --- memoization -------------------------------------------------------------------------------


async def test_completed_steps_run_once_across_sleeps_events_and_replays(env: TestEnv) -> None:
    await env.start_worker(Memo)
    instance = await env.client.create(Memo)

    await waiting_for_event(instance, "go")
    await instance.send_event("go", {"n": 7})

    assert await instance.result(timeout=20) == [
        "first done",
        "second done",
        {"n": 7},
        "third done",
    ]
    assert CALLS[instance.id] == ["first", "second", "third"]
    # A sleep and an event wait each end a replay, so run() was entered at least three times.
    assert REPLAYS[instance.id] >= 3
    status = await instance.status()
    assert [(s.name, s.kind, s.status) for s in status.steps] == [
        ("first", "do", "complete"),
        ("pause", "sleep", "complete"),
        ("second", "do", "complete"),
        ("go", "wait_for_event", "complete"),
        ("third", "do", "complete"),
    ]
    assert [s.attempts for s in status.steps if s.kind == "do"] == [1, 1, 1]


# --- retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "schedule"),
    [
        ("constant", [0.2, 0.2]),
        ("linear", [0.2, 0.4]),
        ("exponential", [0.2, 0.4]),
    ],
)
async def test_a_failing_step_is_retried_after_its_backoff_until_it_succeeds(
    env: TestEnv, backoff: str, schedule: list[float]
) -> None:
    await env.start_worker(Flaky)
    params = RetryParams(backoff=backoff, failures=2, limit=3)  # type: ignore[arg-type]
    instance = await env.client.create(Flaky, params)
    backoffs = asyncio.create_task(watch_backoffs(instance))

    assert await instance.result(timeout=20) == "succeeded on attempt 3"
    assert (await instance.status()).steps[0].attempts == 3
    times = ATTEMPT_TIMES[instance.id]
    assert len(times) == 3
    gaps = [later - earlier for earlier, later in pairwise(times)]
    for gap, delay in zip(gaps, schedule, strict=True):
        assert gap >= delay, (
            f"retry came {gap:.3f}s after the failure, before its {delay}s back-off"
        )
    assert_backoffs_match(await backoffs, {1: schedule[0], 2: schedule[1]}, must_see={1, 2})


async def test_max_delay_caps_each_backoff(env: TestEnv) -> None:
    await env.start_worker(Flaky)
    params = RetryParams(backoff="exponential", failures=3, limit=3, max_delay=0.25)
    instance = await env.client.create(Flaky, params)
    backoffs = asyncio.create_task(watch_backoffs(instance))

    assert await instance.result(timeout=20) == "succeeded on attempt 4"
    assert (await instance.status()).steps[0].attempts == 4
    times = ATTEMPT_TIMES[instance.id]
    gaps = [later - earlier for earlier, later in pairwise(times)]
    # Uncapped, exponential from 0.2 s would be 0.2, 0.4, 0.8.
    schedule = [0.2, 0.25, 0.25]
    for gap, delay in zip(gaps, schedule, strict=True):
        assert gap >= delay, (
            f"retry came {gap:.3f}s after the failure, before its {delay}s back-off"
        )
    assert_backoffs_match(await backoffs, {1: 0.2, 2: 0.25, 3: 0.25}, must_see={2, 3})


async def test_a_step_that_always_fails_errors_the_instance_after_its_retries(
    env: TestEnv,
) -> None:
    await env.start_worker(AlwaysFails)
    instance = await env.client.create(AlwaysFails)

    failure = await failure_of(instance)

    assert failure.status == "errored"
    assert failure.error is not None
    assert failure.error.name == "StepFailedError"
    assert "the ledger is locked" in failure.error.message
    assert failure.error.traceback
    assert CALLS[instance.id] == ["always fails"] * 3
    step = (await instance.status()).steps[0]
    assert (step.status, step.attempts) == ("failed", 3)
    assert step.error is not None
    assert step.error.name == "ValueError"


async def test_a_non_retryable_error_fails_the_step_after_one_attempt(env: TestEnv) -> None:
    await env.start_worker(Refuses)
    instance = await env.client.create(Refuses)

    failure = await failure_of(instance)

    assert failure.error is not None
    assert failure.error.name == "StepFailedError"
    assert "card declined" in failure.error.message
    assert CALLS[instance.id] == ["refuses"]
    step = (await instance.status()).steps[0]
    assert (step.status, step.attempts) == ("failed", 1)


@pytest.mark.parametrize(
    ("custom", "cause_type", "recorded"),
    [
        (False, "ValueError", None),
        (True, "RecordedError", ("InventoryError", "out of stock")),
    ],
)
async def test_run_can_catch_a_failed_step_and_see_its_cause(
    env: TestEnv, custom: bool, cause_type: str, recorded: tuple[str, str] | None
) -> None:
    await env.start_worker(CatchesFailure)
    instance = await env.client.create(CatchesFailure, CatchParams(custom=custom))

    output = await instance.result(timeout=20)

    message = recorded[1] if recorded else "bad quantity"
    assert output == {
        "fallback": True,
        "step": "reserve",
        "attempts": 2,
        "cause_type": cause_type,
        "cause_message": f"{recorded[0]}: {message}" if recorded else message,
        "recorded_name": recorded[0] if recorded else None,
        "recorded_message": message if recorded else None,
    }
    assert len(CALLS[instance.id]) == 2


# --- timeouts ----------------------------------------------------------------------------------


async def test_an_async_step_past_its_timeout_is_retried_then_fails(env: TestEnv) -> None:
    await env.start_worker(HangsAsync)
    instance = await env.client.create(HangsAsync)

    failure = await failure_of(instance)

    assert failure.error is not None
    assert failure.error.name == "StepFailedError"
    assert "timed out" in failure.error.message
    assert CALLS[instance.id] == ["hangs", "hangs"]
    step = (await instance.status()).steps[0]
    assert (step.status, step.attempts) == ("failed", 2)
    assert step.error is not None
    assert step.error.name == "StepTimeoutError"


async def test_a_blocking_sync_step_times_out_while_the_worker_keeps_serving(
    env: TestEnv,
) -> None:
    await env.start_worker(BlocksSync, Trivial)
    blocked = await env.client.create(BlocksSync)
    await assert_eventually(lambda: _true_if(CALLS[blocked.id]), what="the blocking step to start")

    other = await env.client.create(Trivial)
    assert await other.result(timeout=20) == "only done"
    # The other instance finished while the blocking body was still inside time.sleep(2).
    assert BLOCKERS_DONE[blocked.id] == []

    failure = await failure_of(blocked)
    assert failure.error is not None
    assert failure.error.name == "StepFailedError"
    assert "timed out" in failure.error.message
    step = (await blocked.status()).steps[0]
    assert (step.status, step.attempts) == ("failed", 2)


# --- sleeps ------------------------------------------------------------------------------------


async def test_a_sleeping_instance_waits_then_completes_after_the_due_time(env: TestEnv) -> None:
    await env.start_worker(Nap)
    instance = await env.client.create(Nap)

    status = await eventually_status(
        instance,
        lambda s: s.status == "waiting" and has_step(s, "nap", "sleep", "sleeping"),
        "the instance to sleep",
    )
    wake_at = step_named(status, "nap").wake_at
    assert wake_at is not None

    assert await instance.result(timeout=20) == "rested"
    assert datetime.now(UTC) >= wake_at
    nap = step_named(await instance.status(), "nap")
    assert nap.status == "complete"
    assert nap.ended_at is not None
    assert nap.ended_at >= wake_at


async def test_sleep_until_waits_for_an_aware_datetime(env: TestEnv) -> None:
    await env.start_worker(NapUntil)
    # Long enough for the poll below to see the sleep on a machine busy with parallel tests.
    due = datetime.now(UTC) + timedelta(seconds=3)
    instance = await env.client.create(NapUntil, Until(at=due))

    status = await eventually_status(
        instance,
        lambda s: s.status == "waiting" and has_step(s, "alarm", "sleep", "sleeping"),
        "the instance to sleep until its alarm",
    )
    assert step_named(status, "alarm").wake_at == due

    assert await instance.result(timeout=20) == "after alarm done"
    assert datetime.now(UTC) >= due
    alarm = step_named(await instance.status(), "alarm")
    assert alarm.status == "complete"
    assert alarm.ended_at is not None
    assert alarm.ended_at >= due


async def test_sleep_until_a_past_time_returns_at_once(env: TestEnv) -> None:
    await env.start_worker(NapUntil)
    instance = await env.client.create(NapUntil, Until(at=datetime.now(UTC) - timedelta(hours=1)))

    assert await instance.result(timeout=20) == "after alarm done"
    alarm = step_named(await instance.status(), "alarm")
    assert (alarm.kind, alarm.status) == ("sleep", "complete")
    # Started and ended in the same round: the replay never parked on it.
    assert alarm.started_at is not None
    assert alarm.ended_at == alarm.started_at


# --- events ------------------------------------------------------------------------------------


async def test_an_event_sent_before_the_wait_is_buffered_for_it(env: TestEnv) -> None:
    await env.start_worker(WaitsAfterGate)
    instance = await env.client.create(WaitsAfterGate)
    await assert_eventually(
        lambda: _true_if(instance.id in HELD), what="the step before the wait to start"
    )

    await instance.send_event("go", {"early": True})
    assert [s.name for s in (await instance.status()).steps] == ["hold"]
    GATES[instance.id].set()

    assert await instance.result(timeout=20) == {"early": True}


async def test_an_event_sent_while_the_instance_waits_wakes_it(env: TestEnv) -> None:
    await env.start_worker(WaitsAtOnce)
    instance = await env.client.create(WaitsAtOnce)
    status = await waiting_for_event(instance, "go")
    assert step_named(status, "go").event_type == "go"

    await instance.send_event("go", [1, 2, 3])

    assert await instance.result(timeout=20) == [1, 2, 3]


async def test_buffered_events_are_taken_oldest_first_per_type(env: TestEnv) -> None:
    await env.start_worker(Fifo)
    instance = await env.client.create(Fifo)
    await assert_eventually(
        lambda: _true_if(instance.id in HELD), what="the step before the waits to start"
    )

    await instance.send_event("a", 1)
    await instance.send_event("a", 2)
    await instance.send_event("b", 3)
    GATES[instance.id].set()

    assert await instance.result(timeout=20) == [1, 3, 2]


async def test_a_received_event_carries_its_type_payload_and_utc_timestamp(env: TestEnv) -> None:
    await env.start_worker(EventFields)
    instance = await env.client.create(EventFields)
    await waiting_for_event(instance, "ping")

    # The engine's clock: the database's, as the client read it and carried it since, a
    # fraction of a millisecond off on a busy machine even when both are right.
    before = env.client.runtime.clock.now()
    await instance.send_event("ping", {"from": "billing"})
    after = env.client.runtime.clock.now()

    output = await instance.result(timeout=20)
    assert output["type"] == "ping"
    assert output["payload"] == {"from": "billing"}
    assert output["timestamp_type"] == "datetime"
    assert output["is_utc"] is True
    assert before <= datetime.fromisoformat(output["timestamp"]) <= after


async def test_run_can_catch_an_event_timeout(env: TestEnv) -> None:
    await env.start_worker(EventTimeoutCaught)
    instance = await env.client.create(EventTimeoutCaught)

    output = await instance.result(timeout=20)

    assert output["caught"] == "EventTimeoutError"
    assert "approval" in output["message"]
    step = step_named(await instance.status(), "approval")
    assert (step.kind, step.status) == ("wait_for_event", "failed")


async def test_an_uncaught_event_timeout_errors_the_instance(env: TestEnv) -> None:
    await env.start_worker(EventTimeoutUncaught)
    instance = await env.client.create(EventTimeoutUncaught)

    failure = await failure_of(instance)

    assert failure.status == "errored"
    assert failure.error is not None
    assert failure.error.name == "EventTimeoutError"
    assert "approval" in failure.error.message


# --- parallel steps ----------------------------------------------------------------------------


async def test_gathered_steps_run_concurrently(env: TestEnv) -> None:
    await env.start_worker(ParallelSteps)
    instance = await env.client.create(ParallelSteps)

    # Each step waits for the other to start: run one after the other, the first would fail.
    assert await instance.result(timeout=20) == {"a": "a", "b": "b"}
    assert STARTED[instance.id] == {"a", "b"}
    status = await instance.status()
    assert sorted((s.name, s.attempts) for s in status.steps) == [("a", 1), ("b", 1)]


async def test_steps_in_nested_gathers_after_a_step_are_in_flight_together(env: TestEnv) -> None:
    await env.start_worker(NestedGathers)
    instance = await env.client.create(NestedGathers)

    # Each step waits for one in the other branch: one left to a later round would fail.
    assert await instance.result(timeout=20) == [["x 1", "x 2"], ["y 1", "y 2"]]
    assert STARTED[instance.id] == {"x 1", "x 2", "y 1", "y 2"}


async def test_a_step_and_a_sleep_gathered_are_in_flight_together(env: TestEnv) -> None:
    await env.start_worker(StepAlongsideSleep)
    instance = await env.client.create(StepAlongsideSleep)

    # The step holds until the sleep has begun: run one after the other, the step would time
    # out (step first) or start only after the sleep ended (sleep first).
    await eventually_status(
        instance,
        lambda s: {"work", "nap"} <= {step.name for step in s.steps},
        "the step and the sleep to start",
    )
    GATES[instance.id].set()

    assert await instance.result(timeout=20) == "released"
    status = await instance.status()
    work, nap = step_named(status, "work"), step_named(status, "nap")
    assert (work.status, work.attempts, nap.status) == ("complete", 1, "complete")
    assert work.started_at is not None
    assert work.ended_at is not None
    assert nap.started_at is not None
    assert nap.ended_at is not None
    # Their recorded intervals overlap.
    assert work.started_at < nap.ended_at
    assert nap.started_at < work.ended_at
    assert nap.ended_at >= nap.started_at + timedelta(seconds=0.3)


# --- results -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "type_name", "reason"),
    [
        ("set", "set", "not JSON-serializable"),
        ("object", "object", "not JSON-serializable"),
        ("huge", "str", "over the 1048576-byte limit"),
        ("surrogate", "str", "lone surrogate"),
    ],
)
async def test_a_result_that_cannot_be_recorded_fails_the_step_at_once(
    env: TestEnv, kind: str, type_name: str, reason: str
) -> None:
    await env.start_worker(ReturnsBadResult)
    instance = await env.client.create(ReturnsBadResult, BadResult(kind=kind))  # type: ignore[arg-type]

    failure = await failure_of(instance)

    assert failure.error is not None
    assert failure.error.name == "StepFailedError"
    step = step_named(await instance.status(), "produce")
    assert (step.status, step.attempts) == ("failed", 1)
    assert step.error is not None
    assert step.error.name == "SerializationError"
    assert "'produce'" in step.error.message
    assert f"returned a {type_name} " in step.error.message
    assert reason in step.error.message


async def test_a_step_annotated_with_a_model_returns_the_model_and_others_return_json(
    env: TestEnv,
) -> None:
    await env.start_worker(ModelResults)
    instance = await env.client.create(ModelResults)

    assert await instance.result(timeout=20) == {
        "typed_is_point": True,
        "typed_x": 1,
        "untyped_type": "dict",
        "untyped": {"x": 3, "y": 4},
        "listed": ["Point", "Point"],
        "found": "Point",
        "missing": None,
    }


async def test_a_sync_step_runs_in_a_worker_thread_and_an_async_one_on_the_loop(
    env: TestEnv,
) -> None:
    await env.start_worker(Threads)
    instance = await env.client.create(Threads)

    output = await instance.result(timeout=20)

    # The worker shares this test's event loop, so the loop thread is this thread.
    loop_thread = threading.get_ident()
    assert output["async"] == loop_thread
    assert output["sync"] != loop_thread


# --- run itself --------------------------------------------------------------------------------


async def test_an_uncaught_exception_in_run_errors_the_instance(env: TestEnv) -> None:
    await env.start_worker(RaisesInRun)
    instance = await env.client.create(RaisesInRun)

    failure = await failure_of(instance)

    assert failure.status == "errored"
    assert failure.error is not None
    assert failure.error.name == "LedgerMismatchError"
    assert failure.error.message == "ledger is off by 3 cents"
    assert failure.error.traceback
    assert "LedgerMismatchError" in failure.error.traceback
    assert CALLS[instance.id] == ["count"]


async def test_a_workflow_without_a_params_type_gets_a_dict_and_its_identity(
    env: TestEnv,
) -> None:
    await env.start_worker(Untyped)
    instance_id = f"untyped-{uuid.uuid4().hex[:8]}"
    params = {"order": "o-1", "lines": [{"sku": "A", "qty": 2}]}
    instance = await env.client.create("steps-untyped", params, id=instance_id)

    assert await instance.result(timeout=20) == {
        "payload": params,
        "payload_type": "dict",
        "instance_id": instance_id,
        "workflow": "steps-untyped",
    }
    created_at = (await instance.status()).created_at
    seen = TIMESTAMPS[instance_id]
    assert len(seen) >= 2
    assert all(stamp == created_at for stamp in seen)
    assert all(stamp.utcoffset() == timedelta(0) for stamp in seen)


async def two_items() -> list[str]:
    return ["a", "b"]


async def echo(item: str) -> str:
    return item


class ChangesWhatItGets(Workflow[dict[str, Any]]):
    """Changes a memoized result and an event's payload in place, as ordinary code may."""

    name = "changes-what-it-gets"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        items = await step.do("items", two_items)
        items.append("extra")
        processed = [await step.do(f"process {i}", echo, item) for i, item in enumerate(items)]
        received = await step.wait_for_event("order", type="order")
        received.payload["seen"] = True
        await step.do("after the event", echo, "x")
        return {"processed": processed, "payload": received.payload}


async def test_changing_a_recorded_value_in_place_changes_neither_the_record_nor_the_replay(
    env: TestEnv,
) -> None:
    """Each round hands the workflow its own copy: a change made to it is made again by the
    next replay, never recorded as the step's result (nor added to at each round)."""
    await env.start_worker(ChangesWhatItGets)
    instance = await env.client.create(ChangesWhatItGets)
    await waiting_for_event(instance, "order")
    await instance.send_event("order", {"id": 7})
    assert await instance.result(timeout=20) == {
        "processed": ["a", "b", "extra"],
        "payload": {"id": 7, "seen": True},
    }
    steps = {step.name: step for step in (await instance.status()).steps}
    assert steps["items"].output == ["a", "b"]
    assert steps["order"].output["payload"] == {"id": 7}
    assert "process 3" not in steps


# --- what a step call refuses, and bodies of other shapes --------------------------------------


class NamedLikeAnOccurrence(Workflow[dict[str, Any]]):
    name = "named-like-an-occurrence"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        items = [await step.do(f"item #{i}", echo, f"item {i}") for i in (1, 2)]  # fine
        await step.do("page", echo, "one")
        await step.do("page#2", echo, "the step named page#2")
        # Would be recorded as "page#2", the step above: refused before it reads that record.
        return [*items, await step.do("page", echo, "two")]


class NoTimeout(Workflow[dict[str, Any]]):
    name = "no-timeout"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        # The attempt's lease (now + timeout) would be past the year 9999.
        return await step.do("slow", echo, "done", timeout=timedelta.max)


@pytest.mark.parametrize(
    ("workflow", "says"),
    [
        (NamedLikeAnOccurrence, "step 'page' would be recorded as 'page#2', which is step"),
        (NoTimeout, "step 'slow': timeout 999999999 days, 23:59:59.999999 reaches past"),
    ],
)
async def test_a_step_call_it_cannot_record_errors_the_instance_saying_why(
    env: TestEnv, workflow: type[Workflow[Any]], says: str
) -> None:
    await env.start_worker(workflow)
    instance = await env.client.create(workflow)

    failure = await failure_of(instance)

    assert failure.error is not None
    assert failure.error.name == "ValueError"
    assert failure.error.message.startswith(says), failure.error.message


@dataclasses.dataclass  # with its generated __eq__, unhashable
class PriceInEuros:
    currency: str

    async def __call__(self, amount: int) -> Point:
        return Point(x=amount, y=len(self.currency))


async def make_quote(price: int, quantity: int) -> Quote:
    return Quote(price=price, qty=quantity)


class OtherBodies(Workflow[dict[str, Any]]):
    name = "other-bodies"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        point = await step.do("price", PriceInEuros("EUR"), 10)
        quote = await step.do("quote", make_quote, 2, 3)
        await step.sleep("replay", 0.1)  # a replay then reads both back from the record
        assert isinstance(point, Point)
        assert isinstance(quote, Quote)
        return {"x": point.x, "total": quote.total}


async def test_a_callable_object_and_a_strict_model_with_computed_fields_replay(
    env: TestEnv,
) -> None:
    await env.start_worker(OtherBodies)
    instance = await env.client.create(OtherBodies)

    assert await instance.result(timeout=20) == {"x": 10, "total": 6}
    steps = {step.name: step for step in (await instance.status()).steps}
    assert steps["quote"].output == {"price": 2, "qty": 3}


class SwallowsNonDeterminism(Workflow[dict[str, Any]]):
    name = "swallows-non-determinism"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        try:
            await asyncio.gather(step.do("same", echo, "a"), step.do("same", echo, "b"))
        except Exception:  # what a careless workflow does
            return "carried on"
        return "both ran"


#: The event type each instance's wait asks for: a test changes it, as a deploy changes code.
WAIT_TYPES: dict[str, str] = {}


class WaitsForAType(Workflow[dict[str, Any]]):
    name = "waits-for-a-type"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        received = await step.wait_for_event("decision", type=WAIT_TYPES[event.instance_id])
        return received.type


async def test_non_determinism_errors_the_instance_even_when_run_catches_it(
    env: TestEnv,
) -> None:
    await env.start_worker(SwallowsNonDeterminism)
    instance = await env.client.create(SwallowsNonDeterminism)

    failure = await failure_of(instance)

    assert failure.error is not None
    assert failure.error.name == "NonDeterminismError"


async def test_a_wait_replayed_for_another_event_type_is_non_determinism(env: TestEnv) -> None:
    await env.start_worker(WaitsForAType)
    instance_id = f"typed-{uuid.uuid4().hex[:8]}"
    WAIT_TYPES[instance_id] = "approval"
    instance = await env.client.create(WaitsForAType, id=instance_id)
    await waiting_for_event(instance, "decision")

    WAIT_TYPES[instance_id] = "rejection"  # the code changed under the waiting instance
    await instance.send_event("rejection")

    failure = await failure_of(instance)
    assert failure.error is not None
    assert failure.error.name == "NonDeterminismError"
    assert "'approval'" in failure.error.message
