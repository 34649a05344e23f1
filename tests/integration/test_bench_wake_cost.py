"""`python -m bench.wake_cost` runs and reports the worker's CPU per woken instance and the
sleeps' lateness (so it cannot rot)."""

from __future__ import annotations

import re

from tests.conftest import BROKER_URL
from tests.integration.bench_tool import run_bench_tool

LINE = re.compile(
    r"^sqlite: 200 sleepers created 400/s: worker CPU ([\d.]+) ms per woken instance; "
    r"wake lateness p50 / p99 / max ([\d,.]+) / ([\d,.]+) / ([\d,.]+) ms$"
)


def test_the_wake_cost_benchmark_measures_cpu_and_lateness() -> None:
    arguments = ["--backend", "sqlite", "--count", "200", "--rate", "400", "--sleep", "3"]
    arguments += ["--broker-url", BROKER_URL]
    output = run_bench_tool("wake_cost", arguments, timeout=180)
    match = LINE.match(output.strip())
    assert match, output
    cpu_ms = float(match.group(1))
    p50, p99, worst = (float(value.replace(",", "")) for value in match.groups()[1:])
    assert cpu_ms > 0
    assert 0 <= p50 <= p99 <= worst
