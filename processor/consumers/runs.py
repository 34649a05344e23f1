"""The run and wake queues (`{ns}.run.{workflow}`, `{ns}.wake.{workflow}`): advance
instances, one round per message; a run message may carry the report of a step attempt that
ended, which the round records first, unless the attempt's worker recorded it already."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import datetime, timedelta
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from processor.broker.publisher import RECORDED_HEADER
from processor.consumers.base import FollowUp, Handler
from processor.consumers.decoding import decode
from processor.consumers.slots import WAKE_UP_HEAD_START_S, Slots
from processor.engine.replay import Claimant
from processor.engine.rounds import AttemptRunner, ClaimedWork, RunRequest, round_runner
from processor.runtime import Runtime
from processor.store import queries
from processor.workflow import Workflow
from schemas import MAX_MESSAGE_BYTES, RunInstance

log = logging.getLogger("warren.consumers")

#: A wake-up this early is delayed again rather than run (the cascade rounds to 1 ms).
EARLY_TOLERANCE = timedelta(milliseconds=2)
#: A wake-up group's instances wait for slots here while slots are being released; once none
#: has been for this long, the rest go back to the wake queue, one wake-up each.
SLOTS_STALLED_S = 1.0
#: A worker keeps as many of a wake-up group's instances as it expects to give a slot within
#: this, at the rate its slots are being released: no more of a burst waits on a busy worker
#: while another may be idle, and the rest go back to the wake queue, one wake-up each. An
#: idle worker's timer sweep may take those kept for lost once they are SWEEP_GRACE (5 s)
#: overdue, which costs the busy worker a round each. (2 s, with a limit of 4 s, sent the tail
#: of the benchmark's burst of 10,000 sleepers back to the end of the wake queue.)
GROUP_HOLD_S = 5.0
#: Those kept and still waiting after this go back to the wake queue whatever (the slots were
#: released quickly when the group came, slowly since): far within RabbitMQ's consumer_timeout
#: (30 minutes), past which it closes the channel of an unacked delivery.
GROUP_HOLD_LIMIT_S = 30.0
#: A step's report carries its result (up to MAX_MESSAGE_BYTES as JSON) or its error.
MAX_RUN_MESSAGE_BYTES = 2 * MAX_MESSAGE_BYTES


async def _nothing_to_do(message: AbstractIncomingMessage) -> None:
    return None


async def _all_of(tasks: list[asyncio.Task[None]]) -> None:
    await asyncio.gather(*tasks)


def is_wake_up_group(message: AbstractIncomingMessage) -> bool:
    """Whether the message may carry several instances (RunInstance.more_instance_ids): the
    key cannot occur in a lone wake-up's JSON, whose ids and times have no quotes in them."""
    return b'"more_instance_ids"' in message.body


def carries_report(message: AbstractIncomingMessage) -> bool:
    """Whether the run message may carry a step's report (RunInstance.report): the key cannot
    occur in a lone run message's JSON otherwise, as `is_wake_up_group` reasons."""
    return b'"report"' in message.body


