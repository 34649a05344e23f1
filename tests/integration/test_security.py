"""Bad input at every entry point (issue 3, "Security and bad input"): ids that try SQL
injection, carry a NUL byte, run to 10,000 characters or hold routing-key wildcards get a
precise error before anything is sent (Client, command line) or are dead-lettered with a reason
(wire), and Warren's tables are intact afterwards. Payloads and params over 1 MiB are refused
before SQL, and that limit is below the broker's own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel

from processor import Instance, Workflow, WorkflowEvent, WorkflowStep, cli
from processor.store.database import Database
from schemas import MAX_MESSAGE_BYTES, ControlAction
from tests.conftest import BROKER_URL, TestEnv, assert_eventually, require_tool
from tests.integration.broker_users import rabbitmqctl
from tests.integration.helpers import Wire, error_reason, open_wire

pytestmark = pytest.mark.integration

INJECTION = "'; DROP TABLE warren_instances; --"
BAD_IDS = {
    "sql injection": INJECTION,
    "NUL byte": "o-1\x00",
    "10k characters": "o" * 10_000,
    "routing-key #": "o-#",
    "routing-key *": "o-*",
}


async def echo(payload: Any) -> Any:
    return payload


class Echo(Workflow[dict[str, Any]]):
    name = "sec-echo"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        return await step.do("echo", echo, event.payload)


class Waiter(Workflow[dict[str, Any]]):
    """Waits for one event of the type its params name and returns the event's payload."""

    name = "sec-waiter"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        received = await step.wait_for_event("wait", type=event.payload["type"], timeout=60)
        return received.payload


@pytest.fixture
async def wire(env: TestEnv) -> AsyncIterator[Wire]:
    async with open_wire(env) as opened:
        yield opened


async def tables(env: TestEnv) -> set[str]:
    database = Database(env.backend.database_url, schema=env.backend.schema)
    try:
        async with database.engine.connect() as connection:
            names = await connection.run_sync(
                lambda sync: sa.inspect(sync).get_table_names(schema=env.backend.schema)
            )
    finally:
        await database.close()
    return set(names)


async def assert_intact(env: TestEnv, instance_ids: set[str]) -> None:
    """Every table is there, and the instances are exactly those the test made."""
    assert set(SQLModel.metadata.tables) <= await tables(env)
    assert {status.id for status in await env.client.list()} == instance_ids


async def test_every_client_method_refuses_a_bad_id_before_anything_is_sent(
    env: TestEnv,
) -> None:
    await env.start_worker(Echo)
    good = await env.client.create(Echo, {"n": 1}, id="good")
    assert await good.result(timeout=20) == {"n": 1}
    client = env.client

    def calls(bad: str) -> dict[str, Callable[[], Awaitable[Any]]]:
        return {
            "create": lambda: client.create(Echo, id=bad),
            "create by name": lambda: client.create(bad),
            "create_batch": lambda: client.create_batch(Echo, [{"id": "fine"}, {"id": bad}]),
            "get": lambda: client.get(bad),
            "status": lambda: client.status(bad),
            "list": lambda: client.list(workflow=bad),
            "send_event": lambda: client.send_event(bad, "ping"),
            "Instance.send_event": lambda: Instance(client, bad).send_event("ping"),
            **{
                action.value: lambda action=action: client.control(bad, action)
                for action in ControlAction
            },
        }

    for what, bad in BAD_IDS.items():
        for method, call in calls(bad).items():
            with pytest.raises(ValueError, match="must match") as raised:
                await call()
            assert repr(bad)[:40] in str(raised.value), f"{method} with {what}"

    await assert_intact(env, {"good"})
    assert (await good.status()).output == {"n": 1}


async def test_an_id_with_a_trailing_newline_is_refused(env: TestEnv) -> None:
    """Python's `$` also matches before a final newline: the check must match the whole id,
    as the wire models (Rust regex) do."""
    await env.start_worker(Echo)
    with pytest.raises(ValueError, match="must match"):
        await env.client.create(Echo, id="o-1\n")
    with pytest.raises(ValueError, match="must match"):
        await env.client.get("o-1\n")
    await assert_intact(env, set())


async def test_a_workflow_name_with_a_trailing_newline_is_refused(env: TestEnv) -> None:
    await env.start_worker(Echo)
    for call in (lambda: env.client.create("sec-echo\n"), lambda: env.client.list("sec-echo\n")):
        with pytest.raises(ValueError, match="must match"):
            await call()


