"""A running worker's probes and metrics, and compute-time metering of its instances."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from processor import InfrastructureError, Worker
from processor.telemetry.logs import JsonFormatter
from tests.conftest import TestEnv, assert_eventually
from tests.integration.helpers import open_wire
from tests.integration.traced_workflows import LoggingOrder, SleepyCompute, TracedOrder

pytestmark = pytest.mark.integration


async def http_get(port: int, path: str) -> tuple[int, str]:
    """GET a path on the worker's telemetry port: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: worker\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


def port_of(worker: Worker) -> int:
    port = worker.telemetry_port
    assert port is not None
    return port


async def test_a_running_worker_is_ready_and_serves_its_metrics(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("processor.worker.GAUGE_REFRESH_S", 0.2)
    worker = await env.start_worker(TracedOrder, http_port=0, http_host="127.0.0.1")
    port = port_of(worker)
    assert await http_get(port, "/healthz") == (200, "ok\n")
    assert await http_get(port, "/readyz") == (200, "ready\n")

    instance = await env.client.create(TracedOrder)
    assert await instance.result(timeout=30) == "RESERVED"
    async with open_wire(env) as wire:
        await wire.publish("instance.create", b"{not json")

    flow = 'workflow="traced-order"'
    expected = [
        f"warren_steps_started_total{{{flow}}} 3.0",  # reserve stock twice, ship once
        f"warren_steps_completed_total{{{flow}}} 2.0",
        f"warren_steps_retried_total{{{flow}}} 1.0",
        f'warren_step_duration_seconds_count{{outcome="retried",{flow}}} 1.0',
        f"warren_replay_duration_seconds_count{{{flow}}}",
        f"warren_timer_lateness_seconds_count{{{flow}}} 2.0",  # the back-off and the sleep
        'warren_instances{status="complete"} 1.0',
        "warren_outbox_backlog ",
        f'warren_messages_dead_lettered_total{{queue="{env.namespace}.ingress",'
        'reason="not_json"} 1.0',
    ]

    async def metrics_show_everything() -> bool:
        status, body = await http_get(port, "/metrics")
        missing = [line for line in expected if line not in body]
        print(f"missing from /metrics: {missing}\n{body}")  # shown if the wait fails
        return status == 200 and not missing

    await assert_eventually(metrics_show_everything, what="the metrics")

    await env.stop_worker(worker)
    with pytest.raises(ConnectionRefusedError):
        await http_get(port, "/healthz")


async def test_readiness_fails_once_the_worker_stops_consuming(env: TestEnv) -> None:
    worker = await env.start_worker(TracedOrder, http_port=0, http_host="127.0.0.1")
    port = port_of(worker)
    await worker._stop_consuming()  # as it does during a database outage

    assert await http_get(port, "/readyz") == (503, "not ready: consuming\n")
    assert (await http_get(port, "/healthz"))[0] == 200


async def test_a_worker_without_a_port_serves_nothing(env: TestEnv) -> None:
    worker = await env.start_worker(TracedOrder)
    assert worker.telemetry_port is None


async def test_an_instance_that_sleeps_5_s_and_computes_50_ms_is_charged_about_50_ms(
    env: TestEnv,
) -> None:
    await env.start_worker(SleepyCompute)
    before = datetime.now(UTC) - timedelta(seconds=1)
    instance = await env.client.create(SleepyCompute, {"compute_ms": 50, "sleep_s": 5})
    assert await instance.result(timeout=30) == 50

    status = await instance.status()
    # The 50 ms step body plus the replays (a few ms each), never the 5 s asleep.
    assert 50 <= status.compute_ms < 1000, status.compute_ms
    assert 0 < status.cpu_ms <= status.compute_ms  # a busy loop in a plain function
    assert status.wall_ms >= 5000
    (usage,) = await env.client.usage(workflow=SleepyCompute.name, since=before)
    assert usage.instances == 1
    assert usage.compute_ms == pytest.approx(status.compute_ms)
    assert usage.wall_ms == pytest.approx(status.wall_ms, abs=1)
    assert await env.client.usage(since=datetime.now(UTC) + timedelta(hours=1)) == []


async def test_logs_written_by_a_step_body_carry_its_instance_workflow_and_step(
    env: TestEnv,
) -> None:
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.shop")
    logger.addHandler(handler)
    try:
        await env.start_worker(LoggingOrder)
        instance = await env.client.create(LoggingOrder)
        await instance.result(timeout=30)
    finally:
        logger.removeHandler(handler)

    (entry,) = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert entry["message"] == "charging the card"
    assert entry["instance_id"] == instance.id
    assert entry["workflow"] == "logging-order"
    assert entry["step"] == "log progress"


async def test_a_taken_port_stops_the_worker_saying_which(env: TestEnv) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(InfrastructureError, match=f"127.0.0.1:{port}"):
            await env.start_worker(TracedOrder, http_port=port, http_host="127.0.0.1")
    finally:
        server.close()
        await server.wait_closed()
