"""The network-fault proxy does what scenario 16 relies on: forwards bytes, and cuts, resets and
stalls the connections through it (checked against a local echo server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.reliability.proxy import Proxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    through = Proxy(f"tcp://user:secret@127.0.0.1:{port}/path", 0)
    await through.start()
    try:
        yield through
    finally:
        await through.close()
        server.close()
        await server.wait_closed()


async def _connect(proxy: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(proxy.url.rsplit(":", 1)[1].split("/")[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    return reader, writer


async def test_the_url_keeps_everything_but_the_address(proxy: Proxy) -> None:
    assert proxy.url.startswith("tcp://user:secret@127.0.0.1:")
    assert proxy.url.endswith("/path")
    assert proxy.target[1] != int(proxy.url.rsplit(":", 1)[1].split("/")[0])


async def test_a_cut_ends_the_connection_cleanly(proxy: Proxy) -> None:
    reader, writer = await _connect(proxy)
    assert proxy.connections == 1
    proxy.cut()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_reset_resets_the_connection(proxy: Proxy) -> None:
    reader, writer = await _connect(proxy)
    proxy.reset()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(), 5)
    writer.close()


async def test_a_stall_holds_the_bytes_until_it_ends(proxy: Proxy) -> None:
    reader, writer = await _connect(proxy)
    stall = asyncio.create_task(proxy.stall(1.0))
    await asyncio.sleep(0)
    writer.write(b"held")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.5)
    await stall
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
    writer.close()
