from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import aio_pika
import sqlalchemy as sa

from processor import Workflow, WorkflowEvent, WorkflowStep
from processor.broker.topology import DELAY_LEVELS
from processor.store.database import Database
from processor.store.tables import StepRow
from schemas import RunInstance
from tests.conftest import BROKER_URL, TestEnv, assert_eventually


async def test_delayed_messages_arrive_once_and_never_early(env: TestEnv) -> None:
    """The delay cascade on its own: random delays, each message delivered once, none early."""
    runtime = env.client.runtime
    connection = await aio_pika.connect(BROKER_URL)
    async with connection:
        channel = await connection.channel()
        await runtime.topology.declare_exchanges(channel)
        _, queue = await runtime.topology.declare_run_queues(channel, "probe")
        env._workflows.add("probe")
        rng = random.Random(7)
        due: dict[str, datetime] = {}
        now = datetime.now(UTC)
        for n in range(40):
            wake_at = now + timedelta(milliseconds=rng.randint(50, 2500))
            message_id = f"m{n}"
            due[message_id] = wake_at
            body = RunInstance(instance_id=message_id, wake_at=wake_at).model_dump_json()
            await runtime.publisher.publish_run("probe", body.encode(), message_id, wake_at)
        arrived: dict[str, datetime] = {}
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                assert message.message_id not in arrived, "a delayed message arrived twice"
                arrived[message.message_id or ""] = datetime.now(UTC)
                if len(arrived) == len(due):
                    break
    early = {m: (due[m] - t).total_seconds() for m, t in arrived.items() if t < due[m]}
    assert not early, f"messages arrived before their due time: {early}"


async def noop() -> str:
    return "done"


class LongSleep(Workflow):
    name = "long-sleep"

    async def run(self, event: WorkflowEvent[dict[str, object]], step: WorkflowStep) -> str:
        await step.sleep("a long nap", "1 hour")
        return await step.do("after", noop)


async def test_the_sweeper_wakes_an_instance_whose_wake_up_message_was_lost(env: TestEnv) -> None:
    worker = await env.start_worker(LongSleep)
    instance = await env.client.create(LongSleep)

    async def sleeping() -> bool:
        return (await instance.status()).status == "waiting"

    await assert_eventually(sleeping, what="the instance to sleep")
    # The wake-up message sits in the cascade for an hour; pretend it was lost and the due
    # time has passed: only the sweeper can wake the instance now.
    database = Database(env.backend.database_url, schema=env.backend.schema)
    async with database.transaction() as session:
        await session.exec(
            sa.update(StepRow)
            .where(sa.column("instance_id") == instance.id)
            .values(wake_at=datetime.now(UTC) - timedelta(minutes=1))
        )
    await database.close()
    assert await instance.result(timeout=15) == "done"
    assert worker.runtime.topology.namespace == env.namespace


def test_the_cascade_covers_a_year() -> None:
    assert timedelta(milliseconds=2**DELAY_LEVELS) > timedelta(days=365)


async def test_a_sleep_of_zero_seconds_returns_at_once(env: TestEnv) -> None:
    class ZeroSleep(Workflow):
        name = "zero-sleep"

        async def run(self, event: WorkflowEvent[dict[str, object]], step: WorkflowStep) -> str:
            await step.sleep("no nap", 0)
            return "awake"

    await env.start_worker(ZeroSleep)
    instance = await env.client.create(ZeroSleep)
    assert await asyncio.wait_for(instance.result(), 15) == "awake"


async def quick() -> str:
    return "quick"


class OutrunsItsNap(Workflow[dict[str, object]]):
    """Returns while a parallel branch still sleeps: the instance ends with a timer set."""

    name = "outruns-its-nap"

    async def run(self, event: WorkflowEvent[dict[str, object]], step: WorkflowStep) -> str:
        nap = asyncio.ensure_future(step.sleep("long nap", "1 hour"))
        try:
            return await step.do("quick", quick)
        finally:
            nap.cancel()


async def test_a_finished_instance_keeps_no_timer(env: TestEnv) -> None:
    """The sweepers look for due timers: a finished instance's are cleared as it ends."""
    await env.start_worker(OutrunsItsNap)
    instance = await env.client.create(OutrunsItsNap)
    assert await instance.result(timeout=20) == "quick"
    steps = {step.name: step for step in (await instance.status()).steps}
    assert steps["long nap"].wake_at is None
    assert steps["quick"].wake_at is None
