"""Workflows of the reliability suite. Every step body appends to an effect ledger (see
harness.Ledger) when it starts and when it ends, so the checker can count executions across
worker processes that were killed, stopped or restarted."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime

from pydantic import BaseModel

from processor import RetryPolicy, Workflow, WorkflowEvent, WorkflowStep
from tests.reliability.harness import Ledger


class ChainParams(BaseModel):
    ledger: str
    #: How long each step's body takes; one step per entry.
    step_seconds: list[float]
    #: Retries per step. An attempt lost with its worker counts as one (as in Temporal), so a
    #: test that kills workers every few seconds gives its steps more than the default 5.
    retry_limit: int = 5


async def chain_step(ledger: str, instance_id: str, key: str, index: int, seconds: float) -> int:
    Ledger(ledger).record(instance_id, key, "start")
    await asyncio.sleep(seconds)
    Ledger(ledger).record(instance_id, key, "end")
    return index


class Chain(Workflow[ChainParams]):
    """Steps one after another; returns their indices, so a step applied twice shows."""

    name = "rel-chain"

    async def run(self, event: WorkflowEvent[ChainParams], step: WorkflowStep) -> list[int]:
        params, instance = event.payload, event.instance_id
        results = []
        for index, seconds in enumerate(params.step_seconds):
            key = f"s{index}"
            retries = RetryPolicy(limit=params.retry_limit, delay="100 ms")
            results.append(
                await step.do(
                    key, chain_step, params.ledger, instance, key, index, seconds, retries=retries
                )
            )
        return results


class SleeperParams(BaseModel):
    ledger: str
    due: datetime


def woke(ledger: str, instance_id: str) -> float:
    Ledger(ledger).record(instance_id, "after", "start")
    return time.time()


class Sleeper(Workflow[SleeperParams]):
    """Sleeps until `due`, then one step; returns the time (epoch s) that step ran."""

    name = "rel-sleeper"

    async def run(self, event: WorkflowEvent[SleeperParams], step: WorkflowStep) -> float:
        await step.sleep_until("nap", event.payload.due)
        return await step.do("after", woke, event.payload.ledger, event.instance_id)


class WaiterParams(BaseModel):
    ledger: str
    #: How long the instance sleeps before it starts waiting for the event.
    wait_after_s: float


def took(ledger: str, instance_id: str, payload: object) -> object:
    Ledger(ledger).record(instance_id, "took", "start")
    return payload


class Waiter(Workflow[WaiterParams]):
    """Sleeps, waits for event `go`, and returns its payload through a step."""

    name = "rel-waiter"

    async def run(self, event: WorkflowEvent[WaiterParams], step: WorkflowStep) -> object:
        await step.sleep("before", event.payload.wait_after_s)
        received = await step.wait_for_event("go", type="go", timeout="5 minutes")
        return await step.do(
            "took", took, event.payload.ledger, event.instance_id, received.payload
        )


class WhoAmIParams(BaseModel):
    ledger: str
    seconds: float


async def whoami(ledger: str, instance_id: str, seconds: float) -> int:
    Ledger(ledger).record(instance_id, "whoami", "start")
    await asyncio.sleep(seconds)
    Ledger(ledger).record(instance_id, "whoami", "end")
    return os.getpid()


class WhoAmI(Workflow[WhoAmIParams]):
    """One step that returns the pid of the process that ran it: whose result was recorded."""

    name = "rel-whoami"

    async def run(self, event: WorkflowEvent[WhoAmIParams], step: WorkflowStep) -> int:
        params = event.payload
        return await step.do("whoami", whoami, params.ledger, event.instance_id, params.seconds)


class NapperParams(BaseModel):
    seconds: float


class Napper(Workflow[NapperParams]):
    """Sleeps a relative duration, counted from the replay's clock."""

    name = "rel-napper"

    async def run(self, event: WorkflowEvent[NapperParams], step: WorkflowStep) -> None:
        await step.sleep("nap", event.payload.seconds)


WORKFLOWS = [Chain.name, Sleeper.name, Waiter.name, WhoAmI.name, Napper.name]
