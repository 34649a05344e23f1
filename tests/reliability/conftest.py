"""The reliability suite's fixtures and its summary table (printed after the run)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from pathlib import Path

import pluggy
import pytest

from tests.conftest import POSTGRES_URL, TestEnv
from tests.reliability.harness import REPORTS, Fleet
from tests.reliability.workflows import WORKFLOWS
from tests.services import Postgres, missing_for_private_services


@pytest.fixture
async def postgres_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """Each scenario on PostgreSQL gets a cluster of its own where the machine can run one
    (tests/services.py): three scenarios at once, each with its workers' connection pools, need
    more connections than a default cluster's 100. Elsewhere, one at a time, the shared one.
    (`backend` asks for this fixture on SQLite too: no cluster is started then.)"""
    callspec = getattr(request.node, "callspec", None)
    on_postgres = callspec is not None and callspec.params.get("backend") == "postgres"
    if not on_postgres or missing_for_private_services():
        yield POSTGRES_URL
        return
    async with Postgres.running() as postgres:
        yield postgres.url


@pytest.fixture
async def fleet(env: TestEnv, tmp_path: Path) -> AsyncIterator[Fleet]:
    settings = {key: value for key, value in env.settings().items() if value is not None}
    env._workflows.update(WORKFLOWS)
    workers = Fleet(settings, "tests.reliability.workflows", tmp_path)
    try:
        yield workers
    finally:
        await workers.close()


#: The table's rows, gathered from the test reports: under pytest-xdist the scenarios run in
#: worker processes, and only their test reports reach the process that prints the summary.
ROWS: list[tuple[str, ...]] = []
ROW_PROPERTY = "reliability row"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport() -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    """Move the rows the test's scenario added to REPORTS onto its test report."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        for r in REPORTS:
            row = (r.scenario, r.instances, r.faults, r.lost, r.double_applied)
            row += (r.extra_executions, r.unexplained, r.dead_lettered)
            report.user_properties.append((ROW_PROPERTY, tuple(str(cell) for cell in row)))
        REPORTS.clear()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    ROWS.extend(tuple(value) for name, value in report.user_properties if name == ROW_PROPERTY)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
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
    rows = [header, *ROWS]
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
