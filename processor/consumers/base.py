"""What every consumer does around its own logic: ack only after the effects are committed,
and dead-letter bad input with a reason."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage

from processor.broker.topology import DELAY_LEVELS
from processor.consumers.decoding import BadMessageError
from processor.runtime import Runtime

log = logging.getLogger("warren.consumers")


async def settle(
    runtime: Runtime,
    queue: str,
    message: AbstractIncomingMessage,
    handler: Callable[[AbstractIncomingMessage], Awaitable[None]],
) -> None:
    """Handle one message and ack it; dead-letter it if it is bad; requeue it on trouble."""
    try:
        await handler(message)
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
    except Exception:
        log.exception(
            "message %s from %s failed; it goes back to the queue", message.message_id, queue
        )
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
