"""The Python client: create, inspect and steer instances (issue 2, "What a user must be able
to do"). Every test runs on SQLite and on PostgreSQL against the real broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pydantic
import pydantic.alias_generators
import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from processor import (
    Client,
    EventTimeoutError,
    Instance,
    InstanceExistsError,
    InstanceFailedError,
    InstanceNotFoundError,
    InstanceStateError,
    NonRetryableError,
    Workflow,
    WorkflowEvent,
    WorkflowNotFoundError,
    WorkflowStep,
)
from processor.store.tables import OutboxRow
from tests.conftest import TestEnv, assert_eventually
from tests.integration.helpers import created, open_wire

#: Step side effects, by (instance id, step name).
CALLS: Counter[tuple[str, str]] = Counter()
#: Step bodies of "gated" steps block until the test sets their instance's event.
GATES: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _fresh_counters() -> Iterator[None]:
    CALLS.clear()
    GATES.clear()
    yield
    for gate in GATES.values():
        gate.set()


async def record(instance_id: str, name: str) -> str:
    CALLS[instance_id, name] += 1
    return name


async def gated(instance_id: str, name: str) -> str:
    CALLS[instance_id, name] += 1
    await GATES[instance_id].wait()
    return name


async def fail_first_time(instance_id: str, name: str) -> str:
    CALLS[instance_id, name] += 1
    if CALLS[instance_id, name] == 1:
        raise NonRetryableError("the first attempt of this instance fails")
    return name


class Order(BaseModel):
    order_id: str


class Quick(Workflow[Order]):
    """Two steps, no waiting."""

    name = "client-quick"

    async def run(self, event: WorkflowEvent[Order], step: WorkflowStep) -> Any:
        await step.do("one", record, event.instance_id, "one")
        await step.do("two", record, event.instance_id, "two")
        return {"order_id": event.payload.order_id}


class Other(Workflow[dict[str, Any]]):
    """A second workflow with plain-dict params."""

    name = "client-other"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        await step.do("only", record, event.instance_id, "only")
        return event.payload


class Napper(Workflow[dict[str, Any]]):
    """A step, a sleep of `params["nap"]` seconds, a step."""

    name = "client-napper"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        await step.do("before", record, event.instance_id, "before")
        await step.sleep("nap", event.payload["nap"])
        await step.do("after", record, event.instance_id, "after")
        return "rested"


class Gated(Workflow[dict[str, Any]]):
    """The first step blocks until the test opens its instance's gate."""

    name = "client-gated"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        await step.do("first", gated, event.instance_id, "first")
        await step.do("second", record, event.instance_id, "second")
        return "through"


class Flaky(Workflow[dict[str, Any]]):
    """Errors on its first run (a non-retryable step failure), completes on a later one."""

    name = "client-flaky"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        return await step.do("flaky", fail_first_time, event.instance_id, "flaky")


class Approval(Workflow[dict[str, Any]]):
    name = "client-approval"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        received = await step.wait_for_event("approval", type="approval", timeout="30 seconds")
        return received.payload


async def status_of(instance: Instance) -> str:
    return (await instance.status()).status.value


async def until_status(instance: Instance, *statuses: str, timeout: float = 20.0) -> None:
    async def reached() -> bool:
        return await status_of(instance) in statuses

    await assert_eventually(reached, timeout, f"{instance.id} to be {' or '.join(statuses)}")


async def until_sleeping(instance: Instance) -> datetime:
    """Wait until the instance sleeps in its "nap" step; returns the step's due time."""
    await until_status(instance, "waiting")
    (nap,) = [s for s in (await instance.status()).steps if s.name == "nap"]
    assert nap.status == "sleeping"
    assert nap.wake_at is not None
    return nap.wake_at


async def past(due: datetime, margin: float = 1.0) -> None:
    # Real time must pass here: the wake-up is a delayed message in the real broker.
    await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + margin)


