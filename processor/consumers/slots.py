"""The worker's concurrency slots, shared by every queue it consumes; wake-ups go first."""

from __future__ import annotations

import asyncio
from collections import deque

#: A waiting wake-up takes a freed slot before other deliveries that arrived up to this long
#: before it, and no longer: a steady stream of wake-ups (say, the back-offs of many steps
#: retrying through an outage) cannot hold runs and commands up for more than this.
WAKE_UP_HEAD_START_S = 1.0

Waiter = tuple[float, asyncio.Future[None]]


class Slots:
    """`count` slots; a freed slot goes to the waiter that arrived first, counting a wake-up
    as arrived WAKE_UP_HEAD_START_S earlier than it did.

    A timer is due at a moment, and a wake-up that waits behind a backlog of runs (the first
    rounds of a burst of new instances, say) is late by that backlog; the runs it passes start
    a little later, which no timer promised.
    """

    def __init__(self, count: int) -> None:
        self._free = count
        self._wake_ups: deque[Waiter] = deque()
        self._others: deque[Waiter] = deque()

    def locked(self) -> bool:
        """Whether an acquire would wait."""
        return self._free == 0

    async def acquire(self, *, wake_up: bool = False) -> None:
        if self._free > 0:
            self._free -= 1
            return
        loop = asyncio.get_running_loop()
        waiter: Waiter = (loop.time(), loop.create_future())
        waiters = self._wake_ups if wake_up else self._others
        waiters.append(waiter)
        try:
            await waiter[1]
        except asyncio.CancelledError:
            if waiter[1].done() and not waiter[1].cancelled():
                self.release()  # handed a slot just as it gave up: pass it on
            elif waiter in waiters:  # a release may have dropped it already
                waiters.remove(waiter)
            raise

    def release(self) -> None:
        for waiters in (self._wake_ups, self._others):
            while waiters and waiters[0][1].done():  # gave up (cancelled)
                waiters.popleft()
        wake_ups, others = self._wake_ups, self._others
        if wake_ups and (not others or wake_ups[0][0] - WAKE_UP_HEAD_START_S <= others[0][0]):
            wake_ups.popleft()[1].set_result(None)
        elif others:
            others.popleft()[1].set_result(None)
        else:
            self._free += 1