class RunConsumer:
    def __init__(
        self,
        runtime: Runtime,
        registry: dict[str, type[Workflow[Any]]],
        claimant: Claimant,
        executor: Executor,
        slots: Slots,
        consuming: Callable[[], bool],
    ) -> None:
        """`slots`: the worker's concurrency slots; `consuming()`: whether the worker is
        consuming its queues (not stopping)."""
        self.runtime = runtime
        self.registry = registry
        self.slots = slots
        self.consuming = consuming
        #: The tasks running the attempts of instances woken from a group (`_run_claimed`),
        #: until they end.
        self._runners: set[asyncio.Task[None]] = set()
        #: Per workflow, the instances of wake-up groups kept here, not yet given a slot nor
        #: published again (`holds_wake_ups`).
        self._held: Counter[str] = Counter()
        #: Of those, the ones not yet waiting for a slot: each group asks for one at a time.
        self._behind = 0
        self.rounds = round_runner(runtime, registry, claimant)
        # A worker records its attempts' reports unless deliveries wait for its slots: the
        # round would keep the slot for the next step (AttemptRunner.records_here).
        self.attempts = AttemptRunner(
            runtime,
            claimant,
            executor,
            self.rounds,
            lambda: consuming() and not slots.waited_for(),
        )

    async def handle(
        self,
        workflow: str,
        message: AbstractIncomingMessage,
        *,
        wake_up: bool = False,
        may_claim: bool = True,
    ) -> FollowUp | None:
        """Record the step report the message carries, if any, replay the instance and commit
        its claims; running the claimed attempts is the follow-up, after the ack. A wake-up's
        round is queued with the head start its slot had (consumers/slots.py).

        Without `may_claim` (a report that found no free slot soon), the round claims
        nothing and publishes a run message for the steps to run: the report is recorded
        rather than held, unacked and invisible, until a slot frees, while a round elsewhere
        could take its attempt for lost (Replay._attempt_is_lost)."""
        command = decode(message, RunInstance, max_bytes=MAX_RUN_MESSAGE_BYTES)
        if await self._delayed_again(workflow, message, command):
            return None
        if command.more_instance_ids:  # in the run queue: a dead one redriven, say
            instance_ids = [command.instance_id, *command.more_instance_ids]
            await self._publish_wake_ups(workflow, instance_ids, command.wake_at)
            return None
        head_start = WAKE_UP_HEAD_START_S if wake_up else 0.0
        request = RunRequest(command.instance_id, command.report, may_claim)
        work = await self.runtime.database.retry(
            lambda: self.rounds.submit(request, head_start=head_start)
        )
        if work is None:
            return None
        return functools.partial(self.attempts.run_claimed, work)

    @staticmethod
    def recorded_already(message: AbstractIncomingMessage) -> Handler | None:
        """A step's report that the worker that ran the attempt recorded before publishing it
        (RECORDED_HEADER) is acked at once, without a slot: its effects are committed."""
        if not (message.headers or {}).get(RECORDED_HEADER):
            return None
        return _nothing_to_do

    async def wake_group(self, workflow: str, message: AbstractIncomingMessage) -> FollowUp | None:
        """A wake-up carrying several instances (`is_wake_up_group`), taken on arrival, without
        a slot. The worker keeps as many of its instances as it expects to give a slot within
        GROUP_HOLD_S and publishes one wake-up each for the rest, to the wake queue, for
        whichever worker has a slot. Those it keeps ask for slots one after another, as
        wake-ups (consumers/slots.py); each gets its round as soon as it has one (rounds that
        start together share transactions), then runs the steps the round claims in its slot.
        They wait here as lone wake-ups would have in the queue, without a publish, a delivery
        and an ack each, for as long as slots are being released, and no longer than
        GROUP_HOLD_LIMIT_S: those still waiting once no slot has been released for
        SLOTS_STALLED_S (every slot held by a long step, say), at that limit, or when the
        worker stops consuming, are published too. While they wait, the worker does not read
        their wake queue as drained (`holds_wake_ups`), so its timer sweep does not wake them
        a second time; another worker's may, once they are SWEEP_GRACE overdue, which only
        costs a round.

        The group is acked once its rounds here have ended. A round that failed (the database
        was away longer than the retries) is published again as a lone wake-up. If a publish
        fails, the group is requeued when no round here succeeded; else its timers, still due
        in SQL, are left to the timer sweep, rather than requeue the group under steps already
        running."""
        command = decode(message, RunInstance)
        if await self._delayed_again(workflow, message, command):
            return None
        give_up_at = time.monotonic() + GROUP_HOLD_LIMIT_S
        every_id = [command.instance_id, *(command.more_instance_ids or [])]
        # Less the instances of groups already kept here and not yet waiting for a slot.
        held = max(0, self.slots.takers_within(GROUP_HOLD_S) - self._behind)
        instance_ids, elsewhere = every_id[:held], every_id[held:]
        rounds: list[asyncio.Task[ClaimedWork | None]] = []
        runs: list[asyncio.Task[None]] = []
        # Counted from now: the group is unacked, so its queue may read as drained already.
        self._held[workflow] += len(instance_ids)
        self._behind += len(instance_ids)
        try:
            await self._publish_wake_ups(workflow, elsewhere, command.wake_at)  # else requeued
            try:
                for instance_id in instance_ids:
                    if not self.consuming():  # stopping: no new work here
                        break
                    self._behind -= 1  # waiting for a slot: counted by the slots now
                    try:
                        taken = await self.slots.acquire_unless_stalled(SLOTS_STALLED_S, give_up_at)
                    except BaseException:
                        self._behind += 1
                        raise
                    if taken and not self.consuming():  # stopping: no new work here
                        self.slots.release()
                        taken = False
                    if not taken:
                        self._behind += 1
                        break
                    self._held[workflow] -= 1
                    woken = asyncio.create_task(self._wake_here(instance_id))
                    run = asyncio.create_task(self._run_claimed(woken))
                    # Released whenever the run ends, even cancelled before it started.
                    run.add_done_callback(lambda _: self.slots.release())
                    rounds.append(woken)
                    runs.append(run)
                    self._runners.add(run)
                    run.add_done_callback(self._runners.discard)
                results = await asyncio.gather(*rounds, return_exceptions=True)
            except BaseException:  # cancelled: the worker is stopping
                for task in (*rounds, *runs):
                    task.cancel()
                raise
            here, unwoken = instance_ids[: len(rounds)], instance_ids[len(rounds) :]
            for instance_id, result in zip(here, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("the wake-up round of %s failed: %r", instance_id, result)
                    unwoken.append(instance_id)
            if all(isinstance(result, BaseException) for result in results):
                await self._publish_wake_ups(workflow, unwoken, command.wake_at)  # or requeued
                return None
            try:
                await self._publish_wake_ups(workflow, unwoken, command.wake_at)
            except Exception as error:
                log.warning(
                    "publishing wake-ups of %s failed, the timer sweep wakes them: %r",
                    unwoken,
                    error,
                )
            return functools.partial(_all_of, runs)
        finally:  # published again, or left to the sweep, or requeued with the group
            not_started = len(instance_ids) - len(rounds)
            self._held[workflow] -= not_started
            self._behind -= not_started

    def holds_wake_ups(self, workflow: str) -> bool:
        """Whether instances of `workflow` from wake-up groups are kept here, neither given a
        slot nor published again yet."""
        return self._held[workflow] > 0

    async def _wake_here(self, instance_id: str) -> ClaimedWork | None:
        request = RunRequest(instance_id)
        return await self.runtime.database.retry(
            lambda: self.rounds.submit(request, head_start=WAKE_UP_HEAD_START_S)
        )

    async def _run_claimed(self, woken: asyncio.Task[ClaimedWork | None]) -> None:
        """Run the attempts the round claims as soon as it returns (in the slot taken for
        it, which `wake_group` releases when this ends)."""
        try:
            work = await woken
        except Exception:  # logged, and published again, by wake_group
            return
        if work is not None:
            await self.attempts.run_claimed(work)

    async def _delayed_again(
        self, workflow: str, message: AbstractIncomingMessage, command: RunInstance
    ) -> bool:
        """Whether the wake-up came early, and was published again to arrive on time."""
        if command.wake_at is None or command.wake_at - self.runtime.clock.now() <= EARLY_TOLERANCE:
            return False
        # A fresh message, never the received one: its x-death headers would make the
        # broker drop it in the cascade (DESIGN.md).
        await self.runtime.publisher.publish_run(
            workflow, message.body, queries.new_message_id(), command.wake_at
        )
        return True

    async def _publish_wake_ups(
        self, workflow: str, instance_ids: list[str], wake_at: datetime | None
    ) -> None:
        """Publish a lone wake-up for each instance to the wake queue."""
        await asyncio.gather(
            *(
                self.runtime.publisher.publish_run(
                    workflow,
                    RunInstance(instance_id=instance_id, wake_at=wake_at)
                    .model_dump_json(exclude_none=True)
                    .encode(),
                    queries.new_message_id(),
                    wake_at,
                )
                for instance_id in instance_ids
            )
        )

    async def aclose(self, timeout: float) -> None:
        """Cancel the attempts of woken instances still running (their group's handler was
        cancelled, past the worker's grace, after it had started them), then wait up to
        `timeout` for the rounds under way, then cancel them (see `Batcher.aclose`)."""
        runners = set(self._runners)
        for runner in runners:
            runner.cancel()
        if runners:
            await asyncio.wait(runners)
        await self.rounds.aclose(timeout)
