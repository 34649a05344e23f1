"""Operator tasks on the broker: declare the topology, inspect and redrive dead letters.

Dead letters sit in the namespace's `.dead` queues (topology.py): copies that a consumer
rejected with an `x-error-reason` header (publisher.dead_letter), and messages the broker
dead-lettered itself, with its `x-death` header (a delivery limit reached in a crash loop).
Nothing consumes those queues.

AMQP cannot peek, so reading a dead queue takes every message in it unacknowledged and hands
them all back in order. A quorum queue on RabbitMQ 3.10 puts a returned message at its back,
so only a whole turn of the queue leaves the order as it was; a reader that dies midway
rotates the queue but loses nothing (the broker returns what it held). A redrive publishes a
fresh copy, waits for the broker's confirm, and only then acknowledges (removes) the dead
letter.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from processor.broker.publisher import ATTEMPT_HEADER
from processor.broker.topology import Topology
from processor.config import redact_url
from processor.errors import InfrastructureError

#: Headers a redrive drops: the broker's dead-lettering record (RabbitMQ 3.10 silently drops
#: a message carrying x-death in the delay cascade, DESIGN.md) and Warren's own notes on why
#: and where the message died and how often an ingress command was retried.
_DROPPED_HEADERS = frozenset(
    {
        "x-delivery-count",
        "x-error-reason",
        "x-original-exchange",
        "x-original-routing-key",
        "x-dead-lettered-at",
        ATTEMPT_HEADER,
    }
)
_DROPPED_PREFIXES = ("x-death", "x-first-death", "x-last-death")
#: How long handing messages back may take to show in the queue again (the broker applies a
#: quorum queue's returns asynchronously; the next reader must find them in place).
_RETURN_PATIENCE_S = 5.0


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message, as `warren dlq list` shows it.

    Attributes:
        queue: the dead queue holding it (`{namespace}.ingress.dead`, `{namespace}.run.W.dead`).
        id: its message id, or `sha256:` and a digest of its body when it has none.
        reason: why it died: Warren's `x-error-reason`, or the broker's reason and queue.
        dead_at: when it was dead-lettered, if recorded.
        body: the message body, unchanged.
        exchange: where a redrive publishes it.
        routing_key: the key a redrive uses (None: not known, it cannot be redriven).
    """

    queue: str
    id: str
    reason: str
    dead_at: datetime | None
    body: bytes
    exchange: str
    routing_key: str | None


@dataclass
class Redrive:
    """What `redrive` did: the dead letters republished, and those it left in place."""

    redriven: list[DeadLetter] = field(default_factory=list)
    #: Dead letters that matched but carry no routing key to send them with.
    kept: list[DeadLetter] = field(default_factory=list)
    #: Requested ids found in no queue.
    missing: list[str] = field(default_factory=list)


