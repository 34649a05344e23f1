"""`python -m bench.sql_path` runs on both backends and reports every way (so it cannot rot)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import POSTGRES_URL, require

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r"^(sqlite|postgres) +(orm|core|warren|driver) +worker CPU +([\d.]+) ms/step, "
    r"wall +([\d.]+) ms/step$"
)


def test_the_sql_path_benchmark_measures_every_way_on_both_backends() -> None:
    require(POSTGRES_URL, 5432, "PostgreSQL")
    command = [sys.executable, "-m", "bench.sql_path", "--steps", "20"]
    command += ["--postgres-url", POSTGRES_URL]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    found = {}
    for line in run.stdout.splitlines():
        match = LINE.match(line)
        assert match, line
        found[match[1], match[2]] = (float(match[3]), float(match[4]))
    ways = ("orm", "core", "warren", "driver")
    assert set(found) == {(backend, way) for backend in ("sqlite", "postgres") for way in ways}
    assert all(cpu > 0 and wall > 0 for cpu, wall in found.values())
