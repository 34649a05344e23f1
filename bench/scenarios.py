"""Scenarios 1 to 5: Warren itself, driven through the public Client.

Workers run in their own OS processes (`bench.worker`); the client runs here. Completion is
detected with the `Probe` (one count query per poll for a batch), not by polling each instance
through the Client.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

from bench.environment import Environment
from bench.probe import Probe
from bench.system import (
    BROKER_PROCESS,
    DATABASE_PROCESS,
    GONE,
    CpuMeter,
    Usage,
    pids_named,
    process_usage,
)
from bench.workflows import AwaitEvent, Sleeper, SleepThenStep, TenSteps, ThreeSteps
from processor.client import MAX_BATCH
from schemas import TERMINAL_STATUSES, InstanceStatusName

#: Poll interval of the one count query that detects that a batch has finished.
COUNT_POLL_S = 0.1
#: Poll interval of the one-row query that detects that a single instance has changed status.
ROW_POLL_S = 0.002
#: How often the workers' memory is read while the instances of scenario 4 sleep.
WATCH_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does: the issue's numbers, or tiny ones for the smoke run."""

    instances: int
    latency_runs: int
    event_runs: int
    #: Runs before the measured ones of scenarios 2 and 3 (connections, caches, first plans).
    warmup_runs: int
    timers: int
    timer_max_s: float
    #: Scenario 4: how many instances sleep at once, how long, and how long the idle worker is
    #: measured before they are created.
    sleepers: int
    sleep_s: float
    idle_s: float
    #: How long each raw limit is measured.
    limit_s: float
    #: Chains in flight in the raw broker round trips.
    in_flight: int = 100
    #: Messages each worker process handles at once (Worker's default).
    concurrency: int = 100


FULL = Sizes(
    instances=1000,
    latency_runs=200,
    event_runs=100,
    warmup_runs=5,
    timers=1000,
    timer_max_s=60.0,
    sleepers=10_000,
    sleep_s=30.0,
    idle_s=5.0,
    limit_s=5.0,
)
SMOKE = Sizes(
    instances=10,
    latency_runs=5,
    event_runs=3,
    warmup_runs=1,
    timers=20,
    timer_max_s=2.0,
    sleepers=20,
    sleep_s=3.0,
    idle_s=0.5,
    limit_s=0.5,
)
TIMER_MIN_S = 0.1
#: Timer lateness p99 is also reported per band of sleep lengths, in seconds.
TIMER_BANDS = (
    ("p99_ms_under_1s", 0.0, 1.0),
    ("p99_ms_1_to_10s", 1.0, 10.0),
    ("p99_ms_over_10s", 10.0, float("inf")),
)


async def throughput(environment: Environment, sizes: Sizes, workers: int) -> dict[str, float]:
    """Scenario 1: `sizes.instances` instances of ten trivial steps, created in batches of 100
    while `workers` worker processes run them; instances/s and steps/s from the first create
    until the count query sees the last one complete. Also the CPU of each party meanwhile,
    which names the bottleneck, and the workers' memory afterwards."""
    await environment.ensure_workers(workers, sizes.concurrency)
    probe = environment.probe
    before = await probe.status_counts(TenSteps.name)
    meter = CpuMeter(party_groups(environment))
    meter.start()
    start = time.perf_counter()
    for batch in batches(sizes.instances):
        await environment.client.create_batch(TenSteps, [{} for _ in batch])
    created = time.perf_counter()
    counts = await wait_for_total(probe, TenSteps.name, sum(before.values()) + sizes.instances)
    elapsed = time.perf_counter() - start
    cpu = meter.stop()
    check_all_complete(counts, before, sizes.instances)
    rss = sum(process_usage(pid).rss_bytes for pid in environment.worker_pids)
    return {
        "instances_per_s": sizes.instances / elapsed,
        "steps_per_s": 10 * sizes.instances / elapsed,
        "seconds": elapsed,
        "creates_per_s": sizes.instances / (created - start),
        "worker_rss_mb": rss / 2**20,
        **cpu,
    }


