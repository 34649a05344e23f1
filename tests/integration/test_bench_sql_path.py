"""`python -m bench.sql_path` runs on both backends and reports every way (so it cannot rot)."""

from __future__ import annotations

import re

from tests.conftest import POSTGRES_URL, require
from tests.integration.bench_tool import run_bench_tool

LINE = re.compile(
    r"^(sqlite|postgres) +(orm|core|warren|driver) +worker CPU +([\d.]+) ms/step, "
    r"wall +([\d.]+) ms/step$"
)


def test_the_sql_path_benchmark_measures_every_way_on_both_backends() -> None:
    require(POSTGRES_URL, 5432, "PostgreSQL")
    arguments = ["--steps", "20", "--postgres-url", POSTGRES_URL]
    output = run_bench_tool("sql_path", arguments, timeout=300)
    found = {}
    for line in output.splitlines():
        match = LINE.match(line)
        assert match, line
        found[match[1], match[2]] = (float(match[3]), float(match[4]))
    ways = ("orm", "core", "warren", "driver")
    assert set(found) == {(backend, way) for backend in ("sqlite", "postgres") for way in ways}
    assert all(cpu > 0 and wall > 0 for cpu, wall in found.values())
