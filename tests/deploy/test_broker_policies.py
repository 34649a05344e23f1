"""The Policy resources in k8s/ against the real RabbitMQ: the broker accepts their definitions
(it refuses keys it does not know), and their patterns select the queues Warren declares."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import aio_pika
import pytest

from processor.broker.topology import Topology
from tests.conftest import BROKER_URL, delete_namespace, require
from tests.deploy.manifests import k8s_policies

pytestmark = pytest.mark.integration

WORKFLOW = "ship-order"


def rabbitmqctl(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", *arguments], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def policy_prefix() -> Iterator[str]:
    """A queue namespace of the test's own; policies named after it are cleared afterwards."""
    require(BROKER_URL, 5672, "RabbitMQ")
    if shutil.which("rabbitmqctl") is None:
        reason = "rabbitmqctl is not installed (it comes with the RabbitMQ server)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    namespace = f"t{uuid.uuid4().hex[:12]}"
    yield namespace
    listed = rabbitmqctl("list_policies", "--quiet", "--no-table-headers")
    for line in listed.stdout.splitlines():
        columns = line.split("\t")  # vhost, name, pattern, ...
        if len(columns) > 1 and columns[1].startswith(namespace):
            rabbitmqctl("clear_policy", columns[1])


def test_rabbitmq_refuses_a_policy_key_it_does_not_know(policy_prefix: str) -> None:
    result = rabbitmqctl(
        "set_policy", f"{policy_prefix}-typo", f"^{policy_prefix}$", '{"delivery-limitt": 3}'
    )
    assert result.returncode != 0
    assert "not recognised" in result.stdout + result.stderr


async def test_the_shipped_policies_are_accepted_and_select_the_consuming_queues(
    policy_prefix: str,
) -> None:
    namespace = policy_prefix
    applied = {}
    for name, spec in k8s_policies().items():
        # The same policy, moved onto this test's queue namespace.
        pattern = spec["pattern"].replace("^warren\\.", f"^{namespace}\\.", 1)
        result = rabbitmqctl(
            "set_policy",
            f"{namespace}-{name}",
            pattern,
            json.dumps(spec["definition"]),
            "--apply-to",
            spec["applyTo"],
            "--priority",
            str(spec["priority"]),
        )
        assert result.returncode == 0, result.stdout + result.stderr
        applied[name] = f"{namespace}-{name}"
    topology = Topology(namespace)
    try:
        connection = await aio_pika.connect(BROKER_URL)
        async with connection:
            channel = await connection.channel()
            await topology.declare_exchanges(channel)
            await topology.declare_ingress_queue(channel)
            await topology.declare_run_queues(channel, WORKFLOW)
        listed = rabbitmqctl("list_queues", "--quiet", "--no-table-headers", "name", "policy")
    finally:
        await delete_namespace(namespace, [WORKFLOW])
    policy_of = dict(
        line.split("\t") for line in listed.stdout.splitlines() if line.startswith(f"{namespace}.")
    )
    consuming = applied["warren-consuming-queues"]
    assert policy_of == {
        topology.ingress_queue: consuming,
        topology.run_queue(WORKFLOW): consuming,
        topology.wake_queue(WORKFLOW): consuming,
        f"{topology.ingress_queue}.dead": "",
        f"{topology.run_queue(WORKFLOW)}.dead": "",
        f"{topology.wake_queue(WORKFLOW)}.dead": "",
    }
