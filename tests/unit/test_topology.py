"""delay_route: where a delayed message enters the binary cascade (DESIGN.md, "Delayed
delivery")."""

from __future__ import annotations

from datetime import timedelta
from unittest.mock import Mock

import pytest

from processor.broker.topology import (
    DELAY_LEVELS,
    DELIVERY_EXCHANGE,
    MAX_DELAY_MS,
    Topology,
    delay_route,
)
from processor.consumers.base import original_routing_key

TARGET = "t1.wake.ship-order"


def split(key: str) -> tuple[list[str], str]:
    words = key.split(".")
    return words[:DELAY_LEVELS], ".".join(words[DELAY_LEVELS:])


def test_the_cascade_has_35_levels_enough_for_a_year() -> None:
    assert DELAY_LEVELS == 35
    assert timedelta(milliseconds=MAX_DELAY_MS) > timedelta(days=365)


def test_a_delay_of_one_millisecond_enters_level_0() -> None:
    exchange, _ = delay_route(timedelta(milliseconds=1), TARGET)
    assert exchange == "warren.delay.0"


def test_a_delay_of_1000_ms_enters_at_its_highest_set_bit() -> None:
    exchange, _ = delay_route(timedelta(milliseconds=1000), TARGET)
    assert exchange == f"warren.delay.{(1000).bit_length() - 1}"
    assert exchange == "warren.delay.9"


@pytest.mark.parametrize(
    "delay", [timedelta(0), timedelta(microseconds=400), timedelta(seconds=-5)]
)
def test_no_delay_goes_straight_to_the_delivery_exchange(delay: timedelta) -> None:
    exchange, key = delay_route(delay, TARGET)
    assert exchange == DELIVERY_EXCHANGE
    bits, target = split(key)
    assert set(bits) == {"0"}
    assert target == TARGET


@pytest.mark.parametrize("ms", [1, 2, 3, 999, 1000, 1024, 60_000, 86_400_000, 365 * 86_400_000])
def test_the_routing_key_is_35_bit_words_then_the_target_key(ms: int) -> None:
    exchange, key = delay_route(timedelta(milliseconds=ms), TARGET)

    bits, target = split(key)
    assert len(bits) == DELAY_LEVELS
    assert set(bits) <= {"0", "1"}
    assert target == TARGET
    assert int("".join(bits), 2) == ms
    # Most significant bit first: the entry level's word is the first 1.
    level = int(exchange.rsplit(".", 1)[1])
    assert bits.index("1") == DELAY_LEVELS - 1 - level


def test_a_delay_rounds_to_the_nearest_millisecond() -> None:
    _, key = delay_route(timedelta(microseconds=1_600), TARGET)
    bits, _ = split(key)
    assert int("".join(bits), 2) == 2


def test_a_delay_over_the_maximum_is_capped() -> None:
    exchange, key = delay_route(timedelta(days=1000), TARGET)

    bits, target = split(key)
    assert int("".join(bits), 2) == MAX_DELAY_MS
    assert exchange == f"warren.delay.{DELAY_LEVELS - 1}"
    assert target == TARGET


def test_run_queues_and_keys_carry_the_namespace_and_workflow() -> None:
    topology = Topology("t1")
    assert topology.ingress_exchange == "t1.ingress"
    assert topology.run_queue("ship-order") == "t1.run.ship-order"
    assert topology.wake_queue("ship-order") == "t1.wake.ship-order"
    assert topology.delayed_key("ship-order") == TARGET
    assert set(topology.queue_names(["ship-order"])) == {
        "t1.ingress",
        "t1.run.ship-order",
        "t1.wake.ship-order",
        "t1.ingress.dead",
        "t1.run.ship-order.dead",
        "t1.wake.ship-order.dead",
    }


def test_the_original_routing_key_is_recovered_from_a_cascade_copy() -> None:
    _, delayed = delay_route(timedelta(seconds=2), "warren.instance.event")
    assert original_routing_key(Mock(routing_key=delayed)) == "instance.event"
    assert original_routing_key(Mock(routing_key="instance.event")) == "instance.event"
    assert original_routing_key(Mock(routing_key="0.1.instance.event")) == "0.1.instance.event"
