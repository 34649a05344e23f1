"""The `warren` command line, run as a user would: in a subprocess, from another directory."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from processor import Worker
from processor.demo import DemoOrder
from processor.store.database import Database
from tests.conftest import BROKER_URL, delete_namespace, require


def warren(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "processor", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    return {
        "WARREN_BROKER_URL": BROKER_URL,
        "WARREN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db",
        "WARREN_NAMESPACE": f"t{uuid.uuid4().hex[:12]}",
        "WARREN_HTTP_PORT": "off",  # tests on one machine must not race for port 9464
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }


@pytest.fixture
async def demo_worker(cli_env: dict[str, str]) -> AsyncIterator[Worker]:
    require(BROKER_URL, 5672, "RabbitMQ")
    database = Database(cli_env["WARREN_DATABASE_URL"])
    await database.upgrade()
    await database.close()
    worker = Worker(
        [DemoOrder],
        broker_url=BROKER_URL,
        database_url=cli_env["WARREN_DATABASE_URL"],
        namespace=cli_env["WARREN_NAMESPACE"],
    )
    await worker.start()
    yield worker
    await worker.stop()
    await delete_namespace(cli_env["WARREN_NAMESPACE"], [DemoOrder.name])


def test_db_upgrade_works_from_any_directory(tmp_path: Path, cli_env: dict[str, str]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = warren("db", "upgrade", cwd=elsewhere, env=cli_env)
    assert result.returncode == 0, result.stderr
    head = Path(result.stdout.split()[-1]).name  # "... migrated from none to 0004"
    assert "migrated from none to" in result.stdout
    assert (tmp_path / "cli.db").exists()
    again = warren("db", "upgrade", cwd=elsewhere, env=cli_env)
    assert again.returncode == 0, again.stderr
    assert f"is up to date (migration {head})" in again.stdout


@pytest.mark.parametrize(
    ("url", "says"),
    [
        # Nothing listens on port 9 of this machine: refused, for the 10 s a command retries.
        ("postgresql+asyncpg://warren:hunter2@127.0.0.1:9/warren", "[Errno 111]"),
        ("sqlite+aiosqlite:///{tmp}/no/such/directory/x.db", "no/such/directory does not exist"),
        ("postgres://warren:hunter2@127.0.0.1/warren", "Warren runs on sqlite+aiosqlite"),
    ],
)
def test_a_database_that_cannot_be_used_is_one_line_without_its_password(
    tmp_path: Path, cli_env: dict[str, str], url: str, says: str
) -> None:
    env = {**cli_env, "WARREN_DATABASE_URL": url.format(tmp=tmp_path)}
    for command in (["db", "upgrade"], ["status", "some-id"]):
        result = warren(*command, cwd=tmp_path, env=env)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("warren: "), result.stderr
        assert says in result.stderr
        assert "Traceback" not in result.stderr
        assert "hunter2" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_worker_on_an_unmigrated_database_stops_at_once_saying_what_to_run(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    require(BROKER_URL, 5672, "RabbitMQ")
    result = warren("worker", "processor.demo", cwd=tmp_path, env=cli_env)
    assert result.returncode == 1
    assert "warren db upgrade" in result.stderr
    assert not (tmp_path / "cli.db").exists()  # no empty database file left behind


async def test_create_status_send_event_and_list_from_the_command_line(
    tmp_path: Path, cli_env: dict[str, str], demo_worker: Worker
) -> None:
    params = json.dumps({"order_id": "cli-1", "amount_cents": 100})

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return warren(*args, cwd=tmp_path, env=cli_env)

    created = await asyncio.to_thread(
        run, "create", "warren-demo", "--params", params, "--id", "cli-1"
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "cli-1"
    duplicate = await asyncio.to_thread(
        run, "create", "warren-demo", "--params", params, "--id", "cli-1"
    )
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr

    for _ in range(200):
        status = json.loads((await asyncio.to_thread(run, "status", "cli-1", "--json")).stdout)
        if any(s["kind"] == "wait_for_event" for s in status["steps"]):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"the instance never reached its event wait: {status}")

    # --watch redraws the timeline until the instance ends, then exits.
    watch = asyncio.ensure_future(asyncio.to_thread(run, "status", "cli-1", "--watch"))
    sent = await asyncio.to_thread(
        run, "send-event", "cli-1", "approval", "--payload", '{"by": "cli"}'
    )
    assert sent.returncode == 0, sent.stderr
    watched = await watch
    assert watched.returncode == 0, watched.stderr
    table = watched.stdout
    assert "status complete" in table
    # The timeline: step, kind, status, attempts, start, duration (the charge failed once).
    assert re.search(r"^create invoice +do +complete +1 +\+[0-9.]+s +[0-9.]+ ms ", table, re.M)
    assert re.search(r"^charge card +do +complete +2 ", table, re.M)
    assert re.search(r"^cooling-off period +sleep +complete +\+[0-9.]+s +2\.\d\d s ", table, re.M)
    assert re.search(
        r"^manager approval +wait_for_event +complete .* event 'approval'", table, re.M
    )
    listed = await asyncio.to_thread(run, "list", "--status", "complete")
    assert re.search(r"^cli-1 +warren-demo +complete +\d+s +ship \(complete\)", listed.stdout, re.M)
    usage = await asyncio.to_thread(run, "usage", "--workflow", "warren-demo", "--since", "1 hour")
    assert re.search(r"^warren-demo +1 +[0-9.]+ ms ", usage.stdout, re.M), usage.stdout
    bulk = await asyncio.to_thread(run, "create", "warren-demo", "--params", params, "--count", "3")
    assert bulk.returncode == 0, bulk.stderr
    assert len(set(bulk.stdout.split())) == 3


def test_bad_json_params_are_refused_before_anything_is_sent(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    result = warren("create", "warren-demo", "--params", "{not json", cwd=tmp_path, env=cli_env)
    assert result.returncode == 2
    assert "not JSON" in result.stderr
