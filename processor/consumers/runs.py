"""The run queues (`{ns}.run.{workflow}`): advance instances, one round per message; a message
may carry the report of a step attempt that ended, which the round records first."""

from __future__ import annotations

import functools
from concurrent.futures import Executor
from datetime import timedelta
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from processor.consumers.base import FollowUp
from processor.consumers.decoding import decode
from processor.engine.replay import Claimant
from processor.engine.rounds import RunRequest, round_runner, run_claimed
from processor.runtime import Runtime
from processor.store import queries
from processor.workflow import Workflow
from schemas import MAX_MESSAGE_BYTES, RunInstance

#: A wake-up this early is delayed again rather than run (the cascade rounds to 1 ms).
EARLY_TOLERANCE = timedelta(milliseconds=2)
#: A step's report carries its result (up to MAX_MESSAGE_BYTES as JSON) or its error.
MAX_RUN_MESSAGE_BYTES = 2 * MAX_MESSAGE_BYTES


class RunConsumer:
    def __init__(
        self,
        runtime: Runtime,
        registry: dict[str, type[Workflow[Any]]],
        claimant: Claimant,
        executor: Executor,
    ) -> None:
        self.runtime = runtime
        self.registry = registry
        self.claimant = claimant
        self.executor = executor
        self.rounds = round_runner(runtime, registry, claimant)

    async def handle(self, workflow: str, message: AbstractIncomingMessage) -> FollowUp | None:
        """Record the step report the message carries, if any, replay the instance and commit
        its claims; running the claimed attempts is the follow-up, after the ack."""
        command = decode(message, RunInstance, max_bytes=MAX_RUN_MESSAGE_BYTES)
        if (
            command.wake_at is not None
            and command.wake_at - self.runtime.clock.now() > EARLY_TOLERANCE
        ):
            # A fresh message, never the received one: its x-death headers would make the
            # broker drop it in the cascade (DESIGN.md).
            await self.runtime.publisher.publish_run(
                workflow, message.body, queries.new_message_id(), command.wake_at
            )
            return None
        request = RunRequest(command.instance_id, command.report)
        work = await self.runtime.database.retry(lambda: self.rounds.submit(request))
        if work is None:
            return None
        return functools.partial(run_claimed, self.runtime, work, self.claimant, self.executor)

    async def aclose(self, timeout: float) -> None:
        """Wait up to `timeout` for the rounds under way, then cancel them (see
        `Batcher.aclose`)."""
        await self.rounds.aclose(timeout)
