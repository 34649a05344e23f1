"""The probe and metrics port over a real socket, as Kubernetes and Prometheus talk to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from processor.telemetry.http import TelemetryServer
from processor.telemetry.metrics import Metrics, setup_metrics

pytestmark = pytest.mark.integration


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: str


@dataclass
class Probed:
    server: TelemetryServer
    metrics: Metrics
    health: dict[str, bool] = field(default_factory=lambda: {"broker": True, "database": True})

    async def send(self, raw: bytes) -> Response:
        """Send raw bytes and read the response until the server closes the connection."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        writer.write(raw)
        await writer.drain()
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        head, _, body = data.decode().partition("\r\n\r\n")
        status_line, *header_lines = head.split("\r\n")
        headers = dict(line.split(": ", 1) for line in header_lines)
        assert int(headers["Content-Length"]) == len(body.encode())
        return Response(int(status_line.split()[1]), headers, body)

    async def get(self, path: str) -> Response:
        return await self.send(f"GET {path} HTTP/1.1\r\nHost: worker\r\n\r\n".encode())


@pytest.fixture
async def probed() -> AsyncIterator[Probed]:
    metrics = setup_metrics()
    health: dict[str, bool] = {"broker": True, "database": True}
    server = TelemetryServer(
        metrics.registry,
        {"broker": lambda: health["broker"], "database": lambda: health["database"]},
    )
    await server.start("127.0.0.1", 0)
    try:
        yield Probed(server, metrics, health)
    finally:
        await server.stop()


async def test_port_zero_binds_a_free_port(probed: Probed) -> None:
    assert probed.server.port > 0


async def test_healthz_answers_ok(probed: Probed) -> None:
    response = await probed.get("/healthz?probe=liveness")

    assert (response.status, response.body) == (200, "ok\n")
    assert response.headers["Connection"] == "close"


async def test_readyz_follows_the_readiness_checks(probed: Probed) -> None:
    assert (await probed.get("/readyz")).status == 200

    probed.health["broker"] = False
    not_ready = await probed.get("/readyz")
    probed.health["database"] = False
    neither = await probed.get("/readyz")
    probed.health.update(broker=True, database=True)
    ready_again = await probed.get("/readyz")

    assert (not_ready.status, not_ready.body) == (503, "not ready: broker\n")
    assert (neither.status, neither.body) == (503, "not ready: broker, database\n")
    assert (ready_again.status, ready_again.body) == (200, "ready\n")


async def test_a_readiness_check_that_raises_counts_as_failing() -> None:
    def broken() -> bool:
        raise ConnectionError("pool closed")

    server = TelemetryServer(setup_metrics().registry, {"database": broken})
    await server.start("127.0.0.1", 0)
    try:
        response = await Probed(server, setup_metrics()).get("/readyz")
    finally:
        await server.stop()

    assert (response.status, response.body) == (503, "not ready: database\n")


async def test_metrics_shows_the_instruments_once_used(probed: Probed) -> None:
    before = await probed.get("/metrics")
    probed.metrics.step_started("ship-order")
    probed.metrics.step_ended("ship-order", "completed", 0.01)
    probed.metrics.set_instance_counts({"running": 2})
    after = await probed.get("/metrics")

    assert before.status == after.status == 200
    assert after.headers["Content-Type"].startswith("text/plain; version=")
    assert "warren_steps_started_total" not in before.body
    assert 'warren_steps_started_total{workflow="ship-order"} 1.0' in after.body
    assert 'warren_steps_completed_total{workflow="ship-order"} 1.0' in after.body
    assert 'warren_instances{status="running"} 2.0' in after.body
    assert "# TYPE warren_step_duration_seconds histogram" in after.body


async def test_an_unknown_path_is_404_and_another_method_405(probed: Probed) -> None:
    assert (await probed.get("/nope")).status == 404
    assert (await probed.send(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")).status == 405


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS ClientHello
        b"GET\r\n\r\n",
        b"GET /healthz\r\n\r\n",
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",  # over the stream's line limit
        b"GET /healthz HTTP/1.1\r\n" + b"X-Filler: 1\r\n" * 200 + b"\r\n",
    ],
)
async def test_a_garbage_request_gets_400_and_the_server_keeps_serving(
    probed: Probed, garbage: bytes
) -> None:
    response = await probed.send(garbage)

    assert response.status == 400
    assert (await probed.get("/healthz")).status == 200


async def test_a_client_that_hangs_up_at_once_does_not_stop_the_server(probed: Probed) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", probed.server.port)
    writer.close()
    await writer.wait_closed()

    assert (await probed.get("/healthz")).status == 200


async def test_a_silent_client_neither_blocks_others_nor_stop(probed: Probed) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", probed.server.port)

    assert (await probed.get("/healthz")).status == 200
    await asyncio.wait_for(probed.server.stop(), timeout=5)
    assert await asyncio.wait_for(reader.read(), timeout=5) == b""  # closed by the server
    writer.close()
