"""`warren demo`: a bundled workflow run end to end against the configured broker and database.

It shows every part of a durable workflow: memoized steps, a retry after a failure, a durable
sleep, and a wait for an external event (a manager's approval) that the demo then sends.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from pydantic import BaseModel

from processor import config
from processor.client import Client
from processor.retry import RetryPolicy
from processor.step import WorkflowStep
from processor.store.database import Database
from processor.worker import Worker
from processor.workflow import Workflow, WorkflowEvent
from schemas import InstanceStatus, InstanceStatusName


class Order(BaseModel):
    order_id: str
    amount_cents: int


#: Orders whose card was declined once already: the demo's charge step fails on first try.
_declined_once: set[str] = set()


async def create_invoice(order: dict[str, Any]) -> dict[str, Any]:
    return {"invoice_id": f"inv-{order['order_id']}", "amount_cents": order["amount_cents"]}


async def charge_card(invoice: dict[str, Any]) -> dict[str, Any]:
    if invoice["invoice_id"] not in _declined_once:
        _declined_once.add(invoice["invoice_id"])
        raise ConnectionError("payment gateway timed out (the demo fails the first attempt)")
    # A real charge passes the invoice id as the gateway's idempotency key, so a retried
    # step never charges twice.
    return {"charge_id": f"ch-{invoice['invoice_id']}", "idempotency_key": invoice["invoice_id"]}


def ship(order_id: str, approved_by: str) -> dict[str, str]:
    # A plain function: Warren runs it in a worker thread.
    return {"tracking": f"TRACK-{order_id}", "approved_by": approved_by}


class DemoOrder(Workflow[Order]):
    name = "warren-demo"

    async def run(self, event: WorkflowEvent[Order], step: WorkflowStep) -> dict[str, Any]:
        order = event.payload.model_dump()
        invoice = await step.do("create invoice", create_invoice, order)
        charge = await step.do(
            "charge card",
            charge_card,
            invoice,
            retries=RetryPolicy(limit=3, delay="1 second", backoff="exponential"),
        )
        await step.sleep("cooling-off period", "2 seconds")
        approval = await step.wait_for_event(
            "manager approval", type="approval", timeout="5 minutes"
        )
        shipment = await step.do("ship", ship, event.payload.order_id, approval.payload["by"])
        return {"invoice": invoice["invoice_id"], "charge": charge["charge_id"], **shipment}


async def run_demo(
    *,
    broker_url: str | None,
    database_url: str | None,
    namespace: str | None,
    out: Any = print,
) -> InstanceStatus:
    """Migrate, start a worker, run one DemoOrder to completion, and return its status."""
    started = time.perf_counter()
    database = Database(config.database_url(database_url))
    await database.upgrade()
    await database.close()
    async with (
        Worker([DemoOrder], broker_url=broker_url, database_url=database_url, namespace=namespace),
        Client(broker_url, database_url, namespace=namespace) as client,
    ):
        order_id = f"demo-{uuid.uuid4().hex[:8]}"
        instance = await client.create(
            DemoOrder, Order(order_id=order_id, amount_cents=4200), id=order_id
        )
        out(
            f"created instance {instance.id}; it will fail a charge once, retry, sleep 2 s, "
            "then wait for approval"
        )
        while True:
            status = await instance.status()
            waiting = [s for s in status.steps if s.kind == "wait_for_event"]
            if status.status == InstanceStatusName.WAITING and waiting:
                break
            if status.status.is_terminal:
                break
            await asyncio.sleep(0.05)
        out("instance is waiting for the 'approval' event: sending it")
        await instance.send_event("approval", {"by": "manager@example.com"})
        output = await instance.result(timeout=60)
        out(f"completed in {time.perf_counter() - started:.2f} s with output {output}")
        return await instance.status()
