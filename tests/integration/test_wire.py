"""The wire contract (issue 2): other services publish JSON with plain aio-pika to
`{namespace}.ingress`; bad input is dead-lettered to `{namespace}.ingress.dead` with a reason,
and good messages keep flowing."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from processor import (
    EventTimeoutError,
    InstanceNotFoundError,
    Workflow,
    WorkflowEvent,
    WorkflowStep,
)
from tests.conftest import TestEnv, assert_eventually
from tests.integration.helpers import Wire, created, error_reason, open_wire
from tests.integration.poison import POISON

#: Step side effects, by (instance id, step name).
CALLS: Counter[tuple[str, str]] = Counter()


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    CALLS.clear()


async def record(instance_id: str, name: str) -> str:
    CALLS[instance_id, name] += 1
    return name


class Echo(Workflow[dict[str, Any]]):
    name = "wire-echo"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        await step.do("echo", record, event.instance_id, "echo")
        return event.payload


class Napper(Workflow[dict[str, Any]]):
    name = "wire-napper"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        await step.do("before", record, event.instance_id, "before")
        await step.sleep("nap", event.payload["nap"])
        await step.do("after", record, event.instance_id, "after")
        return "rested"


class TwoWaits(Workflow[dict[str, Any]]):
    """Takes one "ping" event, then reports whether a second one came within a second."""

    name = "wire-two-waits"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        first = await step.wait_for_event("first ping", type="ping", timeout="30 seconds")
        try:
            second = await step.wait_for_event("second ping", type="ping", timeout=1)
        except EventTimeoutError:
            return {"first": first.payload, "second": "timed out"}
        return {"first": first.payload, "second": second.payload}


@pytest.fixture
async def wire(env: TestEnv) -> Any:
    async with open_wire(env) as opened:
        yield opened


async def ingress_is_drained(env: TestEnv, wire: Wire, marker_id: str) -> None:
    """Wait until every create published before this call has been applied.

    The worker runs with concurrency 1, so ingress messages are applied one at a time in
    order (IngressConsumer.handle): once a create published last has taken effect, every
    message before it has too.
    """
    await wire.publish("instance.create", {"workflow": "wire-echo", "id": marker_id})
    await created(env.client, marker_id)


async def status_of(env: TestEnv, instance_id: str) -> str:
    return (await (await env.client.get(instance_id)).status()).status.value


# --- instance.create ---------------------------------------------------------------------


async def test_a_create_message_with_an_id_creates_and_runs_that_instance(
    env: TestEnv, wire: Wire
) -> None:
    await env.start_worker(Echo)

    await wire.publish(
        "instance.create", {"workflow": "wire-echo", "id": "w-1", "params": {"n": 1}}
    )

    instance = await created(env.client, "w-1")
    assert await instance.result(timeout=20) == {"n": 1}


async def test_a_create_message_without_an_id_creates_and_runs_an_instance(
    env: TestEnv, wire: Wire
) -> None:
    await env.start_worker(Echo)

    await wire.publish("instance.create", {"workflow": "wire-echo", "params": {"n": 2}})

    async def one_listed() -> bool:
        return len(await env.client.list(workflow="wire-echo")) == 1

    await assert_eventually(one_listed, what="the instance to be created")
    (listed,) = await env.client.list(workflow="wire-echo")
    instance = await env.client.get(listed.id)
    assert await instance.result(timeout=20) == {"n": 2}


async def test_a_second_create_message_for_a_taken_id_creates_nothing(
    env: TestEnv, wire: Wire
) -> None:
    await env.start_worker(Echo, concurrency=1)
    await wire.publish(
        "instance.create", {"workflow": "wire-echo", "id": "dup", "params": {"v": 1}}
    )
    instance = await created(env.client, "dup")
    assert await instance.result(timeout=20) == {"v": 1}
    before = await instance.status()

    await wire.publish(
        "instance.create", {"workflow": "wire-echo", "id": "dup", "params": {"v": 2}}
    )
    await ingress_is_drained(env, wire, "marker")

    after = await instance.status()
    assert after.status == "complete"
    assert after.params == {"v": 1}
    assert after.output == {"v": 1}
    assert after.updated_at == before.updated_at
    assert CALLS["dup", "echo"] == 1
    assert [s.id for s in await env.client.list(workflow="wire-echo")].count("dup") == 1
    assert await wire.message_count(f"{wire.topology.ingress_queue}.dead") == 0


async def test_a_create_message_delivered_twice_creates_one_instance(
    env: TestEnv, wire: Wire
) -> None:
    await env.start_worker(Echo, concurrency=1)

    # No instance id: only the message id tells the copies apart from two creates.
    for _ in range(2):
        await wire.publish("instance.create", {"workflow": "wire-echo"}, message_id="create-once")
    await ingress_is_drained(env, wire, "marker")

    instances = [s for s in await env.client.list() if s.id != "marker"]
    assert len(instances) == 1


# --- instance.event ----------------------------------------------------------------------


async def test_an_event_message_delivered_twice_is_buffered_once(env: TestEnv, wire: Wire) -> None:
    await env.start_worker(TwoWaits)
    instance = await env.client.create(TwoWaits, id="pinged")

    for _ in range(2):
        await wire.publish(
            "instance.event",
            {"instance_id": "pinged", "type": "ping", "payload": {"n": 1}},
            message_id="ping-once",
        )

    assert await instance.result(timeout=20) == {"first": {"n": 1}, "second": "timed out"}


async def test_two_event_messages_with_different_ids_are_both_delivered(
    env: TestEnv, wire: Wire
) -> None:
    await env.start_worker(TwoWaits)
    instance = await env.client.create(TwoWaits, id="pinged")

    for n in (1, 2):
        await wire.publish(
            "instance.event", {"instance_id": "pinged", "type": "ping", "payload": {"n": n}}
        )

    # Consumers apply ingress messages concurrently: the two may be buffered in either order.
    result = await instance.result(timeout=20)
    assert sorted([result["first"]["n"], result["second"]["n"]]) == [1, 2]


# --- instance.control --------------------------------------------------------------------


async def control(wire: Wire, instance_id: str, action: str) -> None:
    await wire.publish("instance.control", {"instance_id": instance_id, "action": action})


async def test_pause_and_resume_messages_hold_and_release_a_sleeping_instance(
    env: TestEnv, wire: Wire
) -> None:
    await env.start_worker(Napper)
    instance = await env.client.create(Napper, {"nap": 1.5}, id="sleeper")

    async def sleeping() -> bool:
        return await status_of(env, "sleeper") == "waiting"

    await assert_eventually(sleeping, what="the instance to sleep")
    (nap,) = [s for s in (await instance.status()).steps if s.name == "nap"]
    assert nap.wake_at is not None

    await control(wire, "sleeper", "pause")

    async def paused() -> bool:
        return await status_of(env, "sleeper") == "paused"

    await assert_eventually(paused, what="the pause message to take effect")
    # Real time must pass: the wake-up is a delayed message in the real broker.
    await asyncio.sleep((nap.wake_at - datetime.now(UTC)).total_seconds() + 1.0)
    assert await status_of(env, "sleeper") == "paused"
    assert CALLS["sleeper", "after"] == 0

    await control(wire, "sleeper", "resume")
    assert await instance.result(timeout=20) == "rested"
    assert CALLS["sleeper", "after"] == 1


async def test_a_terminate_message_ends_an_instance_for_good(env: TestEnv, wire: Wire) -> None:
    await env.start_worker(Napper)
    instance = await env.client.create(Napper, {"nap": 1.5}, id="doomed")

    async def sleeping() -> bool:
        return await status_of(env, "doomed") == "waiting"

    await assert_eventually(sleeping, what="the instance to sleep")

    await control(wire, "doomed", "terminate")

    async def terminated() -> bool:
        return await status_of(env, "doomed") == "terminated"

    await assert_eventually(terminated, what="the terminate message to take effect")
    await asyncio.sleep(2.5)  # past the sleep's due time
    assert await status_of(env, "doomed") == "terminated"
    assert CALLS["doomed", "after"] == 0
    assert (await instance.status()).status == "terminated"


#: Per instance, set by the test to end the step that holds the worker's only slot until then
#: (made in each test: an event belongs to the loop it is first awaited in).
HOLDS: dict[str, asyncio.Event] = {}


async def held(instance_id: str) -> str:
    await HOLDS[instance_id].wait()
    return instance_id


class HoldsTheSlot(Workflow[dict[str, Any]]):
    name = "wire-holds-the-slot"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        return await step.do("held", held, event.instance_id)


async def test_ingress_messages_get_through_while_long_steps_hold_every_slot(
    env: TestEnv, wire: Wire
) -> None:
    HOLDS["holder"] = asyncio.Event()
    await env.start_worker(HoldsTheSlot, TwoWaits, Napper, concurrency=1)
    # Before the only slot is taken: their first rounds need it.
    waiter = await env.client.create(TwoWaits, id="waiter")
    await env.client.create(Napper, {"nap": 600}, id="sleeper")
    for instance_id in ("waiter", "sleeper"):
        await assert_eventually(
            functools.partial(has_status, env, instance_id, "waiting"), what="it to wait"
        )
    holder = await env.client.create(HoldsTheSlot, id="holder")
    await assert_eventually(
        functools.partial(has_status, env, "holder", "running"), what="the slot to be taken"
    )
    try:
        await wire.publish(
            "instance.event", {"instance_id": "waiter", "type": "ping", "payload": {"n": 1}}
        )
        await control(wire, "sleeper", "terminate")
        # A create and its event back to back: the event must not overtake it for good.
        await wire.publish("instance.create", {"workflow": "wire-two-waits", "id": "late"})
        await wire.publish(
            "instance.event", {"instance_id": "late", "type": "ping", "payload": {"n": 2}}
        )

        # Within seconds, not the minute a delivery waits for a slot before going back.
        await assert_eventually(
            functools.partial(has_status, env, "sleeper", "terminated"),
            timeout=10,
            what="the terminate to take effect while the slot is held",
        )
        # The events are kept for their instances; their rounds wait for a slot, as steps do.
        assert [event.payload for event in await env.client.events("waiter")] == [{"n": 1}]

        async def late_has_its_event() -> bool:
            try:
                events = await env.client.events("late")
            except InstanceNotFoundError:
                return False
            return [event.payload for event in events] == [{"n": 2}]

        await assert_eventually(late_has_its_event, timeout=10, what="the create, then its event")
        assert await wire.message_count(f"{wire.topology.ingress_queue}.dead") == 0
    finally:
        HOLDS["holder"].set()
    assert await holder.result(timeout=20) == "holder"
    assert await waiter.result(timeout=20) == {"first": {"n": 1}, "second": "timed out"}


async def has_status(env: TestEnv, instance_id: str, status: str) -> bool:
    return await status_of(env, instance_id) == status


async def test_a_restart_message_runs_a_complete_instance_again(env: TestEnv, wire: Wire) -> None:
    await env.start_worker(Echo)
    instance = await env.client.create(Echo, {"v": 1}, id="again")
    await instance.result(timeout=20)

    await control(wire, "again", "restart")

    async def ran_twice() -> bool:
        return CALLS["again", "echo"] == 2 and await status_of(env, "again") == "complete"

    await assert_eventually(ran_twice, what="the restarted instance to complete")
    assert await instance.result(timeout=5) == {"v": 1}


# --- poison messages ---------------------------------------------------------------------


async def test_poison_messages_are_dead_lettered_with_a_reason_and_good_ones_still_flow(
    env: TestEnv, wire: Wire
) -> None:
    await env.start_worker(Echo)
    target = await env.client.create(Echo, {"v": 0}, id="poison-target")
    await target.result(timeout=20)

    for message_id, (key, body, content_type, _) in POISON.items():
        await wire.publish(key, body, message_id=message_id, content_type=content_type)
    for n in range(3):
        await wire.publish("instance.create", {"workflow": "wire-echo", "id": f"good-{n}"})

    for n in range(3):
        assert await (await created(env.client, f"good-{n}")).result(timeout=20) == {}

    dead_queue = f"{wire.topology.ingress_queue}.dead"

    async def all_dead_lettered() -> bool:
        return await wire.message_count(dead_queue) >= len(POISON)

    await assert_eventually(all_dead_lettered, what="every poison message to be dead-lettered")
    dead = {str(m.message_id): m for m in await wire.take(dead_queue)}
    assert sorted(dead) == sorted(POISON)
    for message_id, (key, body, _, words) in POISON.items():
        message = dead[message_id]
        reason = error_reason(message)
        for word in words:
            assert word in reason, f"{message_id}: {word!r} not in {reason!r}"
        assert message.body == body, message_id
        assert (message.headers or {}).get("x-original-routing-key") == key
    # Nothing the poison messages named was created, and the good instances are untouched.
    assert {s.id for s in await env.client.list()} == {
        "poison-target",
        "good-0",
        "good-1",
        "good-2",
    }
    assert await wire.message_count(wire.topology.ingress_queue) == 0


async def test_an_event_published_right_after_its_create_is_kept_not_dead_lettered(
    env: TestEnv, wire: Wire
) -> None:
    """Ingress messages are applied concurrently, so an event can overtake its create: it is
    tried again shortly instead of being dead-lettered as an event for an unknown instance."""
    await env.start_worker(TwoWaits)
    ids = [f"race-{n}" for n in range(20)]
    for instance_id in ids:
        await wire.publish("instance.create", {"workflow": "wire-two-waits", "id": instance_id})
        await wire.publish(
            "instance.event", {"instance_id": instance_id, "type": "ping", "payload": {"n": 1}}
        )
    for instance_id in ids:
        instance = await created(env.client, instance_id)
        result = await instance.result(timeout=30)
        assert result == {"first": {"n": 1}, "second": "timed out"}
    assert await wire.message_count(f"{wire.topology.ingress_queue}.dead") == 0
