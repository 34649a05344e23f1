"""Every exchange and queue Warren uses, declared in one place.

Per namespace (default `warren`):
- `{ns}.ingress` topic exchange: services publish `instance.create|event|control` there; the
  `{ns}.ingress` queue takes them all (any worker can apply any command).
- `{ns}.engine` topic exchange: run messages with routing key `run.{workflow}` go to the queue
  `{ns}.run.{workflow}`, consumed only by workers that serve that workflow.
- `{ns}.wake.{workflow}`: the wake-ups leaving the delay cascade (sleeps, back-offs, event
  timeouts), beside the run queue so that a backlog of runs does not hold timers up: a worker
  gives a free slot to a wake-up first.
- `{ns}.dead` direct exchange: each consuming queue `q` has a dead-letter queue `q.dead`, fed by
  the broker (delivery limit) and by consumers rejecting bad input with an `x-error-reason`.

Shared by all namespaces, the delay cascade (see DESIGN.md, "Delayed delivery"): level N is a
topic exchange `warren.delay.N` and a quorum queue with a fixed TTL of 2^N ms that dead-letters
into level N-1. The routing key is the delay's 35 bits, most significant first, then
`{ns}.wake.{workflow}`; level N routes a 1 bit to its queue and a 0 bit straight on to level N-1.
Level 0 leads to `warren.delay.deliver`, where each wake queue is bound with
`#.{ns}.wake.{workflow}` and each run queue with `#.{ns}.run.{workflow}` (a message handed back
without delay, and wake-ups delayed by workers before the wake queues existed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue

#: 2^35 ms is 398 days: enough for the longest sleep (365 days).
DELAY_LEVELS = 35
DELAY_PREFIX = "warren.delay"
DELIVERY_EXCHANGE = f"{DELAY_PREFIX}.deliver"
PARKING = f"{DELAY_PREFIX}.parked"
PARKED_TTL_MS = 7 * 24 * 3600 * 1000
#: A message redelivered this many times is dead-lettered by the broker (a crash loop).
DELIVERY_LIMIT = 20

MAX_DELAY_MS = 2**DELAY_LEVELS - 1


def delay_route(delay: timedelta, target_key: str) -> tuple[str, str]:
    """The cascade exchange to publish to and the routing key, for a message due after `delay`.

    A delay of zero goes straight to the delivery exchange.
    """
    ms = max(0, min(MAX_DELAY_MS, round(delay / timedelta(milliseconds=1))))
    bits = format(ms, f"0{DELAY_LEVELS}b")
    key = ".".join(bits) + "." + target_key
    exchange = DELIVERY_EXCHANGE if ms == 0 else f"{DELAY_PREFIX}.{ms.bit_length() - 1}"
    return exchange, key


def _quorum(**arguments: Any) -> dict[str, Any]:
    return {"x-queue-type": "quorum", **arguments}


@dataclass(frozen=True)
class Topology:
    namespace: str

    @property
    def ingress_exchange(self) -> str:
        return f"{self.namespace}.ingress"

    @property
    def ingress_queue(self) -> str:
        return f"{self.namespace}.ingress"

    @property
    def engine_exchange(self) -> str:
        return f"{self.namespace}.engine"

    @property
    def dead_exchange(self) -> str:
        return f"{self.namespace}.dead"

    def run_key(self, workflow: str) -> str:
        return f"run.{workflow}"

    def run_queue(self, workflow: str) -> str:
        return f"{self.namespace}.run.{workflow}"

    def wake_queue(self, workflow: str) -> str:
        return f"{self.namespace}.wake.{workflow}"

    def delayed_key(self, workflow: str) -> str:
        """The cascade's target for a wake-up: the workflow's wake queue."""
        return self.wake_queue(workflow)

    async def declare_exchanges(self, channel: AbstractChannel) -> None:
        """Declare every exchange (idempotent): the client needs these, not the queues."""
        topic = aio_pika.ExchangeType.TOPIC
        await channel.declare_exchange(self.ingress_exchange, topic, durable=True)
        await channel.declare_exchange(self.engine_exchange, topic, durable=True)
        await channel.declare_exchange(
            self.dead_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        await _declare_delay_cascade(channel)

    async def declare_consuming_queue(self, channel: AbstractChannel, name: str) -> AbstractQueue:
        """A quorum queue with a delivery limit and its dead-letter queue `name.dead`."""
        dead = await channel.declare_queue(f"{name}.dead", durable=True, arguments=_quorum())
        await dead.bind(self.dead_exchange, routing_key=name)
        return await channel.declare_queue(
            name,
            durable=True,
            arguments=_quorum(
                **{
                    "x-dead-letter-exchange": self.dead_exchange,
                    "x-dead-letter-routing-key": name,
                    "x-delivery-limit": DELIVERY_LIMIT,
                }
            ),
        )

    async def declare_ingress_queue(self, channel: AbstractChannel) -> AbstractQueue:
        queue = await self.declare_consuming_queue(channel, self.ingress_queue)
        await queue.bind(self.ingress_exchange, routing_key="instance.*")
        # Commands retried later (an event that arrived before its create) come back here.
        await queue.bind(DELIVERY_EXCHANGE, routing_key=f"#.{self.namespace}.instance.*")
        return queue

    async def declare_run_queues(
        self, channel: AbstractChannel, workflow: str
    ) -> tuple[AbstractQueue, AbstractQueue]:
        """The workflow's run queue and wake queue."""
        run = await self.declare_consuming_queue(channel, self.run_queue(workflow))
        await run.bind(self.engine_exchange, routing_key=self.run_key(workflow))
        # A message handed back comes through the delivery exchange; so do wake-ups delayed
        # before the wake queues existed, up to a year after (they carry the run queue's name).
        await run.bind(DELIVERY_EXCHANGE, routing_key=f"#.{self.run_queue(workflow)}")
        wake = await self.declare_consuming_queue(channel, self.wake_queue(workflow))
        await wake.bind(DELIVERY_EXCHANGE, routing_key=f"#.{self.delayed_key(workflow)}")
        return run, wake

    def queue_names(self, workflows: list[str]) -> list[str]:
        """Every queue of this namespace for these workflows (tests delete them)."""
        names = [self.ingress_queue]
        for workflow in workflows:
            names += [self.run_queue(workflow), self.wake_queue(workflow)]
        return names + [f"{name}.dead" for name in names]


