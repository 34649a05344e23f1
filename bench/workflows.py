"""The workflows the benchmark runs. Step bodies are trivial, so what is measured is Warren."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from processor import Workflow, WorkflowEvent, WorkflowStep


async def trivial(index: int) -> dict[str, int]:
    """A step body that does nothing but return a small dict."""
    return {"step": index}


class TenSteps(Workflow[dict[str, Any]]):
    """Scenario 1: ten trivial steps in a row."""

    name = "bench-ten-steps"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> int:
        for index in range(10):
            await step.do(f"step {index}", trivial, index)
        return 10


class ThreeSteps(Workflow[dict[str, Any]]):
    """Scenario 2: three trivial steps in a row."""

    name = "bench-three-steps"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> int:
        for index in range(3):
            await step.do(f"step {index}", trivial, index)
        return 3


class AwaitEvent(Workflow[dict[str, Any]]):
    """Scenario 3: park in wait_for_event, then finish with the event's payload."""

    name = "bench-await-event"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        received = await step.wait_for_event("go", type="go", timeout="10 minutes")
        return received.payload


class Nap(BaseModel):
    seconds: float


class Sleeper(Workflow[Nap]):
    """Scenario 5: one durable sleep, then return."""

    name = "bench-sleeper"

    async def run(self, event: WorkflowEvent[Nap], step: WorkflowStep) -> None:
        await step.sleep("nap", event.payload.seconds)


class SleepThenStep(Workflow[Nap]):
    """Scenario 4: one durable sleep, then one trivial step."""

    name = "bench-sleep-then-step"

    async def run(self, event: WorkflowEvent[Nap], step: WorkflowStep) -> dict[str, int]:
        await step.sleep("nap", event.payload.seconds)
        return await step.do("after the nap", trivial, 0)


WORKFLOWS: list[type[Workflow[Any]]] = [TenSteps, ThreeSteps, AwaitEvent, Sleeper, SleepThenStep]
