"""Group commit: requests that arrive while the database is busy share the next transaction.

A step's two transactions are a few short statements each, and on a small machine their
round trips and commits, not the statements' work, are what a step costs. A `Batcher` runs at
most `slots` batches at once: when a request arrives with a slot free, it goes alone, at once
(an idle worker adds no latency); requests that arrive while every slot is busy wait and go
together into the next batch. So the busier the worker, the more each transaction carries.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Runs `run` on batches of submitted items; `run` returns one result per item, in order.

    A batch that raises runs again item by item, so each submitter gets its own result or
    error (and retries as it would a transaction of its own). A submitter cancelled before its
    batch starts is left out of it; once the batch has started, it runs to the end (`aclose`
    waits for it).
    """

    def __init__(
        self,
        run: Callable[[list[Item]], Awaitable[list[Result]]],
        *,
        slots: int,
        max_size: int,
    ) -> None:
        self._run = run
        self._slots = slots
        self._max_size = max_size
        self._queue: deque[tuple[Item, asyncio.Future[Result]]] = deque()
        self._drains: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if len(self._drains) < self._slots:
            drain = asyncio.create_task(self._drain())
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        return await future

    async def aclose(self) -> None:
        """Wait for the batches under way (their submitters may be gone)."""
        if self._drains:
            await asyncio.wait(set(self._drains))

    async def _drain(self) -> None:
        while self._queue:
            batch: list[tuple[Item, asyncio.Future[Result]]] = []
            while self._queue and len(batch) < self._max_size:
                item, future = self._queue.popleft()
                if not future.cancelled():
                    batch.append((item, future))
            if not batch:
                continue
            try:
                await self._settle(batch)
            except BaseException:  # this task is cancelled: so are the submitters' waits
                for _, future in batch:
                    future.cancel()
                raise

    async def _settle(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except Exception as error:
            if len(batch) > 1:
                # One bad item must not fail its neighbours: each again alone, with its own
                # result or error (a database outage fails each, and each submitter retries).
                for one in batch:
                    await self._settle([one])
                return
            ((_, future),) = batch
            if not future.done():
                future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
