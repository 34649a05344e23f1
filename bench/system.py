"""CPU, memory and threads of processes and of the machine: psutil when it is installed, else
/proc.

psutil comes with the `bench` extra; without it this reads Linux's /proc.
"""

from __future__ import annotations

import importlib
import os
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType


def _import_psutil() -> ModuleType | None:
    try:
        return importlib.import_module("psutil")
    except ImportError:
        return None


PSUTIL = _import_psutil()
#: What reading a process that has just exited raises.
GONE: tuple[type[Exception], ...] = (OSError,) if PSUTIL is None else (OSError, PSUTIL.Error)
TICKS = os.sysconf("SC_CLK_TCK")

#: RabbitMQ's Erlang VM and PostgreSQL's processes, by executable name.
BROKER_PROCESS = "beam.smp"
DATABASE_PROCESS = "postgres"


@dataclass(frozen=True)
class Usage:
    cpu_s: float
    rss_bytes: int
    threads: int


def process_usage(pid: int) -> Usage:
    """User plus system CPU seconds, resident memory and OS threads of one process."""
    if PSUTIL is not None:
        process = PSUTIL.Process(pid)
        with process.oneshot():
            times = process.cpu_times()
            return Usage(
                times.user + times.system, process.memory_info().rss, process.num_threads()
            )
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which may hold spaces: state is field 3 of proc(5), so
    # utime (14), stime (15), num_threads (20) and rss (24) are at 11, 12, 17 and 21 here.
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / TICKS
    return Usage(cpu_s, int(fields[21]) * os.sysconf("SC_PAGE_SIZE"), int(fields[17]))


def pids_named(name: str) -> list[int]:
    """Every process whose executable is `name`."""
    if PSUTIL is not None:
        return [p.pid for p in PSUTIL.process_iter(["name"]) if p.info["name"] == name]
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm == name:
                pids.append(int(entry.name))
    return pids


def machine_cpu_s() -> tuple[float, float]:
    """Busy and total CPU seconds of the whole machine since boot, all cores added up."""
    if PSUTIL is not None:
        times = PSUTIL.cpu_times()
        # Guest time is already counted in user time.
        total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
        return total - times.idle - getattr(times, "iowait", 0.0), total
    # user nice system idle iowait irq softirq steal (guest time is already in user).
    fields = [int(value) for value in Path("/proc/stat").read_text().split()[1:9]]
    total = sum(fields)
    return (total - fields[3] - fields[4]) / TICKS, total / TICKS


def _cpu_s(pids: Iterable[int]) -> dict[int, float]:
    seconds = {}
    for pid in pids:
        try:
            seconds[pid] = process_usage(pid).cpu_s
        except GONE:
            continue
    return seconds


class CpuMeter:
    """CPU used by groups of processes between `start()` and `stop()`.

    A group is a function listing its processes, called at both ends, so that a process
    started meanwhile (a new database connection's backend) counts in full. Each group's
    figure is a percentage of one core (200% is two busy cores); "machine" is the busy share
    of all cores, so near 100% means the machine itself was the limit.
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self._start: dict[str, dict[int, float]] = {}
        self._machine_start = (0.0, 0.0)
        self._wall_start = 0.0

    def start(self) -> None:
        self._start = {name: _cpu_s(pids()) for name, pids in self.groups.items()}
        self._machine_start = machine_cpu_s()
        self._wall_start = time.perf_counter()

    def stop(self) -> dict[str, float]:
        """Percentages keyed `cpu_{group}_pct` and `cpu_machine_pct`."""
        wall = time.perf_counter() - self._wall_start
        usage = {}
        for name, pids in self.groups.items():
            before = self._start[name]
            # A process that exited meanwhile drops out.
            after = _cpu_s(pids())
            used = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
            usage[f"cpu_{name}_pct"] = 100 * used / wall
        busy, total = machine_cpu_s()
        usage["cpu_machine_pct"] = (
            100 * (busy - self._machine_start[0]) / (total - self._machine_start[1])
        )
        return usage


def describe_machine() -> dict[str, str | int]:
    """What a reader needs to compare a run with another: CPUs, memory, OS and Python."""
    machine: dict[str, str | int] = {
        "cpus": os.cpu_count() or 0,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                machine["cpu_model"] = line.split(":", 1)[1].strip()
                break
    if PSUTIL is not None:
        machine["memory_mb"] = PSUTIL.virtual_memory().total // 2**20
    elif Path("/proc/meminfo").exists():
        first = Path("/proc/meminfo").read_text().split("\n", 1)[0]  # MemTotal: N kB
        machine["memory_mb"] = int(first.split()[1]) // 1024
    return machine
