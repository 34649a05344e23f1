"""Turn a message body into a wire model, or say exactly why not (the dead-letter reason)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from schemas import MAX_MESSAGE_BYTES, WireModel

M = TypeVar("M", bound=WireModel)

#: Message ids are recorded for deduplication in a column of this width.
MAX_MESSAGE_ID = 200


class BadMessageError(Exception):
    """A message that can never be applied; its text is the dead-letter reason."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode(message: AbstractIncomingMessage, model: type[M]) -> M:
    body = message.body
    if message.message_id is not None and len(message.message_id) > MAX_MESSAGE_ID:
        raise BadMessageError(f"message_id is over {MAX_MESSAGE_ID} characters")
    if len(body) > MAX_MESSAGE_BYTES:
        raise BadMessageError(f"body is {len(body)} bytes, over the {MAX_MESSAGE_BYTES}-byte limit")
    content_type = (message.content_type or "application/json").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise BadMessageError(f"content type {message.content_type!r} is not application/json")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadMessageError(f"body is not UTF-8: {error}") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise BadMessageError("body is nested too deeply") from None
    except ValueError as error:
        raise BadMessageError(f"body is not JSON: {error}") from None
    try:
        return model.model_validate(data)
    except ValidationError as error:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()
        )
        raise BadMessageError(f"not a valid {model.__name__}: {details}") from None
    except RecursionError:
        raise BadMessageError("body is nested too deeply") from None