async def registered_then_stopped(env: TestEnv, *workflows: type[Workflow[Any]]) -> None:
    """A worker registers the workflows once and stops: they are known, and nobody serves them."""
    await env.stop_worker(await env.start_worker(*workflows))


# --- create -------------------------------------------------------------------------------


async def test_create_returns_an_instance_whose_status_is_visible_at_once(env: TestEnv) -> None:
    await env.start_worker(Quick)

    instance = await env.client.create(Quick, Order(order_id="o-1"), id="visible")

    status = await instance.status()
    assert status.id == "visible"
    assert status.workflow == "client-quick"
    assert status.params == {"order_id": "o-1"}
    assert await instance.result(timeout=20) == {"order_id": "o-1"}


async def test_create_by_name_without_a_worker_queues_the_instance_until_one_starts(
    env: TestEnv,
) -> None:
    await registered_then_stopped(env, Quick)

    # A process that never imported the class: it knows the workflow only by name.
    async with Client(**env.settings()) as client:
        instance = await client.create("client-quick", {"order_id": "o-2"}, id="queued-one")
        assert await status_of(instance) == "queued"
        await asyncio.sleep(1.0)  # no worker: nothing may move it
        assert await status_of(instance) == "queued"
        assert CALLS["queued-one", "one"] == 0

        await env.start_worker(Quick)
        assert await instance.result(timeout=20) == {"order_id": "o-2"}
    assert CALLS["queued-one", "one"] == 1


async def test_create_for_a_workflow_no_worker_registered_raises_workflow_not_found(
    env: TestEnv,
) -> None:
    await env.start_worker(Quick)

    with pytest.raises(WorkflowNotFoundError, match="never-registered"):
        await env.client.create("never-registered", {"order_id": "o"})

    assert await env.client.list() == []


@pytest.mark.parametrize("bad_id", ["bad id!", "", "x" * 101, "-leading", "a/b", "é"])
async def test_create_with_an_invalid_id_raises_value_error_and_creates_nothing(
    env: TestEnv, bad_id: str
) -> None:
    await env.start_worker(Quick)

    with pytest.raises(ValueError, match="instance id"):
        await env.client.create(Quick, Order(order_id="o"), id=bad_id)

    assert await env.client.list() == []


async def test_create_accepts_ids_at_the_edges_of_the_pattern(env: TestEnv) -> None:
    await registered_then_stopped(env, Quick)

    for good_id in ["x" * 100, "_lead", "a", "A-b_9"]:
        instance = await env.client.create(Quick, Order(order_id="o"), id=good_id)
        assert instance.id == good_id

    assert len(await env.client.list()) == 4


async def test_params_the_workflow_model_rejects_raise_before_anything_is_created(
    env: TestEnv,
) -> None:
    await env.start_worker(Quick)

    with pytest.raises(pydantic.ValidationError):
        await env.client.create(Quick, {"wrong": "field"}, id="rejected")

    assert await env.client.list() == []


async def test_missing_params_the_workflow_model_requires_raise_before_anything_is_created(
    env: TestEnv,
) -> None:
    await env.start_worker(Quick)

    # The run would validate None as {}, which Order rejects: so does create.
    with pytest.raises(pydantic.ValidationError, match="order_id"):
        await env.client.create(Quick, id="no-params")

    assert await env.client.list() == []


class CamelOrder(BaseModel):
    model_config = pydantic.ConfigDict(alias_generator=pydantic.alias_generators.to_camel)
    order_id: str


class CamelCase(Workflow[CamelOrder]):
    name = "client-camel-case"

    async def run(self, event: WorkflowEvent[CamelOrder], step: WorkflowStep) -> Any:
        return event.payload.order_id


async def test_a_params_model_with_aliases_is_stored_as_it_validates(env: TestEnv) -> None:
    await env.start_worker(CamelCase)

    from_model = await env.client.create(CamelCase, CamelOrder(orderId="o-1"))
    from_dict = await env.client.create(CamelCase, {"orderId": "o-2"})

    assert await from_model.result(timeout=20) == "o-1"
    assert await from_dict.result(timeout=20) == "o-2"
    assert (await from_dict.status()).params == {"orderId": "o-2"}


