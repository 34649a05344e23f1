"""The results of a run: the records written as JSON, and the table printed from them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.scenarios import TIMER_BANDS

#: Scenario 1 runs with this many worker processes.
WORKER_COUNTS = (1, 2, 4)


@dataclass
class Result:
    """One measurement: a scenario on a backend (None for the broker) with its parameters."""

    scenario: str
    backend: str | None
    params: dict[str, int | float | str]
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Report:
    command: str
    smoke: bool
    started_at: str
    backends: list[str]
    machine: dict[str, str | int]
    software: dict[str, str]
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[Result]:
        return [result for result in self.results if result.error is not None]

    def find(self, scenario: str, backend: str | None, **params: int) -> Result | None:
        """The first result of `scenario` on `backend` whose params include `params`."""
        for result in self.results:
            if (
                result.scenario == scenario
                and result.backend == backend
                and all(result.params.get(key) == value for key, value in params.items())
            ):
                return result
        return None

    def add_fractions(self) -> None:
        """Warren's steps/s as a percentage of the raw broker and best raw SQL limits."""
        broker = self.find("broker_limit", None)
        for backend in self.backends:
            commits = [
                result.metrics["commits_per_s"]
                for result in self.results
                if result.scenario == "sql_limit" and result.backend == backend and not result.error
            ]
            for result in self.results:
                if result.scenario != "throughput" or result.backend != backend or result.error:
                    continue
                steps = result.metrics["steps_per_s"]
                if broker is not None and broker.error is None:
                    limit = broker.metrics["round_trips_per_s"]
                    result.metrics["broker_limit_pct"] = 100 * steps / limit
                if commits:
                    result.metrics["sql_limit_pct"] = 100 * steps / max(commits)

    def add_peer_ratios(self) -> None:
        """Warren's figures divided by DBOS's on the same backend, kept with DBOS's results:
        above 1, Warren does more steps/s; below 1, Warren's latency is lower."""

        def measured(result: Result | None) -> dict[str, float] | None:
            return None if result is None or result.error is not None else result.metrics

        for backend in self.backends:
            peer = measured(self.find("dbos_throughput", backend))
            for workers in WORKER_COUNTS:
                warren = measured(self.find("throughput", backend, workers=workers))
                if peer is not None and warren is not None:
                    ratio = warren["steps_per_s"] / peer["steps_per_s"]
                    peer[f"warren_ratio_workers_{workers}"] = ratio
            for scenario in ("latency", "event_latency"):
                peer = measured(self.find(f"dbos_{scenario}", backend))
                warren = measured(self.find(scenario, backend))
                if peer is not None and warren is not None:
                    for quantile in ("p50", "p99"):
                        ratio = warren[f"{quantile}_ms"] / peer[f"{quantile}_ms"]
                        peer[f"warren_{quantile}_ratio"] = ratio

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        document: dict[str, Any] = asdict(self)
        path.write_text(json.dumps(document, indent=2) + "\n")


def number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _percentiles(prefix: str = "") -> Callable[[dict[str, float]], str]:
    def cell(metrics: dict[str, float]) -> str:
        return f"{number(metrics[prefix + 'p50_ms'])} / {number(metrics[prefix + 'p99_ms'])}"

    return cell


def _limits(metrics: dict[str, float]) -> str:
    parts = [
        f"{metrics[key]:.0f}%" if key in metrics else "-"
        for key in ("broker_limit_pct", "sql_limit_pct")
    ]
    return " / ".join(parts)


def _cpu(metrics: dict[str, float]) -> str:
    groups = ("workers", "broker", "database", "bench")
    parts = [
        f"{metrics[f'cpu_{group}_pct']:.0f}" if f"cpu_{group}_pct" in metrics else "-"
        for group in groups
    ]
    return f"{' / '.join(parts)} ({metrics['cpu_machine_pct']:.0f}%)"


def _sleeping_cpu(metrics: dict[str, float]) -> str:
    """The worker's CPU idle, then every party's while the instances sleep (if they all did)."""
    idle = f"{metrics['idle_cpu_workers_pct']:.1f}"
    if "asleep_cpu_workers_pct" not in metrics:
        return f"{idle}; no quiet window"
    parts = [
        f"{metrics[f'asleep_cpu_{group}_pct']:.1f}" if f"asleep_cpu_{group}_pct" in metrics else "-"
        for group in ("workers", "broker", "database")
    ]
    return f"{idle}; {' / '.join(parts)} ({metrics['asleep_cpu_machine_pct']:.0f}%)"


def _memory(metrics: dict[str, float]) -> str:
    return (
        f"{number(metrics['rss_idle_mb'])} / {number(metrics['rss_asleep_mb'])}"
        f" ({metrics['rss_growth_mb']:+.1f})"
    )


def _ratios(keys: list[str]) -> Callable[[dict[str, float]], str]:
    def cell(metrics: dict[str, float]) -> str:
        return " / ".join(f"{metrics[key]:.2f}x" if key in metrics else "-" for key in keys)

    return cell


def _timer_bands(metrics: dict[str, float]) -> str:
    keys = [key for key, _, _ in TIMER_BANDS]
    return " / ".join(number(metrics[key]) if key in metrics else "-" for key in keys)


#: (label, measure, scenario, params to match, cell): the table's rows, in the issue's order.
Row = tuple[str, str, str, dict[str, int], Callable[[dict[str, float]], str]]


