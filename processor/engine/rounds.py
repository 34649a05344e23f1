"""One round of an instance: record the step reports it is given, replay, claim what must
run; then run it, and report each attempt: record its report in a round here and publish it
as the instance's next run message (`AttemptRunner._report`).

A round's transaction locks the instance row, so one instance is advanced by one worker at a
time; step bodies run after it, outside any lock. A step therefore costs one transaction and
one message: the report is the message, recorded by the worker that ran the attempt before
it is published, or by the message's consumer when that worker does not. Fencing (the
instance's generation and the step's attempt and claim) keeps a late or stale attempt's
report from recording anything, and a report recorded once from being recorded again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from opentelemetry import context
from opentelemetry.context import Context
from opentelemetry.trace import Span

from processor.engine.attempts import claim, is_current, record_report, report_of, run_attempt
from processor.engine.batching import Batcher
from processor.engine.replay import Claimant, PendingAttempt, Replay, ReplayResult
from processor.failpoints import crash_point
from processor.runtime import Runtime, Tx
from processor.store import driver, queries
from processor.store.database import is_transient
from processor.store.driver import DriverSession
from processor.store.tables import InstanceRow, StepRow
from processor.telemetry.logs import log_context
from processor.telemetry.metrics import get_metrics
from processor.telemetry.tracing import (
    SpanParent,
    StepOutcome,
    current_traceparent,
    instance_parent,
    instance_span,
    is_tracing,
    record_wait_span,
    step_attempt_span,
)
from processor.workflow import Workflow
from schemas import (
    TERMINAL_STATUSES,
    ErrorInfo,
    InstanceStatusName,
    RunInstance,
    StepReport,
    StepStatusName,
)

log = logging.getLogger("warren.rounds")

#: Round transactions under way at once, and the messages one may carry (see batching.py):
#: two, so the worker prepares one batch while the other waits on the database.
BATCH_SLOTS = 2
MAX_BATCH = 32
#: How long publishing a step's report waits before trying again, at first and at most, while
#: the broker is away (until the report is recorded, it exists nowhere else).
REPORT_RETRY_S = (0.1, 5.0)
#: How long the publish of a report recorded already may take (see `_publish_report`).
RECORDED_PUBLISH_S = 5.0


@dataclass(frozen=True)
class RunRequest:
    """What a run message asks: advance the instance, after recording `report` if it has one."""

    instance_id: str
    report: StepReport | None = None
    #: False: the submitter has no slot to run attempts in (see RunConsumer.handle).
    may_claim: bool = True


@dataclass
class ClaimedWork:
    instance_id: str
    workflow: str
    generation: int
    attempts: list[PendingAttempt]
    #: The claiming round's span: each attempt's span is its child.
    parent: SpanParent

    def attempt_keys(self) -> list[tuple[str, int, str, int]]:
        """The attempts' keys in `Claimant.running`."""
        return [self.key_of(pending) for pending in self.attempts]

    def key_of(self, pending: PendingAttempt) -> tuple[str, int, str, int]:
        """One attempt's key in `Claimant.running`."""
        return (self.instance_id, self.generation, pending.step.key, pending.step.attempt)


#: Advances instances: `replay_rounds` on batches of run requests.
RoundRunner = Batcher[RunRequest, ClaimedWork | None]


def round_runner(
    runtime: Runtime, registry: dict[str, type[Workflow[Any]]], claimant: Claimant
) -> RoundRunner:
    def release(work: ClaimedWork | None) -> None:
        # Claimed for a submitter that is gone (the worker is stopping): nobody here will run
        # them, and other workers take them over once this one has left.
        if work is not None:
            claimant.drop(work.attempt_keys())

    return Batcher(
        functools.partial(replay_rounds, runtime, registry, claimant),
        slots=BATCH_SLOTS,
        max_size=MAX_BATCH,
        isolate=_is_about_an_item,
        orphaned=release,
    )


def _is_about_an_item(error: Exception) -> bool:
    """A batch that failed for this may have failed for one of its items: it runs again item
    by item. A transient error (the database is away) fails every item at once instead, so
    each submitter starts retrying without waiting out the others' timeouts."""
    return not is_transient(error)


