"""The worker's concurrency slots, shared by every queue it consumes; wake-ups go first."""

from __future__ import annotations

import asyncio
import heapq
import itertools

#: A waiting wake-up takes a freed slot before other deliveries that arrived up to this long
#: before it, and no longer: a steady stream of wake-ups (say, the back-offs of many steps
#: retrying through an outage) cannot hold runs and commands up for more than this.
WAKE_UP_HEAD_START_S = 1.0


class Slots:
    """`count` slots; a freed slot goes to the waiter that arrived first, counting a wake-up
    as arrived WAKE_UP_HEAD_START_S earlier than it did (as the batcher orders its requests,
    engine/batching.py).

    A timer is due at a moment, and a wake-up that waits behind a backlog of runs (the first
    rounds of a burst of new instances, say) is late by that backlog; the runs it passes start
    a little later, which no timer promised.
    """

    def __init__(self, count: int) -> None:
        self._free = count
        #: (when it counts as arrived, order of arrival, its future): a heap. A waiter that
        #: gave up stays in it, cancelled, until it comes to the top.
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._numbers = itertools.count()
        #: Acquires waiting now (the heap also holds those that gave up).
        self._waiting = 0

    def locked(self) -> bool:
        """Whether an acquire would wait."""
        return self._free == 0

    def waited_for(self) -> bool:
        """Whether an acquire is waiting."""
        return self._waiting > 0

    def take_free(self, count: int) -> int:
        """Take up to `count` of the slots free now, without waiting; returns how many were
        taken (each is released on its own)."""
        taken = min(count, self._free)
        self._free -= taken
        return taken

    async def acquire(self, *, wake_up: bool = False) -> None:
        if self._free > 0:
            self._free -= 1
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        arrived = loop.time() - (WAKE_UP_HEAD_START_S if wake_up else 0.0)
        heapq.heappush(self._waiters, (arrived, next(self._numbers), waiter))
        self._waiting += 1
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as it gave up: pass it on
            raise
        finally:
            self._waiting -= 1

    def release(self) -> None:
        while self._waiters:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():  # else it gave up (cancelled)
                waiter.set_result(None)
                return
        self._free += 1
