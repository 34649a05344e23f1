"""Replay an instance: re-run `run` against its recorded steps and decide what happens next.

A replay is one round. Memoized steps return at once; a due sleep or a buffered event is taken
on the spot; a step that must run, a sleep not yet due or an event not yet sent parks its branch
of `run` on a future that is never resolved. When every branch is parked (or `run` returned),
the round ends: the parked futures are cancelled, and the caller claims the steps to execute and
schedules the timers. Nothing of the instance stays in memory after the round.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import inspect
import traceback
import typing
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, NoReturn

from pydantic import BaseModel, TypeAdapter, ValidationError

from processor.durations import Duration, parse_duration
from processor.engine.results import copy_json_data, encode_result, is_utf8
from processor.errors import (
    EventTimeoutError,
    NonDeterminismError,
    NonRetryableError,
    RecordedError,
    SerializationError,
    StepFailedError,
)
from processor.retry import (
    DEFAULT_EVENT_TIMEOUT,
    DEFAULT_RETRY,
    DEFAULT_STEP_TIMEOUT,
    MAX_SLEEP,
    RetryPolicy,
)
from processor.step import ReceivedEvent, WorkflowStep
from processor.store import driver
from processor.store.driver import DriverSession
from processor.store.tables import EventRow, InstanceRow, StepRow, new_row
from processor.telemetry.tracing import WaitKind
from processor.workflow import Workflow, WorkflowEvent
from schemas import ErrorInfo, StepKind, StepStatusName

#: Event-loop turns with no step activity after which every branch of `run` counts as parked.
#: Each nested asyncio.gather costs one turn before its branches reach a step.
QUIET_TURNS = 20
#: A running attempt whose worker has not reported by timeout + this is presumed lost.
LEASE_GRACE = timedelta(seconds=30)
#: A worker whose last heartbeat is older than this is presumed dead, its attempts lost.
WORKER_STALE = timedelta(seconds=10)
#: A report delivered to a worker is recorded within this: it waits at most a second for a
#: slot (see `Replay._attempt_is_lost`, worker.REPORT_SLOT_WAIT_S).
REPORT_DELIVERY_GRACE = timedelta(seconds=5)
#: An attempt unreported this long after it could last report is lost, whatever its run queue
#: shows: a backlog that never drains must not keep it running for ever.
REPORT_CEILING = timedelta(minutes=5)
MAX_STEP_NAME = 250


@dataclass
class PendingAttempt:
    """A step attempt the round decided to run, with what running it needs."""

    step: StepRow
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    retries: RetryPolicy
    timeout: timedelta


@dataclass
class Claimant:
    """The worker process that replays and runs attempts."""

    worker_id: str
    #: (instance id, generation, step key, attempt) of the attempts this process runs now,
    #: from before their claim commits (so no round, however quick, takes them for lost)
    #: until their report is recorded or published.
    running: set[tuple[str, int, str, int]] = field(default_factory=set)
    #: Attempts this process claimed and will not report: cancelled as it stops, claimed for
    #: a round whose submitter was gone, or in a transaction that failed (its commit may have
    #: happened). A round takes them for lost at once. One of this process's attempts in
    #: neither set has its report on the way, and a round that comes first (a sibling step's
    #: report, say) waits for it, unless the lease ran out.
    dropped: set[tuple[str, int, str, int]] = field(default_factory=set)
    #: Since when this process's heartbeats have all succeeded (None after a failed one).
    beating_since: datetime | None = None
    #: When this process last saw each workflow's run queue hold no ready message (the
    #: lost-run sweep reads them every second): every report published before then had been
    #: delivered by then.
    run_drained_at: dict[str, datetime] = field(default_factory=dict)

    def start(self, attempts: typing.Iterable[tuple[str, int, str, int]]) -> None:
        """These attempts are claimed for this process to run (the claim not committed yet)."""
        attempts = list(attempts)
        self.running.update(attempts)
        self.dropped.difference_update(attempts)

    def drop(self, attempts: typing.Iterable[tuple[str, int, str, int]]) -> None:
        """These attempts will not be reported (see `dropped`)."""
        attempts = list(attempts)
        self.running.difference_update(attempts)
        self.dropped.update(attempts)

    def trusts_heartbeats(self, now: datetime) -> bool:
        """Whether another worker's stale heartbeat means it died. Not right after a database
        outage: every worker's heartbeat went stale during it, and the live ones need a beat
        interval to catch up; so only once this process has beaten for WORKER_STALE itself."""
        return self.beating_since is not None and now - self.beating_since >= WORKER_STALE


@dataclass(frozen=True)
class EndedWait:
    """A sleep or an event wait that this round saw end: it gets a span once committed."""

    step: str
    kind: WaitKind
    started: datetime
    #: When the sleep was due, or the wait would time out.
    due: datetime | None
    #: `woke` (a sleep), `received` (an event) or `timed_out` (a wait).
    outcome: str


@dataclass
class ReplayResult:
    outcome: Literal["complete", "errored", "suspended"]
    output: Any = None
    error: ErrorInfo | None = None
    attempts: list[PendingAttempt] = field(default_factory=list)
    #: Some branch waits for an attempt another round is running.
    waits_on_running: bool = False
    #: Timers set in this round: each needs a delayed wake-up message.
    wakeups: set[datetime] = field(default_factory=set)
    #: Sleeps and event waits that ended in this round.
    ended_waits: list[EndedWait] = field(default_factory=list)
    #: How late each timer this round acted on was (a sleep, a back-off, a wait's timeout).
    timer_lateness_s: list[float] = field(default_factory=list)


def error_info(error: BaseException) -> ErrorInfo:
    return ErrorInfo(
        name=type(error).__name__,
        message=str(error),
        traceback="".join(traceback.format_exception(error)),
    )


def rebuild_error(info: ErrorInfo) -> Exception:
    """A recorded error as an exception: builtin types as themselves, others as RecordedError."""
    cls = getattr(builtins, info.name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(info.message)
        except Exception:  # a builtin whose constructor wants other arguments
            pass
    if info.name == NonRetryableError.__name__:
        return NonRetryableError(info.message)
    return RecordedError(info.name, info.message)


def result_type(fn: Callable[..., Any]) -> TypeAdapter[Any] | None:
    """What reads `fn`'s recorded result back as the models it is annotated to return (`Model`,
    `Model | None`, `list[Model]`, ...); None if the annotation names no pydantic model."""
    try:
        return _cached_result_type(fn)
    except TypeError:  # an unhashable callable object (a dataclass instance, say)
        return _find_result_type(fn)


@functools.lru_cache(maxsize=1024)
def _cached_result_type(fn: Callable[..., Any]) -> TypeAdapter[Any] | None:
    return _find_result_type(fn)


def _find_result_type(fn: Callable[..., Any]) -> TypeAdapter[Any] | None:
    target = fn.func if isinstance(fn, functools.partial) else fn
    if not inspect.isroutine(target) and not inspect.isclass(target):
        target = type(target).__call__  # a callable object: its __call__ says what it returns
    try:
        hint = typing.get_type_hints(target).get("return")
        if hint is None or not _names_a_model(hint):
            return None
        return TypeAdapter(hint)
    except Exception:  # unresolvable annotations: hand back plain JSON
        return None


def _names_a_model(hint: Any) -> bool:
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return True
    return any(_names_a_model(arg) for arg in typing.get_args(hint))


class _ReplayClosed(BaseException):
    """Raised by step calls made after the round ended (from a `finally` block, say): the
    round's state is decided, and such a call may neither park nor record anything."""


