"""`python -m bench.wake_cost` runs and reports the worker's CPU per woken instance and the
sleeps' lateness (so it cannot rot)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import BROKER_URL

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r"^sqlite: 200 sleepers created 400/s: worker CPU ([\d.]+) ms per woken instance; "
    r"wake lateness p50 / p99 / max ([\d,.]+) / ([\d,.]+) / ([\d,.]+) ms$"
)


def test_the_wake_cost_benchmark_measures_cpu_and_lateness() -> None:
    command = [sys.executable, "-m", "bench.wake_cost", "--backend", "sqlite", "--count", "200"]
    command += ["--rate", "400", "--sleep", "3", "--broker-url", BROKER_URL]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    match = LINE.match(run.stdout.strip())
    assert match, run.stdout
    cpu_ms = float(match.group(1))
    p50, p99, worst = (float(value.replace(",", "")) for value in match.groups()[1:])
    assert cpu_ms > 0
    assert 0 <= p50 <= p99 <= worst