def _rows() -> list[Row]:
    rows: list[Row] = []
    for workers in WORKER_COUNTS:
        plural = "process" if workers == 1 else "processes"
        match = {"workers": workers}
        rows += [
            (f"1  throughput, {workers} worker {plural}", "steps/s", "throughput", match,
             lambda m: number(m["steps_per_s"])),
            ("", "instances/s", "throughput", match, lambda m: number(m["instances_per_s"])),
            ("", "% of broker / SQL limit", "throughput", match, _limits),
            ("", "CPU % wrk/mq/db/bench (machine)", "throughput", match, _cpu),
        ]  # fmt: skip
    rows += [
        ("2  latency, 3 steps, create to result", "p50 / p99 ms", "latency", {}, _percentiles()),
        ("", "seen complete p50 / p99 ms", "latency", {}, _percentiles("seen_")),
        ("3  event latency, send to complete", "p50 / p99 ms", "event_latency", {},
         _percentiles()),
        ("4  sleeping at scale, sleep then a step", "creates/s", "sleeping", {},
         lambda m: number(m["creates_per_s"])),
        ("", "asleep at once / quiet window s", "sleeping", {},
         lambda m: f"{m['asleep_peak']:,.0f} / {number(m['quiet_window_s'])}"),
        ("", "worker RSS MB idle / asleep (growth)", "sleeping", {}, _memory),
        ("", "worker threads idle / asleep", "sleeping", {},
         lambda m: f"{m['threads_idle']:.0f} / {m['threads_asleep']:.0f}"),
        ("", "CPU % idle wrk; asleep wrk/mq/db (machine)", "sleeping", {}, _sleeping_cpu),
        ("", "wake lateness p50 / p99 / max ms", "sleeping", {},
         lambda m: f"{_percentiles()(m)} / {number(m['max_ms'])}"),
        ("5  timer lateness", "p50 / p99 / max ms", "timers", {},
         lambda m: f"{_percentiles()(m)} / {number(m['max_ms'])}"),
        ("", "p99 ms, sleeps <1 / 1-10 / >10 s", "timers", {}, _timer_bands),
        ("6a raw broker round trips", "msgs/s", "broker_limit", {},
         lambda m: f"{number(m['round_trips_per_s'])} (one broker for all)"),
        ("6b raw SQL commits, 1 connection", "commits/s", "sql_limit", {"connections": 1},
         lambda m: number(m["commits_per_s"])),
        ("6b raw SQL commits, 20 connections", "commits/s", "sql_limit", {"connections": 20},
         lambda m: number(m["commits_per_s"])),
        ("7  DBOS throughput, 1 process", "steps/s", "dbos_throughput", {},
         lambda m: number(m["steps_per_s"])),
        ("", "CPU % dbos/-/db/bench (machine)", "dbos_throughput", {}, _cpu),
        ("", "Warren/DBOS steps/s, 1 / 2 / 4 wrk", "dbos_throughput", {},
         _ratios([f"warren_ratio_workers_{workers}" for workers in WORKER_COUNTS])),
        ("7  DBOS latency, start to result", "p50 / p99 ms", "dbos_latency", {},
         _percentiles()),
        ("", "Warren/DBOS p50 / p99", "dbos_latency", {},
         _ratios(["warren_p50_ratio", "warren_p99_ratio"])),
        ("7  DBOS event latency, send to result", "p50 / p99 ms", "dbos_event_latency", {},
         _percentiles()),
        ("", "Warren/DBOS p50 / p99", "dbos_event_latency", {},
         _ratios(["warren_p50_ratio", "warren_p99_ratio"])),
    ]  # fmt: skip
    return rows


def format_table(report: Report) -> str:
    """The results as a plain-text table, one column per backend."""

    def cell(result: Result | None, show: Callable[[dict[str, float]], str]) -> str:
        if result is None:
            return "-"
        if result.error is not None:
            return "FAILED"
        return show(result.metrics)

    header = ["scenario", "measure", *report.backends]
    lines = [header]
    for label, measure, scenario, match, show in _rows():
        # The broker is measured once per run, not per backend.
        backends = [None] if scenario == "broker_limit" else report.backends
        cells = [cell(report.find(scenario, backend, **match), show) for backend in backends]
        if any(value != "-" for value in cells):
            lines.append([label, measure, *cells])
    widths = [max(len(line[i]) for line in lines if len(line) > i) for i in range(len(header))]
    text = [
        f"Warren benchmark{' (smoke)' if report.smoke else ''}: {report.command}",
        _machine_line(report),
        "",
    ]
    for line in lines:
        text.append(
            "  ".join(
                value.ljust(width) for value, width in zip(line, widths, strict=False)
            ).rstrip()
        )
    for result in report.failed:
        where = f"{result.backend} " if result.backend else ""
        text.append(f"FAILED {where}{result.scenario} {result.params}: {result.error}")
    return "\n".join(text)


def _machine_line(report: Report) -> str:
    machine, software = report.machine, report.software
    parts = [
        f"{machine.get('cpus')} CPUs ({machine.get('cpu_model', 'unknown model')})",
        f"{int(machine.get('memory_mb', 0)) / 1024:.0f} GiB",
        *(f"{name} {version}" for name, version in software.items()),
        f"{report.seconds:.0f} s",
    ]
    return ", ".join(parts)
