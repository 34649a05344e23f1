"""The ingress queue: create, event and control commands from services and the wire."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy.exc import IntegrityError

from processor.broker.publisher import ATTEMPT_HEADER
from processor.consumers.base import original_routing_key
from processor.consumers.decoding import BadMessageError, decode
from processor.engine import commands
from processor.errors import (
    InstanceNotFoundError,
    InstanceStateError,
    WorkflowNotFoundError,
)
from processor.runtime import Runtime
from processor.store import queries
from schemas import INGRESS_ROUTES, ControlInstance, CreateInstance, SendEvent, WireModel

#: An event or control for an id no instance has yet is tried again after these delays: a
#: service may publish a create and an event back to back, and consumers apply them
#: concurrently. After the last one it is dead-lettered.
UNKNOWN_INSTANCE_RETRIES = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Ingress transactions under way at once in a worker (fewer if its concurrency is lower): they
#: take no concurrency slot (see `handle`), so this keeps a burst of them from taking every
#: pooled connection from rounds.
INGRESS_TRANSACTIONS = 10
#: A command that waits this long for one (the database is away, say) goes back to the queue
#: as a fresh copy: an unacked delivery held past RabbitMQ's consumer_timeout (30 minutes)
#: would have its channel closed.
INGRESS_WAIT_S = 60.0


class IngressConsumer:
    def __init__(self, runtime: Runtime, concurrency: int) -> None:
        self.runtime = runtime
        self._transactions = asyncio.Semaphore(min(concurrency, INGRESS_TRANSACTIONS))

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Apply one command (a `Handler` with no follow-up). Commands take no concurrency
        slot: each is one short transaction, and a terminate or a webhook's event must not
        wait while long steps hold every slot (it would go back to the queue each
        SLOT_WAIT_S); nor may an event overtake its create by more than the retries below
        allow, so creates take none either. The work a create starts waits for a slot in the
        run queue, as a `Client.create`'s does. Commands wait for one of INGRESS_TRANSACTIONS
        in the order they arrived, for up to INGRESS_WAIT_S."""
        key = original_routing_key(message)
        model = INGRESS_ROUTES.get(key)
        if model is None:
            raise BadMessageError(
                f"unknown routing key {key!r}: use one of {sorted(INGRESS_ROUTES)}",
                "unknown_routing_key",
            )
        command = decode(message, model)
        try:
            if not await self._apply_in_turn(command, message):
                await self.runtime.publisher.republish(message, key)
        except InstanceNotFoundError as error:
            attempt = (message.headers or {}).get(ATTEMPT_HEADER, 0)
            if not isinstance(attempt, int):
                attempt = 0
            if attempt >= len(UNKNOWN_INSTANCE_RETRIES):
                raise BadMessageError(str(error), "unknown_instance") from None
            delay = timedelta(seconds=UNKNOWN_INSTANCE_RETRIES[attempt])
            await self.runtime.publisher.republish(
                message, key, delay, **{ATTEMPT_HEADER: attempt + 1}
            )

    async def _apply_in_turn(self, command: WireModel, message: AbstractIncomingMessage) -> bool:
        """Apply the command once one of INGRESS_TRANSACTIONS is free; False if none was
        within INGRESS_WAIT_S."""
        try:
            async with asyncio.timeout(INGRESS_WAIT_S):
                await self._transactions.acquire()
        except TimeoutError:
            return False
        try:
            await self.runtime.database.retry(lambda: self._apply(command, message))
        finally:
            self._transactions.release()
        return True

    async def _apply(self, command: WireModel, message: AbstractIncomingMessage) -> None:
        message_id = message.message_id
        # The sender's trace context: a create's root span becomes a child of the sender's
        # span, an event or a control is linked to it.
        headers = message.headers or None
        try:
            async with self.runtime.transaction() as tx:
                # A copy of a message already applied (a redelivery, or a publisher's retry)
                # changes nothing: the id is recorded in the same transaction as the effect.
                if message_id and not await queries.mark_processed(tx.session, message_id, tx.now):
                    return
                if isinstance(command, CreateInstance):
                    await commands.check_registered(tx.session, command.workflow)
                    await commands.create_instances(
                        tx, command.workflow, [(command.id, command.params)], headers
                    )
                elif isinstance(command, SendEvent):
                    await commands.send_event(
                        tx, command.instance_id, command.type, command.payload, headers
                    )
                elif isinstance(command, ControlInstance):
                    await commands.control(tx, command.instance_id, command.action, headers)
        except IntegrityError:
            ids = [command.id] if isinstance(command, CreateInstance) and command.id else []
            if await commands.taken_ids(self.runtime.database, ids):
                return  # a create for an id that exists creates nothing
            raise
        except WorkflowNotFoundError as error:
            raise BadMessageError(str(error), "unknown_workflow") from None
        except InstanceStateError as error:
            raise BadMessageError(str(error), "invalid_state") from None
