"""The worker's concurrency slots, shared by every queue it consumes; wake-ups go first."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque

#: A waiting wake-up takes a freed slot before other deliveries that arrived up to this long
#: before it, and no longer: a steady stream of wake-ups (say, the back-offs of many steps
#: retrying through an outage) cannot hold runs and commands up for more than this.
WAKE_UP_HEAD_START_S = 1.0
#: The rate at which slots are released is counted over this much of the latest past.
RATE_WINDOW_S = 1.0


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
        #: When slots were released (time.monotonic()) over the last RATE_WINDOW_S, oldest
        #: first.
        self._releases: deque[float] = deque()
        #: When a slot was last released, however long ago (the window forgets).
        self._released_at = float("-inf")

    def locked(self) -> bool:
        """Whether an acquire would wait."""
        return self._free == 0

    def waited_for(self) -> bool:
        """Whether an acquire is waiting."""
        return self._waiting > 0

    def takers_within(self, seconds: float) -> int:
        """How many more acquires would get a slot within `seconds`, at the rate at which slots
        were released over the last RATE_WINDOW_S, after those waiting now."""
        self._forget_old_releases(time.monotonic())
        expected = int(len(self._releases) / RATE_WINDOW_S * seconds)
        return self._free + max(0, expected - self._waiting)

    async def acquire(self, *, wake_up: bool = False) -> None:
        await self._acquire(wake_up=wake_up)

    async def acquire_unless_stalled(self, stalled_after_s: float, give_up_at: float) -> bool:
        """Take a slot as a wake-up, waiting for as long as slots are being released: give up,
        taking none, once none has been for `stalled_after_s` (they are all held by long
        steps, say), or at `give_up_at` (time.monotonic()) whatever. Returns whether it took
        one."""
        return await self._acquire(
            wake_up=True, stalled_after_s=stalled_after_s, give_up_at=give_up_at
        )

    async def _acquire(
        self,
        *,
        wake_up: bool,
        stalled_after_s: float | None = None,
        give_up_at: float = float("inf"),
    ) -> bool:
        if self._free > 0:
            self._free -= 1
            return True
        asked_at = time.monotonic()
        arrived = asked_at - (WAKE_UP_HEAD_START_S if wake_up else 0.0)
        waiter = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (arrived, next(self._numbers), waiter))
        self._waiting += 1
        try:
            if stalled_after_s is None:
                await waiter
                return True
            while not waiter.done():
                last_progress = max(asked_at, self._released_at)
                until = min(last_progress + stalled_after_s, give_up_at)
                remaining = until - time.monotonic()
                if remaining <= 0:
                    waiter.cancel()  # left in the heap, given up (see release)
                    return False
                # Not wait_for: a timeout must not cancel the waiter, which keeps its place. At
                # least 1 ms: the loop's clock may run a little behind time.monotonic().
                await asyncio.wait({waiter}, timeout=max(remaining, 0.001))
            return True
        except asyncio.CancelledError:
            if not waiter.done():
                waiter.cancel()  # asyncio.wait leaves it pending: give it up
            elif not waiter.cancelled():
                self.release()  # handed a slot just as it gave up: pass it on
            raise
        finally:
            self._waiting -= 1

    def release(self) -> None:
        self._released_at = time.monotonic()
        self._releases.append(self._released_at)
        self._forget_old_releases(self._released_at)
        while self._waiters:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():  # else it gave up (cancelled)
                waiter.set_result(None)
                return
        self._free += 1

    def _forget_old_releases(self, now: float) -> None:
        while self._releases and self._releases[0] < now - RATE_WINDOW_S:
            self._releases.popleft()
