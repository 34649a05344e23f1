"""One round of an instance: replay, claim what must run, run it, record the outcomes.

The round's two transactions lock the instance row, so one instance is advanced by one worker
at a time; step bodies run between them, outside any lock. Fencing (the instance's generation
and the step's attempt and claim) keeps a late or stale attempt from recording anything.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import Executor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from opentelemetry import context
from opentelemetry.context import Context
from opentelemetry.trace import Span

from processor.engine.attempts import AttemptOutcome, claim, is_current, record_outcome, run_attempt
from processor.engine.batching import Batcher
from processor.engine.replay import WORKER_STALE, Claimant, PendingAttempt, Replay, ReplayResult
from processor.failpoints import crash_point
from processor.runtime import Runtime, Tx
from processor.store import driver
from processor.store.database import is_transient
from processor.store.driver import DriverSession
from processor.store.tables import InstanceRow, StepRow
from processor.telemetry.logs import log_context
from processor.telemetry.metrics import get_metrics
from processor.telemetry.tracing import (
    SpanParent,
    StepOutcome,
    instance_parent,
    instance_span,
    record_wait_span,
    step_attempt_span,
)
from processor.workflow import Workflow
from schemas import TERMINAL_STATUSES, InstanceStatusName, StepStatusName

log = logging.getLogger("warren.rounds")

#: Round transactions, and outcome transactions, under way at once, and the messages one may
#: carry (see batching.py): two, so the worker prepares one batch while the other waits on the
#: database.
BATCH_SLOTS = 2
MAX_BATCH = 32


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
        return [
            (self.instance_id, self.generation, pending.step.key, pending.step.attempt)
            for pending in self.attempts
        ]


@dataclass(frozen=True)
class RecordedOutcome:
    """How an attempt ended, as recorded: completed, retried after `retry_delay`, or failed."""

    outcome: StepOutcome
    retry_delay: timedelta | None = None


#: Advances instances: `replay_rounds` on batches of instance ids.
RoundRunner = Batcher[str, ClaimedWork | None]


def round_runner(
    runtime: Runtime, registry: dict[str, type[Workflow[Any]]], claimant: Claimant
) -> RoundRunner:
    def release(work: ClaimedWork | None) -> None:
        # Claimed for a submitter that is gone (the worker is stopping): nobody here will run
        # them, and other workers take them over once this one has left.
        if work is not None:
            claimant.running.difference_update(work.attempt_keys())

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
    instance_ids: list[str],
) -> list[ClaimedWork | None]:
    """Replay the instances and commit their new state in one transaction; returns the
    attempts each claimed (an instance named twice gets one round, and None the second time).

    Each round is a span (`run {workflow}`) in its instance's trace, open until the commit
    and publishes are done; the waits it saw end get spans of their own once committed.
    """
    claimed: list[tuple[str, int, str, int]] = []
    try:
        works = await _replay_rounds(runtime, registry, claimant, instance_ids, claimed)
    except BaseException:
        claimant.running.difference_update(claimed)  # the claims did not commit
        raise
    return [works.pop(instance_id, None) for instance_id in instance_ids]


async def _replay_rounds(
    runtime: Runtime,
    registry: dict[str, type[Workflow[Any]]],
    claimant: Claimant,
    instance_ids: list[str],
    claimed: list[tuple[str, int, str, int]],
) -> dict[str, ClaimedWork]:
    works: dict[str, ClaimedWork] = {}
    ended: list[tuple[InstanceRow, Span, ReplayResult, ClaimedWork | None]] = []
    with ExitStack() as scope:
        async with runtime.step_transaction() as tx:
            locked = await driver.lock_instances(tx.session, instance_ids)
            tx.start_now(runtime.clock.now())
            instances = [row for row in locked.values() if row.workflow in registry]
            steps = await driver.load_steps_of(
                tx.session, [row.id for row in instances if _is_advancing(row)]
            )
            for instance in instances:
                workflow = instance.workflow
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
                result, work = await _advance(
                    tx, instance, steps.get(instance.id, []), registry[workflow], claimant
                )
                if work is not None:
                    # Before the commit: a round of a copy of this run message, or of an
                    # event, waiting for the instance lock must find them running, not lost.
                    keys = work.attempt_keys()
                    claimed.extend(keys)
                    claimant.running.update(keys)
                    works[instance.id] = work
                if result is not None:
                    ended.append((instance, span, result, work))
        for instance, span, result, work in ended:
            span.set_attribute("warren.outcome", result.outcome)
            span.set_attribute("warren.attempts_claimed", len(work.attempts) if work else 0)
            _record_ended_waits(instance, result)
    return works


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
) -> tuple[ReplayResult | None, ClaimedWork | None]:
    """The round's work inside its transaction: replay, then apply what the replay decided.
    Returns the replay's result (None if there was nothing to replay) and the claimed work."""
    instance_id = instance.id
    if not _is_advancing(instance):
        instance.run_due_at = None  # this is the round that was owed
        return None, None  # resume publishes a run message of its own
    # None: every worker counts as alive (see Claimant.trusts_heartbeats).
    live_workers: frozenset[str] | None = None
    if claimant.trusts_heartbeats(tx.now) and any(
        step.status == StepStatusName.RUNNING for step in steps
    ):
        live_workers = await driver.live_workers(tx.session, tx.now - WORKER_STALE)
    # After that query: set before it, it would be written by an UPDATE of its own (autoflush).
    instance.run_due_at = None  # this is the round that was owed
    replay = Replay(
        tx.session, instance, steps, now=tx.now, claimant=claimant, live_workers=live_workers
    )
    started = time.perf_counter()
    result = await replay.run(workflow)
    replay_s = time.perf_counter() - started
    get_metrics().replay_finished(instance.workflow, replay_s)
    instance.compute_ms += replay_s * 1000
    instance.updated_at = tx.now
    if result.outcome == "complete":
        instance.status = InstanceStatusName.COMPLETE.value
        instance.output = result.output
        await driver.clear_wakeups(tx.session, instance_id)
        return result, None
    if result.outcome == "errored":
        instance.status = InstanceStatusName.ERRORED.value
        instance.error = result.error.model_dump(mode="json") if result.error else None
        await driver.clear_wakeups(tx.session, instance_id)
        return result, None
    for wake_at in sorted(result.wakeups):
        tx.emit_run(instance, wake_at=wake_at)
    if instance.pause_requested:
        # The step boundary a pause waits for: start nothing new.
        instance.status = InstanceStatusName.PAUSED.value
        instance.pause_requested = False
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


