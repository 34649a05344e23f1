"""A RabbitMQ node and a PostgreSQL cluster of a test's own, to restart, kill, reconfigure or
serve TLS.

The outage scenarios used to restart the machine's shared services, so they had to run alone;
on private ones, on free loopback ports, they run beside every other test. Each service lives
in a temporary directory and is stopped and deleted after the test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import _reachable

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")  # Debian's; /usr/sbin's wrappers drop our env


def _postgres_bin() -> Path | None:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


def missing_for_private_services() -> list[str]:
    """What this machine lacks to run private services: root (to run them as the rabbitmq and
    postgres users) and Debian's RabbitMQ and PostgreSQL packages (scripts/services installs
    them)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        missing.append(str(RABBITMQ_BIN / "rabbitmq-server"))
    if _postgres_bin() is None:
        missing.append("PostgreSQL's initdb")
    return missing


def require_private_services() -> None:
    """Skip the test locally, and fail it in CI, where private services cannot run."""
    if missing := missing_for_private_services():
        reason = "private services need " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


async def run(*command: str, check: bool = True) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    if check and process.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({process.returncode}): {text}")
    return text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _private_directory(owner: str) -> Path:
    directory = Path(tempfile.mkdtemp(prefix=f"warren-{owner}-"))
    shutil.chown(directory, owner, owner)
    return directory


