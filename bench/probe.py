"""Read-only SQL the benchmark needs and the Client does not offer: how many instances are in
each status (one query for a whole batch, where polling each instance would add a query per
instance per poll to what is measured), and one instance's status without its steps.

It has an engine of its own, so that polling never waits for, or takes, a connection of the
Client's pool that the measured calls use; SQLite in WAL mode lets these reads run beside the
workers' writes without a lock.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import col

from processor.store.tables import InstanceRow, StepRow


class Probe:
    """Counts and single rows of Warren's tables, read through an engine of its own."""

    def __init__(self, database_url: str, schema: str | None) -> None:
        connect_args: dict[str, Any] = {}
        if schema:
            connect_args["server_settings"] = {"search_path": schema}
        self.engine = create_async_engine(database_url, connect_args=connect_args)

    async def close(self) -> None:
        await self.engine.dispose()

    async def status_counts(self, workflow: str) -> Counter[str]:
        """How many instances of `workflow` are in each status: one query."""
        query = (
            sa.select(col(InstanceRow.status), sa.func.count())
            .where(col(InstanceRow.workflow) == workflow)
            .group_by(col(InstanceRow.status))
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return Counter({status: count for status, count in rows})

    async def status(self, instance_id: str) -> str:
        query = sa.select(col(InstanceRow.status)).where(col(InstanceRow.id) == instance_id)
        async with self.engine.connect() as connection:
            status: str = (await connection.execute(query)).scalar_one()
        return status

    async def sleeps(self, workflow: str) -> list[tuple[float, timedelta]]:
        """(length in seconds, lateness) of every finished sleep of the instances of
        `workflow`, whose params are `{"seconds": length}`.

        A finished step's `wake_at` is cleared, so the due time is rebuilt: the round that
        parks a sleep sets `wake_at = started_at + length` from one clock reading.
        """
        query = (
            sa.select(col(StepRow.started_at), col(StepRow.ended_at), col(InstanceRow.params))
            .join(InstanceRow, col(InstanceRow.id) == col(StepRow.instance_id))
            .where(col(InstanceRow.workflow) == workflow, col(StepRow.kind) == "sleep")
            .where(col(StepRow.status) == "complete")
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [
            (params["seconds"], ended - (started + timedelta(seconds=params["seconds"])))
            for started, ended, params in rows
        ]