async def ready_count(channel: AbstractChannel, queue: str) -> int:
    """Messages ready in `queue` (not those delivered and awaiting an ack), read with a passive
    declare on the underlying channel: aio-pika's robust channel answers a passive declare of a
    queue it has declared from its cache, with the count of that first declare.

    Raises:
        aio_pika.exceptions.ChannelNotFoundEntity: there is no such queue (the broker closes
            the channel; a robust channel reopens).
    """
    underlay = await channel.get_underlay_channel()
    declared = await underlay.queue_declare(queue, passive=True)
    assert declared.message_count is not None  # the broker always sends it
    return declared.message_count


async def _declare_delay_cascade(channel: AbstractChannel) -> None:
    topic = aio_pika.ExchangeType.TOPIC
    parking = await channel.declare_exchange(PARKING, aio_pika.ExchangeType.FANOUT, durable=True)
    # Parked wake-ups are kept a week for inspection; their instances were woken by the sweeper.
    parked = await channel.declare_queue(
        PARKING, durable=True, arguments=_quorum(**{"x-message-ttl": PARKED_TTL_MS})
    )
    await parked.bind(parking)
    # Unroutable wake-ups at the end of the cascade would block dead-lettering of a whole
    # level (DESIGN.md): park them instead. The SQL sweeper still wakes their instances.
    deliver = await channel.declare_exchange(
        DELIVERY_EXCHANGE, topic, durable=True, arguments={"alternate-exchange": PARKING}
    )
    below = deliver
    for level in range(DELAY_LEVELS):
        name = f"{DELAY_PREFIX}.{level}"
        exchange = await channel.declare_exchange(name, topic, durable=True)
        queue = await channel.declare_queue(
            name,
            durable=True,
            arguments=_quorum(
                **{
                    "x-message-ttl": 2**level,
                    "x-dead-letter-exchange": below.name,
                    # Without these two a quorum queue dead-letters at most once (DESIGN.md).
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                }
            ),
        )
        skip = "*." * (DELAY_LEVELS - 1 - level)
        await queue.bind(exchange, routing_key=f"{skip}1.#")
        await below.bind(exchange, routing_key=f"{skip}0.#")
        below = exchange
