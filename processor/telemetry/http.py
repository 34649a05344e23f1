"""A tiny HTTP server for probes and scrapes: `/healthz`, `/readyz` and `/metrics`.

Built on asyncio streams rather than a web framework: three GET routes do not justify a
dependency, and the server must share the worker's event loop. Every response closes its
connection (`Connection: close`), which keeps the protocol handling to a request line and
headers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from contextlib import suppress

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("warren.telemetry.http")

#: The worker's port unless WARREN_HTTP_PORT says otherwise (the OpenTelemetry Prometheus
#: exporter's customary port).
DEFAULT_PORT = 9464

#: A client must send its request line and headers within this time, or is disconnected.
REQUEST_TIMEOUT_S = 10.0

#: Header lines read before a request is refused: probes and scrapers send a handful.
MAX_HEADER_LINES = 100

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TEXT = "text/plain; charset=utf-8"


class BadRequestError(Exception):
    """A request this server cannot parse; answered with 400."""


class TelemetryServer:
    """Serves the liveness and readiness probes and the Prometheus metrics.

    - `GET /healthz`: 200 while the process's event loop answers.
    - `GET /readyz`: 200 when every readiness check passes, else 503 naming those that fail.
    - `GET /metrics`: the registry in Prometheus text format.
    - anything else: 404 (or 405 for a method other than GET).
    """

    def __init__(
        self, registry: CollectorRegistry, readiness_checks: Mapping[str, Callable[[], bool]]
    ) -> None:
        """Prepare the server; `start` opens the port.

        Args:
            registry: what `/metrics` renders (`setup_metrics().registry`).
            readiness_checks: named checks, e.g. `{"broker": ..., "database": ...,
                "consuming": ...}`; each must be quick and not block, since it runs on the
                event loop at every probe. A check that raises counts as failing.
        """
        self.registry = registry
        self.readiness_checks = dict(readiness_checks)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        """The bound port (the one picked by the system when started with port 0)."""
        if self._server is None:
            raise RuntimeError("the telemetry server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str = "0.0.0.0", port: int = DEFAULT_PORT) -> int:
        """Listen on `host:port` (0: any free port) and return the bound port."""
        self._server = await asyncio.start_server(self._serve, host, port)
        log.info("serving /healthz, /readyz and /metrics on %s:%d", host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop listening and close the connections still open."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._connections):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            try:
                method, path = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT_S)
            except BadRequestError as error:
                writer.write(_response(400, _TEXT, f"bad request: {error}\n".encode()))
            else:
                status, content_type, body = self._route(method, path)
                writer.write(_response(status, content_type, body))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # the client was too slow or went away: nothing to answer
        finally:
            self._connections.discard(writer)
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()

    def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method != "GET":
            return 405, _TEXT, b"only GET\n"
        if path == "/healthz":
            return 200, _TEXT, b"ok\n"
        if path == "/readyz":
            failing = [name for name, check in self.readiness_checks.items() if not _passes(check)]
            if failing:
                return 503, _TEXT, f"not ready: {', '.join(failing)}\n".encode()
            return 200, _TEXT, b"ready\n"
        if path == "/metrics":
            try:
                return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
            except Exception:
                log.exception("rendering /metrics failed")
                return 500, _TEXT, b"rendering metrics failed; see the worker's log\n"
        return 404, _TEXT, b"not found: try /healthz, /readyz or /metrics\n"


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """Read the request line and skip the headers; returns the method and the path."""
    try:
        request_line = await reader.readline()
        for _ in range(MAX_HEADER_LINES):
            if await reader.readline() in (b"\r\n", b"\n", b""):
                break
        else:
            raise BadRequestError(f"more than {MAX_HEADER_LINES} header lines")
    except ValueError:  # a line over the stream's limit (64 KiB)
        raise BadRequestError("line too long") from None
    parts = request_line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise BadRequestError("expected 'METHOD /path HTTP/1.1'")
    method, target, _version = parts
    return method, target.split("?", 1)[0]


def _passes(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except Exception:
        log.exception("readiness check raised")
        return False


def _response(status: int, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body