def party_groups(environment: Environment) -> dict[str, Callable[[], list[int]]]:
    """The processes whose CPU names a bottleneck: Warren's workers, the broker, PostgreSQL's
    server processes (SQLite runs inside the workers) and this benchmark process."""
    groups: dict[str, Callable[[], list[int]]] = {
        "workers": lambda: environment.worker_pids,
        "broker": lambda: pids_named(BROKER_PROCESS),
    }
    if environment.backend == "postgres":
        groups["database"] = lambda: pids_named(DATABASE_PROCESS)
    groups["bench"] = lambda: [os.getpid()]
    return groups


async def latency(environment: Environment, sizes: Sizes) -> dict[str, float]:
    """Scenario 2: one instance of three trivial steps at a time, from `create` until
    `result()` returns, as a caller sees it (told by PostgreSQL, polling SQLite from every
    2 ms); the time until a 2 ms poll of the instance's row sees it complete is measured in
    the same runs and reported beside it (`seen_`)."""
    await environment.ensure_workers(1, sizes.concurrency)
    to_result, to_seen = [], []
    for run in range(sizes.warmup_runs + sizes.latency_runs):
        start = time.perf_counter()
        instance = await environment.client.create(ThreeSteps)
        seen = asyncio.create_task(
            _seen(environment.probe, instance.id, InstanceStatusName.COMPLETE)
        )
        try:
            await instance.result(timeout=60)
            result_at = time.perf_counter()
            seen_at = await seen
        finally:
            seen.cancel()
        if run >= sizes.warmup_runs:
            to_result.append((result_at - start) * 1000)
            to_seen.append((seen_at - start) * 1000)
    return {**summarize(to_result), **summarize(to_seen, "seen_")}


async def event_latency(environment: Environment, sizes: Sizes) -> dict[str, float]:
    """Scenario 3: an instance parked in `wait_for_event`; from calling `send_event` until a
    2 ms poll of the instance's row sees it complete (with the event's payload)."""
    await environment.ensure_workers(1, sizes.concurrency)
    probe = environment.probe
    latencies = []
    for run in range(sizes.warmup_runs + sizes.event_runs):
        instance = await environment.client.create(AwaitEvent)
        await _wait_for_status(probe, instance.id, InstanceStatusName.WAITING)
        start = time.perf_counter()
        await instance.send_event("go", {"run": run})
        seen_at = await _seen(probe, instance.id, InstanceStatusName.COMPLETE)
        if run >= sizes.warmup_runs:
            latencies.append((seen_at - start) * 1000)
    return summarize(latencies)


async def timers(environment: Environment, sizes: Sizes) -> dict[str, float]:
    """Scenario 5: `sizes.timers` instances each sleep a random 0.1 s to `timer_max_s`
    (created together, in batches of 100); lateness is the sleep step's `ended_at` minus
    its due time. A timer that fires early is a bug, and fails the scenario."""
    await environment.ensure_workers(1, sizes.concurrency)
    rng = random.Random(5)
    delays = [rng.uniform(TIMER_MIN_S, sizes.timer_max_s) for _ in range(sizes.timers)]
    before = await environment.probe.status_counts(Sleeper.name)
    for batch in batches(sizes.timers):
        items = [{"params": {"seconds": delays[index]}} for index in batch]
        await environment.client.create_batch(Sleeper, items)
    counts = await wait_for_total(
        environment.probe,
        Sleeper.name,
        sum(before.values()) + sizes.timers,
        timeout=sizes.timer_max_s + 300,
    )
    check_all_complete(counts, before, sizes.timers)
    sleeps = [
        (seconds, _ms(late)) for seconds, late in await environment.probe.sleeps(Sleeper.name)
    ]
    early = [late for _, late in sleeps if late < 0]
    if early:
        raise AssertionError(f"{len(early)} timers fired early, by up to {-min(early):.1f} ms")
    metrics = summarize([late for _, late in sleeps])
    # The target holds "at every delay": short sleeps wake while the instances created with
    # them may still be queued for their first round.
    for key, low, high in TIMER_BANDS:
        band = [late for seconds, late in sleeps if low <= seconds < high]
        if band:
            metrics[key] = summarize(band)["p99_ms"]
    return metrics


