"""to_json_data and encode_result: why a value cannot be recorded, in the words of the error."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, computed_field

from processor import Workflow
from processor.engine.results import MAX_JSON_BYTES, encode_result, to_json_data
from processor.errors import SerializationError
from tests.models import Quote


def _circular() -> list[Any]:
    itself: list[Any] = []
    itself.append(itself)
    return itself


def _nested(depth: int) -> list[Any]:
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested]
    return nested


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (float("nan"), "contains NaN or Infinity"),
        ({"total": float("inf")}, "contains NaN or Infinity"),
        (_circular(), "is not JSON-serializable (Circular reference detected"),
        (_nested(10_000), "is not JSON-serializable (Maximum serialization depth exceeded)"),
        (object(), "is not JSON-serializable (Unable to serialize unknown type"),
        (
            "x" * MAX_JSON_BYTES,  # two quotes make it 2 bytes over
            f"is {MAX_JSON_BYTES + 2} bytes as JSON, over the {MAX_JSON_BYTES}-byte limit",
        ),
    ],
    ids=["nan", "infinity", "circular", "too-deep", "unknown-type", "too-big"],
)
def test_a_value_that_cannot_be_recorded_is_refused_with_the_real_reason(
    value: Any, reason: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(reason)}"):
        to_json_data(value)

    step_says = f"step 'fetch' returned a {type(value).__name__} that {reason}"
    with pytest.raises(SerializationError, match=f"^{re.escape(step_says)}"):
        encode_result("fetch", value)


def test_json_data_passes_through_as_plain_data() -> None:
    assert to_json_data({"total": 1.5, "items": [1, "two", None]}) == {
        "total": 1.5,
        "items": [1, "two", None],
    }


def test_a_model_recorded_to_be_read_back_validates_into_itself() -> None:
    quote = Quote(price=2, qty=3)

    recorded = to_json_data(quote, round_trip=True)

    assert recorded == {"price": 2, "qty": 3}  # by alias, the computed field left out
    assert Quote.model_validate(recorded) == quote
    # Not read back into the model (an output, a payload, an untyped step): all of it.
    assert to_json_data(quote) == {"price": 2, "qty": 3, "total": 6}


def test_params_given_by_name_hold_nested_models_as_they_validate() -> None:
    class Line(BaseModel):
        model_config = ConfigDict(extra="forbid")
        price: int

        @computed_field  # type: ignore[prop-decorator]
        @property
        def doubled(self) -> int:
            return 2 * self.price

    # No params model at hand (a create by name): the run will validate what is stored.
    assert Workflow.dump_params({"line": Line(price=1)}) == {"line": {"price": 1}}
