"""Plain aio-pika access to a test namespace, as another service (or an operator) sees it."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from processor import Client, Instance, InstanceNotFoundError
from processor.broker.topology import Topology
from tests.conftest import BROKER_URL, TestEnv, assert_eventually


@dataclass
class Wire:
    """Publishes to `{namespace}.ingress` and reads queues, with nothing from Warren but names."""

    channel: AbstractChannel
    topology: Topology

    async def publish(
        self,
        routing_key: str,
        body: bytes | dict[str, Any],
        *,
        message_id: str | None = None,
        content_type: str = "application/json",
    ) -> str:
        """Publish one message to the ingress exchange; returns its message id."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        message_id = message_id or uuid.uuid4().hex
        exchange = await self.channel.get_exchange(self.topology.ingress_exchange, ensure=False)
        await exchange.publish(
            aio_pika.Message(
                data,
                content_type=content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
            ),
            routing_key=routing_key,
        )
        return message_id

    async def message_count(self, queue: str) -> int:
        """Ready messages in a queue that must exist (a passive declare)."""
        declared = await self.channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        assert count is not None
        return count

    async def take(self, queue: str) -> list[AbstractIncomingMessage]:
        """Take (and ack) every message now ready in a queue."""
        declared = await self.channel.declare_queue(queue, passive=True)
        taken = []
        while (message := await declared.get(no_ack=True, fail=False)) is not None:
            taken.append(message)
        return taken

    def dead_queues(self, *workflows: str) -> list[str]:
        return [
            name for name in self.topology.queue_names(list(workflows)) if name.endswith(".dead")
        ]


@asynccontextmanager
async def open_wire(env: TestEnv) -> AsyncIterator[Wire]:
    connection = await aio_pika.connect(BROKER_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        yield Wire(channel, Topology(env.namespace))


def error_reason(message: AbstractIncomingMessage) -> str:
    reason = (message.headers or {}).get("x-error-reason")
    if isinstance(reason, bytes):
        reason = reason.decode()
    assert isinstance(reason, str), f"no x-error-reason on {message.message_id}"
    return reason


async def created(client: Client, instance_id: str, timeout: float = 20.0) -> Instance:
    """The instance once a consumer has applied its create message."""

    async def exists() -> bool:
        try:
            await client.get(instance_id)
        except InstanceNotFoundError:
            return False
        return True

    await assert_eventually(exists, timeout, f"instance {instance_id} to be created")
    return await client.get(instance_id)
