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

instance_id_var: ContextVar[str | None] = ContextVar("warren_instance_id", default=None)
workflow_var: ContextVar[str | None] = ContextVar("warren_workflow", default=None)
step_var: ContextVar[str | None] = ContextVar("warren_step", default=None)

_TAGS = {"instance_id": instance_id_var, "workflow": workflow_var, "step": step_var}


@contextmanager
def log_context(
    *, instance_id: str | None = None, workflow: str | None = None, step: str | None = None
) -> Iterator[None]:
    """Tag the log records written in this block, and in tasks it starts, with these fields.

    Fields left None keep the value they had, so a step's block can add `step` inside an
    instance's block. Context variables follow asyncio tasks: concurrent instances on one
    loop keep their own tags.
    """
    values = {"instance_id": instance_id, "workflow": workflow, "step": step}
    tokens = [(_TAGS[name], _TAGS[name].set(value)) for name, value in values.items() if value]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


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
        for name, var in _TAGS.items():
            value = getattr(record, name, None) or var.get()
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
