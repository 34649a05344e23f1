"""An instance's step rows, kept by the worker between its rounds.

Every round replays on all of its instance's steps, and loading them (a query, then a table
row built per step) was the largest part of a busy worker's CPU after the flush. A step's
report usually comes back to the worker that ran it, so the worker keeps the rows a round
committed, with their column values as written, and the instance's next round here takes them
instead of loading them again, if nothing else wrote the instance since: its row still has the
version and `updated_at` the round committed. Every transaction that changes an instance's
steps in a way a replay reads changes one of them (a round, restart, terminate: `version` is
bumped where `updated_at` is set; a worker of an earlier release sets `updated_at` alone). The
sweeps' marks (`swept_at`) are not read by a replay, and a release of this worker's own
attempts forgets what it kept of their instances (`Claimant.drop`).

A round takes its instance's rows out of the cache, so no two rounds share them, and puts them
back only once it has committed: a failed round leaves nothing behind. Rows an attempt keeps
after its round (`PendingAttempt.step`) are kept as copies.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from processor.store.tables import InstanceRow, StepRow, new_row

#: Instances whose steps a worker keeps, the least recently used dropped first: enough for
#: every instance in flight at the default concurrency, and a few MB of rows at most.
KEPT_INSTANCES = 1000

#: A step row with its column values as last written (see `DriverSession`).
Tracked = tuple[StepRow, dict[str, Any]]


class KeptSteps:
    def __init__(self, size: int = KEPT_INSTANCES) -> None:
        self._size = size
        self._entries: OrderedDict[str, tuple[tuple[int, datetime], list[Tracked]]] = OrderedDict()

    def take(self, instance: InstanceRow) -> list[Tracked] | None:
        """The instance's kept rows, in order, if nothing else wrote it since they were kept;
        they are no longer kept either way."""
        entry = self._entries.pop(instance.id, None)
        if entry is None:
            return None
        written_as, rows = entry
        return rows if written_as == _version(instance) else None

    def keep(self, instance: InstanceRow, rows: Iterable[Tracked], shared: set[int]) -> None:
        """Keep the rows a committed round of `instance` leaves; those whose `id()` is in
        `shared` are referenced elsewhere (by a running attempt) and kept as copies."""
        kept = sorted(
            (
                (_copy(row, written) if id(row) in shared else (row, written))
                for row, written in rows
            ),
            key=lambda tracked: tracked[0].seq,
        )
        self._entries[instance.id] = (_version(instance), kept)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def forget(self, instance_ids: Iterable[str]) -> None:
        for instance_id in instance_ids:
            self._entries.pop(instance_id, None)


def _copy(row: StepRow, written: dict[str, Any]) -> Tracked:
    """A copy of a row as committed: its values are the ones last written."""
    return new_row(StepRow, **written), dict(written)


def _version(instance: InstanceRow) -> tuple[int, datetime]:
    return (instance.version, instance.updated_at)
