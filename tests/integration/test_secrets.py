"""No password appears in logs, errors or traces (issue 3, "Security"): worker processes run
with passwords in their URLs, at INFO level with console tracing on, and their output is
searched for them."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import asyncpg
import pytest

from processor import Client, InfrastructureError, Workflow, WorkflowEvent, WorkflowStep
from processor.broker import admin
from processor.store.database import Database
from tests.conftest import POSTGRES_URL, require
from tests.integration.broker_users import broker_users, rabbitmqctl

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2]
PASSWORD = f"pw-{secrets.token_hex(8)}"
#: Nothing listens on port 1 on the test machines.
UNREACHABLE = "127.0.0.1:1"


async def greet(name: str) -> str:
    return f"hello {name}"


class Greeter(Workflow[dict[str, Any]]):
    name = "secrets-greeter"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        return await step.do("greet", greet, event.payload["name"])


@dataclass
class Output:
    returncode: int | None
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


class WorkerProcess:
    """`warren -v worker MODULE` with console tracing, its output collected in files."""

    def __init__(self, tmp_path: Path, settings: dict[str, str], module: str) -> None:
        self.stdout_path, self.stderr_path = tmp_path / "stdout", tmp_path / "stderr"
        environment = {
            **os.environ,
            **settings,
            "PYTHONPATH": str(REPOSITORY),
            "OTEL_TRACES_EXPORTER": "console",
            "WARREN_HTTP_PORT": "off",  # tests run in parallel must not race for port 9464
        }
        with self.stdout_path.open("w") as stdout, self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "processor", "-v", "worker", module],
                cwd=tmp_path,
                env=environment,
                stdout=stdout,
                stderr=stderr,
            )

    def output(self) -> Output:
        return Output(
            self.process.poll(), self.stdout_path.read_text(), self.stderr_path.read_text()
        )

    async def wait_for(self, seen: Callable[[Output], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not seen(output := self.output()):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n{output.stderr[-3000:]}")
            await asyncio.sleep(0.1)

    async def stop(self) -> Output:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, 40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
        return self.output()


async def test_a_worker_that_cannot_reach_the_database_or_broker_never_shows_the_password(
    tmp_path: Path,
) -> None:
    worker = WorkerProcess(
        tmp_path,
        {
            "WARREN_DATABASE_URL": f"postgresql+asyncpg://warren:{PASSWORD}@{UNREACHABLE}/warren",
            "WARREN_BROKER_URL": f"amqp://warren:{PASSWORD}@{UNREACHABLE}/",
        },
        "processor.demo",
    )
    # It tries the database for 60 s (a worker may start before its database), then gives up.
    await worker.wait_for(lambda out: out.returncode is not None, 120, "the worker to give up")
    output = await worker.stop()

    assert output.returncode != 0
    assert "warren: cannot use the database at postgresql+asyncpg://warren:***@" in output.stderr
    # It did say what went wrong (asyncio's words, or uvloop's)...
    assert "Connect call failed" in output.stderr or "Connection refused" in output.stderr
    assert PASSWORD not in output.text  # ...without the password


@pytest.fixture
async def unmigrated_postgres_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database, with a password in its URL (the test server trusts
    local connections, so the password is accepted and ignored)."""
    require(POSTGRES_URL, 5432, "PostgreSQL")
    server = urlparse(POSTGRES_URL.replace("+asyncpg", ""))
    name = f"warren_secrets_{uuid.uuid4().hex[:8]}"
    admin_dsn = POSTGRES_URL.replace("+asyncpg", "")
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+asyncpg://{server.username}:{PASSWORD}@{server.netloc.split('@')[-1]}/{name}"
        await connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def test_the_unmigrated_database_error_shows_the_url_without_its_password(
    tmp_path: Path, unmigrated_postgres_url: str
) -> None:
    worker = WorkerProcess(
        tmp_path,
        {
            "WARREN_DATABASE_URL": unmigrated_postgres_url,
            "WARREN_BROKER_URL": f"amqp://warren:{PASSWORD}@{UNREACHABLE}/",
        },
        "processor.demo",
    )
    await worker.wait_for(lambda out: out.returncode is not None, 60, "the worker to stop")
    output = await worker.stop()

    assert output.returncode == 1
    user = urlparse(POSTGRES_URL.replace("+asyncpg", "")).username
    assert f"warren: the database at postgresql+asyncpg://{user}:***@" in output.stderr
    assert PASSWORD not in output.text


async def test_broker_reconnects_and_traced_work_never_show_the_password(tmp_path: Path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path}/warren.db"
    database = Database(database_url)
    await database.upgrade()
    await database.close()
    with broker_users() as users:
        url, password = users.urls["worker"], users.passwords["worker"]
        user = urlparse(url).username
        settings = {
            "WARREN_BROKER_URL": url,
            "WARREN_DATABASE_URL": database_url,
            "WARREN_NAMESPACE": users.namespace,
        }
        worker = WorkerProcess(tmp_path, settings, __name__)
        try:
            await worker.wait_for(lambda out: "INFO warren.worker" in out.stderr, 60, "start")
            # The broker drops the worker's connection: aio-pika logs the URL as it reconnects.
            for line in rabbitmqctl("list_connections", "pid", "user").splitlines():
                pid, _, owner = line.partition("\t")
                if owner == user:
                    rabbitmqctl("close_connection", pid, "closed by test_secrets")
            await worker.wait_for(lambda out: "Reconnecting" in out.stderr, 30, "a reconnect")
            async with Client(url, database_url, namespace=users.namespace) as client:
                instance = await client.create(Greeter, {"name": "ann"})
                assert await instance.result(timeout=30) == "hello ann"
        finally:
            output = await worker.stop()

    assert f"{user}:******@" in output.stderr  # the URL was logged, masked
    assert password not in output.text


async def test_an_operator_command_that_cannot_connect_shows_the_url_without_its_password() -> None:
    with pytest.raises(InfrastructureError) as raised:
        await admin.connect(f"amqp://warren:{PASSWORD}@{UNREACHABLE}/")

    assert f"amqp://warren:***@{UNREACHABLE}/" in str(raised.value)
    assert PASSWORD not in str(raised.value)
