"""`python -m bench`: run the benchmark, print a table and write the results as JSON.

Every backend runs in a namespace and a database of its own (a SQLite file in a temporary
directory, or a schema in the PostgreSQL database), removed at the end, failed or not. The
exit status is 1 if any scenario failed: its error is in the table and in the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.metadata
import logging
import shlex
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from bench import limits, scenarios
from bench.environment import ROOT, Environment, new_namespace, open_environment
from bench.peer import open_peer
from bench.report import Report, Result, format_table
from bench.scenarios import FULL, SMOKE, Sizes
from bench.system import CpuMeter, describe_machine
from processor import config
from processor.runtime import run_event_loop

SCENARIOS = {
    "throughput": "1. N instances x 10 trivial steps, 1, 2 and 4 worker processes: steps/s",
    "latency": "2. one 3-step instance at a time, create to result: p50, p99",
    "event_latency": "3. send_event to completion of a waiting instance: p50, p99",
    "sleeping": "4. N instances sleep 30 s, then run a step: creates/s, worker RSS, threads "
    "and CPU while they sleep, wake-up lateness",
    "timers": "5. durable sleeps of 0.1-60 s: lateness p50, p99, max",
    "broker_limit": "6a. raw aio-pika consume, publish with confirm, ack: round trips/s",
    "sql_limit": "6b. raw one-row SQL commits, 1 and 20 connections: commits/s",
    "dbos": "7. DBOS Transact (the `bench` extra) running 1, 2 and 3 on the same database",
}
BACKENDS = {"sqlite": ["sqlite"], "postgres": ["postgres"], "both": ["sqlite", "postgres"]}
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
#: The raw SQL limit is measured with one connection and with Warren's PostgreSQL pool size.
SQL_CONNECTIONS = (1, 20)
#: Scenario 1 is run with 1 worker process first, then with these after the other scenarios.
MORE_WORKERS = (2, 4)

log = logging.getLogger("bench")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure Warren against the raw limits of its broker and database.",
        epilog="scenarios: " + "; ".join(f"{name} ({text})" for name, text in SCENARIOS.items()),
    )
    parser.add_argument("--smoke", action="store_true", help="tiny counts: checks, not numbers")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="both")
    parser.add_argument(
        "--json",
        type=Path,
        default=ROOT / "bench" / "results" / "latest.json",
        help="where to write the results (default: bench/results/latest.json)",
    )
    parser.add_argument(
        "--only", type=_scenario_names, default=set(SCENARIOS), help="comma-separated scenarios"
    )
    parser.add_argument(
        "--broker-url", default=config.broker_url(), help="default: WARREN_BROKER_URL"
    )
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument(
        "--sleep-s",
        type=float,
        help=f"how long the instances of scenario 4 sleep (default {FULL.sleep_s:g}, smoke "
        f"{SMOKE.sleep_s:g}); a longer sleep leaves a quiet window to a worker that parks "
        "them slowly",
    )
    return parser.parse_args(argv)


def _scenario_names(text: str) -> set[str]:
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = names - set(SCENARIOS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    return names


async def measure(
    report: Report,
    scenario: str,
    backend: str | None,
    params: Mapping[str, int | float | str],
    run: Callable[[], Awaitable[dict[str, float]]],
) -> None:
    """Run one scenario and add its result, or its error, to the report.

    Every result says how busy the machine was meanwhile (`cpu_machine_pct`), which shows
    when something else competed for the CPU."""
    start = time.perf_counter()
    machine = CpuMeter({})
    machine.start()
    try:
        metrics = await run()
        metrics.setdefault("cpu_machine_pct", machine.stop()["cpu_machine_pct"])
        result = Result(scenario, backend, dict(params), metrics=metrics)
    except Exception as error:
        traceback.print_exc()
        result = Result(scenario, backend, dict(params), error=f"{type(error).__name__}: {error}")
    report.results.append(result)
    outcome = result.error or ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items())
    log.info(
        "%s %s %s in %.1f s: %s",
        backend or "broker",
        scenario,
        params,
        time.perf_counter() - start,
        outcome,
    )


async def run_backend(
    report: Report, environment: Environment, sizes: Sizes, only: set[str]
) -> None:
    backend = environment.backend
    if "sql_limit" in only:
        for connections in SQL_CONNECTIONS:
            await measure(
                report,
                "sql_limit",
                backend,
                {"connections": connections, "seconds": sizes.limit_s},
                functools.partial(sql_limit, environment, sizes, connections),
            )
    throughput_params: dict[str, int | float | str] = {
        "instances": sizes.instances,
        "steps": 10,
        "concurrency": sizes.concurrency,
    }
    # Scenarios 1 to 5 run on one worker process; the others are started after them.
    if "throughput" in only:
        await measure(
            report,
            "throughput",
            backend,
            {**throughput_params, "workers": 1},
            lambda: scenarios.throughput(environment, sizes, 1),
        )
    if "latency" in only:
        params: dict[str, int | float | str] = {
            "runs": sizes.latency_runs,
            "warmup_runs": sizes.warmup_runs,
            "steps": 3,
        }
        await measure(
            report, "latency", backend, params, lambda: scenarios.latency(environment, sizes)
        )
    if "event_latency" in only:
        params = {"runs": sizes.event_runs, "warmup_runs": sizes.warmup_runs}
        await measure(
            report,
            "event_latency",
            backend,
            params,
            lambda: scenarios.event_latency(environment, sizes),
        )
    if "timers" in only:
        params = {
            "timers": sizes.timers,
            "min_delay_s": scenarios.TIMER_MIN_S,
            "max_delay_s": sizes.timer_max_s,
        }
        await measure(
            report, "timers", backend, params, lambda: scenarios.timers(environment, sizes)
        )
    if "sleeping" in only:
        params = {"instances": sizes.sleepers, "sleep_s": sizes.sleep_s, "steps": 1}
        await measure(
            report, "sleeping", backend, params, lambda: scenarios.sleeping(environment, sizes)
        )
    if "throughput" in only:
        for workers in MORE_WORKERS:
            await measure(
                report,
                "throughput",
                backend,
                {**throughput_params, "workers": workers},
                functools.partial(scenarios.throughput, environment, sizes, workers),
            )
    if "dbos" in only:
        await run_peer(report, environment, sizes)


async def run_peer(report: Report, environment: Environment, sizes: Sizes) -> None:
    """Scenario 7: scenarios 1 to 3 on DBOS Transact, alone on the machine (Warren's workers
    are stopped), with the same counts as Warren's."""
    params: dict[str, dict[str, int | float | str]] = {
        "throughput": {"instances": sizes.instances, "steps": 10, "processes": 1},
        "latency": {"runs": sizes.latency_runs, "warmup_runs": sizes.warmup_runs, "steps": 3},
        "event_latency": {"runs": sizes.event_runs, "warmup_runs": sizes.warmup_runs},
    }
    try:
        async with open_peer(environment, sizes) as peer:
            for scenario, scenario_params in params.items():
                await measure(
                    report,
                    f"dbos_{scenario}",
                    environment.backend,
                    scenario_params,
                    functools.partial(peer.measure, scenario),
                )
    except Exception as error:
        traceback.print_exc()
        report.results.append(
            Result("dbos", environment.backend, {}, error=f"{type(error).__name__}: {error}")
        )


