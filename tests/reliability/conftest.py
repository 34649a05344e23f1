"""The reliability suite's fixtures and its summary table (printed after the run)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import TestEnv
from tests.reliability.harness import REPORTS, Fleet
from tests.reliability.workflows import WORKFLOWS


@pytest.fixture
async def fleet(env: TestEnv, tmp_path: Path) -> AsyncIterator[Fleet]:
    settings = {key: value for key, value in env.settings().items() if value is not None}
    env._workflows.update(WORKFLOWS)
    workers = Fleet(settings, "tests.reliability.workflows", tmp_path)
    try:
        yield workers
    finally:
        await workers.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORTS:
        return
    header = (
        "scenario",
        "instances",
        "faults",
        "lost",
        "double-applied",
        "extra exec.",
        "unexplained",
        "dead-lettered",
    )
    rows = [header] + [
        (
            r.scenario,
            str(r.instances),
            str(r.faults),
            str(r.lost),
            str(r.double_applied),
            str(r.extra_executions),
            str(r.unexplained),
            str(r.dead_lettered),
        )
        for r in REPORTS
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    terminalreporter.section("reliability")
    for index, row in enumerate(rows):
        terminalreporter.write_line(
            "| "
            + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + " |"
        )
        if index == 0:
            terminalreporter.write_line("|" + "|".join("-" * (w + 2) for w in widths) + "|")
