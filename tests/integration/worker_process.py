"""A worker in its own OS process, for tests that kill it: `python -m
tests.integration.worker_process SETTINGS_JSON MODULE`. It prints "ready" once consuming."""

from __future__ import annotations

import asyncio
import json
import sys

from processor import Worker
from processor.cli import find_workflows


async def main(settings: dict[str, str], module: str) -> None:
    worker = Worker(find_workflows([module]), **settings)
    await worker.start()
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await worker.stop()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), sys.argv[2]))