async def replay_rounds(
    runtime: Runtime,
    registry: dict[str, type[Workflow[Any]]],
    claimant: Claimant,
    requests: list[RunRequest],
) -> list[ClaimedWork | None]:
    """Record the requests' step reports, replay their instances and commit the new state in
    one transaction; returns the attempts each claimed (an instance named twice gets one
    round, which records both reports, and None the second time).

    Each round is a span (`run {workflow}`) in its instance's trace, open until the commit
    and publishes are done; the waits it saw end get spans of their own once committed.
    """
    claimed: list[tuple[str, int, str, int]] = []
    try:
        works = await _replay_rounds(runtime, registry, claimant, requests, claimed)
    except BaseException:
        # Most likely not committed; if the commit did happen, no one here runs them.
        claimant.drop(claimed)
        raise
    return [
        works.pop(request.instance_id, None) if request.may_claim else None for request in requests
    ]


async def _replay_rounds(
    runtime: Runtime,
    registry: dict[str, type[Workflow[Any]]],
    claimant: Claimant,
    requests: list[RunRequest],
    claimed: list[tuple[str, int, str, int]],
) -> dict[str, ClaimedWork]:
    works: dict[str, ClaimedWork] = {}
    ended: list[tuple[InstanceRow, Span, ReplayResult, ClaimedWork | None]] = []
    reports: dict[str, list[StepReport]] = {}
    claiming = {request.instance_id for request in requests if request.may_claim}
    for request in requests:
        if request.report is not None:
            reports.setdefault(request.instance_id, []).append(request.report)
    #: Instances whose every request carries a report: a copy of one recorded already needs
    #: no round.
    only_reports = set(reports) - {
        request.instance_id for request in requests if request.report is None
    }
    with ExitStack() as scope:
        async with runtime.step_transaction() as tx:
            locked = await driver.lock_instances(
                tx.session, [request.instance_id for request in requests]
            )
            tx.start_now(runtime.clock.now())
            instances = [row for row in locked.values() if row.workflow in registry]
            steps = await driver.load_steps_of(
                tx.session,
                [row.id for row in instances if row.id in reports or _is_advancing(row)],
            )
            for instance in instances:
                workflow = instance.workflow
                instance_steps = steps.get(instance.id, [])
                recorded = [
                    _record_report(tx, instance, instance_steps, report)
                    for report in reports.get(instance.id, ())
                ]
                if instance.id in only_reports and not any(recorded):
                    # Each was recorded already, by a round that replayed the instance then
                    # (or is void): this one would find nothing new.
                    continue
                # Each round's span is the current one while it replays, so the spans of its
                # attempts are its children; the commit's SQL spans go under the last one.
                scope.enter_context(log_context(instance_id=instance.id, workflow=workflow))
                parent = instance_parent(instance.traceparent)
                if parent.context is None:  # not the previous instance's round: a root
                    parent = SpanParent(Context(), parent.links)
                span = scope.enter_context(
                    instance_span(
                        f"run {workflow}",
                        instance_id=instance.id,
                        workflow=workflow,
                        parent=parent,
                    )
                )
                if instance.traceparent is None and is_tracing():
                    # Created untraced (or before tracing was on): this round is the root of
                    # its trace from now on, so its later rounds and its waits join it rather
                    # than start traces of their own (or land in another instance's).
                    instance.traceparent = current_traceparent()
                result, work = await _advance(
                    tx,
                    instance,
                    instance_steps,
                    registry[workflow],
                    claimant,
                    may_claim=instance.id in claiming,
                )
                if work is not None:
                    # Before the commit: a round of a copy of this run message, or of an
                    # event, waiting for the instance lock must find them running, not lost.
                    keys = work.attempt_keys()
                    claimed.extend(keys)
                    claimant.start(keys)
                    works[instance.id] = work
                if result is not None:
                    ended.append((instance, span, result, work))
        for instance, span, result, work in ended:
            span.set_attribute("warren.outcome", result.outcome)
            span.set_attribute("warren.attempts_claimed", len(work.attempts) if work else 0)
            _record_ended_waits(instance, result)
    return works


