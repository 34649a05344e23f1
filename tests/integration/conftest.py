"""Fixtures shared by the integration tests of one kind or another."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.integration.test_telemetry_otlp import OtlpReceiver


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    """A local OTLP/HTTP endpoint that keeps the trace exports it receives."""
    server = OtlpReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
