from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.conftest import TestEnv, assert_eventually
from tests.integration.crash_workflows import CrashMidStep, StopMidStep

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def worker_processes(
    env: TestEnv,
) -> AsyncIterator[Callable[..., Awaitable[asyncio.subprocess.Process]]]:
    """Start workers as OS processes (so they can be SIGKILLed); all are killed afterwards."""
    processes: list[asyncio.subprocess.Process] = []
    settings = {key: value for key, value in env.settings().items() if value is not None}
    env._workflows.update((CrashMidStep.name, StopMidStep.name))

    async def start(**options: object) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration.worker_process",
            json.dumps({**settings, **options}),
            "tests.integration.crash_workflows",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ},
        )
        processes.append(process)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line.strip() == b"ready", f"worker process did not start: {line!r}"
        return process

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_worker_killed_mid_step_is_replaced_without_rerunning_finished_steps(
    env: TestEnv,
    worker_processes: Callable[..., Awaitable[asyncio.subprocess.Process]],
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger.txt"
    ledger.touch()
    first_worker = await worker_processes()
    instance = await env.client.create(CrashMidStep.name, {"path": str(ledger)})

    await wait_for_entry(ledger, "slow")
    first_worker.send_signal(signal.SIGKILL)
    await first_worker.wait()

    await worker_processes()
    assert await instance.result(timeout=30) == ["first done", "slow done", "last done"]
    assert entries(ledger) == ["first", "slow", "slow", "last"]
    steps = {step.name: step for step in (await instance.status()).steps}
    assert steps["first"].attempts == 1
    assert steps["slow"].attempts == 2  # the killed attempt counts
    assert steps["slow"].error is None
    assert steps["last"].attempts == 1


def entries(ledger: Path) -> list[str]:
    return ledger.read_text().splitlines()


async def wait_for_entry(ledger: Path, entry: str) -> None:
    async def present() -> bool:
        return entry in entries(ledger)

    await assert_eventually(present, what=f"{entry!r} in the ledger")


async def test_sigterm_lets_the_running_step_finish_and_records_it_once(
    env: TestEnv,
    worker_processes: Callable[..., Awaitable[asyncio.subprocess.Process]],
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger.txt"
    ledger.touch()
    worker = await worker_processes(shutdown_grace=30)
    instance = await env.client.create(StopMidStep.name, {"path": str(ledger)})
    await wait_for_entry(ledger, "brief:start")
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(worker.wait(), 30) == 0
    assert entries(ledger) == ["brief:start", "brief:end"]

    # The step's report waits in the run queue: the next worker records it, and does not run
    # the step again.
    await worker_processes()
    assert await instance.result(timeout=30) == ["brief done", "last done"]
    assert entries(ledger) == ["brief:start", "brief:end", "last"]
    steps = {step.name: step for step in (await instance.status()).steps}
    assert steps["brief"].attempts == 1


async def test_sigterm_releases_a_step_that_outlasts_the_grace_period_for_another_worker(
    env: TestEnv,
    worker_processes: Callable[..., Awaitable[asyncio.subprocess.Process]],
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger.txt"
    ledger.touch()
    worker = await worker_processes(shutdown_grace=0.5)
    instance = await env.client.create(CrashMidStep.name, {"path": str(ledger)})
    await wait_for_entry(ledger, "slow")
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(worker.wait(), 30) == 0

    await worker_processes()
    assert await instance.result(timeout=30) == ["first done", "slow done", "last done"]
    assert entries(ledger) == ["first", "slow", "slow", "last"]
