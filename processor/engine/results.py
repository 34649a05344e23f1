"""Step results, params and event payloads as JSON: what may be recorded and how big."""

from __future__ import annotations

import json
from typing import Any

import pydantic_core

from processor.errors import SerializationError
from schemas import MAX_MESSAGE_BYTES

#: A step result, params, an event payload or a workflow output larger than this is refused.
MAX_JSON_BYTES = MAX_MESSAGE_BYTES


def to_json_data(value: Any, *, round_trip: bool = False) -> Any:
    """`value` as plain JSON data (pydantic models dumped; with `round_trip`, as they validate:
    without computed fields, `Json` fields as strings).

    Raises:
        ValueError: the value is not JSON (an unknown type, a circular reference, nesting
            too deep), holds NaN, Infinity or a lone surrogate, or is over 1 MiB as JSON;
            the message says which, as a predicate ("is not JSON-serializable (...)").
    """
    try:
        data = pydantic_core.to_jsonable_python(value, round_trip=round_trip)
    except (ValueError, TypeError) as error:
        # PydanticSerializationError is a ValueError, and so are pydantic's "Circular
        # reference detected" and "Maximum serialization depth exceeded".
        raise ValueError(f"is not JSON-serializable ({error})") from None
    try:
        text = json.dumps(data, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        # pydantic let the data through, so allow_nan=False is the only refusal left.
        raise ValueError("contains NaN or Infinity") from None
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        # A lone surrogate: not UTF-8, so no message or database could carry it.
        raise ValueError("contains a lone surrogate, which is not UTF-8") from None
    if size > MAX_JSON_BYTES:
        raise ValueError(f"is {size} bytes as JSON, over the {MAX_JSON_BYTES}-byte limit")
    return data


def is_utf8(text: str) -> bool:
    """Whether `text` can be encoded as UTF-8 (a lone surrogate cannot): what no message or
    database could carry. ASCII is answered without encoding: replays check every step name."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def encode_result(step_name: str, value: Any, *, round_trip: bool = False) -> Any:
    """A step's result as JSON data (see `to_json_data`), or SerializationError naming the
    step and the type."""
    try:
        return to_json_data(value, round_trip=round_trip)
    except ValueError as error:
        raise SerializationError(step_name, type(value).__name__, str(error)) from None


def copy_json_data(value: Any) -> Any:
    """A copy of JSON data that shares no list or dict with it: what workflow code gets of a
    recorded value, which it may change without changing the record (the round would write
    a change made to the row's own value, as the step's result)."""
    if isinstance(value, dict):
        return {key: copy_json_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_json_data(item) for item in value]
    return value
