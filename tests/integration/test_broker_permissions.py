"""Least privilege on the broker (issue 3, "Security"): `warren broker setup` declares the
topology with administrator credentials; a worker needs permissions only on its namespace's
names and the shared delay cascade; a publisher-only user can write to the ingress exchange
and do nothing else."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aiormq.exceptions import ChannelAccessRefused

from processor import Client, Worker, Workflow, WorkflowEvent, WorkflowStep
from processor.store.database import Database
from tests.integration.broker_users import BrokerUsers, broker_users
from tests.integration.helpers import created

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2]


async def double(n: int) -> int:
    return 2 * n


class Doubler(Workflow[dict[str, Any]]):
    name = "perm-doubler"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        return await step.do("double", double, event.payload["n"])


@pytest.fixture(scope="module")
def users() -> Iterator[BrokerUsers]:
    """One vhost for the module: making and deleting users takes seconds."""
    with broker_users() as made:
        yield made


@pytest.fixture
async def database_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path}/warren.db"
    database = Database(url)
    await database.upgrade()
    await database.close()
    return url


@pytest.fixture
async def publisher(users: BrokerUsers) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    connection = await aio_pika.connect(users.urls["publisher"])
    async with connection:
        yield connection


def broker_setup(users: BrokerUsers, role: str) -> subprocess.CompletedProcess[str]:
    """`warren broker setup` for this test's workflow module, as `role`."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "processor", "--broker-url", users.urls[role]),
            *("broker", "setup", "--namespace", users.namespace, __name__),
        ],
        cwd=REPOSITORY,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def publish_create(
    connection: aio_pika.abc.AbstractConnection, exchange_name: str, body: dict[str, Any]
) -> None:
    """Publish a create command with confirms; mandatory, so an unroutable one raises."""
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.get_exchange(exchange_name, ensure=False)
    message = aio_pika.Message(
        json.dumps(body).encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=f"create-{body['id']}",
    )
    await exchange.publish(message, routing_key="instance.create", mandatory=True)
    await channel.close()


async def test_a_worker_with_only_its_namespace_permissions_runs_instances_from_a_publisher(
    users: BrokerUsers, database_url: str, publisher: aio_pika.abc.AbstractConnection
) -> None:
    setup = await asyncio.to_thread(broker_setup, users, "admin")
    assert setup.returncode == 0, setup.stderr
    assert f"{users.namespace}.run.perm-doubler" in setup.stdout

    # Before any worker runs: the ingress queue exists, so the command is routed and kept.
    ingress = f"{users.namespace}.ingress"
    await publish_create(
        publisher, ingress, {"workflow": "perm-doubler", "id": "p-1", "params": {"n": 21}}
    )

    settings = {
        "broker_url": users.urls["worker"],
        "database_url": database_url,
        "namespace": users.namespace,
    }
    async with Worker([Doubler], **settings), Client(**settings) as client:
        by_publisher = await created(client, "p-1")
        assert await by_publisher.result(timeout=20) == 42
        by_client = await client.create(Doubler, {"n": 4}, id="c-1")
        assert await by_client.result(timeout=20) == 8


async def test_the_publisher_user_can_do_nothing_but_publish_to_the_ingress_exchange(
    users: BrokerUsers, publisher: aio_pika.abc.AbstractConnection
) -> None:
    assert (await asyncio.to_thread(broker_setup, users, "admin")).returncode == 0
    namespace = users.namespace

    async def refused(operation: Any) -> None:
        channel = await publisher.channel(publisher_confirms=True, on_return_raises=True)
        with pytest.raises(ChannelAccessRefused):
            await operation(channel)

    async def declare(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.declare_exchange(
            f"{namespace}.ingress", aio_pika.ExchangeType.TOPIC, durable=True
        )

    async def declare_own_queue(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.declare_queue(f"{namespace}.ingress.mine", durable=True)

    async def ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        pass

    async def consume(channel: aio_pika.abc.AbstractChannel) -> None:
        queue = await channel.get_queue(f"{namespace}.ingress", ensure=False)
        await queue.consume(ignore)

    async def read_dead_letters(channel: aio_pika.abc.AbstractChannel) -> None:
        queue = await channel.get_queue(f"{namespace}.ingress.dead", ensure=False)
        await queue.get(fail=False)

    async def publish_to_engine(channel: aio_pika.abc.AbstractChannel) -> None:
        exchange = await channel.get_exchange(f"{namespace}.engine", ensure=False)
        message = aio_pika.Message(b'{"kind": "run", "instance_id": "x"}')
        await exchange.publish(message, routing_key="run.perm-doubler")

    for operation in (declare, declare_own_queue, consume, read_dead_letters, publish_to_engine):
        await refused(operation)
    # ...while publishing to the ingress exchange works.
    await publish_create(
        publisher, f"{namespace}.ingress", {"workflow": "perm-doubler", "id": "ok"}
    )


async def test_the_worker_user_cannot_touch_names_outside_its_namespace(
    users: BrokerUsers,
) -> None:
    connection = await aio_pika.connect(users.urls["worker"])
    async with connection:
        for name in ("warren.ingress", "other.ingress", f"x{users.namespace}.ingress"):
            channel = await connection.channel()
            with pytest.raises(ChannelAccessRefused):
                await channel.declare_queue(name, durable=True)
    # Nor run `broker setup` for another namespace.
    other = BrokerUsers(users.vhost, "other", users.passwords, users.urls)
    refused = await asyncio.to_thread(broker_setup, other, "worker")
    assert refused.returncode == 1
    assert "ACCESS_REFUSED" in refused.stderr
    assert users.passwords["worker"] not in refused.stderr
