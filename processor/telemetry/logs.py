"""Structured logs: every record tagged with the instance, workflow, step and trace it is about.

The engine sets the tags with `log_context` around the work on an instance or a step; the
trace and span ids come from the current OpenTelemetry span. `WARREN_LOG_FORMAT=json` writes
one JSON object per line with those fields, for a log pipeline to index and to join with
traces; the default stays plain text for people.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

#: The plain-text format, for people at a terminal.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The tags of the current block (see `log_context`): one variable, so entering a block sets
#: one context variable, not one per tag.
_tags: ContextVar[dict[str, str] | None] = ContextVar("warren_log_tags", default=None)
_TAG_NAMES = ("instance_id", "workflow", "step")


@contextmanager
def log_context(
    *, instance_id: str | None = None, workflow: str | None = None, step: str | None = None
) -> Iterator[None]:
    """Tag the log records written in this block, and in tasks it starts, with these fields.

    Fields left None keep the value they had, so a step's block can add `step` inside an
    instance's block. Context variables follow asyncio tasks: concurrent instances on one
    loop keep their own tags.
    """
    tags = dict(_tags.get() or {})  # a copy: the outer block's dict is never changed
    if instance_id:
        tags["instance_id"] = instance_id
    if workflow:
        tags["workflow"] = workflow
    if step:
        tags["step"] = step
    token = _tags.set(tags)
    try:
        yield
    finally:
        _tags.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, tags, trace ids, exception.

    A tag passed with `extra={"instance_id": ...}` wins over the context's. Fields without a
    value are left out.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as one line of JSON."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        tags = _tags.get() or {}
        for name in _TAG_NAMES:
            value = getattr(record, name, None) or tags.get(name)
            if value:
                entry[name] = value
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = trace.format_trace_id(span_context.trace_id)
            entry["span_id"] = trace.format_span_id(span_context.span_id)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter_from_environment() -> logging.Formatter:
    """The formatter WARREN_LOG_FORMAT asks for: `text` (the default) or `json`.

    Raises:
        ValueError: any other value.
    """
    log_format = os.environ.get("WARREN_LOG_FORMAT", "text").strip().lower()
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"WARREN_LOG_FORMAT={log_format!r}: use text or json")


def configure_logging(level: int) -> None:
    """Log records at `level` and above to stderr, in the format WARREN_LOG_FORMAT names."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter_from_environment())
    logging.basicConfig(level=level, handlers=[handler])
