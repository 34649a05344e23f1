"""Trace context through AMQP headers and stored traceparents, and the spans Warren writes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode, Tracer

from processor.telemetry.tracing import (
    context_from_headers,
    context_from_traceparent,
    current_traceparent,
    instance_parent,
    instance_span,
    record_wait_span,
    setup_tracing,
    step_attempt_span,
    trace_headers,
)


@dataclass
class Recorder:
    tracer: Tracer
    exporter: InMemorySpanExporter

    def span(self, name: str) -> ReadableSpan:
        (found,) = [s for s in self.exporter.get_finished_spans() if s.name == name]
        return found


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """A tracer of its own that keeps finished spans in memory (the global one stays no-op)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Recorder(provider.get_tracer("test"), exporter)
    provider.shutdown()


def test_trace_headers_round_trip_through_message_headers(recorder: Recorder) -> None:
    with recorder.tracer.start_as_current_span("publish") as span:
        headers = trace_headers()
    published = span.get_span_context()

    for carried in (headers, {k: v.encode() for k, v in headers.items()}):  # str or bytes values
        received = trace.get_current_span(context_from_headers(carried)).get_span_context()
        assert (received.trace_id, received.span_id) == (published.trace_id, published.span_id)
        assert received.is_remote


def test_there_is_nothing_to_carry_without_a_current_span() -> None:
    assert trace_headers() == {}
    assert current_traceparent() is None


@pytest.mark.parametrize(
    "traceparent", [None, "", "00-garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"]
)
def test_a_missing_or_malformed_traceparent_starts_a_new_trace(
    recorder: Recorder, traceparent: str | None
) -> None:
    context = context_from_traceparent(traceparent)
    assert not trace.get_current_span(context).get_span_context().is_valid

    with instance_span(
        "create demo",
        instance_id="i-1",
        workflow="demo",
        parent=instance_parent(traceparent),
        tracer=recorder.tracer,
    ):
        pass

    assert recorder.span("create demo").parent is None


def test_a_triggered_instance_root_span_is_a_child_of_the_callers_span(recorder: Recorder) -> None:
    with recorder.tracer.start_as_current_span("caller publishes") as caller:
        headers = trace_headers()

    parent = instance_parent(None, headers)
    with instance_span(
        "create ship-order",
        instance_id="o-1",
        workflow="ship-order",
        parent=parent,
        tracer=recorder.tracer,
    ):
        pass

    root = recorder.span("create ship-order")
    assert root.parent is not None
    assert root.parent.span_id == caller.get_span_context().span_id
    assert root.context.trace_id == caller.get_span_context().trace_id
    assert root.attributes == {"warren.instance_id": "o-1", "warren.workflow": "ship-order"}


def test_a_wake_up_long_after_continues_the_stored_trace_and_links_the_timer(
    recorder: Recorder,
) -> None:
    # Creation stores the root's traceparent; a round that sleeps publishes the timer message.
    with instance_span("create demo", instance_id="i-1", workflow="demo", tracer=recorder.tracer):
        stored = current_traceparent()
    assert stored is not None
    with instance_span(
        "run demo",
        instance_id="i-1",
        workflow="demo",
        parent=instance_parent(stored),
        tracer=recorder.tracer,
    ):
        timer_headers = trace_headers()

    # A week later, another process: only the stored string and the message's headers remain.
    with instance_span(
        "run demo (woken)",
        instance_id="i-1",
        workflow="demo",
        parent=instance_parent(stored, timer_headers),
        tracer=recorder.tracer,
    ):
        pass

    root, sleeper, woken = (
        recorder.span(n) for n in ("create demo", "run demo", "run demo (woken)")
    )
    assert woken.context.trace_id == root.context.trace_id
    assert woken.parent is not None
    assert woken.parent.span_id == root.context.span_id
    assert [link.context.span_id for link in woken.links] == [sleeper.context.span_id]


def test_an_event_sent_under_another_trace_is_linked_not_adopted(recorder: Recorder) -> None:
    with instance_span("create demo", instance_id="i-1", workflow="demo", tracer=recorder.tracer):
        stored = current_traceparent()
    with recorder.tracer.start_as_current_span("other service sends event"):
        event_headers = trace_headers()

    with instance_span(
        "run demo",
        instance_id="i-1",
        workflow="demo",
        parent=instance_parent(stored, event_headers),
        tracer=recorder.tracer,
    ):
        pass

    root, sender, run = (
        recorder.span(n) for n in ("create demo", "other service sends event", "run demo")
    )
    assert run.context.trace_id == root.context.trace_id != sender.context.trace_id
    assert [link.context.span_id for link in run.links] == [sender.context.span_id]