async def sleeping(environment: Environment, sizes: Sizes) -> dict[str, float]:
    """Scenario 4: `sizes.sleepers` instances (created in batches of 100) each sleep
    `sizes.sleep_s`, then run one trivial step, on one worker process.

    Measured: the client's creation rate; the worker's resident memory and OS threads idle
    (after a warm-up batch of short sleeps, so that pools and caches are already filled, and
    before the first create) and while every instance sleeps, and the CPU of each party
    meanwhile (Warren holds nothing per sleeping instance, so both should stay flat); then
    wake-up lateness as in scenario 5.

    "While every instance sleeps" is the quiet window from the moment the probe sees them all
    waiting until the first can wake (the first create plus the sleep). A worker that parks
    them more slowly than that has no such window: `asleep_peak` then says how many slept at
    once, memory is read at that peak, and CPU while asleep is not reported.
    """
    await environment.ensure_workers(1, sizes.concurrency)
    probe = environment.probe
    warmup = await probe.status_counts(SleepThenStep.name)
    warmup_count = min(sizes.sleepers, MAX_BATCH)
    await environment.client.create_batch(
        SleepThenStep, [{"params": {"seconds": TIMER_MIN_S}} for _ in range(warmup_count)]
    )
    await wait_for_total(probe, SleepThenStep.name, sum(warmup.values()) + warmup_count)
    idle_meter = CpuMeter({"workers": lambda: environment.worker_pids})
    idle_meter.start()
    await asyncio.sleep(sizes.idle_s)
    idle_cpu = idle_meter.stop()
    idle = _worker_usage(environment)
    before = await probe.status_counts(SleepThenStep.name)
    asleep_before = before[InstanceStatusName.WAITING]

    start = time.perf_counter()
    # No instance can wake before this: its sleep starts after its create.
    first_wake = start + sizes.sleep_s
    for batch in batches(sizes.sleepers):
        await environment.client.create_batch(
            SleepThenStep, [{"params": {"seconds": sizes.sleep_s}} for _ in batch]
        )
    created = time.perf_counter()

    peak, at_peak, all_asleep_at = 0, idle, None
    while all_asleep_at is None:
        counts = await probe.status_counts(SleepThenStep.name)
        asleep = counts[InstanceStatusName.WAITING] - asleep_before
        if asleep > peak:
            peak, at_peak = asleep, _worker_usage(environment)
        if asleep == sizes.sleepers:
            all_asleep_at = time.perf_counter()
        elif time.perf_counter() >= first_wake:
            break
        else:
            await asyncio.sleep(COUNT_POLL_S)

    metrics = {
        "creates_per_s": sizes.sleepers / (created - start),
        "asleep_peak": float(peak),
        "quiet_window_s": 0.0,
        "rss_idle_mb": idle.rss_bytes / 2**20,
        "threads_idle": float(idle.threads),
        "idle_cpu_workers_pct": idle_cpu["cpu_workers_pct"],
    }
    if all_asleep_at is None or all_asleep_at >= first_wake:
        asleep_usage = [at_peak]
    else:
        metrics["parks_per_s"] = sizes.sleepers / (all_asleep_at - start)
        metrics["quiet_window_s"] = first_wake - all_asleep_at
        asleep_usage, asleep_cpu = await _watch_while_asleep(environment, first_wake)
        metrics |= {f"asleep_{key}": value for key, value in asleep_cpu.items()}
        metrics["rss_drift_mb"] = (asleep_usage[-1].rss_bytes - asleep_usage[0].rss_bytes) / 2**20
    rss_asleep = max(usage.rss_bytes for usage in asleep_usage)
    metrics["rss_asleep_mb"] = rss_asleep / 2**20
    metrics["rss_growth_mb"] = (rss_asleep - idle.rss_bytes) / 2**20
    metrics["threads_asleep"] = float(max(usage.threads for usage in asleep_usage))

    counts = await wait_for_total(
        probe,
        SleepThenStep.name,
        sum(before.values()) + sizes.sleepers,
        timeout=sizes.sleep_s + 1800,
    )
    check_all_complete(counts, before, sizes.sleepers)
    sleeps = await probe.sleeps(SleepThenStep.name)
    lateness = [_ms(late) for seconds, late in sleeps if seconds == sizes.sleep_s]
    if min(lateness) < 0:
        raise AssertionError(f"a sleeper woke early, by {-min(lateness):.1f} ms")
    metrics |= summarize(lateness)
    metrics["seconds"] = time.perf_counter() - start
    return metrics