async def sql_limit(environment: Environment, sizes: Sizes, connections: int) -> dict[str, float]:
    """Scenario 6b on the environment's database: a SQLite file beside Warren's, or a table
    in the environment's PostgreSQL schema."""
    if environment.schema is None:
        database = make_url(environment.database_url).database
        assert database is not None
        path = Path(database).with_name("raw-commits.db")
        rate = await limits.sqlite_commits(path, sizes.limit_s, connections)
    else:
        rate = await limits.postgres_commits(
            environment.database_url, environment.schema, sizes.limit_s, connections
        )
    return {"commits_per_s": rate}


async def software_versions(options: argparse.Namespace, backends: list[str]) -> dict[str, str]:
    versions = {
        "Python": sys.version.split()[0],
        "aio-pika": importlib.metadata.version("aio-pika"),
        "SQLAlchemy": importlib.metadata.version("sqlalchemy"),
    }
    lookups: dict[str, Callable[[], Awaitable[str]]] = {
        "RabbitMQ": lambda: limits.broker_version(options.broker_url)
    }
    if "sqlite" in backends:
        versions["SQLite"] = limits.SQLITE_VERSION
    if "postgres" in backends:
        lookups["PostgreSQL"] = lambda: limits.postgres_version(options.postgres_url)
    for name, lookup in lookups.items():
        try:
            versions[name] = await lookup()
        except Exception as error:  # the scenarios that need it fail and say why
            versions[name] = f"unreachable ({type(error).__name__})"
    return versions


async def run(options: argparse.Namespace, command: str) -> Report:
    sizes = SMOKE if options.smoke else FULL
    if options.sleep_s is not None:
        sizes = dataclasses.replace(sizes, sleep_s=options.sleep_s)
    backends = BACKENDS[options.backend]
    only: set[str] = options.only
    report = Report(
        command=command,
        smoke=options.smoke,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        backends=backends,
        machine=describe_machine(),
        software=await software_versions(options, backends),
    )
    start = time.perf_counter()
    if "broker_limit" in only:
        queue = f"{new_namespace()}.broker-limit"
        await measure(
            report,
            "broker_limit",
            None,
            {"seconds": sizes.limit_s, "in_flight": sizes.in_flight},
            lambda: limits.broker_round_trips(
                options.broker_url, queue, sizes.limit_s, sizes.in_flight
            ),
        )
    if only - {"broker_limit"}:
        for backend in backends:
            try:
                async with open_environment(
                    backend, options.broker_url, options.postgres_url
                ) as environment:
                    await run_backend(report, environment, sizes, only)
            except Exception as error:
                traceback.print_exc()
                report.results.append(
                    Result("environment", backend, {}, error=f"{type(error).__name__}: {error}")
                )
    report.seconds = time.perf_counter() - start
    report.add_fractions()
    report.add_peer_ratios()
    return report


def main(argv: list[str]) -> int:
    # Progress at INFO; Warren's and the libraries' loggers only say what goes wrong.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    options = parse_arguments(argv)
    report = run_event_loop(run(options, shlex.join(["python", "-m", "bench", *argv])))
    print(format_table(report))
    report.write_json(options.json)
    print(f"\nwrote {options.json}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