@dataclass(frozen=True)
class AttemptEnded:
    """An attempt's outcome, to be recorded (with others that end meanwhile, see batching.py)."""

    work: ClaimedWork
    pending: PendingAttempt
    outcome: AttemptOutcome
    worker_id: str


#: Records ended attempts: `record_outcomes` on batches of them.
OutcomeRecorder = Batcher[AttemptEnded, RecordedOutcome | None]


def outcome_recorder(runtime: Runtime) -> OutcomeRecorder:
    return Batcher(
        functools.partial(record_outcomes, runtime),
        slots=BATCH_SLOTS,
        max_size=MAX_BATCH,
        isolate=_is_about_an_item,
    )


async def run_claimed(
    runtime: Runtime,
    work: ClaimedWork,
    claimant: Claimant,
    executor: Executor,
    recorder: OutcomeRecorder,
) -> None:
    """Run the claimed attempts concurrently, recording each outcome as soon as it is known,
    so a fast step's result (and lease) never waits for a slow sibling.

    The attempts are in `claimant.running` from before their claim's commit (`replay_rounds`)
    on, so a copy of the run message meanwhile finds them alive in this process.
    """

    async def run_and_record(pending: PendingAttempt, attempt: tuple[str, int, str, int]) -> None:
        step = pending.step
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
                outcome = await run_attempt(pending, executor)
                crash_point("mid_step")
                ended = AttemptEnded(work, pending, outcome, claimant.worker_id)
                # The outcome lives only in this process until recorded: wait out any outage.
                recorded = await runtime.database.retry(
                    lambda: recorder.submit(ended), patience_s=None
                )
                if recorded is None:  # fenced off: the outcome as the body saw it
                    span.span.set_attribute("warren.fenced", True)
                    recorded = RecordedOutcome("completed" if outcome.error is None else "failed")
                span.set_outcome(
                    recorded.outcome, retry_delay=recorded.retry_delay, error=outcome.exception
                )
                metrics.step_ended(work.workflow, recorded.outcome, outcome.duration_s)
        finally:
            claimant.running.discard(attempt)

    outcomes = await asyncio.gather(
        *(
            run_and_record(pending, attempt)
            for pending, attempt in zip(work.attempts, work.attempt_keys(), strict=True)
        ),
        return_exceptions=True,  # one failure must not abandon its siblings
    )
    for error in outcomes:
        if isinstance(error, BaseException):
            log.error("recording a step outcome of %s failed", work.instance_id, exc_info=error)


async def record_outcomes(
    runtime: Runtime, batch: list[AttemptEnded]
) -> list[RecordedOutcome | None]:
    """Record the attempts' outcomes in one transaction; None for one fenced off, which
    recorded nothing."""
    async with runtime.step_transaction() as tx:
        instances = await driver.lock_instances(
            tx.session, [ended.work.instance_id for ended in batch]
        )
        tx.start_now(runtime.clock.now())
        # Read before the instances change: a change is written before the next statement
        # (autoflush), and this way all of an instance's go in one UPDATE at the commit.
        steps = await driver.get_steps(
            tx.session, [(ended.work.instance_id, ended.pending.step.key) for ended in batch]
        )
        return [
            await _record_outcome(
                tx,
                instances.get(ended.work.instance_id),
                steps.get((ended.work.instance_id, ended.pending.step.key)),
                ended,
            )
            for ended in batch
        ]


async def _record_outcome(
    tx: Tx[DriverSession],
    instance: InstanceRow | None,
    row: StepRow | None,
    ended: AttemptEnded,
) -> RecordedOutcome | None:
    work, pending, outcome = ended.work, ended.pending, ended.outcome
    if instance is None:
        return None
    # The compute was spent whether or not the result still counts.
    instance.compute_ms += outcome.duration_s * 1000
    instance.cpu_ms += outcome.cpu_s * 1000
    if instance.generation != work.generation or instance.status in TERMINAL_STATUSES:
        return None  # terminated or restarted meanwhile: this attempt's result is void
    if row is None or not is_current(row, pending, ended.worker_id):
        return None  # a newer attempt took over (this one was presumed lost)
    retry_at = record_outcome(row, pending, outcome, tx.now)
    instance.updated_at = tx.now
    if retry_at is None:
        tx.emit_run(instance)  # the step is done: the next round goes on from it
        return RecordedOutcome("completed" if outcome.error is None else "failed")
    tx.emit_run(instance, wake_at=retry_at)
    if await driver.count_running_steps(tx.session, work.instance_id) == 0:
        # Nothing runs during the back-off: a pause asked for meanwhile takes effect now.
        if instance.pause_requested:
            instance.pause_requested = False
            instance.status = InstanceStatusName.PAUSED.value
        elif instance.status == InstanceStatusName.RUNNING:
            instance.status = InstanceStatusName.WAITING.value
    return RecordedOutcome("retried", retry_at - tx.now)
