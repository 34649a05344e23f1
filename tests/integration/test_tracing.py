"""One trace per instance, across worker processes and a sleep, exported over real OTLP/HTTP.

Worker processes are configured only by OTEL_* variables and export to a small local
receiver, as they would to Jaeger's port 4318. The instance is created by a message that
another service published with a `traceparent`, so its trace continues that service's.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import pytest
import sqlalchemy as sa

from processor.broker.topology import Topology
from processor.store.database import Database
from processor.store.tables import InstanceRow
from tests.conftest import BROKER_URL, TestEnv, assert_eventually
from tests.integration.helpers import created
from tests.integration.test_telemetry_otlp import OtlpReceiver
from tests.integration.traced_workflows import LoggingOrder, SleepyCompute, TracedOrder

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

#: The span of the service that publishes the create message.
CALLER_TRACE_ID = "5b8aa5a2d2c872e8321cf37308d69df2"
CALLER_SPAN_ID = "051581bf3cb55c13"


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, object]
    is_error: bool
    links: list[str]
    worker: str
    children: list[Span] = field(default_factory=list)


def received_spans(receiver: OtlpReceiver) -> list[Span]:
    spans = []
    for request in receiver.requests:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes: dict[str, object] = {}
                    for attribute in span.attributes:
                        value = attribute.value
                        attributes[attribute.key] = getattr(value, value.WhichOneof("value"))
                    spans.append(
                        Span(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes=attributes,
                            is_error=span.status.code == 2,  # STATUS_CODE_ERROR
                            links=[link.span_id.hex() for link in span.links],
                            worker=resource.get("warren.test.worker", "?"),
                        )
                    )
    return spans


def span_tree(spans: list[Span]) -> list[Span]:
    """Link each span to its children (ordered by start); returns the spans without a parent
    among them."""
    by_id = {span.span_id: span for span in spans}
    roots = []
    for span in sorted(spans, key=lambda s: s.start_ns):
        parent = by_id.get(span.parent_id)
        if parent is None:
            roots.append(span)
        else:
            parent.children.append(span)
    return roots


def render(
    span: Span, origin_ns: int, prefix: str = "", is_last: bool = True, is_top: bool = True
) -> Iterator[str]:
    """The tree as text, one span a line; SQL statements are summed up, not listed."""
    branch = "" if is_top else ("└─ " if is_last else "├─ ")
    details = [f"[{span.worker}]", f"+{(span.start_ns - origin_ns) / 1e9:.3f}s"]
    details.append(f"{(span.end_ns - span.start_ns) / 1e6:.1f} ms")
    for key in ("warren.attempt", "warren.outcome", "warren.retry_delay_s", "warren.step_kind"):
        if key in span.attributes:
            details.append(f"{key.removeprefix('warren.')}={span.attributes[key]}")
    if span.is_error:
        details.append("ERROR")
    sql = [child for child in span.children if "db.system" in child.attributes]
    if sql:
        details.append(f"({len(sql)} SQL statements)")
    yield f"{prefix}{branch}{span.name}  {'  '.join(details)}"
    children = [child for child in span.children if "db.system" not in child.attributes]
    for index, child in enumerate(children):
        extension = "" if is_top else ("   " if is_last else "│  ")
        yield from render(
            child, origin_ns, prefix + extension, index == len(children) - 1, is_top=False
        )


@pytest.fixture
async def traced_workers(
    env: TestEnv, receiver: OtlpReceiver
) -> AsyncIterator[Callable[[str], Awaitable[asyncio.subprocess.Process]]]:
    """Start worker processes that export spans to the receiver; all are killed afterwards."""
    processes: list[asyncio.subprocess.Process] = []
    settings = {key: value for key, value in env.settings().items() if value is not None}
    # The worker processes serve every workflow of the module: all their queues go at the end.
    env._workflows.update(workflow.name for workflow in (TracedOrder, SleepyCompute, LoggingOrder))

    async def start(name: str) -> asyncio.subprocess.Process:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        environment.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_SERVICE_NAME="warren-worker",
            OTEL_RESOURCE_ATTRIBUTES=f"warren.test.worker={name}",
            OTEL_BSP_SCHEDULE_DELAY="200",
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration.worker_process",
            json.dumps(settings),
            "tests.integration.traced_workflows",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            env=environment,
        )
        processes.append(process)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line.strip() == b"ready", f"worker process did not start: {line!r}"
        return process

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM: the worker stops gracefully and flushes its last spans."""
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 40) == 0


