"""`python -m bench.sql_path`: what one step's SQL costs the worker, four ways.

A step is one transaction on the worker (DESIGN.md, Message flow; engine/rounds.py): the round
that takes the report of the step before, records it, replays and claims the next (lock the
instance, load its steps, update the two steps and the instance). This runs that same sequence
of statements against one instance of ten recorded steps, N times, on a migrated database:

- `orm`: through SQLAlchemy's ORM session, as the engine did before store/driver.py (and as
  commands and sweeps still do);
- `core`: the same statements as SQLAlchemy Core on one connection;
- `warren`: through `store.driver` (Core statements compiled once, run on the driver, rows as
  table models), as the engine does now;
- `driver`: the same SQL text on the driver itself (asyncpg, or aiosqlite): the floor.

It prints the worker's CPU time and the wall time per step for each (see the README,
Performance).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import aiosqlite
import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa

from processor.runtime import run_event_loop
from processor.store import driver, queries
from processor.store.database import Database
from processor.store.tables import InstanceRow, StepRow

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
INSTANCE = "sql-path"
STEPS = 10
LAST = f"s{STEPS - 1}"
#: The step whose report the round records (it then claims LAST).
PREVIOUS = f"s{STEPS - 2}"
WARMUP = 100

INSTANCES: Any = sa.inspect(InstanceRow).local_table
STEP_ROWS: Any = sa.inspect(StepRow).local_table


def now() -> datetime:
    return datetime.now(UTC)


async def orm_step(database: Database, attempt: int) -> None:
    async with database.transaction() as session:
        instance = await queries.lock_instance(session, INSTANCE)
        assert instance is not None
        steps = await queries.load_steps(session, INSTANCE)
        steps[-2].status, steps[-2].output = "complete", {"attempt": attempt}
        steps[-1].attempt, steps[-1].status, steps[-1].claimed_by = attempt, "running", "w"
        instance.updated_at, instance.run_due_at = now(), None
        instance.compute_ms += 1


async def warren_step(database: Database, attempt: int) -> None:
    async with database.driver_transaction() as session:
        instance = (await driver.lock_instances(session, [INSTANCE]))[INSTANCE]
        steps = (await driver.load_steps_of(session, [INSTANCE]))[INSTANCE]
        steps[-2].status, steps[-2].output = "complete", {"attempt": attempt}
        steps[-1].attempt, steps[-1].status, steps[-1].claimed_by = attempt, "running", "w"
        instance.updated_at, instance.run_due_at = now(), None
        instance.compute_ms += 1


LOCK = sa.select(INSTANCES).where(INSTANCES.c.id == sa.bindparam("row_id")).with_for_update()
LOAD_IN_ORDER = (
    sa.select(STEP_ROWS)
    .where(STEP_ROWS.c.instance_id == sa.bindparam("row_id"))
    .order_by(STEP_ROWS.c.seq)
)
UPDATE_STEP = sa.update(STEP_ROWS).where(
    STEP_ROWS.c.instance_id == sa.bindparam("row_id"), STEP_ROWS.c.key == sa.bindparam("step_key")
)
COMPLETE_STEP = UPDATE_STEP.values(status="complete", output=sa.bindparam("output"))
CLAIM_STEP = UPDATE_STEP.values(
    attempt=sa.bindparam("attempt"), status="running", claimed_by=sa.bindparam("worker")
)
ADVANCE_INSTANCE = (
    sa.update(INSTANCES)
    .where(INSTANCES.c.id == sa.bindparam("row_id"))
    .values(
        updated_at=sa.bindparam("now"),
        run_due_at=None,
        compute_ms=INSTANCES.c.compute_ms + sa.bindparam("spent"),
    )
)


async def core_step(database: Database, attempt: int) -> None:
    async with database.engine.begin() as conn:
        (await conn.execute(LOCK, {"row_id": INSTANCE})).one()
        (await conn.execute(LOAD_IN_ORDER, {"row_id": INSTANCE})).all()
        reported = {"row_id": INSTANCE, "step_key": PREVIOUS, "output": {"attempt": attempt}}
        await conn.execute(COMPLETE_STEP, reported)
        claimed = {"row_id": INSTANCE, "step_key": LAST, "attempt": attempt, "worker": "w"}
        await conn.execute(CLAIM_STEP, claimed)
        await conn.execute(ADVANCE_INSTANCE, {"row_id": INSTANCE, "now": now(), "spent": 1.0})


#: The driver-level SQL, with $n parameters (rewritten to ? for SQLite).
DRIVER_STEP = (
    ("one", "SELECT * FROM warren_instances WHERE id = $1 FOR UPDATE", ("id",)),
    ("all", "SELECT * FROM warren_steps WHERE instance_id = $1 ORDER BY seq", ("id",)),
    (
        "run",
        "UPDATE warren_steps SET status = 'complete', output = $3 "
        "WHERE instance_id = $1 AND key = $2",
        ("id", "previous", "output"),
    ),
    (
        "run",
        "UPDATE warren_steps SET attempt = $3, status = 'running', claimed_by = 'w' "
        "WHERE instance_id = $1 AND key = $2",
        ("id", "key", "attempt"),
    ),
    (
        "run",
        "UPDATE warren_instances SET updated_at = $2, run_due_at = NULL, "
        "compute_ms = compute_ms + 1 WHERE id = $1",
        ("id", "now"),
    ),
)


def driver_values(names: tuple[str, ...], attempt: int, sqlite: bool) -> list[Any]:
    moment = now()
    values = {
        "id": INSTANCE,
        "key": LAST,
        "previous": PREVIOUS,
        "attempt": attempt,
        "output": json.dumps({"attempt": attempt}),
        # SQLite stores naive UTC (tables.UTCDateTime); asyncpg takes aware datetimes.
        "now": moment.replace(tzinfo=None).isoformat(" ") if sqlite else moment,
    }
    return [values[name] for name in names]


def postgres_driver(connection: asyncpg.Connection) -> Callable[[int], Awaitable[None]]:
    async def step(attempt: int) -> None:
        async with connection.transaction():
            for kind, sql, names in DRIVER_STEP:
                values = driver_values(names, attempt, sqlite=False)
                if kind == "all":
                    await connection.fetch(sql, *values)
                elif kind == "one":
                    await connection.fetchrow(sql, *values)
                else:
                    await connection.execute(sql, *values)

    return step


def sqlite_driver(connection: aiosqlite.Connection) -> Callable[[int], Awaitable[None]]:
    def sqlite_text(sql: str) -> str:
        for n in range(5, 0, -1):
            sql = sql.replace(f"${n}", "?")
        return sql.replace(" FOR UPDATE", "")  # BEGIN IMMEDIATE holds the write lock

    async def step(attempt: int) -> None:
        await connection.execute("BEGIN IMMEDIATE")
        for kind, sql, names in DRIVER_STEP:
            cursor = await connection.execute(
                sqlite_text(sql), driver_values(names, attempt, sqlite=True)
            )
            if kind != "run":
                await cursor.fetchall()
        await connection.commit()

    return step


async def seed(database: Database) -> None:
    moment = now()
    async with database.transaction() as session:
        session.add(
            InstanceRow(
                id=INSTANCE, workflow="w", status="running", created_at=moment, updated_at=moment
            )
        )
        for seq in range(STEPS):
            name = f"s{seq}"
            session.add(
                StepRow(
                    instance_id=INSTANCE,
                    key=name,
                    seq=seq,
                    name=name,
                    kind="do",
                    status="complete",
                    output={"n": seq},
                )
            )


async def measure(step: Callable[[int], Awaitable[None]], steps: int) -> dict[str, float]:
    for attempt in range(WARMUP):
        await step(attempt)
    cpu, wall = time.process_time(), time.perf_counter()
    for attempt in range(steps):
        await step(WARMUP + attempt)
    return {
        "cpu_ms": 1000 * (time.process_time() - cpu) / steps,
        "wall_ms": 1000 * (time.perf_counter() - wall) / steps,
    }


async def run_backend(backend: str, postgres_url: str, steps: int) -> None:
    with TemporaryDirectory(prefix="warren-sql-path-") as directory:
        if backend == "sqlite":
            path = Path(directory) / "warren.db"
            database = Database(f"sqlite+aiosqlite:///{path}")
        else:
            schema = f"t_sql_path_{uuid.uuid4().hex[:8]}"
            database = Database(postgres_url, schema=schema)
        try:
            await database.upgrade()
            await seed(database)
            results = {
                "orm": await measure(lambda attempt: orm_step(database, attempt), steps),
                "core": await measure(lambda attempt: core_step(database, attempt), steps),
                "warren": await measure(lambda attempt: warren_step(database, attempt), steps),
            }
            if backend == "sqlite":
                async with aiosqlite.connect(path, isolation_level=None) as connection:
                    results["driver"] = await measure(sqlite_driver(connection), steps)
            else:
                dsn = postgres_url.replace("postgresql+asyncpg", "postgresql")
                server_settings = {"search_path": schema}
                connection = await asyncpg.connect(dsn, server_settings=server_settings)
                try:
                    results["driver"] = await measure(postgres_driver(connection), steps)
                finally:
                    await connection.close()
        finally:
            await database.drop_schema()
            await database.close()
    for way, figures in results.items():
        print(
            f"{backend:8} {way:6} worker CPU {figures['cpu_ms']:6.2f} ms/step, "
            f"wall {figures['wall_ms']:6.2f} ms/step"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sql_path", description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--steps", type=int, default=1000, help="measured steps per way")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    options = parser.parse_args()
    backends = ["sqlite", "postgres"] if options.backend == "both" else [options.backend]

    async def run_all() -> None:
        for backend in backends:
            await run_backend(backend, options.postgres_url, options.steps)

    run_event_loop(run_all())


if __name__ == "__main__":
    main()
