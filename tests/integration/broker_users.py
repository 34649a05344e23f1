"""A throwaway vhost on the local broker with the users the README's "Security" section
describes, made with `rabbitmqctl` (the tests run as root, which may use it) and deleted after."""

from __future__ import annotations

import secrets
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from urllib.parse import quote, urlparse

from tests.conftest import BROKER_URL, require, require_tool


def rabbitmqctl(*args: str) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def worker_permission(namespace: str) -> str:
    """What a worker may configure, write and read: its namespace and the shared cascade."""
    return f"^({namespace}|warren\\.delay)\\."


def publisher_write_permission(namespace: str) -> str:
    """All a publisher may do: write to the ingress exchange."""
    return f"^{namespace}\\.ingress$"


@dataclass(frozen=True)
class BrokerUsers:
    """URLs of an administrator, a worker and a publisher-only user on one vhost."""

    vhost: str
    namespace: str
    passwords: dict[str, str]
    urls: dict[str, str]


@contextmanager
def broker_users() -> Iterator[BrokerUsers]:
    require(BROKER_URL, 5672, "RabbitMQ")
    require_tool("rabbitmqctl")
    suffix = uuid.uuid4().hex[:10]
    vhost, namespace = f"warren-test-{suffix}", f"t{suffix}"
    none = "^$"
    permissions = {
        "admin": (".*", ".*", ".*"),
        "worker": (worker_permission(namespace),) * 3,
        "publisher": (none, publisher_write_permission(namespace), none),
    }
    users = {role: f"warren-test-{role}-{suffix}" for role in permissions}
    # Hex: a URL-safe token may start with "-", which rabbitmqctl reads as an option.
    passwords = {role: secrets.token_hex(16) for role in permissions}
    broker = urlparse(BROKER_URL)
    address = f"{broker.hostname}:{broker.port or 5672}"
    urls = {
        role: f"amqp://{users[role]}:{passwords[role]}@{address}/{quote(vhost, safe='')}"
        for role in permissions
    }
    rabbitmqctl("add_vhost", vhost)
    try:
        for role, (configure, write, read) in permissions.items():
            rabbitmqctl("add_user", users[role], passwords[role])
            rabbitmqctl("set_permissions", "-p", vhost, users[role], configure, write, read)
        yield BrokerUsers(vhost, namespace, passwords, urls)
    finally:
        rabbitmqctl("delete_vhost", vhost)
        for user in users.values():
            with suppress(RuntimeError):  # never created
                rabbitmqctl("delete_user", user)