def _record_report(
    tx: Tx[DriverSession], instance: InstanceRow, steps: list[StepRow], report: StepReport
) -> bool:
    """Record how a step attempt ended, unless it is fenced off (returns whether it was); a
    retry gets its wake-up. Its compute is counted with it, so a copy of the report
    (redelivered, say) is not counted twice; a fenced-off attempt's is not counted at all."""
    if instance.generation != report.generation or instance.status in TERMINAL_STATUSES:
        return False  # terminated or restarted meanwhile: this attempt's result is void
    row = next((step for step in steps if step.key == report.step), None)
    if row is None or not is_current(row, report):
        return False  # recorded already (a copy), or a newer attempt took over from this one
    instance.compute_ms += report.duration_ms
    instance.cpu_ms += report.cpu_ms
    retry_at = record_report(row, report, tx.now)
    instance.updated_at = tx.now
    if retry_at is not None:
        tx.emit_run(instance, wake_at=retry_at)
    return True


def _is_advancing(instance: InstanceRow) -> bool:
    """Not finished, not paused: a round replays it."""
    return instance.status not in TERMINAL_STATUSES and instance.status != InstanceStatusName.PAUSED


def _record_ended_waits(instance: InstanceRow, result: ReplayResult) -> None:
    """Spans and metrics for the timers and waits a committed round saw end."""
    metrics = get_metrics()
    for lateness_s in result.timer_lateness_s:
        metrics.timer_fired(instance.workflow, lateness_s)
    root = instance_parent(instance.traceparent)
    for wait in result.ended_waits:
        record_wait_span(
            wait.step,
            kind=wait.kind,
            instance_id=instance.id,
            workflow=instance.workflow,
            started=wait.started,
            ended=instance.updated_at,
            parent=root,
            attributes={
                "warren.wait_outcome": wait.outcome,
                **({"warren.due_at": wait.due.isoformat()} if wait.due else {}),
            },
        )


async def _advance(
    tx: Tx[DriverSession],
    instance: InstanceRow,
    steps: list[StepRow],
    workflow: type[Workflow[Any]],
    claimant: Claimant,
    *,
    may_claim: bool,
) -> tuple[ReplayResult | None, ClaimedWork | None]:
    """The round's work inside its transaction: replay, then apply what the replay decided.
    Returns the replay's result (None if there was nothing to replay) and the claimed work."""
    instance_id = instance.id
    if not _is_advancing(instance):
        instance.run_due_at = None  # this is the round that was owed
        return None, None  # resume publishes a run message of its own
    # None: every worker counts as alive (see Claimant.trusts_heartbeats).
    last_beats: dict[str, datetime] | None = None
    others = {
        step.claimed_by
        for step in steps
        if step.status == StepStatusName.RUNNING
        and step.claimed_by not in (None, claimant.worker_id)  # need no heartbeat
    }
    if others and claimant.trusts_heartbeats(tx.now):
        last_beats = await driver.last_beats(tx.session, others)
    # After that query: set before it, it would be written by an UPDATE of its own (autoflush).
    instance.run_due_at = None  # this is the round that was owed
    replay = Replay(
        tx.session, instance, steps, now=tx.now, claimant=claimant, last_beats=last_beats
    )
    started = time.perf_counter()
    result = await replay.run(workflow)
    replay_s = time.perf_counter() - started
    get_metrics().replay_finished(instance.workflow, replay_s)
    instance.compute_ms += replay_s * 1000
    instance.updated_at = tx.now
    if result.outcome in ("complete", "errored"):
        if result.outcome == "complete":
            instance.status = InstanceStatusName.COMPLETE.value
            instance.output = result.output
        else:
            instance.status = InstanceStatusName.ERRORED.value
            instance.error = result.error.model_dump(mode="json") if result.error else None
        # A finished instance has no timers left for the sweepers to act on. Every step of
        # it is loaded here, so they are cleared with the round's other writes.
        for step in replay.steps.values():
            step.wake_at = None
        return result, None
    for wake_at in sorted(result.wakeups):
        tx.emit_run(instance, wake_at=wake_at)
    if instance.pause_requested:
        # The step boundary a pause waits for: start nothing new.
        instance.status = InstanceStatusName.PAUSED.value
        instance.pause_requested = False
        return result, None
    if result.attempts and not may_claim:
        tx.emit_run(instance)  # for a round with a slot to claim them
        instance.status = InstanceStatusName.RUNNING.value
        return result, None
    for pending in result.attempts:
        claim(pending.step, pending, claimant.worker_id, tx.now)
    busy = result.attempts or result.waits_on_running
    instance.status = (InstanceStatusName.RUNNING if busy else InstanceStatusName.WAITING).value
    if not result.attempts:
        return result, None
    # The current context holds the round's span: the attempts' spans are its children.
    parent = SpanParent(context.get_current())
    return result, ClaimedWork(
        instance_id, instance.workflow, instance.generation, result.attempts, parent
    )


