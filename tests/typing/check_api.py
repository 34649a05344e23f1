"""Checked by mypy (see [tool.mypy] files in pyproject.toml), ignored by pytest."""

from __future__ import annotations

from typing import assert_type

from pydantic import BaseModel

from processor import ReceivedEvent, Workflow, WorkflowEvent, WorkflowStep


class Order(BaseModel):
    order_id: str


async def add(a: int, b: int) -> int:
    return a + b


def label(order_id: str) -> str:
    return f"order {order_id}"


class Typed(Workflow[Order]):
    async def run(self, event: WorkflowEvent[Order], step: WorkflowStep) -> str:
        assert_type(event.payload, Order)
        total = await step.do("add", add, 1, 2)
        assert_type(total, int)
        text = await step.do("label", label, event.payload.order_id)
        assert_type(text, str)
        approval = await step.wait_for_event("approval", type="approval", timeout="1 day")
        assert_type(approval, ReceivedEvent)
        return text


async def wrong_arguments(step: WorkflowStep) -> None:
    await step.do("add", add, 1, "two")  # type: ignore[call-arg, arg-type]
