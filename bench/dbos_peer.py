"""Scenario 7's peer process: DBOS Transact for Python running scenarios 1 to 3.

`python -m bench.dbos_peer SETTINGS_JSON` (started by `bench.peer`, which reads the results).
SETTINGS_JSON holds `system_database_url`, `schema` (PostgreSQL) or null (SQLite), and `sizes`
(the fields of `bench.scenarios.Sizes`). It launches DBOS, prints "ready", then answers each
scenario name read from stdin ("throughput", "latency", "event_latency") with one line of JSON:
`{"metrics": {...}}` or `{"error": "..."}`. It exits at the end of stdin.

DBOS is a library, not a server: the process that starts a workflow runs it, so this one
process is both Warren's client and Warren's worker. The workflows are async, as Warren's are,
so DBOS runs them on this process's event loop and its database calls in its thread pool. DBOS
runs with its defaults (20 pooled connections, as Warren's PostgreSQL pool; on SQLite, `recv`
polls the database every second, DBOS's `notification_listener_polling_interval_sec`).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from dbos import DBOS, DBOSConfig

from bench.scenarios import Sizes, batches, summarize
from bench.system import process_usage

#: Set by `await_event` just before it waits in `recv`, so that the event is sent to a waiting
#: workflow as in Warren's scenario 3 (instrumentation: not part of the workflow's logic).
parked: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
#: After `parked` is set, `recv` still registers its waiter (one query in DBOS's thread pool);
#: an event sent before that would be found by the registering query, which is faster than a
#: steady-state delivery. Not timed.
PARK_SETTLE_S = 0.05


@DBOS.step()
async def trivial(index: int) -> dict[str, int]:
    """A step body that does nothing but return a small dict, as `bench.workflows.trivial`."""
    return {"step": index}


@DBOS.workflow()
async def ten_steps() -> int:
    """Scenario 1: ten trivial steps in a row."""
    for index in range(10):
        await trivial(index)
    return 10


@DBOS.workflow()
async def three_steps() -> int:
    """Scenario 2: three trivial steps in a row."""
    for index in range(3):
        await trivial(index)
    return 3


@DBOS.workflow()
async def await_event() -> Any:
    """Scenario 3: wait for a message on topic "go", then finish with it."""
    parked[DBOS.workflow_id or ""].set()
    return await DBOS.recv_async("go", timeout_seconds=600)


async def throughput(sizes: Sizes) -> dict[str, float]:
    """`sizes.instances` workflows of ten steps, started 100 at a time (as Warren's client
    creates them in batches of 100), from the first start until the last result."""
    start = time.perf_counter()
    handles = []
    for batch in batches(sizes.instances):
        handles += await asyncio.gather(*(DBOS.start_workflow_async(ten_steps) for _ in batch))
    created = time.perf_counter()
    results = await asyncio.gather(*(handle.get_result() for handle in handles))
    elapsed = time.perf_counter() - start
    if results != [10] * sizes.instances:
        raise AssertionError(f"unexpected results: {sorted(set(results))}")
    return {
        "instances_per_s": sizes.instances / elapsed,
        "steps_per_s": 10 * sizes.instances / elapsed,
        "seconds": elapsed,
        "creates_per_s": sizes.instances / (created - start),
        "worker_rss_mb": process_usage(os.getpid()).rss_bytes / 2**20,
    }


async def latency(sizes: Sizes) -> dict[str, float]:
    """One three-step workflow at a time, from starting it until its result is returned."""
    latencies = []
    for run in range(sizes.warmup_runs + sizes.latency_runs):
        start = time.perf_counter()
        handle = await DBOS.start_workflow_async(three_steps)
        await handle.get_result()
        if run >= sizes.warmup_runs:
            latencies.append((time.perf_counter() - start) * 1000)
    return summarize(latencies)


async def event_latency(sizes: Sizes) -> dict[str, float]:
    """A workflow waiting in `recv`; from calling `send` until its result is returned."""
    latencies = []
    for run in range(sizes.warmup_runs + sizes.event_runs):
        handle = await DBOS.start_workflow_async(await_event)
        workflow_id = handle.get_workflow_id()
        await asyncio.wait_for(parked[workflow_id].wait(), 60)
        await asyncio.sleep(PARK_SETTLE_S)
        start = time.perf_counter()
        await DBOS.send_async(workflow_id, {"run": run}, "go")
        result = await handle.get_result()
        elapsed = time.perf_counter() - start
        if result != {"run": run}:
            raise AssertionError(f"workflow {workflow_id} received {result!r}")
        del parked[workflow_id]
        if run >= sizes.warmup_runs:
            latencies.append(elapsed * 1000)
    return summarize(latencies)


SCENARIOS: dict[str, Callable[[Sizes], Awaitable[dict[str, float]]]] = {
    "throughput": throughput,
    "latency": latency,
    "event_latency": event_latency,
}


async def serve(settings: dict[str, Any], answers: TextIO) -> None:
    config: DBOSConfig = {
        "name": "warren-bench",
        "system_database_url": settings["system_database_url"],
        "log_level": "WARNING",
    }
    if settings["schema"] is not None:
        config["dbos_system_schema"] = settings["schema"]
    sizes = Sizes(**settings["sizes"])
    DBOS(config=config)
    DBOS.launch()
    try:
        print("ready", file=answers, flush=True)
        while scenario := (await asyncio.to_thread(sys.stdin.readline)).strip():
            try:
                answer: dict[str, Any] = {"metrics": await SCENARIOS[scenario](sizes)}
            except Exception as error:
                traceback.print_exc()
                answer = {"error": f"{type(error).__name__}: {error}"}
            print(json.dumps(answer), file=answers, flush=True)
    finally:
        DBOS.destroy()


def main() -> None:
    # Answers go to the real stdout; whatever DBOS or a library prints goes to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    asyncio.run(serve(json.loads(sys.argv[1]), answers))


if __name__ == "__main__":
    main()