@dataclass
class AttemptRunner:
    """Runs the attempts rounds claim, and reports them (see `run_claimed`)."""

    runtime: Runtime
    claimant: Claimant
    executor: Executor
    rounds: RoundRunner
    #: Whether a report may be recorded here (see `_report`): not while the worker takes no
    #: messages (it is stopping), nor while deliveries wait for a slot, which a chain of
    #: steps would keep from them. The report then goes by its message alone, to whichever
    #: worker takes it next, in a slot like any delivery.
    records_here: Callable[[], bool]

    async def run_claimed(self, work: ClaimedWork) -> None:
        """Run the claimed attempts concurrently and report each one as it ends (`_report`):
        when the worker may, record it in a round here and run the attempts that round
        claims, until none is left. So a fast step's result (and lease) never waits for a slow
        sibling, and an instance's steps follow each other in the slot of the message that
        started them.

        The attempts are in `claimant.running` from before their claim's commit
        (`replay_rounds`) until their report is recorded or published, so a round meanwhile
        finds them alive in this process; one that ends without either (cancelled as the
        worker stops) is dropped: the next round takes it for lost.
        """
        tasks: set[asyncio.Future[None]] = set()

        def spawn(work: Awaitable[None]) -> None:
            tasks.add(asyncio.ensure_future(work))

        spawn(self._run_chain(work, spawn))
        try:
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                tasks.difference_update(done)
                for task in done:  # one failure must not abandon its siblings
                    if not task.cancelled() and (error := task.exception()) is not None:
                        log.error(
                            "reporting a step outcome of %s failed",
                            work.instance_id,
                            exc_info=error,
                        )
        finally:
            for task in tasks:  # cancelled: the worker is stopping
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)

    async def _run_chain(
        self, work: ClaimedWork | None, spawn: Callable[[Awaitable[None]], None]
    ) -> None:
        """Run the work's attempt, then the one its report's round here claims, and so on, in
        this task; several attempts at once each in a task of their own (`spawn`)."""
        while work is not None:
            if len(work.attempts) > 1:
                for pending in work.attempts:
                    spawn(self._run_chain(dataclasses.replace(work, attempts=[pending]), spawn))
                return
            [pending] = work.attempts
            work = await self._run_attempt(work, pending, spawn)

    async def _run_attempt(
        self, work: ClaimedWork, pending: PendingAttempt, spawn: Callable[[Awaitable[None]], None]
    ) -> ClaimedWork | None:
        """Run one attempt and report it (`_report`); returns what its round here claimed."""
        step = pending.step
        attempt = work.key_of(pending)
        metrics = get_metrics()
        try:
            with (
                log_context(instance_id=work.instance_id, workflow=work.workflow, step=step.key),
                step_attempt_span(
                    step.key,
                    instance_id=work.instance_id,
                    workflow=work.workflow,
                    attempt=step.attempt,
                    parent=work.parent,
                ) as span,
            ):
                metrics.step_started(work.workflow)
                outcome = await run_attempt(pending, self.executor)
                crash_point("mid_step")
                report = report_of(pending, outcome, work.generation, self.claimant.worker_id)
                retry_delay = None
                if report.error is None:
                    ended: StepOutcome = "completed"
                elif report.retry_after_ms is None:
                    ended = "failed"
                else:
                    ended = "retried"
                    retry_delay = timedelta(milliseconds=report.retry_after_ms)
                span.set_outcome(ended, retry_delay=retry_delay, error=outcome.exception)
                metrics.step_ended(work.workflow, ended, outcome.duration_s)
        except BaseException:
            self.claimant.drop([attempt])
            raise
        # Outside the attempt's span and log context: the round is the instance's.
        return await self._report(work, report, attempt, spawn)

    async def _report(
        self,
        work: ClaimedWork,
        report: StepReport,
        attempt: tuple[str, int, str, int],
        spawn: Callable[[Awaitable[None]], None],
    ) -> ClaimedWork | None:
        """Record the report in a round here, if `records_here()`, and return what that round
        claimed: the next step starts without waiting for the broker. Its run message is
        published all the same, once that round has committed, marked as recorded (its
        consumer acks it at once), beside the next steps (`spawn`), and given up should the
        broker be away. Otherwise (or should the round fail), the message is the report: it
        is published with a confirm, tried again until it is, and its consumer records it.

        The attempt counts as reported once its report is recorded or published; it is
        dropped if neither happened (cancelled as the worker stops): the next round takes
        it for lost."""
        reported = False
        try:
            report, body = _report_message(work.instance_id, report)
            if self.records_here():
                try:
                    claimed = await self._record_here(work.instance_id, report)
                except Exception as error:  # its message records it
                    log.warning("recording the report of %s here failed: %r", report.step, error)
                else:
                    reported = True
                    spawn(_publish_report(self.runtime, work.workflow, report.step, body, True))
                    return claimed
            await _publish_report(self.runtime, work.workflow, report.step, body, False)
            reported = True
            return None
        finally:
            if reported:
                self.claimant.running.discard(attempt)
            else:
                self.claimant.drop([attempt])

    async def _record_here(self, instance_id: str, report: StepReport) -> ClaimedWork | None:
        """Record the report in a round of this process; returns what the round claimed."""
        request = RunRequest(instance_id, report)
        return await self.runtime.database.retry(lambda: self.rounds.submit(request))


