"""A TCP proxy on loopback between worker processes and the broker or the database. It cuts
(FIN), resets (RST) and stalls the connections through it, as a flaky network would."""

from __future__ import annotations

import asyncio
import socket
import struct
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class Proxy:
    """Forwards every connection to `host:port`; `url` is the same URL through the proxy."""

    def __init__(self, url: str, default_port: int) -> None:
        parts = urlsplit(url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or default_port)
        self._parts = parts
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        user = f"{self._parts.username}@" if self._parts.username else ""
        if self._parts.password:
            user = f"{self._parts.username}:{self._parts.password}@"
        self.url = urlunsplit(self._parts._replace(netloc=f"{user}127.0.0.1:{port}"))

    async def close(self) -> None:
        self._flowing.set()
        if self._server is not None:
            self._server.close()
        self.cut()
        # Until every connection's pumps have closed both its sockets: a socket left to the
        # garbage collector after the test's event loop is gone warns in whichever test runs
        # next.
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def connections(self) -> int:
        return len(self._links)

    def cut(self) -> None:
        """Close every connection through the proxy, both ways, as a peer would."""
        for link in list(self._links):
            for writer in link:
                writer.close()

    def reset(self) -> None:
        """Reset every connection (RST, no goodbye), as a dropped route or a crash would."""
        for link in list(self._links):
            for writer in link:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                writer.transport.abort()

    async def stall(self, seconds: float) -> None:
        """Hold every byte in either direction for `seconds`, connections left open."""
        self._flowing.clear()
        try:
            await asyncio.sleep(seconds)
        finally:
            self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            except OSError:
                writer.close()
                return
            link = (writer, upstream_writer)
            self._links.add(link)
            try:
                await asyncio.gather(
                    self._pump(reader, upstream_writer), self._pump(upstream_reader, writer)
                )
            finally:
                self._links.discard(link)
        finally:
            self._handlers.discard(handler)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction until either side goes away, then close the other side too."""
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass  # a reset or a cut: the other side learns of it below
        finally:
            writer.close()
