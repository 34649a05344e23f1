"""`python -m bench.cascade` runs and reports the cascade's lateness (so it cannot rot)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import BROKER_URL

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r"^50 messages at 100/s, each delayed 0\.3 s \(4 levels\): "
    r"lateness p50 / p99 / max ([\d,]+) / ([\d,]+) / ([\d,]+) ms$"
)


def test_the_cascade_benchmark_measures_lateness() -> None:
    command = [sys.executable, "-m", "bench.cascade", "--count", "50", "--rate", "100"]
    command += ["--delay", "0.3", "--broker-url", BROKER_URL]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    match = LINE.match(run.stdout.strip())
    assert match, run.stdout
    p50, p99, worst = (int(value.replace(",", "")) for value in match.groups())
    assert 0 <= p50 <= p99 <= worst
