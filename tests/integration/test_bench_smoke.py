"""The benchmark's smoke run (`python -m bench --smoke`), so that the benchmark cannot rot:
every scenario, DBOS's included, must run and report finite numbers, positive but for the few
that may be zero."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BROKER_URL

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: Growths, and CPU over a window of a second or two, may be zero (or negative) when all is well.
MAY_BE_ZERO = {
    "rss_growth_mb",
    "rss_drift_mb",
    "idle_cpu_workers_pct",
    "asleep_cpu_workers_pct",
    "asleep_cpu_broker_pct",
    "asleep_cpu_bench_pct",
    "cpu_bench_pct",
}


# A minute alone; longer beside the other tests of a parallel run, which share its CPUs.
@pytest.mark.timeout(330)
def test_the_smoke_run_measures_every_scenario_on_sqlite(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    command = [sys.executable, "-m", "bench", "--smoke", "--backend", "sqlite"]
    command += ["--json", str(output), "--broker-url", BROKER_URL]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"

    report = json.loads(output.read_text())
    measured = {_key(result): result for result in report["results"]}
    assert len(measured) == len(report["results"])
    assert set(measured) == {
        ("broker_limit", None, None),
        ("sql_limit", "sqlite", 1),
        ("sql_limit", "sqlite", 20),
        ("throughput", "sqlite", 1),
        ("throughput", "sqlite", 2),
        ("throughput", "sqlite", 4),
        ("latency", "sqlite", None),
        ("event_latency", "sqlite", None),
        ("sleeping", "sqlite", None),
        ("timers", "sqlite", None),
        ("dbos_throughput", "sqlite", None),
        ("dbos_latency", "sqlite", None),
        ("dbos_event_latency", "sqlite", None),
    }
    for key, result in measured.items():
        assert result["error"] is None, key
        assert result["metrics"], key
        for name, value in result["metrics"].items():
            assert math.isfinite(value), f"{key} {name} = {value}"
            assert value > 0 or name in MAY_BE_ZERO, f"{key} {name} = {value}"
    for workers in (1, 2, 4):
        metrics = measured["throughput", "sqlite", workers]["metrics"]
        assert {"steps_per_s", "broker_limit_pct", "sql_limit_pct"} <= set(metrics)
    # The smoke sizes leave the sleepers a quiet window, so that its CPU is measured.
    sleeping = measured["sleeping", "sqlite", None]["metrics"]
    assert sleeping["asleep_peak"] == 20
    assert {"asleep_cpu_workers_pct", "rss_drift_mb", "parks_per_s"} <= set(sleeping)
    peer = measured["dbos_throughput", "sqlite", None]["metrics"]
    assert {f"warren_ratio_workers_{workers}" for workers in (1, 2, 4)} <= set(peer)
    assert "warren_p50_ratio" in measured["dbos_latency", "sqlite", None]["metrics"]
    assert "7  DBOS throughput" in run.stdout


def _key(result: dict[str, Any]) -> tuple[str, str | None, int | None]:
    """A result's scenario, backend, and worker processes or SQL connections."""
    params = result["params"]
    return result["scenario"], result["backend"], params.get("workers", params.get("connections"))
