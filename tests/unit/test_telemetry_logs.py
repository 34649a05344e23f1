"""JSON log records carry the instance, workflow, step and trace they are about."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from processor.telemetry.logs import JsonFormatter, formatter_from_environment, log_context

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331


class JsonLog:
    """A logger of its own whose records land, as parsed JSON, in a list."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.logger = logging.getLogger(f"warren.test.{uuid.uuid4().hex}")
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter())
        self.logger.addHandler(self.handler)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture
def json_log() -> Iterator[JsonLog]:
    log = JsonLog()
    yield log
    log.logger.removeHandler(log.handler)


def test_a_record_carries_the_context_tags_and_the_current_trace(json_log: JsonLog) -> None:
    span = NonRecordingSpan(
        SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(1))
    )

    with (
        log_context(instance_id="o-1", workflow="ship-order", step="charge card"),
        trace.use_span(span),
    ):
        json_log.logger.warning("card declined for %s", "o-1")

    (record,) = json_log.records()
    assert record.pop("time").endswith("+00:00")
    assert record == {
        "level": "WARNING",
        "logger": json_log.logger.name,
        "message": "card declined for o-1",
        "instance_id": "o-1",
        "workflow": "ship-order",
        "step": "charge card",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
    }


def test_a_record_outside_any_context_has_only_the_basic_fields(json_log: JsonLog) -> None:
    json_log.logger.info("worker started")

    (record,) = json_log.records()
    assert set(record) == {"time", "level", "logger", "message"}


def test_a_nested_context_adds_the_step_and_the_outer_tags_come_back_after(
    json_log: JsonLog,
) -> None:
    with log_context(instance_id="o-1", workflow="ship-order"):
        with log_context(step="ship"):
            json_log.logger.info("in step")
        json_log.logger.info("between steps")
    json_log.logger.info("after")

    in_step, between, after = json_log.records()
    assert (in_step["instance_id"], in_step["workflow"], in_step["step"]) == (
        "o-1",
        "ship-order",
        "ship",
    )
    assert "step" not in between
    assert between["instance_id"] == "o-1"
    assert "instance_id" not in after


def test_tags_passed_as_extra_win_over_the_context(json_log: JsonLog) -> None:
    with log_context(instance_id="o-1"):
        json_log.logger.info("about another", extra={"instance_id": "o-2"})

    (record,) = json_log.records()
    assert record["instance_id"] == "o-2"


def test_an_exception_is_rendered_into_the_record(json_log: JsonLog) -> None:
    try:
        raise RuntimeError("broker went away")
    except RuntimeError:
        json_log.logger.exception("round failed")

    (record,) = json_log.records()
    assert record["message"] == "round failed"
    assert "RuntimeError: broker went away" in record["exception"]


async def test_concurrent_tasks_keep_their_own_tags(json_log: JsonLog) -> None:
    both_tagged = asyncio.Barrier(2)

    async def work_on(instance_id: str) -> None:
        with log_context(instance_id=instance_id):
            await both_tagged.wait()  # both contexts are set before either logs
            json_log.logger.info("working on %s", instance_id)

    await asyncio.gather(work_on("o-1"), work_on("o-2"))

    assert sorted((r["instance_id"], r["message"]) for r in json_log.records()) == [
        ("o-1", "working on o-1"),
        ("o-2", "working on o-2"),
    ]


@pytest.mark.parametrize(
    ("value", "formatter"),
    [(None, logging.Formatter), ("text", logging.Formatter), ("JSON", JsonFormatter)],
)
def test_warren_log_format_picks_the_formatter(
    monkeypatch: pytest.MonkeyPatch, value: str | None, formatter: type[logging.Formatter]
) -> None:
    if value is None:
        monkeypatch.delenv("WARREN_LOG_FORMAT", raising=False)
    else:
        monkeypatch.setenv("WARREN_LOG_FORMAT", value)

    assert type(formatter_from_environment()) is formatter


def test_an_unknown_log_format_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARREN_LOG_FORMAT", "xml")

    with pytest.raises(ValueError, match="use text or json"):
        formatter_from_environment()