class Replay:
    """One round of one instance. Its methods back `WorkflowStep`."""

    def __init__(
        self,
        session: DriverSession,
        instance: InstanceRow,
        steps: typing.Sequence[StepRow],
        *,
        now: datetime,
        claimant: Claimant,
        last_beats: dict[str, datetime] | None,
    ) -> None:
        self.session = session
        self.instance = instance
        self.now = now
        self.claimant = claimant
        self.last_beats = last_beats
        self.steps = {step.key: step for step in steps}
        self.result = ReplayResult("suspended")
        self._next_seq = max((step.seq for step in steps), default=-1) + 1
        self._occurrences: Counter[str] = Counter()
        #: The task that first used each step name: a repeated name must stay in one branch,
        #: or which occurrence is which would depend on the order branches reach it.
        self._name_owner: dict[str, asyncio.Task[Any] | None] = {}
        self._is_closed = False
        #: The first NonDeterminismError raised into `run` in this round (`_nondeterministic`).
        self._nondeterminism: NonDeterminismError | None = None
        self._activity = 0
        self._busy = 0
        self._parked: list[asyncio.Future[None]] = []
        self._events: list[EventRow] | None = None
        self._events_lock = asyncio.Lock()

    async def run(self, workflow: type[Workflow[Any]]) -> ReplayResult:
        try:
            payload = workflow.parse_params(self.instance.params)
        except ValidationError as error:
            return ReplayResult("errored", error=error_info(error))
        event = WorkflowEvent(payload, self.instance.id, workflow.name, self.instance.created_at)
        task = asyncio.ensure_future(workflow().run(event, WorkflowStep(self)))
        await self._until_quiet(task)
        is_parked = not task.done()
        self._is_closed = True
        for future in self._parked:
            future.cancel()
        task.cancel()
        # Cancelled branches unwind now; a step call in a `finally` raises _ReplayClosed.
        await asyncio.wait([task])
        if self._nondeterminism is not None:
            return self._with_telemetry("errored", error=error_info(self._nondeterminism))
        if is_parked:
            if not task.cancelled():
                task.exception()  # _ReplayClosed from a `finally`: nothing to report
            if self._parked:
                return self.result
            return self._with_telemetry(
                "errored",
                error=ErrorInfo(
                    name="NonDeterminismError",
                    message="run() awaited something other than a step; await only steps "
                    "(and asyncio.gather of them) in run()",
                ),
            )
        failure = task.exception()
        if failure is not None:
            return self._with_telemetry("errored", error=error_info(failure))
        try:
            output = encode_result("run", task.result())
        except SerializationError as error:
            return self._with_telemetry("errored", error=error_info(error))
        return self._with_telemetry("complete", output=output)

    def _with_telemetry(
        self,
        outcome: Literal["complete", "errored"],
        *,
        output: Any = None,
        error: ErrorInfo | None = None,
    ) -> ReplayResult:
        """A final result that still reports the waits and timers this round saw end."""
        return ReplayResult(
            outcome,
            output=output,
            error=error,
            ended_waits=self.result.ended_waits,
            timer_lateness_s=self.result.timer_lateness_s,
        )

    def _timer_fired(self, row: StepRow) -> None:
        if row.wake_at is not None:
            self.result.timer_lateness_s.append((self.now - row.wake_at).total_seconds())

    def _wait_ended(self, row: StepRow, kind: WaitKind, outcome: str) -> None:
        if row.started_at is not None:
            self.result.ended_waits.append(
                EndedWait(row.key, kind, row.started_at, row.wake_at, outcome)
            )

    async def _until_quiet(self, task: asyncio.Future[Any]) -> None:
        seen, quiet = -1, 0
        while not task.done() and quiet < QUIET_TURNS:
            if self._activity != seen or self._busy:
                seen, quiet = self._activity, 0
            else:
                quiet += 1
            await asyncio.sleep(0)

    async def _park(self) -> NoReturn:
        if self._is_closed:
            raise _ReplayClosed
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._parked.append(future)
        await future
        raise AssertionError("a parked step was resumed")

    def _step(self, name: str, kind: StepKind) -> tuple[StepRow, bool]:
        """The step's row, created if this is its first run. Returns (row, is_new)."""
        self._activity += 1
        if self._is_closed:
            raise _ReplayClosed
        if not isinstance(name, str) or not name or len(name) > MAX_STEP_NAME or not is_utf8(name):
            raise ValueError(
                f"a step name must be a non-empty string of UTF-8 of at most "
                f"{MAX_STEP_NAME} characters, got {name!r}"
            )
        branch = asyncio.current_task()
        owner = self._name_owner.setdefault(name, branch)
        if owner is not branch:
            raise self._nondeterministic(
                f"step name {name!r} is used by two parallel branches; give each branch's "
                "steps their own names (a repeated name is fine within one branch; in a loop "
                "of asyncio.gather, put the iteration in the names: f'item {batch}-{i}')"
            )
        self._occurrences[name] += 1
        count = self._occurrences[name]
        key = name if count == 1 else f"{name}#{count}"
        row = self.steps.get(key)
        if row is not None:
            if row.name != name:
                # "page#2" and the second "page": one record for two steps.
                raise ValueError(
                    f"step {name!r} would be recorded as {key!r}, which is step {row.name!r}'s "
                    f"record (a repeated name's occurrences are recorded as 'name#2', ...): "
                    "rename one of them"
                )
            if row.kind != kind:
                raise self._nondeterministic(
                    f"step {key!r} was recorded as {row.kind} but replay met it as {kind.value}: "
                    "the workflow's code changed under a running instance"
                )
            return row, False
        row = new_row(
            StepRow,
            instance_id=self.instance.id,
            key=key,
            generation=self.instance.generation,
            seq=self._next_seq,
            name=name,
            kind=kind.value,
            status=StepStatusName.RUNNING.value,
        )
        self._next_seq += 1
        self.steps[key] = row
        self.session.add(row)
        return row, True

    def _nondeterministic(self, message: str) -> NonDeterminismError:
        """The error to raise into `run`, also kept for the round: it errors the instance
        even if `run` catches it (an `except Exception` around a step, say)."""
        error = NonDeterminismError(message)
        if self._nondeterminism is None:
            self._nondeterminism = error
        return error

    def _set_timer(self, row: StepRow, wake_at: datetime) -> None:
        row.wake_at = wake_at
        row.swept_at = None
        self.result.wakeups.add(wake_at)

    def _finish(
        self,
        row: StepRow,
        status: StepStatusName,
        *,
        output: Any = None,
        error: ErrorInfo | None = None,
    ) -> None:
        row.status = status.value
        row.output = output
        row.error = None if error is None else error.model_dump(mode="json")
        row.ended_at = self.now
        if row.wake_at is not None:
            # A timer set and ended in this very round needs no wake-up message.
            self.result.wakeups.discard(row.wake_at)
        row.wake_at = None

    def _failed(self, row: StepRow) -> StepFailedError:
        info = ErrorInfo.model_validate(row.error)
        failure = StepFailedError(row.name, row.attempt, info)
        failure.__cause__ = rebuild_error(info)
        return failure

    async def do(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        retries: RetryPolicy | None,
        timeout: Duration | None,
    ) -> Any:
        if not callable(fn):
            raise TypeError(f"step {name!r}: fn must be callable, got {type(fn).__name__}")
        retries = DEFAULT_RETRY if retries is None else retries
        if not isinstance(retries, RetryPolicy):
            raise TypeError(f"step {name!r}: retries must be a RetryPolicy")
        limit = (
            DEFAULT_STEP_TIMEOUT
            if timeout is None
            else parse_duration(timeout, what=f"timeout of step {name!r}")
        )
        try:  # the attempt's lease: timedelta.max, say, would overflow it in every round
            self.now + limit + LEASE_GRACE + REPORT_CEILING
        except OverflowError:
            raise ValueError(f"step {name!r}: timeout {limit} reaches past the year 9999") from None
        row, _ = self._step(name, StepKind.DO)
        is_backing_off = row.status == StepStatusName.RETRYING
        try:
            if row.status == StepStatusName.COMPLETE:
                typed = result_type(fn)
                output = copy_json_data(row.output)
                return output if typed is None else typed.validate_python(output)
            if row.status == StepStatusName.FAILED:
                raise self._failed(row)
            if row.status == StepStatusName.RUNNING and row.attempt > 0:
                if not self._attempt_is_lost(row):
                    self.result.waits_on_running = True
                    await self._park()
                lost = ErrorInfo(
                    name="WorkerLostError",
                    message=f"the worker running attempt {row.attempt} of step {name!r} stopped "
                    "before recording a result",
                )
                if row.attempt > retries.limit:
                    self._finish(row, StepStatusName.FAILED, error=lost)
                    raise self._failed(row)
                # Retry at once: the back-off is for errors the step raised, not for crashes.
                row.status = StepStatusName.RETRYING.value
                row.error = lost.model_dump(mode="json")
                row.wake_at = self.now
            if row.status == StepStatusName.RETRYING and row.wake_at and row.wake_at > self.now:
                await self._park()
            if is_backing_off:
                self._timer_fired(row)
            self.result.attempts.append(PendingAttempt(row, fn, args, retries, limit))
            await self._park()
        finally:
            self._activity += 1

    def _attempt_is_lost(self, row: StepRow) -> bool:
        """A running attempt is lost when its worker released it (it stopped, see
        `queries.release_attempts`), when this very process dropped it (see Claimant.dropped),
        or once no report of it can still be on its way: its lease ran out, or its worker
        stopped beating, and the run queue has since been seen empty, or REPORT_CEILING has
        passed. A report waits there, behind any backlog, for whichever worker takes it next;
        one delivered before that is given REPORT_DELIVERY_GRACE to be recorded (a worker
        waits at most a second for a slot to record it in: RunConsumer.handle). Not for a
        stale heartbeat while heartbeats are not trusted (see Claimant.trusts_heartbeats):
        after an outage the owner may still be reporting."""
        if row.claimed_by is None:
            return True
        lease_over = row.wake_at is not None and row.wake_at <= self.now
        last_report_at = row.wake_at if lease_over else None
        if row.claimed_by == self.claimant.worker_id:
            attempt = (self.instance.id, self.instance.generation, row.key, row.attempt)
            if attempt in self.claimant.running:
                return False
            if attempt in self.claimant.dropped:
                return True
        elif self.last_beats is None:
            return False
        else:
            beat = self.last_beats.get(row.claimed_by)
            if beat is None:  # its row is gone: it last beat over a day ago
                return True
            stale_at = beat + WORKER_STALE
            if stale_at <= self.now and (last_report_at is None or stale_at < last_report_at):
                last_report_at = stale_at
        if last_report_at is None:
            return False
        if last_report_at <= self.now - REPORT_CEILING:
            return True
        drained = self.claimant.run_drained_at.get(self.instance.workflow)
        return drained is not None and drained >= last_report_at + REPORT_DELIVERY_GRACE

    async def sleep(self, name: str, duration: Duration) -> None:
        length = parse_duration(duration, what=f"duration of sleep {name!r}")
        if length > MAX_SLEEP:
            raise ValueError(f"sleep {name!r} of {length} is longer than 365 days")
        await self._sleep(name, self.now + length)

    async def sleep_until(self, name: str, until: datetime) -> None:
        if not isinstance(until, datetime) or until.tzinfo is None:
            raise ValueError(f"sleep_until {name!r} needs an aware datetime, got {until!r}")
        if until - self.now > MAX_SLEEP:
            raise ValueError(f"sleep_until {name!r}: {until} is more than 365 days ahead")
        await self._sleep(name, until)

    async def _sleep(self, name: str, wake_at: datetime) -> None:
        row, is_new = self._step(name, StepKind.SLEEP)
        try:
            if is_new:
                row.status = StepStatusName.SLEEPING.value
                row.started_at = self.now
                self._set_timer(row, wake_at)
            if row.status == StepStatusName.COMPLETE:
                return
            if row.wake_at is not None and row.wake_at <= self.now:
                if not is_new:  # a sleep_until a past moment is no late timer
                    self._timer_fired(row)
                self._wait_ended(row, "sleep", "woke")
                self._finish(row, StepStatusName.COMPLETE)
                return
            await self._park()
        finally:
            self._activity += 1

    async def wait_for_event(
        self, name: str, event_type: str, timeout: Duration | None
    ) -> ReceivedEvent:
        if (
            not isinstance(event_type, str)
            or not event_type
            or len(event_type) > 100
            or not is_utf8(event_type)
        ):
            raise ValueError(
                f"wait_for_event {name!r}: type must be a string of 1 to 100 characters of "
                f"UTF-8, got {event_type!r}"
            )
        limit = (
            DEFAULT_EVENT_TIMEOUT
            if timeout is None
            else parse_duration(timeout, what=f"timeout of wait_for_event {name!r}")
        )
        if limit > MAX_SLEEP:
            raise ValueError(f"wait_for_event {name!r}: timeout is longer than 365 days")
        row, is_new = self._step(name, StepKind.WAIT_FOR_EVENT)
        try:
            if is_new:
                row.status = StepStatusName.WAITING.value
                row.event_type = event_type
                row.started_at = self.now
                self._set_timer(row, self.now + limit)
            elif row.event_type != event_type:
                raise self._nondeterministic(
                    f"wait {row.key!r} was recorded waiting for {row.event_type!r} events but "
                    f"replay met it waiting for {event_type!r}: the workflow's code changed "
                    "under a running instance"
                )
            if row.status == StepStatusName.COMPLETE:
                recorded = row.output
                return ReceivedEvent(
                    recorded["type"],
                    copy_json_data(recorded["payload"]),
                    datetime.fromisoformat(recorded["timestamp"]),
                )
            if row.status == StepStatusName.FAILED:
                raise EventTimeoutError(name, event_type)
            event = await self._take_event(event_type, row.key)
            if event is not None:
                received = ReceivedEvent(
                    event.type, copy_json_data(event.payload), event.received_at
                )
                self._wait_ended(row, "wait_for_event", "received")
                self._finish(
                    row,
                    StepStatusName.COMPLETE,
                    output={
                        "type": event.type,
                        "payload": event.payload,
                        "timestamp": event.received_at.isoformat(),
                    },
                )
                return received
            if row.wake_at is not None and row.wake_at <= self.now:
                timeout_error = EventTimeoutError(name, event_type)
                self._timer_fired(row)
                self._wait_ended(row, "wait_for_event", "timed_out")
                self._finish(
                    row,
                    StepStatusName.FAILED,
                    error=ErrorInfo(name=type(timeout_error).__name__, message=str(timeout_error)),
                )
                raise timeout_error
            await self._park()
        finally:
            self._activity += 1

    async def _take_event(self, event_type: str, key: str) -> EventRow | None:
        """The oldest buffered event of this type, marked as taken by step `key`."""
        self._busy += 1
        try:
            async with self._events_lock:
                if self._events is None:
                    self._events = await driver.buffered_events(self.session, self.instance.id)
        finally:
            self._busy -= 1
        for event in self._events:
            if event.type == event_type and event.consumed_by is None:
                event.consumed_by = key
                return event
        return None