@pytest.mark.parametrize("workflow", [Order, Workflow, 42])
async def test_create_of_something_that_is_not_a_workflow_raises_type_error(
    env: TestEnv, workflow: Any
) -> None:
    with pytest.raises(TypeError, match="a Workflow subclass or its name"):
        await env.client.create(workflow)


async def test_control_takes_an_action_or_its_name_and_refuses_others(env: TestEnv) -> None:
    await registered_then_stopped(env, Quick)
    instance = await env.client.create(Quick, Order(order_id="o-1"))

    await env.client.control(instance.id, "pause")
    with pytest.raises(ValueError, match="frobnicate"):
        await env.client.control(instance.id, "frobnicate")

    assert (await instance.status()).status == "paused"


async def test_an_event_type_that_is_not_utf8_raises_before_anything_is_sent(
    env: TestEnv,
) -> None:
    await registered_then_stopped(env, Quick)
    instance = await env.client.create(Quick, Order(order_id="o-1"))

    with pytest.raises(ValueError, match="event type must be"):
        await instance.send_event("\ud800", {"n": 1})

    assert await env.client.events(instance.id) == []


async def test_create_with_a_taken_id_raises_instance_exists(env: TestEnv) -> None:
    await registered_then_stopped(env, Quick)
    await env.client.create(Quick, Order(order_id="first"), id="taken")

    with pytest.raises(InstanceExistsError, match="taken"):
        await env.client.create(Quick, Order(order_id="second"), id="taken")

    (only,) = await env.client.list()
    assert only.params == {"order_id": "first"}


async def test_create_batch_creates_every_instance(env: TestEnv) -> None:
    await env.start_worker(Quick)

    instances = await env.client.create_batch(
        Quick,
        [
            {"id": "b-1", "params": {"order_id": "1"}},
            {"id": "b-2", "params": Order(order_id="2")},
            {"params": {"order_id": "3"}},
        ],
    )

    assert [i.id for i in instances][:2] == ["b-1", "b-2"]
    results = [await i.result(timeout=20) for i in instances]
    assert results == [{"order_id": "1"}, {"order_id": "2"}, {"order_id": "3"}]


async def test_a_full_batch_creates_and_runs_every_instance(env: TestEnv) -> None:
    """A hundred creates are written a statement per table on PostgreSQL (driver.MAX_TOGETHER),
    each instance with its own run message."""
    await env.start_worker(Quick)

    items = [{"params": {"order_id": str(index)}} for index in range(100)]
    instances = await env.client.create_batch(Quick, items)

    assert len({instance.id for instance in instances}) == 100
    results = await asyncio.gather(*(instance.result(timeout=60) for instance in instances))
    assert results == [{"order_id": str(index)} for index in range(100)]


