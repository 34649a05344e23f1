"""A worker in its own OS process, for tests that kill it: `python -m
tests.integration.worker_process SETTINGS_JSON MODULE`. It prints "ready" once consuming.

Tracing is on when the OTEL_* variables say so, as in `warren worker`; the spans are flushed
when the process exits normally (SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from processor import Worker
from processor.cli import find_workflows
from processor.runtime import run_event_loop
from processor.telemetry.tracing import setup_tracing


async def main(settings: dict[str, Any], module: str) -> None:
    worker = Worker(find_workflows([module]), **settings)
    # Worker.run, as `warren worker` does: SIGTERM stops it gracefully.
    running = asyncio.create_task(worker.run())
    while not worker.is_consuming and not running.done():  # noqa: ASYNC110 - a property
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    await running


if __name__ == "__main__":
    tracer_provider = setup_tracing()
    try:
        run_event_loop(main(json.loads(sys.argv[1]), sys.argv[2]))
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()
