from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from processor import Workflow, WorkflowEvent, WorkflowStep
from tests.conftest import TestEnv


class Greeting(BaseModel):
    name: str


class Greet(Workflow[Greeting]):
    name = "greet"

    async def run(self, event: WorkflowEvent[Greeting], step: WorkflowStep) -> Any:
        async def hello(name: str) -> str:
            return f"hello {name}"

        text = await step.do("hello", hello, event.payload.name)
        await step.sleep("nap", 0.2)
        return {"text": text}


async def test_a_workflow_runs_to_completion(env: TestEnv) -> None:
    await env.start_worker(Greet)
    instance = await env.client.create(Greet, Greeting(name="ada"))
    assert await instance.result(timeout=20) == {"text": "hello ada"}
    status = await instance.status()
    assert [s.name for s in status.steps] == ["hello", "nap"]
