"""Turn a message body into a wire model, or say exactly why not (the dead-letter reason)."""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeVar

from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from schemas import MAX_MESSAGE_BYTES, WireModel

M = TypeVar("M", bound=WireModel)

#: Message ids are recorded for deduplication in a column of this width.
MAX_MESSAGE_ID = 200
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


class BadMessageError(Exception):
    """A message that can never be applied; its text is the dead-letter reason.

    Args:
        reason: why, in full: the `x-error-reason` header and the log say it.
        category: the reason in a word, one of `DEAD_LETTER_REASONS` (a metric's label).
    """

    def __init__(self, reason: str, category: str) -> None:
        super().__init__(reason)
        self.category = category


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a float, refusing one no float holds (1e400 would read as infinity,
    which PostgreSQL's json type refuses and SQLite would store)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def decode(
    message: AbstractIncomingMessage, model: type[M], max_bytes: int = MAX_MESSAGE_BYTES
) -> M:
    body = message.body
    if message.message_id is not None and len(message.message_id) > MAX_MESSAGE_ID:
        raise BadMessageError(f"message_id is over {MAX_MESSAGE_ID} characters", "too_large")
    if message.message_id is not None and _CONTROL_CHARACTER.search(message.message_id):
        # Recorded as text for deduplication: PostgreSQL refuses a NUL byte, and the
        # consumer would requeue the message until the broker's delivery limit.
        raise BadMessageError("message_id contains a control character", "invalid_message")
    if len(body) > max_bytes:
        raise BadMessageError(
            f"body is {len(body)} bytes, over the {max_bytes}-byte limit", "too_large"
        )
    content_type = (message.content_type or "application/json").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise BadMessageError(
            f"content type {message.content_type!r} is not application/json", "bad_content_type"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadMessageError(f"body is not UTF-8: {error}", "not_utf8") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise BadMessageError("body is nested too deeply", "not_json") from None
    except ValueError as error:
        raise BadMessageError(f"body is not JSON: {error}", "not_json") from None
    try:
        return model.model_validate(data)
    except ValidationError as error:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()
        )
        raise BadMessageError(
            f"not a valid {model.__name__}: {details}", "invalid_message"
        ) from None
    except RecursionError:
        raise BadMessageError("body is nested too deeply", "not_json") from None
