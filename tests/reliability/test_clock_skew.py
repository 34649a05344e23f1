"""Scenario 13: workers whose clocks are an hour off (libfaketime) never fire a timer early
by the database's clock: every process keeps the database's time (processor.runtime.Clock)."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import TestEnv
from tests.reliability.harness import REPORTS, Fleet, Ledger, Report
from tests.reliability.workflows import Napper, Sleeper

#: Debian's libfaketime (package faketime), for this machine's architecture.
LIBFAKETIME = next(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"), None)


def skewed(offset: str) -> dict[str, str]:
    assert LIBFAKETIME is not None
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": offset,
        # asyncio's timers run on the monotonic clock: leave it alone.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.parametrize("offset", ["-1h", "+1h"])
@pytest.mark.timeout(180)
async def test_a_skewed_worker_never_fires_a_timer_early(
    env: TestEnv, fleet: Fleet, tmp_path: Path, offset: str
) -> None:
    if LIBFAKETIME is None:
        message = "libfaketime is missing: apt-get install faketime (scripts/services does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    fleet.extra_env.update(skewed(offset))
    await fleet.start(1)
    ledger = Ledger(tmp_path / "ledger.jsonl")
    seconds = 3.0
    created: dict[str, float] = {}
    due = datetime.now(UTC) + timedelta(seconds=seconds)
    for _ in range(10):
        created[(await env.client.create(Napper, {"seconds": seconds})).id] = time.time()
        sleeper = await env.client.create(Sleeper, {"ledger": str(ledger.path), "due": due})
        created[sleeper.id] = due.timestamp() - seconds
    finished: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while len(finished) < len(created) and loop.time() < deadline:
        for instance_id in created.keys() - finished.keys():
            if (await env.client.status(instance_id)).status.value == "complete":
                finished[instance_id] = time.time()
        await asyncio.sleep(0.05)
    early = {i: created[i] + seconds - t for i, t in finished.items() if t < created[i] + seconds}
    report = Report(f"13 worker clock {offset}", len(created), 1)
    report.lost = len(created) - len(finished)
    if report.lost:
        report.problems.append(f"{report.lost} instances did not finish within 60 s")
    if early:
        report.problems.append(
            f"{len(early)} timers fired early, by up to {max(early.values()):.2f} s"
        )
    REPORTS.append(report)
    report.assert_clean()
