"""Restart the real RabbitMQ and PostgreSQL under a test, and always leave them running."""

from __future__ import annotations

import asyncio
import os
import shutil

from tests.conftest import BROKER_URL, POSTGRES_URL, _reachable


async def run(*command: str, check: bool = True) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    if check and process.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({process.returncode}): {text}")
    return text


def can_restart_services() -> bool:
    """Only on a machine where the services are local and ours to restart (root, tools)."""
    return (
        os.geteuid() == 0
        and shutil.which("rabbitmqctl") is not None
        and shutil.which("pg_ctlcluster") is not None
        and "127.0.0.1" in BROKER_URL
        and "127.0.0.1" in POSTGRES_URL
    )


async def wait_reachable(url: str, port: int, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not _reachable(url, port):
        if loop.time() > deadline:
            raise AssertionError(f"{url} did not come back within {timeout} s")
        await asyncio.sleep(0.2)


class Broker:
    """The local RabbitMQ node."""

    async def stop_app(self) -> None:
        await run("rabbitmqctl", "stop_app")

    async def start_app(self) -> None:
        await run("rabbitmqctl", "start_app")
        await run("rabbitmqctl", "await_startup")

    async def kill(self) -> None:
        """SIGKILL the Erlang VM, as a crash would."""
        pid = (await run("rabbitmqctl", "eval", "os:getpid().")).strip().strip('"')
        await run("kill", "-9", pid)
        while _reachable(BROKER_URL, 5672):  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.1)

    async def start_server(self) -> None:
        await run("rabbitmq-server", "-detached", check=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while True:  # await_startup fails at once until the VM answers
            try:
                await run("rabbitmqctl", "await_startup", "--timeout", "60")
                return
            except AssertionError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(1)

    async def ensure_running(self) -> None:
        if not _reachable(BROKER_URL, 5672):
            status = await run("rabbitmqctl", "status", check=False)
            if "rabbit" in status and "Runtime" in status:  # the VM runs, the app does not
                await self.start_app()
            else:
                await self.start_server()
        await wait_reachable(BROKER_URL, 5672)


class Postgres:
    """The local PostgreSQL cluster."""

    def __init__(self) -> None:
        versions = sorted(os.listdir("/etc/postgresql"))
        self.version = versions[-1]

    async def _ctl(self, *args: str) -> None:
        await run(
            "pg_ctlcluster", "--skip-systemctl-redirect", self.version, "main", *args, check=False
        )

    async def stop(self) -> None:
        """An immediate shutdown: no checkpoint, connections cut, as a crash would."""
        await self._ctl("stop", "-m", "immediate")
        while _reachable(POSTGRES_URL, 5432):  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.1)

    async def start(self) -> None:
        await self._ctl("start")
        await wait_reachable(POSTGRES_URL, 5432)

    async def ensure_running(self) -> None:
        if not _reachable(POSTGRES_URL, 5432):
            await self.start()