async def publish_create(env: TestEnv, instance_id: str) -> None:
    """Create the instance as another service would: a message with its own traceparent."""
    connection = await aio_pika.connect(BROKER_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(Topology(env.namespace).ingress_exchange)
        await exchange.publish(
            aio_pika.Message(
                json.dumps({"workflow": TracedOrder.name, "id": instance_id}).encode(),
                content_type="application/json",
                message_id=uuid.uuid4().hex,
                headers={"traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"},
            ),
            routing_key="instance.create",
        )


async def test_an_instance_keeps_one_trace_across_a_retry_a_sleep_and_two_worker_processes(
    env: TestEnv,
    receiver: OtlpReceiver,
    traced_workers: Callable[[str], Awaitable[asyncio.subprocess.Process]],
) -> None:
    first = await traced_workers("A")
    await publish_create(env, "traced-1")
    instance = await created(env.client, "traced-1")

    async def sleeping() -> bool:
        steps = {step.name: step for step in (await instance.status()).steps}
        return "cooling-off" in steps

    await assert_eventually(sleeping, what="the instance to reach its sleep")
    await stop(first)  # the wake-up is taken by the second worker
    second = await traced_workers("B")
    assert await instance.result(timeout=30) == "RESERVED"
    await stop(second)

    spans = received_spans(receiver)
    assert {span.trace_id for span in spans} == {CALLER_TRACE_ID}
    (root,) = span_tree(spans)  # everything hangs off the caller's span
    assert root.parent_id == CALLER_SPAN_ID
    assert root.name == "create traced-order"
    assert root.worker == "A"  # the ingress consumer of the first worker created it
    print("\n".join(render(root, root.start_ns)))  # the README's trace rendering

    rounds = [span for span in root.children if span.name == "run traced-order"]
    assert {span.worker for span in rounds} == {"A", "B"}
    attempts = {
        (span.name, span.attributes["warren.attempt"]): span
        for round_span in rounds
        for span in round_span.children
        if "warren.attempt" in span.attributes
    }
    assert set(attempts) == {("reserve stock", 1), ("reserve stock", 2), ("ship", 1)}
    failed = attempts["reserve stock", 1]
    assert failed.attributes["warren.outcome"] == "retried"
    assert failed.attributes["warren.retry_delay_s"] == 0.5
    assert failed.is_error
    assert attempts["reserve stock", 2].attributes["warren.outcome"] == "completed"
    assert attempts["ship", 1].worker == "B"

    (sleep,) = [span for span in root.children if span.name == "cooling-off"]
    assert sleep.attributes["warren.step_kind"] == "sleep"
    assert sleep.worker == "B"  # recorded by the worker that saw it end
    assert (sleep.end_ns - sleep.start_ns) / 1e9 >= 3.0
    # The consumers' SQL work nests under the rounds.
    assert any("db.system" in child.attributes for child in rounds[0].children)


async def test_instances_created_untraced_get_one_trace_each_from_a_traced_worker(
    env: TestEnv,
    receiver: OtlpReceiver,
    traced_workers: Callable[[str], Awaitable[asyncio.subprocess.Process]],
) -> None:
    """Created by a process that does not trace (or before tracing was turned on): each
    instance's first traced round becomes its root, so its rounds, attempts and waits share
    one trace, and none lands in another instance's (rounds of several share a batch)."""
    await stop(await traced_workers("registers"))  # a create needs the workflow registered
    ids = [f"untraced-{i}" for i in range(8)]
    for instance_id in ids:
        await env.client.create(SleepyCompute, {"compute_ms": 1, "sleep_s": 0.5}, id=instance_id)
    database = Database(env.backend.database_url, schema=env.backend.schema)
    try:
        async with database.transaction() as session:  # as if no creator had traced them
            await session.exec(sa.update(InstanceRow).values(traceparent=None))
    finally:
        await database.close()
    worker = await traced_workers("A")
    for instance_id in ids:
        assert await (await env.client.get(instance_id)).result(timeout=30) > 0
    await stop(worker)

    traces: dict[str, set[str]] = {}
    for span in received_spans(receiver):
        if "warren.instance_id" in span.attributes:
            traces.setdefault(str(span.attributes["warren.instance_id"]), set()).add(span.trace_id)
    assert set(traces) == set(ids)
    assert all(len(trace_ids) == 1 for trace_ids in traces.values()), traces
    assert len({trace_id for trace_ids in traces.values() for trace_id in trace_ids}) == len(ids)
