"""Step results as JSON: what may be recorded and how big."""

from __future__ import annotations

import json
from typing import Any

import pydantic_core

from processor.errors import SerializationError
from schemas import MAX_MESSAGE_BYTES

#: A step result (or workflow output) larger than this fails the step, non-retryably.
MAX_RESULT_BYTES = MAX_MESSAGE_BYTES


def encode_result(step_name: str, value: Any) -> Any:
    """`value` as plain JSON data (pydantic models dumped), or SerializationError."""
    type_name = type(value).__name__
    try:
        data = pydantic_core.to_jsonable_python(value)
        text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    except (pydantic_core.PydanticSerializationError, TypeError) as error:
        raise SerializationError(
            step_name, type_name, f"is not JSON-serializable ({error})"
        ) from None
    except ValueError:
        raise SerializationError(step_name, type_name, "contains NaN or Infinity") from None
    size = len(text.encode())
    if size > MAX_RESULT_BYTES:
        raise SerializationError(
            step_name, type_name, f"is {size} bytes as JSON, over the {MAX_RESULT_BYTES}-byte limit"
        )
    return data
