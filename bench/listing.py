"""`python -m bench.listing`: how fast the HTTP API lists instances, page by page, at scale.

Puts N instances (each with three recorded steps) straight into a fresh database of each
backend, then pages through them with `GET /instances` three times: all of them, one status,
one workflow. Every page is one request through the whole app (auth, the Client, both queries,
JSON) in process over httpx, without a network; it prints each page's latency. The listing
must be a keyset range scan on an index (migration 0002), so a deep page costs what the first
does. It also checks that each listing returned every matching instance once, newest first.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx

from bench.environment import Environment, open_environment
from processor import Client, config
from processor.api import ApiConfig, create_app
from processor.store.database import Database
from processor.store.tables import InstanceRow, StepRow

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
#: Seven in ten instances complete, two wait, one errored; two workflows, half each.
STATUSES = ("complete",) * 7 + ("waiting",) * 2 + ("errored",)
WORKFLOWS = ("bench-listing-a", "bench-listing-b")
LISTINGS = {
    "all": "",
    "status=complete": "&status=complete",
    f"workflow={WORKFLOWS[0]}": f"&workflow={WORKFLOWS[0]}",
}
INSERT_BATCH = 1000


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.listing", description=__doc__)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--broker-url", default=config.broker_url())
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    return parser.parse_args(argv)


async def seed(environment: Environment, count: int) -> dict[str, int]:
    """Insert `count` instances with three steps each; returns how many each listing shows."""
    database = Database(environment.database_url, schema=environment.schema)
    start = datetime.now(UTC) - timedelta(days=1)
    expected = dict.fromkeys(LISTINGS, 0)
    try:
        for first in range(0, count, INSERT_BATCH):
            async with database.transaction() as session:
                for i in range(first, min(first + INSERT_BATCH, count)):
                    created = start + timedelta(milliseconds=i)
                    status, workflow = STATUSES[i % len(STATUSES)], WORKFLOWS[i % 2]
                    expected["all"] += 1
                    expected["status=complete"] += status == "complete"
                    expected[f"workflow={WORKFLOWS[0]}"] += workflow == WORKFLOWS[0]
                    session.add(
                        InstanceRow(
                            id=f"listing-{i:06d}",
                            workflow=workflow,
                            status=status,
                            params={"n": i},
                            created_at=created,
                            updated_at=created,
                        )
                    )
                    for seq, name in enumerate(("fetch", "transform", "store")):
                        session.add(
                            StepRow(
                                instance_id=f"listing-{i:06d}",
                                key=name,
                                seq=seq,
                                name=name,
                                kind="do",
                                status="complete",
                                attempt=1,
                                started_at=created,
                                ended_at=created,
                            )
                        )
    finally:
        await database.close()
    return expected


async def page_through(
    http: httpx.AsyncClient, query: str, page_size: int
) -> tuple[list[float], list[str]]:
    """Every page of one listing: the latency of each request (s) and the ids in order."""
    latencies, ids, cursor = [], [], ""
    while True:
        started = time.perf_counter()
        response = await http.get(f"/instances?limit={page_size}{query}{cursor}")
        latencies.append(time.perf_counter() - started)
        response.raise_for_status()
        page = response.json()
        ids += [item["id"] for item in page["instances"]]
        if page["next_cursor"] is None:
            return latencies, ids
        cursor = f"&cursor={page['next_cursor']}"


async def measure(environment: Environment, count: int, page_size: int) -> None:
    expected = await seed(environment, count)
    client = functools.partial(
        Client,
        environment.broker_url,
        environment.database_url,
        namespace=environment.namespace,
        database_schema=environment.schema,
    )
    app = create_app(ApiConfig(auth=False), client)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost"
        ) as http,
    ):
        # Not timed: the first request opens the database pool's connection.
        (await http.get("/instances?limit=1")).raise_for_status()
        for name, query in LISTINGS.items():
            latencies, ids = await page_through(http, query, page_size)
            # Ids are numbered in creation order, so newest first is descending.
            if ids != sorted(set(ids), reverse=True) or len(ids) != expected[name]:
                raise AssertionError(f"{name}: {len(ids)} ids, not {expected[name]} newest first")
            ms = sorted(latency * 1000 for latency in latencies)
            print(
                f"{environment.backend:<9} {name:<26} {len(ids):>6} {len(ms):>5}"
                f" {statistics.median(ms):>8.1f} {ms[int(0.95 * (len(ms) - 1))]:>8.1f}"
                f" {ms[-1]:>8.1f}",
                flush=True,
            )


async def main(argv: list[str]) -> None:
    args = parse_arguments(argv)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    print(f"{args.instances} instances, {args.page_size} per page; latency per page in ms")
    header = ("backend", "listing", "listed", "pages", "p50", "p95", "max")
    print("{:<9} {:<26} {:>6} {:>5} {:>8} {:>8} {:>8}".format(*header))
    for backend in backends:
        async with open_environment(backend, args.broker_url, args.postgres_url) as environment:
            await measure(environment, args.instances, args.page_size)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
