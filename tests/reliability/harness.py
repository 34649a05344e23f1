"""The fault-injection harness: worker processes to kill, an effect ledger, and a checker.

- `Fleet` runs workers as OS processes (tests/integration/worker_process.py); a test SIGKILLs,
  SIGSTOPs or restarts them, and its supervisor restarts any that die. Every process whose life
  ended by a signal (a kill, or a failpoint's SIGKILL) is remembered: its unfinished step
  executions explain re-executions.
- `Ledger` is a file outside the engine that step bodies append to, one JSON line per event,
  with O_APPEND writes (atomic for lines this short), from any number of processes.
- `check` compares the ledger with the engine's state and returns a `Report`: lost instances,
  double-applied changes, extra and unexplained step executions, dead-lettered messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
from sqlmodel import select

from processor import Client, InstanceNotFoundError
from processor.broker.topology import Topology
from processor.store.database import Database, is_transient
from processor.store.tables import EventRow
from schemas import InstanceStatus

ROOT = Path(__file__).resolve().parents[2]

#: Counts scale down locally with WARREN_RELIABILITY_SCALE (e.g. 0.2); never in CI.
SCALE = 1.0 if os.environ.get("CI") else float(os.environ.get("WARREN_RELIABILITY_SCALE", "1"))


def scaled(count: int) -> int:
    return max(1, round(count * SCALE))


def seeded_random(scenario: str) -> tuple[int, random.Random]:
    """A random source for one scenario; WARREN_RELIABILITY_SEED replays a failed run."""
    seed = int(os.environ.get("WARREN_RELIABILITY_SEED") or random.randrange(2**32))
    print(f"{scenario}: seed {seed} (replay with WARREN_RELIABILITY_SEED={seed})")
    return seed, random.Random(seed)


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def record(self, instance_id: str, step: str, phase: str) -> None:
        line = json.dumps(
            {"i": instance_id, "s": step, "p": phase, "pid": os.getpid(), "t": time.time()}
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


@dataclass
class WorkerProcess:
    process: asyncio.subprocess.Process
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Fleet:
    """Worker processes for one test, with a supervisor that restarts the ones that die."""

    settings: dict[str, Any]
    module: str
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[WorkerProcess] = field(default_factory=list)
    #: Pids of processes that ended by a signal (killed, or crashed at a failpoint).
    crashed_pids: set[int] = field(default_factory=set)
    kills: int = 0
    #: Why a restart by the supervisor failed, each time one did.
    spawn_failures: list[str] = field(default_factory=list)
    _supervisor: asyncio.Task[None] | None = None

    @property
    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.processes if w.process.returncode is None]

    async def start(self, count: int = 1, **options: Any) -> list[WorkerProcess]:
        return [await self.spawn(**options) for _ in range(count)]

    async def spawn(self, **options: Any) -> WorkerProcess:
        """Start a worker and wait until it consumes (or dies trying: a failpoint can fire
        during startup; the supervisor then starts another)."""
        stderr_path = self.log_dir / f"worker-{len(self.processes)}.err"
        with stderr_path.open("wb") as stderr:  # the child keeps its own copy
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.integration.worker_process",
                json.dumps({**self.settings, **options}),
                self.module,
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, **self.extra_env, **self._seed_for(len(self.processes))},
            )
        worker = WorkerProcess(process, stderr_path)
        self.processes.append(worker)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        if line.strip() != b"ready" and process.returncode is None:
            await process.wait()
        if process.returncode is not None and process.returncode >= 0:
            raise AssertionError(f"worker exited with {process.returncode}: {self.stderr(worker)}")
        return worker

    def _seed_for(self, index: int) -> dict[str, str]:
        """Each process its own failpoint sequence (one seed for all would crash them all at
        the same step), still reproducible from the test's seed."""
        seed = self.extra_env.get("WARREN_FAILPOINT_SEED")
        return {} if seed is None else {"WARREN_FAILPOINT_SEED": f"{seed}-{index}"}

    def stderr(self, worker: WorkerProcess) -> str:
        return worker.stderr_path.read_text(errors="replace")[-3000:]

    async def kill(self, worker: WorkerProcess) -> None:
        """SIGKILL a worker, as a power cut would."""
        if worker.process.returncode is None:
            worker.process.kill()
            self.kills += 1
        await worker.process.wait()
        self.crashed_pids.add(worker.pid)

    def supervise(self, count: int, interval: float = 0.5, **options: Any) -> None:
        """Keep `count` workers running until `close`, as Kubernetes would."""

        async def loop() -> None:
            while True:
                for worker in self.processes:
                    code = worker.process.returncode
                    if code is not None and code < 0:
                        self.crashed_pids.add(worker.pid)
                while len(self.alive) < count:
                    try:
                        await self.spawn(**options)
                    except Exception as error:  # keep supervising: say why, try again
                        self.spawn_failures.append(repr(error))
                        await asyncio.sleep(interval)
                await asyncio.sleep(interval)

        self._supervisor = asyncio.create_task(loop())

    async def stop_supervising(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None

    def failpoint_hits(self) -> Counter[str]:
        """How many times each failpoint fired, from the workers' stderr."""
        hits: Counter[str] = Counter()
        for worker in self.processes:
            for line in worker.stderr_path.read_text(errors="replace").splitlines():
                if line.startswith("failpoint "):
                    hits[line.split()[1]] += 1
        return hits

    async def close(self) -> None:
        await self.stop_supervising()
        for worker in self.processes:
            if worker.process.returncode is None:
                worker.process.send_signal(signal.SIGCONT)
                worker.process.kill()
            await worker.process.wait()


@dataclass
class Report:
    """One scenario's outcome: the row it adds to the suite's summary table."""

    scenario: str
    instances: int
    faults: int
    lost: int = 0
    double_applied: int = 0
    extra_executions: int = 0
    unexplained: int = 0
    dead_lettered: int = 0
    seed: int | None = None
    problems: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert not self.problems, f"{self.scenario} (seed {self.seed}): " + "; ".join(
            self.problems[:20]
        )


REPORTS: list[Report] = []

#: An expected output that matches any: for workflows that return a time or a pid.
ANY_OUTPUT = object()


async def wait_terminal(
    client: Client, ids: Iterable[str], deadline_s: float
) -> dict[str, InstanceStatus | None]:
    """Poll until every instance is terminal or the deadline passes; returns the statuses
    (None for an instance that was never created: a create published on the wire, lost)."""
    ids = list(ids)
    pending = set(ids)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while pending and loop.time() < deadline:
        for instance_id in list(pending)[:200]:
            status = await _status_or_none(client, instance_id)
            if status is not None and status.status.is_terminal:
                pending.discard(instance_id)
        if pending:
            await asyncio.sleep(0.5)
    return {instance_id: await _status_or_none(client, instance_id) for instance_id in ids}


async def _status_or_none(client: Client, instance_id: str) -> InstanceStatus | None:
    for _ in range(100):  # the database may be back from an outage the test caused
        try:
            return await client.status(instance_id)
        except InstanceNotFoundError:
            return None
        except Exception as error:
            if not is_transient(error):
                raise
            await asyncio.sleep(0.5)
    return await client.status(instance_id)


async def dead_lettered(broker_url: str, namespace: str, workflows: list[str]) -> int:
    """Messages in the namespace's dead-letter queues."""
    topology = Topology(namespace)
    connection = await aio_pika.connect(broker_url)
    total = 0
    async with connection:
        channel = await connection.channel()
        for name in topology.queue_names(workflows):
            if name.endswith(".dead"):
                queue = await channel.declare_queue(name, passive=True)
                total += queue.declaration_result.message_count or 0
    return total


def check(
    report: Report,
    statuses: dict[str, InstanceStatus | None],
    expected: dict[str, Any],
    ledger: Ledger,
    crashed_pids: set[int],
    dead: int,
) -> Report:
    """Fill `report` from the final statuses, the outputs expected from one application of
    every change, and the ledger; anything wrong becomes a problem."""
    for instance_id, want in expected.items():
        status = statuses[instance_id]
        if status is None or status.status.value != "complete":
            report.lost += 1
            state = "never created" if status is None else status.status.value
            report.problems.append(f"{instance_id} is {state}, not complete")
        elif want is not ANY_OUTPUT and status.output != want:
            report.double_applied += 1
            report.problems.append(f"{instance_id} output {status.output!r} != {want!r}")
    executions: defaultdict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    ended: set[tuple[str, str, int]] = set()
    for entry in ledger.entries():
        if entry["p"] == "start":
            executions[(entry["i"], entry["s"])].append(entry)
        else:
            ended.add((entry["i"], entry["s"], entry["pid"]))
    for (instance_id, step), runs in executions.items():
        for earlier, later in itertools.pairwise(runs):
            report.extra_executions += 1
            # A re-execution is explained when the earlier one ran in a process that died by
            # a signal, or never finished (its worker was stopped, or the step timed out).
            if earlier["pid"] in crashed_pids or (instance_id, step, earlier["pid"]) not in ended:
                continue
            report.unexplained += 1
            report.problems.append(
                f"{instance_id}/{step} ran again in pid {later['pid']} after finishing in "
                f"live pid {earlier['pid']}"
            )
    report.dead_lettered = dead
    if dead:
        report.problems.append(f"{dead} messages dead-lettered")
    REPORTS.append(report)
    return report


async def events_stored(database_url: str, schema: str | None) -> Counter[str]:
    """How many events each instance has stored (each sent event must be stored once)."""
    database = Database(database_url, schema=schema)
    try:
        async with database.read() as session:
            rows = (await session.exec(select(EventRow.instance_id))).all()
    finally:
        await database.close()
    return Counter(rows)