async def _watch_while_asleep(
    environment: Environment, until: float
) -> tuple[list[Usage], dict[str, float]]:
    """The workers' memory and threads once a second, and every party's CPU, until `until`."""
    meter = CpuMeter(party_groups(environment))
    meter.start()
    samples = [_worker_usage(environment)]
    while (remaining := until - time.perf_counter()) > 0:
        await asyncio.sleep(min(WATCH_INTERVAL_S, remaining))
        samples.append(_worker_usage(environment))
    return samples, meter.stop()


def _worker_usage(environment: Environment) -> Usage:
    """CPU, memory and threads of the worker processes added up."""
    usages = []
    for pid in environment.worker_pids:
        try:
            usages.append(process_usage(pid))
        except GONE as error:
            raise RuntimeError(f"worker process {pid} is gone") from error
    return Usage(
        sum(usage.cpu_s for usage in usages),
        sum(usage.rss_bytes for usage in usages),
        sum(usage.threads for usage in usages),
    )


def summarize(values_ms: Sequence[float], prefix: str = "") -> dict[str, float]:
    """p50, p99 and max, in milliseconds."""
    ordered = sorted(values_ms)
    return {
        f"{prefix}p50_ms": _quantile(ordered, 0.50),
        f"{prefix}p99_ms": _quantile(ordered, 0.99),
        f"{prefix}max_ms": ordered[-1],
    }


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between the two nearest ranks (numpy's default)."""
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _ms(delta: timedelta) -> float:
    return delta / timedelta(milliseconds=1)


def batches(count: int) -> Iterator[range]:
    """`range(count)` in slices of at most `create_batch`'s limit (100)."""
    for start in range(0, count, MAX_BATCH):
        yield range(start, min(start + MAX_BATCH, count))


async def wait_for_total(
    probe: Probe, workflow: str, total: int, timeout: float = 1800.0
) -> Counter[str]:
    """Poll the status counts of `workflow` until `total` instances are terminal."""
    deadline = time.perf_counter() + timeout
    while True:
        counts = await probe.status_counts(workflow)
        if sum(counts[status] for status in TERMINAL_STATUSES) >= total:
            return counts
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{workflow}: {total} instances not finished: {dict(counts)}")
        await asyncio.sleep(COUNT_POLL_S)


def check_all_complete(counts: Counter[str], before: Counter[str], expected: int) -> None:
    complete = counts[InstanceStatusName.COMPLETE] - before[InstanceStatusName.COMPLETE]
    if complete != expected:
        raise AssertionError(f"{expected - complete} of {expected} instances did not complete")


async def _wait_for_status(
    probe: Probe, instance_id: str, wanted: InstanceStatusName, timeout: float = 60.0
) -> None:
    """Poll one instance's row every ROW_POLL_S until it has status `wanted`."""
    deadline = time.perf_counter() + timeout
    while (status := await probe.status(instance_id)) != wanted:
        if status in TERMINAL_STATUSES:
            raise AssertionError(f"instance {instance_id} ended {status}, not {wanted}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"instance {instance_id} is still {status}, not {wanted}")
        await asyncio.sleep(ROW_POLL_S)


async def _seen(probe: Probe, instance_id: str, wanted: InstanceStatusName) -> float:
    """The perf_counter time at which a poll first sees the instance with status `wanted`."""
    await _wait_for_status(probe, instance_id, wanted)
    return time.perf_counter()
