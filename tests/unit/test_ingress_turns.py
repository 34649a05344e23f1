"""Ingress commands take no concurrency slot but wait their turn for one of a few transactions
(IngressConsumer.handle); one that waits too long goes back to the queue rather than be held
unacked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from processor.consumers import ingress
from processor.consumers.ingress import IngressConsumer


@dataclass
class FakeMessage:
    body: bytes
    routing_key: str = "instance.control"
    content_type: str = "application/json"
    message_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeDatabase:
    """Each transaction waits until the test lets it end."""

    started: list[str] = field(default_factory=list)
    finish: asyncio.Event = field(default_factory=asyncio.Event)

    async def retry(self, operation: Callable[[], Awaitable[None]]) -> None:
        self.started.append("transaction")
        await self.finish.wait()


@dataclass
class FakePublisher:
    republished: list[bytes] = field(default_factory=list)

    async def republish(self, message: FakeMessage, routing_key: str, *args: Any) -> None:
        self.republished.append(message.body)


@dataclass
class FakeRuntime:
    database: FakeDatabase = field(default_factory=FakeDatabase)
    publisher: FakePublisher = field(default_factory=FakePublisher)


def control(instance_id: str) -> Any:
    return FakeMessage(json.dumps({"instance_id": instance_id, "action": "pause"}).encode())


async def test_a_command_that_waits_too_long_for_its_turn_goes_back_to_the_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ingress, "INGRESS_WAIT_S", 0.05)
    runtime = FakeRuntime()
    consumer = IngressConsumer(runtime, concurrency=1)  # type: ignore[arg-type]

    first = asyncio.create_task(consumer.handle(control("o-1")))
    await asyncio.sleep(0.01)
    await consumer.handle(control("o-2"))  # the first holds the only transaction

    assert runtime.database.started == ["transaction"]
    assert runtime.publisher.republished == [control("o-2").body]
    runtime.database.finish.set()
    await first
    assert runtime.publisher.republished == [control("o-2").body]  # the first was applied
