"""Real OTLP/HTTP export: a process configured only by OTEL_* variables sends its spans to a
small local receiver, as it would to Jaeger's port 4318."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# A stored root span: what an instance row would hold after its creation in another process.
STORED_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
STORED_SPAN_ID = "00f067aa0ba902b7"
STORED_TRACEPARENT = f"00-{STORED_TRACE_ID}-{STORED_SPAN_ID}-01"

EXPORTING_PROCESS = """
import sys
from datetime import timedelta

from processor.telemetry.tracing import (
    instance_parent, instance_span, setup_tracing, step_attempt_span,
)

provider = setup_tracing()
assert provider is not None, "tracing is off"
parent = instance_parent(sys.argv[1])
with instance_span("run demo", instance_id="i-1", workflow="demo", parent=parent):
    with step_attempt_span("charge card", instance_id="i-1", workflow="demo", attempt=2) as attempt:
        attempt.set_outcome("retried", retry_delay=timedelta(seconds=2), error=ValueError("no"))
provider.shutdown()  # flushes the batch
"""


class OtlpReceiver(ThreadingHTTPServer):
    """Accepts POST /v1/traces and keeps the decoded requests."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OtlpHandler)
        self.requests: list[ExportTraceServiceRequest] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _OtlpHandler(BaseHTTPRequestHandler):
    server: OtlpReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces" or self.headers["Content-Type"] != "application/x-protobuf":
            self.send_error(404)
            return
        self.server.requests.append(ExportTraceServiceRequest.FromString(body))
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean


def run_exporting_process(**variables: str) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environment.update(variables, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    subprocess.run(
        [sys.executable, "-c", EXPORTING_PROCESS, STORED_TRACEPARENT],
        cwd=ROOT,
        env=environment,
        check=True,
        timeout=60,
    )


def test_a_process_exports_its_spans_over_otlp_http_when_the_endpoint_is_set(
    receiver: OtlpReceiver,
) -> None:
    run_exporting_process(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_SERVICE_NAME="warren-otlp-test"
    )

    spans = {}
    for request in receiver.requests:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert resource["service.name"] == "warren-otlp-test"
            for scope_spans in resource_spans.scope_spans:
                spans.update({span.name: span for span in scope_spans.spans})
    assert set(spans) == {"run demo", "charge card"}
    run, attempt = spans["run demo"], spans["charge card"]
    # The round continues the instance's stored trace; the attempt nests under the round.
    assert run.trace_id.hex() == attempt.trace_id.hex() == STORED_TRACE_ID
    assert run.parent_span_id.hex() == STORED_SPAN_ID
    assert attempt.parent_span_id == run.span_id
    attributes = {a.key: a.value for a in attempt.attributes}
    assert attributes["warren.instance_id"].string_value == "i-1"
    assert attributes["warren.step"].string_value == "charge card"
    assert attributes["warren.attempt"].int_value == 2
    assert attributes["warren.outcome"].string_value == "retried"
    assert attributes["warren.retry_delay_s"].double_value == 2.0
