"""Workers, the CLI and the benchmark run on uvloop's event loop where it is installed."""

from __future__ import annotations

import asyncio
import sys

import pytest

from processor.runtime import run_event_loop


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not a dependency on Windows")
def test_run_event_loop_runs_the_coroutine_on_uvloop() -> None:
    assert run_event_loop(loop_module()).startswith("uvloop")