class DeadLetters:
    """Inspect and redrive the dead letters of one namespace.

    Args:
        connection: an open broker connection with read and write permission on the
            namespace's names (a worker's or an administrator's).
        topology: the namespace.
    """

    def __init__(self, connection: AbstractConnection, topology: Topology) -> None:
        self.connection = connection
        self.topology = topology

    def queues(self, workflows: Iterable[str]) -> list[str]:
        """The dead queues of the ingress queue and of these workflows' run and wake queues."""
        sources = self.topology.queue_names(sorted(set(workflows)))
        return sorted(name for name in sources if name.endswith(".dead"))

    async def existing(self, queues: Iterable[str]) -> list[str]:
        """The queues that exist (a workflow registered in the database may have no queue in
        this namespace)."""
        found = []
        for name in queues:
            try:
                async with self._channel() as channel:
                    await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                continue
            found.append(name)
        return found

    async def count(self, queue: str) -> int:
        """Messages in a dead queue."""
        async with self._channel() as channel:
            return await _ready(channel, queue)

    async def list(self, queues: Sequence[str], limit: int = 100) -> list[DeadLetter]:
        """Up to `limit` dead letters, queue by queue, oldest first; the queues are unchanged.

        Raises:
            ValueError: a queue that is not one of this namespace's dead queues.
        """
        self._check(queues)
        found: list[DeadLetter] = []
        for queue in queues:
            if len(found) >= limit:
                break
            async with self._holding(queue) as held:
                async for message in held.take():  # the whole queue, to keep its order
                    if len(found) < limit:
                        found.append(self._describe(queue, message))
        return found

    async def redrive(self, queues: Sequence[str], ids: Iterable[str] | None = None) -> Redrive:
        """Republish dead letters where they were first going, as fresh messages, and remove
        them from their dead queue once the broker confirms the copy.

        The copy keeps the body, content type and message id (a consumer that applied the
        message before ignores it again) and drops x-death and Warren's error headers. A crash
        between the confirm and the removal leaves the dead letter in place as well.

        Args:
            queues: dead queues to look in.
            ids: the dead letters' ids; None redrives every one.

        Raises:
            ValueError: a queue that is not one of this namespace's dead queues.
            aio_pika.exceptions.AMQPError: a copy the broker refused or could not route; that
                dead letter and every later one stay in place.
        """
        self._check(queues)
        wanted = None if ids is None else set(ids)
        report = Redrive()
        found: set[str] = set()
        for queue in queues:
            async with self._holding(queue, confirms=True) as held:
                taken = 0
                async for message in held.take():
                    taken += 1
                    # A message that came in after we started may be one we just redrove,
                    # dead-lettered again: it waits for the next redrive.
                    if taken > held.ready_at_start:
                        continue
                    letter = self._describe(queue, message)
                    if wanted is not None and letter.id not in wanted:
                        continue
                    found.add(letter.id)
                    if letter.routing_key is None:
                        report.kept.append(letter)
                        continue
                    exchange = await held.channel.get_exchange(letter.exchange, ensure=False)
                    # mandatory: an unroutable copy raises instead of vanishing.
                    await exchange.publish(
                        _fresh_copy(message), routing_key=letter.routing_key, mandatory=True
                    )
                    await held.remove(message)
                    report.redriven.append(letter)
        if wanted is not None:
            report.missing = sorted(wanted - found)
        return report

    def _check(self, queues: Iterable[str]) -> None:
        for queue in queues:
            self._source(queue)

    def _source(self, dead_queue: str) -> tuple[str, str | None]:
        """The exchange a dead queue's messages were published to, and the routing key if the
        queue implies it (a run or wake queue's: a dead wake-up is redriven as a run message,
        which a round re-delays if it is still early)."""
        source = dead_queue.removesuffix(".dead")
        run_prefix, wake_prefix = self.topology.run_queue(""), self.topology.wake_queue("")
        if dead_queue.endswith(".dead") and source == self.topology.ingress_queue:
            return self.topology.ingress_exchange, None
        for prefix in (run_prefix, wake_prefix):
            if dead_queue.endswith(".dead") and source.startswith(prefix):
                workflow = source.removeprefix(prefix)
                return self.topology.engine_exchange, self.topology.run_key(workflow)
        raise ValueError(
            f"{dead_queue!r} is not a dead queue of namespace {self.topology.namespace!r}: "
            f"use {self.topology.ingress_queue}.dead, {run_prefix}WORKFLOW.dead or "
            f"{wake_prefix}WORKFLOW.dead"
        )

    def _describe(self, queue: str, message: AbstractIncomingMessage) -> DeadLetter:
        headers = message.headers or {}
        deaths = headers.get("x-death")
        # The broker's record of the latest death comes first.
        death = deaths[0] if isinstance(deaths, list) and deaths else {}
        if not isinstance(death, dict):
            death = {}
        exchange, routing_key = self._source(queue)
        if routing_key is None:
            # An ingress command's key is its last two words ("instance.event"), whether it
            # came straight from the ingress exchange or back from the delay cascade.
            original = _text(headers.get("x-original-routing-key"))
            keys = death.get("routing-keys")
            if original is None and isinstance(keys, list) and keys:
                original = _text(keys[0])
            routing_key = ".".join(original.split(".")[-2:]) if original else None
        reason = _text(headers.get("x-error-reason"))
        if reason is None:
            cause = _text(death.get("reason")) or "unknown"
            reason = f"dead-lettered by the broker: {cause} in {_text(death.get('queue'))}"
        dead_at = headers.get("x-dead-lettered-at") or death.get("time")
        return DeadLetter(
            queue=queue,
            id=message.message_id or f"sha256:{hashlib.sha256(message.body).hexdigest()[:16]}",
            reason=reason,
            dead_at=dead_at if isinstance(dead_at, datetime) else None,
            body=message.body,
            exchange=exchange,
            routing_key=routing_key,
        )

    @asynccontextmanager
    async def _channel(self, *, confirms: bool = False) -> AsyncIterator[AbstractChannel]:
        channel = await self.connection.channel(
            publisher_confirms=confirms, on_return_raises=confirms
        )
        try:
            yield channel
        finally:
            if not channel.is_closed:
                await channel.close()

    @asynccontextmanager
    async def _holding(self, queue: str, *, confirms: bool = False) -> AsyncIterator[_Held]:
        async with self._channel(confirms=confirms) as channel:
            try:
                ready = await _ready(channel, queue)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                raise ValueError(f"there is no queue {queue!r}") from None
            held = _Held(channel, queue, ready)
            try:
                yield held
            finally:
                await held.give_back()


