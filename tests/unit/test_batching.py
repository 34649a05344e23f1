"""The group-commit batcher (engine/batching.py): alone when idle, together when busy, and one
bad item never fails its neighbours."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from processor.engine.batching import Batcher


def is_bad(error: Exception) -> bool:
    """Errors about one item (ValueError here); anything else is about the whole batch."""
    return isinstance(error, ValueError)


class Recorder:
    """A batch function that records each batch it gets and can be held and made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.bad: set[int] = set()
        self.down = False

    async def run(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await self.release.wait()
        if self.down:
            raise ConnectionError("the database is away")
        if self.bad & set(items):
            raise ValueError(f"bad items {sorted(self.bad & set(items))}")
        return [item * 10 for item in items]


async def test_an_item_submitted_to_an_idle_batcher_runs_alone_at_once() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder.run, slots=2, max_size=8, isolate=is_bad)

    assert await batcher.submit(1) == 10
    assert recorder.batches == [[1]]


async def test_items_that_arrive_while_every_slot_is_busy_share_the_next_batch() -> None:
    recorder = Recorder()
    recorder.release.clear()
    batcher = Batcher(recorder.run, slots=1, max_size=3, isolate=is_bad)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)  # the first batch is under way, held
    waiting = [asyncio.create_task(batcher.submit(item)) for item in (2, 3, 4, 5)]
    await asyncio.sleep(0.01)
    recorder.release.set()

    assert await asyncio.gather(first, *waiting) == [10, 20, 30, 40, 50]
    assert recorder.batches == [[1], [2, 3, 4], [5]]  # at most max_size each, in order


async def test_an_item_with_a_head_start_passes_those_that_arrived_less_before_it() -> None:
    recorder = Recorder()
    recorder.release.clear()
    batcher = Batcher(recorder.run, slots=1, max_size=2, isolate=is_bad)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)  # the first batch is under way, held
    old = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0.2)
    recent = [asyncio.create_task(batcher.submit(item)) for item in (3, 4)]
    await asyncio.sleep(0.01)
    wake_up = asyncio.create_task(batcher.submit(5, head_start=0.1))
    await asyncio.sleep(0.01)
    recorder.release.set()

    assert await asyncio.gather(first, old, *recent, wake_up) == [10, 20, 30, 40, 50]
    # 5 counts as arrived 0.1 s early: after 2 (0.2 s before it), before 3 and 4.
    assert recorder.batches == [[1], [2, 5], [3, 4]]


async def test_a_failing_batch_runs_again_item_by_item_so_only_the_bad_item_fails() -> None:
    recorder = Recorder()
    recorder.release.clear()
    recorder.bad = {3}
    batcher = Batcher(recorder.run, slots=1, max_size=8, isolate=is_bad)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)
    waiting = [asyncio.create_task(batcher.submit(item)) for item in (2, 3, 4)]
    await asyncio.sleep(0.01)
    recorder.release.set()

    assert await first == 10
    assert await waiting[0] == 20
    with pytest.raises(ValueError, match=r"bad items \[3\]"):
        await waiting[1]
    assert await waiting[2] == 40
    assert recorder.batches == [[1], [2, 3, 4], [2], [3], [4]]


async def test_an_error_about_the_whole_batch_reaches_every_submitter_at_once() -> None:
    recorder = Recorder()
    recorder.release.clear()
    recorder.down = True
    batcher = Batcher(recorder.run, slots=1, max_size=8, isolate=is_bad)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)
    waiting = [asyncio.create_task(batcher.submit(item)) for item in (2, 3)]
    await asyncio.sleep(0.01)
    recorder.release.set()

    for task in (first, *waiting):
        with pytest.raises(ConnectionError):
            await task
    assert recorder.batches == [[1], [2, 3]]  # not again item by item


async def test_an_item_submitted_as_the_last_batch_ends_still_runs() -> None:
    """The submitter that the last batch's result wakes submits again before the batch's
    task has finished: the slot must already count as free."""
    recorder = Recorder()
    batcher = Batcher(recorder.run, slots=1, max_size=8, isolate=is_bad)

    assert await batcher.submit(1) == 10
    assert await asyncio.wait_for(batcher.submit(2), 1) == 20


async def test_a_submitter_cancelled_before_its_batch_starts_is_left_out() -> None:
    recorder = Recorder()
    recorder.release.clear()
    batcher = Batcher(recorder.run, slots=1, max_size=8, isolate=is_bad)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)
    gone = asyncio.create_task(batcher.submit(2))
    kept = asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0.01)
    gone.cancel()
    recorder.release.set()

    assert await first == 10
    assert await kept == 30
    assert gone.cancelled()
    assert recorder.batches == [[1], [3]]


async def test_aclose_waits_for_a_batch_whose_submitter_is_gone_and_hands_over_its_result() -> None:
    recorder = Recorder()
    recorder.release.clear()
    orphans: list[int] = []
    batcher = Batcher(recorder.run, slots=1, max_size=8, isolate=is_bad, orphaned=orphans.append)
    submitter = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)
    submitter.cancel()
    closing = asyncio.create_task(batcher.aclose(timeout=5))
    await asyncio.sleep(0.01)
    assert not closing.done()  # the batch under way is still held

    recorder.release.set()
    await asyncio.wait_for(closing, 1)
    assert recorder.batches == [[1]]
    assert orphans == [10]


async def test_aclose_cancels_a_batch_that_outlasts_its_timeout() -> None:
    recorder = Recorder()
    recorder.release.clear()  # never released
    batcher = Batcher(recorder.run, slots=1, max_size=8, isolate=is_bad)
    submitter = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)

    await asyncio.wait_for(batcher.aclose(timeout=0.05), 1)
    with pytest.raises(asyncio.CancelledError):
        await submitter


async def test_a_batch_runs_in_its_first_submitters_context() -> None:
    tag: contextvars.ContextVar[str] = contextvars.ContextVar("tag", default="none")
    seen: list[str] = []

    async def run(items: list[int]) -> list[int]:
        seen.append(tag.get())
        return items

    batcher = Batcher(run, slots=1, max_size=8, isolate=is_bad)

    async def submit_as(name: str, item: int) -> int:
        tag.set(name)
        return await batcher.submit(item)

    assert await asyncio.gather(submit_as("a", 1), submit_as("b", 2)) == [1, 2]
    assert seen[0] == "a"
