"""What every consumer does around its own logic: ack only after the effects are committed,
and dead-letter bad input with a reason."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage

from processor.broker.topology import DELAY_LEVELS
from processor.consumers.decoding import BadMessageError
from processor.failpoints import crash_point
from processor.runtime import Runtime
from processor.telemetry.metrics import get_metrics

log = logging.getLogger("warren.consumers")

#: Work a handler leaves to do after its message is acked (running claimed step attempts).
FollowUp = Callable[[], Awaitable[None]]
Handler = Callable[[AbstractIncomingMessage], Awaitable[FollowUp | None]]


async def settle(
    runtime: Runtime, queue: str, message: AbstractIncomingMessage, handler: Handler
) -> None:
    """Handle one message and ack it; dead-letter it if it is bad; requeue it on trouble.

    The handler's follow-up runs after the ack: what it does is already committed to SQL
    (claimed attempts with their leases), so the message need not stay unacked through a step
    body, however long it runs (RabbitMQ closes a channel holding a delivery past its
    consumer_timeout), and a crash during a step costs no delivery attempt.
    """
    follow_up: FollowUp | None = None  # none for a dead-lettered message
    try:
        follow_up = await handler(message)
    except BadMessageError as error:
        log.warning("dead-lettering message %s from %s: %s", message.message_id, queue, error)
        try:
            await runtime.publisher.dead_letter(
                message, queue, str(error), original_routing_key(message)
            )
        except Exception:
            log.exception(
                "dead-lettering message %s failed; it goes back to the queue", message.message_id
            )
            await _settle_quietly(message.nack(requeue=True))
            return
        get_metrics().message_dead_lettered(queue, error.category)
    except Exception:
        log.exception(
            "message %s from %s failed; it goes back to the queue", message.message_id, queue
        )
        await _settle_quietly(message.nack(requeue=True))
        return
    crash_point("before_ack")
    await _settle_quietly(message.ack())
    if follow_up is not None:
        try:
            await follow_up()
        except Exception:  # what it did not record, the sweepers recover (lease, heartbeat)
            log.exception("the work after message %s from %s failed", message.message_id, queue)


async def hand_back(runtime: Runtime, queue: str, message: AbstractIncomingMessage) -> None:
    """Return a message this worker cannot start soon to its queue, for any worker to take."""
    try:
        await runtime.publisher.republish(message, original_routing_key(message))
    except Exception:
        log.exception("handing back message %s failed; it stays with %s", message.message_id, queue)
        await _settle_quietly(message.nack(requeue=True))
        return
    await _settle_quietly(message.ack())


def original_routing_key(message: AbstractIncomingMessage) -> str:
    """The routing key the publisher used; a copy back from the delay cascade carries the
    delay's bits and the namespace before it."""
    key = message.routing_key or ""
    words = key.split(".")
    if len(words) > DELAY_LEVELS and set(words[0]) <= {"0", "1"}:
        return ".".join(words[DELAY_LEVELS + 1 :])
    return key


async def _settle_quietly(operation: Awaitable[None]) -> None:
    # The channel may be gone (broker restart): the broker then redelivers the message, and
    # replaying it is harmless because its effects are committed and deduplicated.
    try:
        await operation
    except Exception as error:
        log.info("could not settle a message, the broker will redeliver it: %r", error)
