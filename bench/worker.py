"""A worker process serving the benchmark's workflows: `python -m bench.worker SETTINGS_JSON`.

SETTINGS_JSON holds the keyword arguments of `Worker` (broker_url, database_url, namespace,
database_schema, concurrency). It prints "ready" once it consumes every queue, stops on
SIGTERM like `warren worker`, and also stops if the benchmark that started it dies.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from bench.workflows import WORKFLOWS
from processor import Worker
from processor.runtime import run_event_loop


async def main(settings: dict[str, Any]) -> None:
    worker = Worker(WORKFLOWS, **settings)
    running = asyncio.create_task(worker.run())
    while not worker.is_consuming and not running.done():  # noqa: ASYNC110 - a property
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    parent = os.getppid()
    while not running.done():
        await asyncio.wait({running}, timeout=1.0)
        # Killed benchmarks leave no worker behind: an orphan is re-parented.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
    await running


if __name__ == "__main__":
    run_event_loop(main(json.loads(sys.argv[1])))