@dataclass
class _Held:
    """Messages taken from a queue unacknowledged, handed back in order when done."""

    channel: AbstractChannel
    queue: str
    #: Messages ready when we started.
    ready_at_start: int
    #: The messages held, oldest first, by `id()`.
    messages: dict[int, AbstractIncomingMessage] = field(default_factory=dict)

    async def take(self) -> AsyncIterator[AbstractIncomingMessage]:
        """Every message in the queue, oldest first, including those that come in meanwhile."""
        queue = await self.channel.declare_queue(self.queue, passive=True)
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            self.messages[id(message)] = message
            yield message

    async def remove(self, message: AbstractIncomingMessage) -> None:
        await message.ack()
        del self.messages[id(message)]

    async def give_back(self) -> None:
        """Return every message still held, oldest first, and wait until the queue shows them
        again (the broker applies returns asynchronously; the next reader must find them)."""
        if self.channel.is_closed:  # the broker returned them when the channel closed
            return
        for message in self.messages.values():
            await message.nack(requeue=True)
        deadline = asyncio.get_running_loop().time() + _RETURN_PATIENCE_S
        while await _ready(self.channel, self.queue) < len(self.messages):
            if asyncio.get_running_loop().time() > deadline:
                return  # another reader took some meanwhile
            await asyncio.sleep(0.02)


async def _ready(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    count = declared.declaration_result.message_count
    return count or 0


def _fresh_copy(message: AbstractIncomingMessage) -> aio_pika.Message:
    headers = {
        key: value
        for key, value in (message.headers or {}).items()
        if key not in _DROPPED_HEADERS and not key.startswith(_DROPPED_PREFIXES)
    }
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        timestamp=message.timestamp,
    )


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


async def connect(url: str) -> AbstractConnection:
    """A plain (not reconnecting) connection for one operator command.

    Raises:
        InfrastructureError: the broker refused or could not be reached (the URL in the
            message has its password hidden).
    """
    try:
        return await aio_pika.connect(url)
    except (OSError, aio_pika.exceptions.AMQPError) as error:
        raise InfrastructureError(
            f"cannot connect to RabbitMQ at {redact_url(url)}: {error!r}"
        ) from error


async def declare_topology(
    channel: AbstractChannel, topology: Topology, workflows: Iterable[str]
) -> list[str]:
    """Declare every exchange, the shared delay cascade, the ingress queue and the run and wake
    queues of `workflows`, with their dead-letter queues (idempotent: the same arguments as
    workers).

    Returns:
        The names of the consuming queues declared.
    """
    await topology.declare_exchanges(channel)
    queues = [(await topology.declare_ingress_queue(channel)).name]
    for workflow in sorted(set(workflows)):
        queues += [queue.name for queue in await topology.declare_run_queues(channel, workflow)]
    return queues