async def test_bad_event_types_are_refused_and_odd_but_valid_ones_are_stored_verbatim(
    env: TestEnv,
) -> None:
    await env.start_worker(Waiter)
    for bad_type in ("", "ping\x00", "p" * 10_000):
        with pytest.raises(ValueError, match="event type"):
            await env.client.send_event("nobody", bad_type)
    # SQL in an event type is data: bound parameters store it as it is.
    instance = await env.client.create(Waiter, {"type": INJECTION}, id="waiter")
    await instance.send_event(INJECTION, {"payload": INJECTION})

    assert await instance.result(timeout=20) == {"payload": INJECTION}
    await assert_intact(env, {"waiter"})


async def test_wire_messages_with_bad_ids_are_dead_lettered_with_a_reason(
    env: TestEnv, wire: Wire
) -> None:
    await env.start_worker(Echo, Waiter)
    waiter = await env.client.create(Waiter, {"type": "ping"}, id="waiter")
    bodies: dict[str, tuple[str, dict[str, Any]]] = {}
    for what, bad in BAD_IDS.items():
        bodies[f"create, {what}"] = ("instance.create", {"workflow": "sec-echo", "id": bad})
        bodies[f"event, {what}"] = ("instance.event", {"instance_id": bad, "type": "ping"})
        bodies[f"control, {what}"] = (
            "instance.control",
            {"instance_id": bad, "action": "terminate"},
        )
    bodies["event type with a NUL byte"] = (
        "instance.event",
        {"instance_id": "waiter", "type": "ping\x00"},
    )
    bodies["workflow name injection"] = ("instance.create", {"workflow": INJECTION})
    ids = {what: f"bad-{n}" for n, what in enumerate(bodies)}
    for what, (key, body) in bodies.items():
        await wire.publish(key, body, message_id=ids[what])
    # A message id is recorded for deduplication: one with a NUL byte is refused too.
    await wire.publish("instance.create", {"workflow": "sec-echo"}, message_id="nul\x00id")

    dead_queue = f"{wire.topology.ingress_queue}.dead"

    async def all_dead_lettered() -> bool:
        return await wire.message_count(dead_queue) >= len(bodies) + 1

    await assert_eventually(all_dead_lettered, what="every bad message to be dead-lettered")
    dead = {str(message.message_id): message for message in await wire.take(dead_queue)}
    assert sorted(dead) == sorted([*ids.values(), "nul\x00id"])
    for what, message_id in ids.items():
        reason = error_reason(dead[message_id])
        assert "should match pattern" in reason, f"{what}: {reason}"
    assert "message_id" in error_reason(dead["nul\x00id"])
    assert await wire.message_count(wire.topology.ingress_queue) == 0
    # The good instance still works, and nothing else was created.
    await waiter.send_event("ping", {"n": 1})
    assert await waiter.result(timeout=20) == {"n": 1}
    await assert_intact(env, {"waiter"})


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_the_command_line_refuses_bad_ids_with_the_rule_they_break(
    env: TestEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    await env.start_worker(Echo)
    settings = [
        *("--broker-url", BROKER_URL),
        *("--database-url", env.backend.database_url),
        *("--namespace", env.namespace),
    ]
    for bad in BAD_IDS.values():
        for command in (
            ["create", "sec-echo", "--id", bad],
            ["status", bad],
            ["send-event", bad, "ping"],
            ["terminate", bad],
        ):
            code = await asyncio.to_thread(cli.main, [*settings, *command])
            stderr = capsys.readouterr().err
            assert code == 1, command
            assert "must match" in stderr, (command, stderr)
    await assert_intact(env, set())


async def test_payloads_and_params_over_one_mib_are_refused_before_sql(env: TestEnv) -> None:
    await env.start_worker(Echo, Waiter)
    over = {"pad": "x" * MAX_MESSAGE_BYTES}
    under = {"pad": "x" * (MAX_MESSAGE_BYTES - 100)}
    waiter = await env.client.create(Waiter, {"type": "data"}, id="waiter")

    with pytest.raises(ValueError, match=f"over the {MAX_MESSAGE_BYTES}-byte limit"):
        await waiter.send_event("data", over)
    with pytest.raises(ValueError, match=f"over the {MAX_MESSAGE_BYTES}-byte limit"):
        await env.client.create(Echo, over, id="too-big")
    await waiter.send_event("data", under)

    assert await waiter.result(timeout=20) == under  # the refused one was never stored
    await assert_intact(env, {"waiter"})


async def test_the_message_size_limit_is_below_the_brokers() -> None:
    require_tool("rabbitmqctl")
    answer = rabbitmqctl("eval", "application:get_env(rabbit, max_message_size).").strip()
    broker_max = int(answer.removeprefix("{ok,").removesuffix("}"))
    # Room for the properties and headers Warren adds to a body of the largest size.
    assert broker_max > MAX_MESSAGE_BYTES + 64 * 1024