def _report_message(instance_id: str, report: StepReport) -> tuple[StepReport, bytes]:
    """The report as its run message carries it, and the message's body."""

    def body_of(report: StepReport) -> bytes:
        run = RunInstance(instance_id=instance_id, report=report)
        return run.model_dump_json(exclude_none=True).encode()

    try:
        return report, body_of(report)
    except Exception as error:  # text that is not UTF-8 in a step name, say: the step failed
        cause = f"the attempt's outcome could not be sent as JSON ({type(error).__name__})"
        failed = ErrorInfo(name="SerializationError", message=cause)
        report = report.model_copy(update={"output": None, "error": failed, "retry_after_ms": None})
        return report, body_of(report)


async def _publish_report(
    runtime: Runtime, workflow: str, step: str, body: bytes, recorded: bool
) -> None:
    """Publish a report as the instance's next run message, with a confirm. Until it is
    `recorded`, the report lives only in this process, so a failed publish is tried again
    until it succeeds (the robust connection comes back with the broker) or the worker stops;
    a recorded one is given up after one try or RECORDED_PUBLISH_S (a publish waits, rather
    than fails, while the robust connection is away)."""
    message_id = queries.new_message_id()
    wait, most = REPORT_RETRY_S
    while True:
        try:
            async with asyncio.timeout(RECORDED_PUBLISH_S if recorded else None):
                await runtime.publisher.publish_run(workflow, body, message_id, recorded=recorded)
            return
        except Exception as error:  # the broker is away, or the channel is being restored
            if recorded:
                log.info("publishing the report of %s failed; it is recorded: %r", step, error)
                return
            log.warning("publishing the report of %s failed, trying again: %r", step, error)
            await asyncio.sleep(wait)
            wait = min(wait * 2, most)
