"""The benchmark's smoke run (`python -m bench --smoke`), so that the benchmark cannot rot:
every scenario must run and report positive, finite numbers."""

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


def test_the_smoke_run_measures_every_scenario_on_sqlite(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    command = [sys.executable, "-m", "bench", "--smoke", "--backend", "sqlite"]
    command += ["--json", str(output), "--broker-url", BROKER_URL]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=100)
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
        ("latency", "sqlite", None),
        ("event_latency", "sqlite", None),
        ("timers", "sqlite", None),
    }
    for key, result in measured.items():
        assert result["error"] is None, key
        assert result["metrics"], key
        for name, value in result["metrics"].items():
            assert 0 < value < math.inf, f"{key} {name} = {value}"
    for workers in (1, 2):
        metrics = measured["throughput", "sqlite", workers]["metrics"]
        assert {"steps_per_s", "broker_limit_pct", "sql_limit_pct"} <= set(metrics)
    assert set(report["not_yet_measured"]) == {"sleeping_at_scale", "dbos_peer"}
    assert "not yet measured" in run.stdout


def _key(result: dict[str, Any]) -> tuple[str, str | None, int | None]:
    """A result's scenario, backend, and worker processes or SQL connections."""
    params = result["params"]
    return result["scenario"], result["backend"], params.get("workers", params.get("connections"))
