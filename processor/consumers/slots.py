"""The worker's concurrency slots, shared by every queue it consumes, wake-ups first."""

from __future__ import annotations

import asyncio
from collections import deque


class Slots:
    """`count` slots; a freed slot goes to a waiting wake-up before any other delivery.

    A timer is due at a moment, and a wake-up that waits behind a backlog of runs (the first
    rounds of a burst of new instances, say) is late by that backlog; the rounds it passes only
    start later, which no timer promised. Waiters of one kind are served in order.
    """

    def __init__(self, count: int) -> None:
        self._free = count
        self._wake_ups: deque[asyncio.Future[None]] = deque()
        self._others: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        """Whether an acquire would wait."""
        return self._free == 0

    async def acquire(self, *, wake_up: bool = False) -> None:
        if self._free > 0:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        waiters = self._wake_ups if wake_up else self._others
        waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as it gave up: pass it on
            elif waiter in waiters:  # a release may have dropped it already
                waiters.remove(waiter)
            raise

    def release(self) -> None:
        for waiters in (self._wake_ups, self._others):
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1