@pytest.mark.parametrize("size", [3, 100])
async def test_create_batch_with_one_taken_id_creates_none_of_the_others(
    env: TestEnv, size: int
) -> None:
    await registered_then_stopped(env, Quick)
    await env.client.create(Quick, Order(order_id="o"), id="taken")
    items: list[dict[str, Any]] = [
        {"id": f"new-{index}", "params": {"order_id": str(index)}} for index in range(size)
    ]
    items[size // 2]["id"] = "taken"

    with pytest.raises(InstanceExistsError) as raised:
        await env.client.create_batch(Quick, items)

    assert raised.value.instance_id == "taken"
    assert [s.id for s in await env.client.list()] == ["taken"]
    with pytest.raises(InstanceNotFoundError):
        await env.client.get("new-0")


async def test_create_batch_of_more_than_100_raises_value_error(env: TestEnv) -> None:
    await registered_then_stopped(env, Quick)

    items = [{"id": f"i-{n}", "params": {"order_id": str(n)}} for n in range(101)]
    with pytest.raises(ValueError, match="101"):
        await env.client.create_batch(Quick, items)

    assert await env.client.list() == []


async def test_create_batch_with_the_same_id_twice_raises_value_error(env: TestEnv) -> None:
    await registered_then_stopped(env, Quick)

    twin = {"id": "twin", "params": {"order_id": "o-1"}}
    with pytest.raises(ValueError, match="same id"):
        await env.client.create_batch(Quick, [twin, twin])

    assert await env.client.list() == []


# --- get and list ------------------------------------------------------------------------


async def test_get_of_an_unknown_id_raises_instance_not_found(env: TestEnv) -> None:
    with pytest.raises(InstanceNotFoundError, match="nobody"):
        await env.client.get("nobody")


async def test_get_returns_a_handle_on_an_existing_instance(env: TestEnv) -> None:
    await env.start_worker(Quick)
    await env.client.create(Quick, Order(order_id="o"), id="known")

    instance = await env.client.get("known")

    assert instance.id == "known"
    assert await instance.result(timeout=20) == {"order_id": "o"}


async def test_list_filters_by_workflow_and_status(env: TestEnv) -> None:
    await registered_then_stopped(env, Quick, Other)
    await env.start_worker(Quick)  # nobody serves Other: its instance stays queued
    a1 = await env.client.create(Quick, Order(order_id="1"), id="a1")
    a2 = await env.client.create(Quick, Order(order_id="2"), id="a2")
    await env.client.create(Other, {"x": 1}, id="b1")
    await a1.result(timeout=20)
    await a2.result(timeout=20)

    client = env.client
    assert {s.id for s in await client.list()} == {"a1", "a2", "b1"}
    assert {s.id for s in await client.list(workflow="client-quick")} == {"a1", "a2"}
    assert {s.id for s in await client.list(workflow="client-other")} == {"b1"}
    assert {s.id for s in await client.list(status="complete")} == {"a1", "a2"}
    assert {s.id for s in await client.list(status="queued")} == {"b1"}
    assert await client.list(workflow="client-other", status="complete") == []
    assert len(await client.list(limit=1)) == 1


# --- pause and resume --------------------------------------------------------------------


async def test_a_paused_sleeping_instance_stays_paused_past_its_due_time_until_resumed(
    env: TestEnv,
) -> None:
    await env.start_worker(Napper)
    instance = await env.client.create(Napper, {"nap": 1.5}, id="sleeper")
    due = await until_sleeping(instance)

    await instance.pause()
    assert await status_of(instance) == "paused"

    await past(due)
    assert await status_of(instance) == "paused"
    assert CALLS["sleeper", "after"] == 0

    await instance.resume()
    assert await instance.result(timeout=20) == "rested"
    assert CALLS["sleeper", "before"] == 1
    assert CALLS["sleeper", "after"] == 1


async def test_pausing_a_running_instance_waits_for_the_step_then_starts_no_other(
    env: TestEnv,
) -> None:
    await env.start_worker(Gated)
    GATES["mid-step"] = asyncio.Event()
    instance = await env.client.create(Gated, id="mid-step")

    async def first_step_started() -> bool:
        return CALLS["mid-step", "first"] == 1

    await assert_eventually(first_step_started, what="the first step to start")
    assert await status_of(instance) == "running"

    await instance.pause()
    assert await status_of(instance) == "waiting_for_pause"

    GATES["mid-step"].set()
    await until_status(instance, "paused")
    steps = {s.name: s.status for s in (await instance.status()).steps}
    assert steps["first"] == "complete"
    await asyncio.sleep(0.5)  # the next step must not start while paused
    assert CALLS["mid-step", "second"] == 0
    assert await status_of(instance) == "paused"

    await instance.resume()
    assert await instance.result(timeout=20) == "through"
    assert CALLS["mid-step", "first"] == 1
    assert CALLS["mid-step", "second"] == 1


async def test_pause_of_a_queued_instance_holds_it_until_resumed(env: TestEnv) -> None:
    await registered_then_stopped(env, Quick)
    instance = await env.client.create(Quick, Order(order_id="o"), id="held")

    await instance.pause()
    assert await status_of(instance) == "paused"
    await env.start_worker(Quick)
    await asyncio.sleep(1.0)  # the creation message arrives and must change nothing
    assert await status_of(instance) == "paused"
    assert CALLS["held", "one"] == 0

    await instance.resume()
    assert await instance.result(timeout=20) == {"order_id": "o"}


# --- terminate ---------------------------------------------------------------------------


async def test_a_terminated_sleeping_instance_stays_terminated_past_its_due_time(
    env: TestEnv,
) -> None:
    await env.start_worker(Napper)
    instance = await env.client.create(Napper, {"nap": 1.5}, id="doomed")
    due = await until_sleeping(instance)

    await instance.terminate()
    assert await status_of(instance) == "terminated"

    await past(due)
    assert await status_of(instance) == "terminated"
    assert CALLS["doomed", "after"] == 0
    with pytest.raises(InstanceFailedError) as failed:
        await instance.result(timeout=5)
    assert failed.value.status == "terminated"


async def test_terminate_of_a_complete_instance_raises_instance_state_error(
    env: TestEnv,
) -> None:
    await env.start_worker(Quick)
    instance = await env.client.create(Quick, Order(order_id="o"))
    await instance.result(timeout=20)

    with pytest.raises(InstanceStateError, match="complete"):
        await instance.terminate()

    assert await status_of(instance) == "complete"


async def test_pause_of_a_terminated_instance_raises_instance_state_error(env: TestEnv) -> None:
    await registered_then_stopped(env, Quick)
    instance = await env.client.create(Quick, Order(order_id="o"))
    await instance.terminate()

    with pytest.raises(InstanceStateError, match="terminated"):
        await instance.pause()
    with pytest.raises(InstanceStateError, match="terminated"):
        await instance.resume()

    assert await status_of(instance) == "terminated"


# --- restart -----------------------------------------------------------------------------


async def test_restart_of_a_complete_instance_runs_every_step_again_with_the_same_params(
    env: TestEnv,
) -> None:
    await env.start_worker(Quick)
    instance = await env.client.create(Quick, Order(order_id="again"), id="rerun")
    await instance.result(timeout=20)
    assert (CALLS["rerun", "one"], CALLS["rerun", "two"]) == (1, 1)

    await instance.restart()

    assert await instance.result(timeout=20) == {"order_id": "again"}
    assert (CALLS["rerun", "one"], CALLS["rerun", "two"]) == (2, 2)
    status = await instance.status()
    assert status.id == "rerun"
    assert status.params == {"order_id": "again"}
    assert [s.name for s in status.steps] == ["one", "two"]
    assert [s.attempts for s in status.steps] == [1, 1]
    assert len(await env.client.list()) == 1


async def test_restart_of_an_errored_instance_runs_it_again(env: TestEnv) -> None:
    await env.start_worker(Flaky)
    instance = await env.client.create(Flaky, id="flaky")
    with pytest.raises(InstanceFailedError) as failed:
        await instance.result(timeout=20)
    assert failed.value.status == "errored"
    assert failed.value.error is not None
    assert "first attempt of this instance fails" in failed.value.error.message

    await instance.restart()

    assert await instance.result(timeout=20) == "flaky"
    assert CALLS["flaky", "flaky"] == 2
    assert (await instance.status()).error is None


async def test_restart_of_a_terminated_instance_raises_instance_state_error(
    env: TestEnv,
) -> None:
    await registered_then_stopped(env, Quick)
    instance = await env.client.create(Quick, Order(order_id="o"))
    await instance.terminate()

    with pytest.raises(InstanceStateError, match="terminated"):
        await instance.restart()

    assert await status_of(instance) == "terminated"


async def test_control_of_an_unknown_instance_raises_instance_not_found(env: TestEnv) -> None:
    instance = Instance(env.client, "ghost")
    for action in (instance.pause, instance.resume, instance.terminate, instance.restart):
        with pytest.raises(InstanceNotFoundError):
            await action()


# --- events ------------------------------------------------------------------------------


async def test_send_event_to_an_unknown_instance_raises_instance_not_found(env: TestEnv) -> None:
    with pytest.raises(InstanceNotFoundError, match="ghost"):
        await env.client.send_event("ghost", "approval", {"ok": True})


async def test_an_event_sent_right_after_create_is_buffered_for_the_wait(env: TestEnv) -> None:
    await registered_then_stopped(env, Approval)
    instance = await env.client.create(Approval, id="early")

    await instance.send_event("approval", {"approved": True})
    assert await status_of(instance) == "queued"  # no worker has run it yet

    await env.start_worker(Approval)
    assert await instance.result(timeout=20) == {"approved": True}


async def test_an_event_sent_while_the_instance_waits_wakes_it(env: TestEnv) -> None:
    await env.start_worker(Approval)
    instance = await env.client.create(Approval, id="late")
    await until_status(instance, "waiting")

    await instance.send_event("approval", {"approved": "late"})

    assert await instance.result(timeout=20) == {"approved": "late"}


# --- result ------------------------------------------------------------------------------


async def test_result_with_a_short_timeout_on_a_sleeping_instance_raises_timeout_error(
    env: TestEnv,
) -> None:
    await env.start_worker(Napper)
    instance = await env.client.create(Napper, {"nap": 3}, id="slow")
    await until_sleeping(instance)

    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await instance.result(timeout=0.2)
    assert asyncio.get_running_loop().time() - started < 2.0


# --- several workers ---------------------------------------------------------------------


class OnlyA(Workflow[dict[str, Any]]):
    name = "client-only-a"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        done = await step.do("a", record, event.instance_id, "a")
        await step.sleep("pause", 0.3)
        return done


class OnlyB(Workflow[dict[str, Any]]):
    name = "client-only-b"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        done = await step.do("b", record, event.instance_id, "b")
        with contextlib.suppress(EventTimeoutError):
            await step.wait_for_event("nothing comes", type="never", timeout=0.3)
        return done


async def test_workers_with_different_workflows_share_a_namespace_without_dead_letters(
    env: TestEnv,
) -> None:
    await env.start_worker(OnlyA)
    await env.start_worker(OnlyB)

    instances = [await env.client.create(OnlyA, id=f"a-{n}") for n in range(5)]
    instances += [await env.client.create(OnlyB, id=f"b-{n}") for n in range(5)]
    async with open_wire(env) as wire:
        # Either worker takes ingress commands, whichever workflow they name.
        for n in range(5):
            await wire.publish("instance.create", {"workflow": "client-only-a", "id": f"wa-{n}"})
            await wire.publish("instance.create", {"workflow": "client-only-b", "id": f"wb-{n}"})

        for instance in instances:
            assert await instance.result(timeout=30) in ("a", "b")
        for n in range(5):
            assert await (await created(env.client, f"wa-{n}")).result(timeout=30) == "a"
            assert await (await created(env.client, f"wb-{n}")).result(timeout=30) == "b"

        for queue in wire.dead_queues("client-only-a", "client-only-b"):
            assert await wire.message_count(queue) == 0, queue
    assert sum(CALLS.values()) == 20


async def test_published_outbox_rows_are_deleted_soon_after_publishing(env: TestEnv) -> None:
    """Every published message's outbox row goes, so the relay never publishes it twice."""
    await registered_then_stopped(env, Quick)
    for n in range(30):
        await env.client.create(Quick, Order(order_id=f"o-{n}"))
    database = env.client.runtime.database

    async def outbox_is_empty() -> bool:
        async with database.read() as session:
            return not (await session.exec(sa.select(OutboxRow.id))).all()

    await assert_eventually(outbox_is_empty, timeout=2.0, what="the outbox to be emptied")
