"""Workflows for the crash tests. Their steps append to a ledger file named in the params, so
the test can count executions across processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import BaseModel

from processor import Workflow, WorkflowEvent, WorkflowStep


class Ledger(BaseModel):
    path: str


def record(path: str, entry: str) -> int:
    """Append an entry; return how many times it is now in the ledger."""
    ledger = Path(path)
    with ledger.open("a") as file:
        file.write(entry + "\n")
    return ledger.read_text().splitlines().count(entry)


async def first(path: str) -> str:
    record(path, "first")
    return "first done"


async def slow(path: str) -> str:
    if record(path, "slow") == 1:
        await asyncio.sleep(600)  # the test kills the worker here
    return "slow done"


async def last(path: str) -> str:
    record(path, "last")
    return "last done"


class CrashMidStep(Workflow[Ledger]):
    name = "crash-mid-step"

    async def run(self, event: WorkflowEvent[Ledger], step: WorkflowStep) -> list[str]:
        path = event.payload.path
        return [
            await step.do("first", first, path),
            await step.do("slow", slow, path),
            await step.do("last", last, path),
        ]


async def brief(path: str) -> str:
    record(path, "brief:start")
    await asyncio.sleep(1.5)  # the test sends SIGTERM meanwhile
    record(path, "brief:end")
    return "brief done"


class StopMidStep(Workflow[Ledger]):
    name = "stop-mid-step"

    async def run(self, event: WorkflowEvent[Ledger], step: WorkflowStep) -> list[str]:
        path = event.payload.path
        return [await step.do("brief", brief, path), await step.do("last", last, path)]
