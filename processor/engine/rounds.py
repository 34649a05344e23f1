"""One round of an instance: replay, claim what must run, run it, record the outcomes.

The round's two transactions lock the instance row, so one instance is advanced by one worker
at a time; step bodies run between them, outside any lock. Fencing (the instance's generation
and the step's attempt and claim) keeps a late or stale attempt from recording anything.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from processor.engine.attempts import AttemptOutcome, claim, is_current, record_outcome, run_attempt
from processor.engine.replay import WORKER_STALE, Claimant, PendingAttempt, Replay
from processor.failpoints import crash_point
from processor.runtime import Runtime
from processor.store import queries
from processor.store.tables import StepRow
from processor.workflow import Workflow
from schemas import TERMINAL_STATUSES, InstanceStatusName, StepStatusName


@dataclass
class ClaimedWork:
    instance_id: str
    generation: int
    attempts: list[PendingAttempt]


async def replay_round(
    runtime: Runtime,
    registry: dict[str, type[Workflow[Any]]],
    instance_id: str,
    claimant: Claimant,
) -> ClaimedWork | None:
    """Replay the instance and commit its new state; returns the attempts it claimed."""
    async with runtime.transaction() as tx:
        instance = await queries.lock_instance(tx.session, instance_id)
        if instance is None or instance.workflow not in registry:
            return None
        instance.run_due_at = None  # this is the round that was owed
        if instance.status in TERMINAL_STATUSES or instance.status == InstanceStatusName.PAUSED:
            return None  # resume publishes a run message of its own
        steps = await queries.load_steps(tx.session, instance_id)
        # None: every worker counts as alive (see Claimant.trusts_heartbeats).
        live_workers: frozenset[str] | None = None
        if claimant.trusts_heartbeats(tx.now) and any(
            step.status == StepStatusName.RUNNING for step in steps
        ):
            live_workers = await queries.live_workers(tx.session, tx.now - WORKER_STALE)
        replay = Replay(
            tx.session, instance, steps, now=tx.now, claimant=claimant, live_workers=live_workers
        )
        result = await replay.run(registry[instance.workflow])
        instance.updated_at = tx.now
        if result.outcome == "complete":
            instance.status = InstanceStatusName.COMPLETE.value
            instance.output = result.output
            await queries.clear_wakeups(tx.session, instance_id)
            return None
        if result.outcome == "errored":
            instance.status = InstanceStatusName.ERRORED.value
            instance.error = result.error.model_dump(mode="json") if result.error else None
            await queries.clear_wakeups(tx.session, instance_id)
            return None
        for wake_at in sorted(result.wakeups):
            tx.emit_run(instance, wake_at=wake_at)
        if instance.pause_requested:
            # The step boundary a pause waits for: start nothing new.
            instance.status = InstanceStatusName.PAUSED.value
            instance.pause_requested = False
            return None
        for pending in result.attempts:
            claim(pending.step, pending, claimant.worker_id, tx.now)
        busy = result.attempts or result.waits_on_running
        instance.status = (InstanceStatusName.RUNNING if busy else InstanceStatusName.WAITING).value
        if not result.attempts:
            return None
        work = ClaimedWork(instance_id, instance.generation, result.attempts)
    claimant.running.update(
        (instance_id, pending.step.key, pending.step.attempt) for pending in work.attempts
    )
    return work


async def run_claimed(
    runtime: Runtime, work: ClaimedWork, claimant: Claimant, executor: Executor
) -> None:
    """Run the claimed attempts concurrently, recording each outcome as soon as it is known,
    so a fast step's result (and lease) never waits for a slow sibling.

    The attempts are in `claimant.running` from their claim's commit (`replay_round`) on, so a
    copy of the run message meanwhile finds them alive in this process.
    """

    async def run_and_record(pending: PendingAttempt) -> None:
        attempt = (work.instance_id, pending.step.key, pending.step.attempt)
        try:
            outcome = await run_attempt(pending, executor)
            crash_point("mid_step")
            await runtime.database.retry(
                lambda: _record_outcome(runtime, work, pending, outcome, claimant.worker_id)
            )
        finally:
            claimant.running.discard(attempt)

    await asyncio.gather(*(run_and_record(pending) for pending in work.attempts))


async def _record_outcome(
    runtime: Runtime,
    work: ClaimedWork,
    pending: PendingAttempt,
    outcome: AttemptOutcome,
    worker_id: str,
) -> None:
    async with runtime.transaction() as tx:
        instance = await queries.lock_instance(tx.session, work.instance_id)
        if (
            instance is None
            or instance.generation != work.generation
            or instance.status in TERMINAL_STATUSES
        ):
            return  # terminated or restarted meanwhile: this attempt's result is void
        row = await tx.session.get(StepRow, (work.instance_id, pending.step.key))
        if row is None or not is_current(row, pending, worker_id):
            return  # a newer attempt took over (this one was presumed lost)
        retry_at = record_outcome(row, pending, outcome, tx.now)
        instance.updated_at = tx.now
        if retry_at is None:
            tx.emit_run(instance)  # the step is done: the next round goes on from it
            return
        tx.emit_run(instance, wake_at=retry_at)
        if await queries.count_running_steps(tx.session, work.instance_id) == 0:
            # Nothing runs during the back-off: a pause asked for meanwhile takes effect now.
            if instance.pause_requested:
                instance.pause_requested = False
                instance.status = InstanceStatusName.PAUSED.value
            elif instance.status == InstanceStatusName.RUNNING:
                instance.status = InstanceStatusName.WAITING.value
