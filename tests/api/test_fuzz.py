"""Schemathesis fuzzes the running API from its OpenAPI document and must find no server error.

The path parameters are pinned to a real workflow and instance, so the generated requests
reach the engine (creates, events, pause, terminate, restart) instead of stopping at a 404;
malformed ids are tested in test_api.py.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.api.conftest import WRITE, Other
from tests.conftest import TestEnv

pytestmark = pytest.mark.integration

#: Test cases per operation in the fuzzing phase; the coverage phase adds its own edge cases.
EXAMPLES = 10


# PostgreSQL only, to keep the suite quick: it is the stricter store (NUL bytes, column widths).
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_schemathesis_finds_no_server_error(
    env: TestEnv, server: str, tmp_path: Path
) -> None:
    # Registered, then no worker: the server alone is under test, and fast.
    await env.stop_worker(await env.start_worker(Other))
    await env.client.create(Other, {}, id="fuzzed")
    settings = tmp_path / "schemathesis.toml"
    settings.write_text(
        f'headers = {{ Authorization = "Bearer {WRITE}" }}\n'
        "[parameters]\n"
        'instance_id = "fuzzed"\n'
        'workflow = "api-other"\n'
    )
    schemathesis = Path(sys.executable).with_name("schemathesis")
    process = await asyncio.create_subprocess_exec(
        str(schemathesis),
        "--config-file",
        str(settings),
        "run",
        f"{server}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--phases",
        "coverage,fuzzing",
        "--max-examples",
        str(EXAMPLES),
        "--generation-database",
        "none",
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    output, _ = await process.communicate()
    report = output.decode()
    assert process.returncode == 0, report
    assert "passed" in report