@dataclass(frozen=True)
class ServerCertificate:
    """A server certificate for host name `localhost` (only), signed by a CA of the test's."""

    ca: Path
    certificate: Path
    key: Path

    @classmethod
    def issue(cls, folder: Path, ca_name: str = "warren-test-ca") -> ServerCertificate:
        """A new CA and a certificate it signed, made with openssl in `folder`."""

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        folder.mkdir(parents=True, exist_ok=True)
        ca, ca_key = folder / "ca.pem", folder / "ca.key"
        certificate, key, request = folder / "server.pem", folder / "server.key", folder / "csr"
        extensions = folder / "extensions"
        new_key = ["-newkey", "rsa:2048", "-nodes"]
        openssl("req", "-x509", *new_key, "-days", "1", "-subj", f"/CN={ca_name}",
                "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
        openssl("req", *new_key, "-subj", "/CN=localhost", "-keyout", str(key),
                "-out", str(request))  # fmt: skip
        extensions.write_text(
            "subjectAltName = DNS:localhost\n"
            "basicConstraints = CA:FALSE\n"
            "authorityKeyIdentifier = keyid,issuer\n"
        )
        openssl("x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key),
                "-CAcreateserial", "-days", "1", "-extfile", str(extensions),
                "-out", str(certificate))  # fmt: skip
        return cls(ca, certificate, key)

    def copy_for(self, owner: str, folder: Path) -> ServerCertificate:
        """The files copied into `folder`, owned by the service's user (PostgreSQL refuses a
        key others can read)."""
        copies = []
        for path in (self.ca, self.certificate, self.key):
            copy = folder / path.name
            shutil.copyfile(path, copy)
            shutil.chown(copy, owner, owner)
            copy.chmod(0o600)
            copies.append(copy)
        return ServerCertificate(*copies)


async def _wait(url: str, port: int, reachable: bool, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while _reachable(url, port) != reachable:
        if loop.time() > deadline:
            state = "reachable" if reachable else "unreachable"
            raise AssertionError(f"{url} did not become {state} within {timeout} s")
        await asyncio.sleep(0.1)


class Broker:
    """A RabbitMQ node of the test's own (guest/guest on a free loopback port); with `tls`, it
    listens for amqps only."""

    def __init__(self, tls: ServerCertificate | None = None) -> None:
        self.port = free_port()
        self.node = f"warren-{uuid.uuid4().hex[:8]}@localhost"
        self.directory = _private_directory("rabbitmq")
        if tls is None:
            self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
            listeners = f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
        else:
            self.url = f"amqps://guest:guest@localhost:{self.port}/?cafile={tls.ca}"
            served = tls.copy_for("rabbitmq", self.directory)
            listeners = (
                "listeners.tcp = none\n"
                f"listeners.ssl.default = 127.0.0.1:{self.port}\n"
                f"ssl_options.cacertfile = {served.ca}\n"
                f"ssl_options.certfile = {served.certificate}\n"
                f"ssl_options.keyfile = {served.key}\n"
                "ssl_options.verify = verify_none\n"
                "ssl_options.fail_if_no_peer_cert = false\n"
            )
        (self.directory / "rabbitmq.conf").write_text(listeners)
        (self.directory / "enabled_plugins").write_text("[].\n")  # no management port
        shutil.chown(self.directory / "rabbitmq.conf", "rabbitmq", "rabbitmq")
        shutil.chown(self.directory / "enabled_plugins", "rabbitmq", "rabbitmq")
        self.environment = {
            "HOME": "/var/lib/rabbitmq",  # its Erlang cookie, which rabbitmqctl uses too
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_PID_FILE": str(self.directory / "pid"),
        }

    async def ctl(self, *args: str, check: bool = True) -> str:
        return await run("rabbitmqctl", "-n", self.node, *args, check=check)

    async def eval(self, expression: str) -> str:
        return (await self.ctl("eval", expression)).strip()

    async def start_server(self) -> None:
        settings = [f"{key}={value}" for key, value in self.environment.items()]
        await run(
            "runuser", "-u", "rabbitmq", "--", "env", *settings,
            str(RABBITMQ_BIN / "rabbitmq-server"), "-detached",
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while True:  # await_startup fails at once until the VM answers
            try:
                await self.ctl("await_startup", "--timeout", "60")
                break
            except AssertionError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.5)
        await _wait(self.url, self.port, reachable=True)

    async def stop_app(self) -> None:
        await self.ctl("stop_app")

    async def start_app(self) -> None:
        await self.ctl("start_app")
        await self.ctl("await_startup")

    async def kill(self) -> None:
        """SIGKILL the Erlang VM, as a crash would."""
        pid = (await self.eval("os:getpid().")).strip('"')
        await run("kill", "-9", pid)
        await _wait(self.url, self.port, reachable=False)

    async def shutdown(self) -> None:
        with suppress(AssertionError):
            await self.ctl("stop", check=False)
        shutil.rmtree(self.directory, ignore_errors=True)

    @classmethod
    @asynccontextmanager
    async def running(cls, tls: ServerCertificate | None = None) -> AsyncIterator[Broker]:
        broker = cls(tls)
        try:
            await broker.start_server()
            yield broker
        finally:
            await broker.shutdown()


class Postgres:
    """A PostgreSQL cluster of the test's own (trust auth, database `test`, a free port); with
    `tls`, it refuses connections without TLS. Its `url` does not verify the certificate:
    TLS tests add `?ssl=verify-full` and the CA in PGSSLROOTCERT, as the README says."""

    def __init__(self, tls: ServerCertificate | None = None) -> None:
        binaries = _postgres_bin()
        assert binaries is not None, "call require_private_services() first"
        self.binaries = binaries
        self.port = free_port()
        self.directory = _private_directory("postgres")
        self.data = self.directory / "data"
        self.options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self.tls = tls and tls.copy_for("postgres", self.directory)
        host = "127.0.0.1" if tls is None else "localhost"
        self.url = f"postgresql+asyncpg://postgres@{host}:{self.port}/test"

    async def _as_postgres(self, tool: str, *args: str) -> str:
        return await run("runuser", "-u", "postgres", "--", str(self.binaries / tool), *args)

    async def create(self) -> None:
        await self._as_postgres(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"
        )
        if self.tls is not None:
            served = self.tls
            self.options += f" -c ssl=on -c ssl_cert_file={served.certificate}"
            self.options += f" -c ssl_key_file={served.key}"
            (self.data / "pg_hba.conf").write_text(
                "local all all trust\n"
                "hostssl all all 127.0.0.1/32 trust\n"
                "hostnossl all all 0.0.0.0/0 reject\n"
            )
        await self.start()
        await run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                  "-qc", "CREATE DATABASE test")  # fmt: skip

    async def start(self) -> None:
        await self._as_postgres(
            "pg_ctl", "-D", str(self.data), "-o", self.options,
            "-l", str(self.directory / "log"), "-w", "start",
        )  # fmt: skip
        await _wait(self.url, self.port, reachable=True)

    async def stop(self) -> None:
        """An immediate shutdown: no checkpoint, connections cut, as a crash would."""
        await self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        await _wait(self.url, self.port, reachable=False)

    async def shutdown(self) -> None:
        with suppress(AssertionError):
            await self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    @classmethod
    @asynccontextmanager
    async def running(cls, tls: ServerCertificate | None = None) -> AsyncIterator[Postgres]:
        postgres = cls(tls)
        try:
            await postgres.create()
            yield postgres
        finally:
            await postgres.shutdown()
