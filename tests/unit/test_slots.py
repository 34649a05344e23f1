"""The worker's concurrency slots (`processor.consumers.slots.Slots`): a freed slot goes to a
waiting wake-up before other deliveries that arrived up to WAKE_UP_HEAD_START_S before it, and
a waiter that gives up neither keeps nor loses a slot."""

from __future__ import annotations

import asyncio
import time

import pytest

from processor.consumers.slots import Slots


async def waiting(slots: Slots, order: list[str], name: str, *, wake_up: bool = False) -> None:
    await slots.acquire(wake_up=wake_up)
    order.append(name)


async def test_a_freed_slot_goes_to_a_wake_up_before_runs_that_waited_longer() -> None:
    slots = Slots(1)
    await slots.acquire()
    order: list[str] = []
    runs = [asyncio.create_task(waiting(slots, order, f"run {n}")) for n in range(3)]
    await asyncio.sleep(0)
    wake = asyncio.create_task(waiting(slots, order, "wake-up", wake_up=True))
    await asyncio.sleep(0)
    assert slots.locked()

    for _ in range(4):
        slots.release()
        await asyncio.sleep(0)
    await asyncio.gather(wake, *runs)

    assert order == ["wake-up", "run 0", "run 1", "run 2"]
    assert slots.locked()  # the last run still holds the only slot
    slots.release()
    assert not slots.locked()


async def test_a_run_that_waited_longer_than_the_head_start_goes_before_a_wake_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("processor.consumers.slots.WAKE_UP_HEAD_START_S", 0.05)
    slots = Slots(1)
    await slots.acquire()
    order: list[str] = []
    run = asyncio.create_task(waiting(slots, order, "run"))
    await asyncio.sleep(0.1)
    wake = asyncio.create_task(waiting(slots, order, "wake-up", wake_up=True))
    await asyncio.sleep(0)

    slots.release()
    await run
    slots.release()
    await wake

    assert order == ["run", "wake-up"]


async def test_a_waiter_that_gives_up_leaves_the_slot_to_the_next() -> None:
    slots = Slots(1)
    await slots.acquire()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await slots.acquire(wake_up=True)
    order: list[str] = []
    run = asyncio.create_task(waiting(slots, order, "run"))
    await asyncio.sleep(0)
    slots.release()
    await run
    assert order == ["run"]


async def test_a_slot_handed_to_a_waiter_cancelled_at_that_moment_is_passed_on() -> None:
    slots = Slots(1)
    await slots.acquire()
    order: list[str] = []
    cancelled = asyncio.create_task(waiting(slots, order, "cancelled", wake_up=True))
    run = asyncio.create_task(waiting(slots, order, "run"))
    await asyncio.sleep(0)
    slots.release()  # hands the slot to the wake-up, which is cancelled before it resumes
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    await run
    assert order == ["run"]
    slots.release()
    assert not slots.locked()


async def test_waited_for_counts_only_the_acquires_still_waiting() -> None:
    slots = Slots(1)
    await slots.acquire()
    assert not slots.waited_for()  # busy, but nobody waits
    order: list[str] = []
    gives_up = asyncio.create_task(waiting(slots, order, "gives up"))
    stays = asyncio.create_task(waiting(slots, order, "stays"))
    await asyncio.sleep(0)
    assert slots.waited_for()
    gives_up.cancel()
    await asyncio.gather(gives_up, return_exceptions=True)
    assert slots.waited_for()  # the other still waits
    slots.release()
    await stays
    assert not slots.waited_for()
    assert order == ["stays"]


FOREVER = float("inf")


async def test_a_group_waits_for_a_slot_as_long_as_slots_are_being_released() -> None:
    slots = Slots(1)
    await slots.acquire()
    order: list[str] = []
    first = asyncio.create_task(waiting(slots, order, "first", wake_up=True))
    await asyncio.sleep(0)
    group = asyncio.create_task(slots.acquire_unless_stalled(0.2, FOREVER))
    # Released every 0.12 s, to `first` and back: never 0.2 s without a release, though the
    # group waits 0.24 s in all.
    await asyncio.sleep(0.12)
    slots.release()
    await first
    await asyncio.sleep(0.12)
    assert not group.done()
    slots.release()
    assert await group is True
    assert order == ["first"]
    slots.release()
    assert not slots.locked()


async def test_a_group_gives_up_once_no_slot_was_released_for_its_limit_and_takes_none() -> None:
    slots = Slots(1)
    await slots.acquire()
    started = time.monotonic()
    assert await slots.acquire_unless_stalled(0.05, FOREVER) is False
    assert time.monotonic() - started >= 0.05
    assert not slots.waited_for()
    slots.release()  # to nobody: the one that gave up holds none
    assert not slots.locked()
    await slots.acquire()
    assert slots.locked()


async def test_a_group_gives_up_at_its_deadline_though_slots_are_being_released() -> None:
    slots = Slots(1)
    await slots.acquire()
    order: list[str] = []
    ahead = [
        asyncio.create_task(waiting(slots, order, f"wake-up {n}", wake_up=True)) for n in range(3)
    ]
    await asyncio.sleep(0)
    group = asyncio.create_task(slots.acquire_unless_stalled(10.0, time.monotonic() + 0.1))
    for _ in range(2):  # a release every 0.06 s, each to a wake-up ahead of the group
        await asyncio.sleep(0.06)
        slots.release()
    async with asyncio.timeout(1):  # else it would wait for the stall, 10 s
        assert await group is False
    for _ in range(2):
        slots.release()
    await asyncio.gather(*ahead)
    assert order == ["wake-up 0", "wake-up 1", "wake-up 2"]


async def test_a_group_cancelled_while_it_waits_neither_keeps_nor_loses_a_slot() -> None:
    slots = Slots(1)
    await slots.acquire()
    group = asyncio.create_task(slots.acquire_unless_stalled(10.0, FOREVER))
    await asyncio.sleep(0.01)
    group.cancel()
    await asyncio.gather(group, return_exceptions=True)
    assert not slots.waited_for()
    slots.release()  # to nobody: the cancelled one gave its place up
    assert not slots.locked()


async def test_takers_within_counts_free_slots_and_releases_expected_less_those_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("processor.consumers.slots.RATE_WINDOW_S", 0.2)
    slots = Slots(2)
    assert slots.takers_within(10.0) == 2  # free, and nothing released yet
    await slots.acquire()
    for _ in range(10):  # 10 releases in the window: 50 a second
        slots.release()
        await slots.acquire()
    assert slots.takers_within(0.1) == 1 + 5
    await slots.acquire()
    order: list[str] = []
    waiters = [asyncio.create_task(waiting(slots, order, f"run {n}")) for n in range(2)]
    await asyncio.sleep(0)
    assert slots.takers_within(0.1) == 5 - 2
    await asyncio.sleep(0.25)  # the releases are older than the window: forgotten
    assert slots.takers_within(0.1) == 0
    for _ in range(2):
        slots.release()
    await asyncio.gather(*waiters)
    assert order == ["run 0", "run 1"]
