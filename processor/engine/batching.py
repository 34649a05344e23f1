"""Group commit: requests that arrive while the database is busy share the next transaction.

A step's transaction is a few short statements, and on a small machine their round trips and
the commit, not the statements' work, are what a step costs. A `Batcher` runs at
most `slots` batches at once: when a request arrives with a slot free, it goes alone, at once
(an idle worker adds no latency); requests that arrive while every slot is busy wait and go
together into the next batch. So the busier the worker, the more each transaction carries.
Waiting requests go in the order they arrived, but one submitted with a head start counts as
arrived that much earlier (a wake-up's round: see consumers/slots.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(order=True)
class _Request(Generic[Item, Result]):
    #: When it counts as arrived (the loop's time less its head start), then the order of
    #: submission: the queue's order.
    arrived: float
    number: int
    item: Item = field(compare=False)
    future: asyncio.Future[Result] = field(compare=False)
    #: The submitter's context: a batch runs in its first request's, so that its SQL spans
    #: and logs go with a request that is waiting for it.
    context: contextvars.Context = field(compare=False)


class Batcher(Generic[Item, Result]):
    """Runs `run` on batches of submitted items; `run` returns one result per item, in order.

    A batch that raises an error for which `isolate` is true (a bad item, say) runs again item
    by item, so each submitter gets its own result or error; any other error (the database is
    away) goes to every submitter of the batch at once, and each retries as it would a
    transaction of its own. A submitter cancelled before its batch starts is left out of it;
    once the batch has started it runs to the end, and `orphaned` gets the result nobody waits
    for.
    """

    def __init__(
        self,
        run: Callable[[list[Item]], Awaitable[list[Result]]],
        *,
        slots: int,
        max_size: int,
        isolate: Callable[[Exception], bool],
        orphaned: Callable[[Result], None] = lambda result: None,
    ) -> None:
        self._run = run
        self._slots = slots
        self._max_size = max_size
        self._isolate = isolate
        self._orphaned = orphaned
        self._queue: list[_Request[Item, Result]] = []  # a heap
        self._numbers = itertools.count()
        #: Counted down as a drain leaves its loop, in the same step: a request queued after
        #: that finds the slot free (a done callback would free it a loop turn later, and a
        #: request queued in between would wait for the next submitter).
        self._draining = 0
        self._drains: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item, *, head_start: float = 0.0) -> Result:
        """The item's result, once a batch carrying it has run; `head_start` (seconds) puts
        it ahead of waiting items that arrived less than that before it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        arrived = loop.time() - head_start
        request = _Request(arrived, next(self._numbers), item, future, contextvars.copy_context())
        heapq.heappush(self._queue, request)
        if self._draining < self._slots:
            self._draining += 1
            drain = asyncio.create_task(self._drain())
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        return await request.future

    async def aclose(self, timeout: float) -> None:
        """Wait up to `timeout` for the batches under way (their submitters may be gone),
        then cancel them."""
        if not self._drains:
            return
        _, pending = await asyncio.wait(set(self._drains), timeout=timeout)
        for drain in pending:
            drain.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch: list[_Request[Item, Result]] = []
                while self._queue and len(batch) < self._max_size:
                    request = heapq.heappop(self._queue)
                    if not request.future.cancelled():
                        batch.append(request)
                if not batch:
                    continue
                try:
                    await asyncio.create_task(self._settle(batch), context=batch[0].context)
                except BaseException:  # this task is cancelled: so are the submitters' waits
                    for request in batch:
                        request.future.cancel()
                    raise
        finally:
            self._draining -= 1

    async def _settle(self, batch: list[_Request[Item, Result]]) -> None:
        try:
            results = await self._run([request.item for request in batch])
        except Exception as error:
            if len(batch) > 1 and self._isolate(error):
                for request in batch:
                    await self._settle([request])
                return
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        for request, result in zip(batch, results, strict=True):
            if request.future.done():
                self._orphaned(result)
            else:
                request.future.set_result(result)
