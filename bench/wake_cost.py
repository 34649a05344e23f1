"""`python -m bench.wake_cost`: what waking sleepers costs a worker that keeps up with them.

Scenario 4 of `python -m bench` creates its sleepers as fast as one worker parks them, so they
wake faster than it can finish them, and its lateness measures that backlog. This one creates
`--count` instances of the same workflow (sleep `--sleep` seconds, then one trivial step) in
batches of 100 at `--rate` a second, on one worker process, and measures the worker's CPU from
just before the first is due until every one is complete, per instance, and the sleeps'
lateness: the work and the delay of waking itself.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

from bench.__main__ import DEFAULT_POSTGRES_URL
from bench.environment import open_environment
from bench.scenarios import batches, check_all_complete, summarize, wait_for_total
from bench.system import process_usage
from bench.workflows import SleepThenStep
from processor.config import broker_url
from processor.runtime import run_event_loop

#: Concurrency of the worker process (Worker's default).
CONCURRENCY = 100


async def measure(
    backend: str, broker: str, postgres_url: str, count: int, rate: float, sleep_s: float
) -> dict[str, float]:
    async with open_environment(backend, broker, postgres_url) as environment:
        await environment.ensure_workers(1, CONCURRENCY)
        (pid,) = environment.worker_pids
        start = time.perf_counter()
        for batch in batches(count):
            await environment.client.create_batch(
                SleepThenStep, [{"params": {"seconds": sleep_s}} for _ in batch]
            )
            await asyncio.sleep(len(batch) / rate)
        if time.perf_counter() > start + sleep_s:
            raise RuntimeError("the first sleepers woke before the last was created: sleep longer")
        await asyncio.sleep(start + sleep_s - time.perf_counter())
        cpu_before = process_usage(pid).cpu_s
        counts = await wait_for_total(environment.probe, SleepThenStep.name, count)
        cpu_s = process_usage(pid).cpu_s - cpu_before
        check_all_complete(counts, Counter(), count)
        sleeps = await environment.probe.sleeps(SleepThenStep.name)
    lateness = [late.total_seconds() * 1000 for _, late in sleeps]
    return {"worker_cpu_ms_per_instance": cpu_s * 1000 / count} | summarize(lateness)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wake_cost", description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0, help="instances created a second")
    parser.add_argument("--sleep", type=float, default=15.0, help="seconds each sleeps")
    parser.add_argument("--broker-url", default=None, help="default: WARREN_BROKER_URL")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    options = parser.parse_args()
    figures = run_event_loop(
        measure(
            options.backend,
            broker_url(options.broker_url),
            options.postgres_url,
            options.count,
            options.rate,
            options.sleep,
        )
    )
    print(
        f"{options.backend}: {options.count:,} sleepers created {options.rate:g}/s: worker CPU "
        f"{figures['worker_cpu_ms_per_instance']:.2f} ms per woken instance; wake lateness "
        f"p50 / p99 / max {figures['p50_ms']:,.1f} / {figures['p99_ms']:,.1f} / "
        f"{figures['max_ms']:,.1f} ms"
    )


if __name__ == "__main__":
    main()
