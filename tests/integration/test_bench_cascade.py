"""`python -m bench.cascade` runs and reports the cascade's lateness (so it cannot rot)."""

from __future__ import annotations

import re

from tests.conftest import BROKER_URL
from tests.integration.bench_tool import run_bench_tool

LINE = re.compile(
    r"^50 messages at 100/s, each delayed 0\.3 s \(4 levels\): "
    r"lateness p50 / p99 / max ([\d,]+) / ([\d,]+) / ([\d,]+) ms$"
)


def test_the_cascade_benchmark_measures_lateness() -> None:
    arguments = ["--count", "50", "--rate", "100", "--delay", "0.3", "--broker-url", BROKER_URL]
    output = run_bench_tool("cascade", arguments, timeout=120)
    match = LINE.match(output.strip())
    assert match, output
    p50, p99, worst = (int(value.replace(",", "")) for value in match.groups())
    assert 0 <= p50 <= p99 <= worst