def test_a_message_from_the_root_span_itself_gets_no_link(recorder: Recorder) -> None:
    with instance_span("create demo", instance_id="i-1", workflow="demo", tracer=recorder.tracer):
        stored = current_traceparent()
        create_headers = trace_headers()

    parent = instance_parent(stored, create_headers)

    assert parent.links == ()


def test_a_retried_step_attempt_span_carries_its_attributes_and_error(recorder: Recorder) -> None:
    with step_attempt_span(
        "charge card", instance_id="o-1", workflow="ship-order", attempt=2, tracer=recorder.tracer
    ) as attempt:
        attempt.set_outcome(
            "retried", retry_delay=timedelta(seconds=4), error=ValueError("declined")
        )

    span = recorder.span("charge card")
    assert span.attributes == {
        "warren.instance_id": "o-1",
        "warren.workflow": "ship-order",
        "warren.step": "charge card",
        "warren.attempt": 2,
        "warren.outcome": "retried",
        "warren.retry_delay_s": 4.0,
    }
    assert span.status.status_code is StatusCode.ERROR
    assert [event.attributes["exception.type"] for event in span.events if event.attributes] == [
        "ValueError"
    ]


def test_a_completed_step_attempt_span_is_not_an_error(recorder: Recorder) -> None:
    with step_attempt_span(
        "ship", instance_id="o-1", workflow="ship-order", attempt=1, tracer=recorder.tracer
    ) as attempt:
        attempt.set_outcome("completed")

    span = recorder.span("ship")
    assert span.attributes is not None
    assert span.attributes["warren.outcome"] == "completed"
    assert "warren.retry_delay_s" not in span.attributes
    assert span.status.status_code is StatusCode.UNSET


def test_step_attempt_spans_nest_under_the_current_round(recorder: Recorder) -> None:
    with (
        instance_span(
            "run demo", instance_id="i-1", workflow="demo", tracer=recorder.tracer
        ) as round_span,
        step_attempt_span(
            "a", instance_id="i-1", workflow="demo", attempt=1, tracer=recorder.tracer
        ),
    ):
        pass

    step = recorder.span("a")
    assert step.parent is not None
    assert step.parent.span_id == round_span.get_span_context().span_id


def test_an_exception_escaping_a_step_attempt_span_is_recorded(recorder: Recorder) -> None:
    with (
        pytest.raises(KeyError),
        step_attempt_span(
            "a", instance_id="i-1", workflow="demo", attempt=1, tracer=recorder.tracer
        ),
    ):
        raise KeyError("lost")

    span = recorder.span("a")
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]


def test_a_wait_span_spans_the_real_wait(recorder: Recorder) -> None:
    with instance_span("create demo", instance_id="i-1", workflow="demo", tracer=recorder.tracer):
        stored = current_traceparent()
    started = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)

    record_wait_span(
        "cooling-off",
        kind="sleep",
        instance_id="i-1",
        workflow="demo",
        started=started,
        ended=started + timedelta(days=7),
        parent=instance_parent(stored),
        attributes={"warren.due_at": (started + timedelta(days=7)).isoformat()},
        tracer=recorder.tracer,
    )

    span = recorder.span("cooling-off")
    assert span.start_time == 1740830400_123456_000
    assert span.end_time == span.start_time + 7 * 86400 * 10**9
    assert span.parent is not None
    assert span.parent.span_id == recorder.span("create demo").context.span_id
    assert span.attributes is not None
    assert span.attributes["warren.step_kind"] == "sleep"
    assert span.attributes["warren.due_at"] == "2025-03-08T12:00:00.123456+00:00"


@pytest.fixture
def otel_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in os.environ:
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(
    "variables",
    [
        {},
        {"OTEL_SERVICE_NAME": "orders"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"},
    ],
)
def test_tracing_is_off_unless_the_environment_asks_for_an_exporter(
    otel_environment: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        otel_environment.setenv(name, value)

    assert setup_tracing() is None


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            },
            "'grpc' is not supported",
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "'zipkin' is not supported"),
    ],
)
def test_an_exporter_warren_does_not_ship_is_refused_at_start_up(
    otel_environment: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    for name, value in variables.items():
        otel_environment.setenv(name, value)

    with pytest.raises(ValueError, match=message):
        setup_tracing()
