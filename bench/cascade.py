"""`python -m bench.cascade`: the delay cascade alone, without Warren's worker or database.

Publishes `--count` messages at `--rate` a second, each due `--delay` seconds after it is
published, through the same cascade the engine uses (processor/broker/topology.py), into a
queue of a fresh namespace, consumes them as they arrive and prints their lateness. A wake-up
passes through one level queue per 1 bit of its delay in ms (a 30 s delay: 7 levels), each a
dead-lettering the broker does on its own, so this is the broker's floor for scenario 4 of
`python -m bench` (the same count, delay and rate as its creation rate) on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import time
from datetime import timedelta

import aio_pika

from processor.broker.topology import DELIVERY_EXCHANGE, Topology, delay_route
from processor.config import broker_url
from processor.runtime import run_event_loop

#: Publishes awaited together: confirms pipelined, as the engine's outbox publishes them.
PUBLISH_WINDOW = 200


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


async def measure(url: str, count: int, rate: float, delay_s: float) -> dict[str, float]:
    topology = Topology(f"bench{secrets.token_hex(6)}")
    target = f"{topology.namespace}.cascade"
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await topology.declare_exchanges(channel)
        queue = await channel.declare_queue(
            target, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(DELIVERY_EXCHANGE, routing_key=f"#.{target}")
        try:
            lateness = await _run(connection, channel, target, count, rate, delay_s)
        finally:
            await queue.delete(if_unused=False, if_empty=False)
    return {
        "count": count,
        "rate_per_s": rate,
        "delay_s": delay_s,
        "levels_passed": bin(round(delay_s * 1000)).count("1"),
        "p50_ms": percentile(lateness, 0.50) * 1000,
        "p99_ms": percentile(lateness, 0.99) * 1000,
        "max_ms": max(lateness) * 1000,
    }


async def _run(
    connection: aio_pika.abc.AbstractConnection,
    channel: aio_pika.abc.AbstractChannel,
    target: str,
    count: int,
    rate: float,
    delay_s: float,
) -> list[float]:
    lateness: list[float] = []
    all_arrived = asyncio.Event()

    async def arrived(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        lateness.append(time.time() - float(json.loads(message.body)["due"]))
        await message.ack()
        if len(lateness) == count:
            all_arrived.set()

    consuming = await connection.channel()
    await consuming.set_qos(prefetch_count=500)
    queue = await consuming.get_queue(target)
    tag = await queue.consume(arrived)
    exchange_name, key = delay_route(timedelta(seconds=delay_s), target)
    exchange = await channel.get_exchange(exchange_name, ensure=False)
    start = time.perf_counter()
    window: list[asyncio.Future[object]] = []
    for n in range(count):
        if (wait := start + n / rate - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        body = json.dumps({"due": time.time() + delay_s}).encode()
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        window.append(asyncio.ensure_future(exchange.publish(message, routing_key=key)))
        if len(window) >= PUBLISH_WINDOW:
            await asyncio.gather(*window)
            window.clear()
    await asyncio.gather(*window)
    await asyncio.wait_for(all_arrived.wait(), delay_s + 600)
    await queue.cancel(tag)  # before the queue is deleted, which would cancel it noisily
    if min(lateness) < -0.002:  # the cascade rounds delays to 1 ms
        raise AssertionError(f"a message arrived early, by {-min(lateness) * 1000:.1f} ms")
    return lateness


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cascade", description=__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0, help="messages published a second")
    parser.add_argument("--delay", type=float, default=30.0, help="seconds each is delayed")
    parser.add_argument("--broker-url", default=None, help="default: WARREN_BROKER_URL")
    options = parser.parse_args()
    url = broker_url(options.broker_url)
    figures = run_event_loop(measure(url, options.count, options.rate, options.delay))
    print(
        f"{figures['count']:,} messages at {figures['rate_per_s']:g}/s, each delayed "
        f"{figures['delay_s']:g} s ({figures['levels_passed']} levels): lateness p50 / p99 / max "
        f"{figures['p50_ms']:,.0f} / {figures['p99_ms']:,.0f} / {figures['max_ms']:,.0f} ms"
    )


if __name__ == "__main__":
    main()
