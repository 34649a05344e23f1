"""Publishing with publisher confirms: every publish is awaited, never fire-and-forget.

Concurrent publishes pipeline on each channel (aiormq matches confirms to delivery tags), so
the hot path never waits for one confirm at a time; they take turns on a few channels, as
each channel's lock lets one publish queue its frames at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from processor.broker.topology import Topology, delay_route
from processor.failpoints import hits

JSON = "application/json"
#: How many times an ingress command waited for its instance to be created (consumers/ingress).
ATTEMPT_HEADER = "x-warren-attempt"


#: Confirm channels a worker publishes on, in turn. A busy worker's publishes waited for one
#: channel's lock: two took PostgreSQL's 1,000 x 10 throughput from about 900 to 1,000
#: steps/s (two runs each, interleaved).
PUBLISH_CHANNELS = 2


#: On a run message whose step report the worker that ran the attempt recorded itself, after
#: that commit (engine/rounds.py, AttemptRunner._report): its consumer acks it at once.
RECORDED_HEADER = "warren-recorded"


class Publisher:
    def __init__(
        self,
        channels: Sequence[AbstractChannel],
        topology: Topology,
        now: Callable[[], datetime],
    ) -> None:
        self._channels = itertools.cycle(channels)
        self.topology = topology
        #: The runtime's clock: a wake-up's delay is counted from the database's time.
        self.now = now

    async def publish_run(
        self,
        workflow: str,
        body: bytes,
        message_id: str,
        wake_at: datetime | None = None,
        *,
        recorded: bool = False,
    ) -> None:
        """Publish a run message now, or through the delay cascade to arrive at `wake_at`.
        `recorded`: the step report it carries is recorded already (RECORDED_HEADER)."""
        # The frame's properties themselves: an aio_pika.Message, built only to be turned into
        # them, cost 2% of a busy worker's CPU (py-spy).
        properties = aiormq.spec.Basic.Properties(
            content_type=JSON,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT.value,
            message_id=message_id,
            headers={RECORDED_HEADER: True} if recorded else None,
        )
        if wake_at is None:
            exchange = self.topology.engine_exchange
            key = self.topology.run_key(workflow)
        else:
            exchange, key = delay_route(wake_at - self.now(), self.topology.delayed_key(workflow))
        await self._send(exchange, body, properties, key)
        if hits("duplicate_publish"):
            await self._send(exchange, body, properties, key)

    async def republish(
        self,
        message: AbstractIncomingMessage,
        routing_key: str,
        delay: timedelta = timedelta(0),
        **headers: Any,
    ) -> None:
        """Send a received message back to its queue, after `delay`, as a fresh copy with
        `headers` added: a fresh copy has no delivery count, and no x-death headers (DESIGN.md:
        the cascade would drop a message carrying them).

        Args:
            routing_key: the key it was published with (`original_routing_key`).
        """
        copy = aio_pika.Message(
            message.body,
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            headers={**_own_headers(message), **headers},
        )
        exchange, key = delay_route(delay, f"{self.topology.namespace}.{routing_key}")
        await self._send(exchange, copy.body, copy.properties, key)

    async def dead_letter(
        self, message: AbstractIncomingMessage, queue: str, reason: str, routing_key: str
    ) -> None:
        """Copy a rejected message to `queue.dead` with the reason, for a person to look at.

        A fresh message, not a broker dead-letter, so it can carry `x-error-reason`. Broker
        headers such as x-death are not forwarded (DESIGN.md: republishing them trips 3.10's
        cycle detection).
        """
        headers = {
            key: value for key, value in _own_headers(message).items() if key != ATTEMPT_HEADER
        }
        headers["x-error-reason"] = reason[:1000]
        headers["x-original-exchange"] = message.exchange or ""
        headers["x-original-routing-key"] = routing_key
        headers["x-dead-lettered-at"] = self.now()  # for `warren dlq list`
        dead = aio_pika.Message(
            message.body,
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            headers=headers,
        )
        await self._send(self.topology.dead_exchange, dead.body, dead.properties, queue)

    async def _send(
        self,
        exchange: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
        routing_key: str,
    ) -> None:
        """Publish, mandatory, and wait for the broker's confirm (a message it cannot route
        raises, as the channel has `on_return_raises`).

        Through aiormq with `wait=False`: aio-pika's `Exchange.publish` holds the channel's lock
        until its frame has been written out, so concurrent publishes queue up behind one
        another, a few event-loop turns each; with 50 rounds in flight a publish waited
        80-100 ms for the lock, and a timer whose delay was reckoned before that wait fired
        that much late. Without it the lock is held only to queue the frames (the connection's
        bounded write queue still pushes back); the confirm is awaited all the same.
        """
        # `wait` is on aiormq's Channel, not on the abstract type aio-pika hands out.
        channel = cast(aiormq.Channel, await next(self._channels).get_underlay_channel())
        await channel.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=True,
            wait=False,
        )


def _own_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    """The message's headers without the broker's dead-lettering ones."""
    return {
        key: value
        for key, value in (message.headers or {}).items()
        if not key.startswith(("x-death", "x-first-death", "x-last-death"))
    }
