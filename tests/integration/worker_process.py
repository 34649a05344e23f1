"""A worker in its own OS process, for tests that kill it: `python -m
tests.integration.worker_process SETTINGS_JSON MODULE`. It prints "ready" once consuming."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from processor import Worker
from processor.cli import find_workflows


async def main(settings: dict[str, Any], module: str) -> None:
    worker = Worker(find_workflows([module]), **settings)
    # Worker.run, as `warren worker` does: SIGTERM stops it gracefully.
    running = asyncio.create_task(worker.run())
    while not worker.is_consuming and not running.done():  # noqa: ASYNC110 - a property
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    await running


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), sys.argv[2]))
