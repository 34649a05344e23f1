"""Tracing: one trace per instance, carried through AMQP headers and stored with the instance.

Configured only by the standard OpenTelemetry variables, and off unless they ask for it:
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns on OTLP/HTTP
export, `OTEL_TRACES_EXPORTER` picks `otlp`, `console` or `none` explicitly, `OTEL_SDK_DISABLED`
turns everything off, and `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`
and `OTEL_BSP_*` are read by the SDK itself. With tracing off the helpers below work on
OpenTelemetry's no-op tracer: no span is recorded and no header is written.

An instance's trace outlives any process: its root span's `traceparent` is stored with the
instance, and every later span about the instance (a round, a step attempt, a sleep) is a child
of that root, even when the root ended a week earlier in another process. The message that
caused the work is added as a span link, so the causal chain stays visible without nesting
every round inside the previous one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

#: The service name when neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES names one.
DEFAULT_SERVICE_NAME = "warren"

#: How a step attempt ended: `retried` failed with a retry scheduled, `failed` failed for good.
StepOutcome = Literal["completed", "retried", "failed"]

#: The waits that get a span of their own, recorded when they end.
WaitKind = Literal["sleep", "wait_for_event"]

# Always W3C trace context, whatever OTEL_PROPAGATORS says: the header names are part of the
# wire contract (another service's `traceparent` makes it the parent of an instance's trace).
_propagator = TraceContextTextMapPropagator()
_TRACE_HEADERS = ("traceparent", "tracestate")

# A proxy until setup_tracing() installs the real provider, then it delegates to it.
_tracer = trace.get_tracer("warren")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def service_resource() -> Resource:
    """The OpenTelemetry resource from OTEL_* variables, named `warren` unless they name it."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def setup_tracing() -> TracerProvider | None:
    """Install the process's tracer provider if the OTEL_* variables ask for export.

    Call once per process, before the first span. Spans are exported in batches from a
    background thread; call `shutdown()` on the returned provider when the process stops, or
    the last batch is lost.

    Returns:
        The installed provider, or None when tracing is off (nothing was installed).

    Raises:
        ValueError: an exporter or OTLP protocol that Warren does not ship (only OTLP over
            HTTP/protobuf, which Jaeger accepts on port 4318, and `console`).
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = [_exporter(name) for name in _exporter_names()]
    if not exporters:
        return None
    provider = TracerProvider(resource=service_resource())
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def is_tracing() -> bool:
    """Whether this process records spans: `setup_tracing()`, or the application, installed
    an SDK tracer provider. Work that only feeds spans is skipped otherwise."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def trace_sql(engine: sa.Engine, tracer: Tracer | None = None) -> None:
    """Give every statement `engine` executes within a span a client span, nested under it.

    Warren's own listener rather than opentelemetry-instrumentation-sqlalchemy: that one
    instruments engines through `create_engine` calls made after it is installed, or one
    engine per process, and its releases lag SQLAlchemy's (it declares < 2.1).

    Args:
        engine: the synchronous engine (`AsyncEngine.sync_engine` for an async one).
        tracer: for tests; the process's tracer by default.
    """
    system = engine.dialect.name

    def before(
        conn: sa.Connection,
        cursor: object,
        statement: str,
        parameters: object,
        context: sa.engine.ExecutionContext | None,
        executemany: bool,
    ) -> None:
        if context is not None:
            context._warren_span = start_sql_span(system, statement, tracer)  # type: ignore[attr-defined]

    def after(
        conn: sa.Connection,
        cursor: object,
        statement: str,
        parameters: object,
        context: sa.engine.ExecutionContext | None,
        executemany: bool,
    ) -> None:
        span: Span | None = getattr(context, "_warren_span", None)
        if span is not None:
            span.end()

    def failed(exception_context: sa.engine.ExceptionContext) -> None:
        span: Span | None = getattr(exception_context.execution_context, "_warren_span", None)
        if span is not None:
            span.record_exception(exception_context.original_exception)
            span.set_status(StatusCode.ERROR, str(exception_context.original_exception)[:200])
            span.end()

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)
    sa.event.listen(engine, "handle_error", failed)


#: Statements are cut to this many characters in `db.statement` (parameters are never sent).
_MAX_STATEMENT = 2000


def start_sql_span(system: str, statement: str, tracer: Tracer | None = None) -> Span | None:
    """A client span for one statement, nested under the current span; None outside one (the
    sweepers' and heartbeats' statements would each start a trace of their own, every
    second)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
    return (tracer or _tracer).start_span(
        f"{operation} {system}",
        kind=SpanKind.CLIENT,
        attributes={"db.system": system, "db.statement": statement[:_MAX_STATEMENT]},
    )


@contextmanager
def sql_span(system: str, statement: str) -> Iterator[None]:
    """`start_sql_span` around a block: the per-step path's statements, which SQLAlchemy's
    events do not see (store/driver.py)."""
    span = start_sql_span(system, statement)
    if span is None:
        yield
        return
    try:
        yield
    except Exception as error:
        span.record_exception(error)
        span.set_status(StatusCode.ERROR, str(error)[:200])
        raise
    finally:
        span.end()


def _exporter_names() -> list[str]:
    configured = os.environ.get("OTEL_TRACES_EXPORTER")
    if configured is None:
        endpoint_set = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
        return ["otlp"] if endpoint_set else []
    names = [name.strip().lower() for name in configured.split(",") if name.strip()]
    return [] if "none" in names else names


def _exporter(name: str) -> SpanExporter:
    if name == "otlp":
        protocol = (
            os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        )
        if protocol != "http/protobuf":
            raise ValueError(
                f"OTLP protocol {protocol!r} is not supported: Warren exports traces over "
                "http/protobuf only (Jaeger listens for it on port 4318)"
            )
        # Imported here: it pulls in requests and protobuf, which a process with tracing off
        # should not pay for at start-up.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Reads OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _HEADERS, _TIMEOUT and _COMPRESSION.
        return OTLPSpanExporter()
    if name == "console":
        return ConsoleSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER {name!r} is not supported: use otlp, console or none")


def trace_headers(context: Context | None = None) -> dict[str, str]:
    """W3C `traceparent` (and `tracestate`, if any) of the current span, or of `context`.

    Merge them into the headers of a message to publish. Empty when there is no span to
    continue, as always with tracing off.
    """
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=context)
    return carrier


def current_traceparent() -> str | None:
    """The current span's `traceparent`, to store with an instance; None without a span."""
    return trace_headers().get("traceparent")


def context_from_headers(headers: Mapping[str, object] | None) -> Context:
    """The trace context carried by AMQP message headers (str or bytes values).

    A missing or malformed `traceparent` gives an empty context: the next span starts a trace.
    """
    carrier: dict[str, str] = {}
    for key in _TRACE_HEADERS:
        value = (headers or {}).get(key)
        if isinstance(value, bytes):
            value = value.decode("ascii", errors="replace")
        if isinstance(value, str):
            carrier[key] = value
    return _propagator.extract(carrier)


def context_from_traceparent(traceparent: str | None, tracestate: str | None = None) -> Context:
    """The trace context of a stored `traceparent`; empty if it is None or malformed."""
    return context_from_headers({"traceparent": traceparent, "tracestate": tracestate})


@dataclass(frozen=True)
class SpanParent:
    """Where a new span goes: its parent (None: the current context) and the spans it links to."""

    context: Context | None = None
    links: tuple[Link, ...] = ()


def instance_parent(
    stored_traceparent: str | None, headers: Mapping[str, object] | None = None
) -> SpanParent:
    """The parent of a span about an instance, so that the instance keeps one trace.

    Args:
        stored_traceparent: the instance's root span, as stored when it was created; None
            while the instance is being created.
        headers: the headers of the message that caused the work, if any.

    Returns:
        Without a stored root: the message's context, so that another service's trigger
        makes the instance's root span a child of its span; without that either, the current
        context. With a stored root: the root, plus a link to the message's span when it is
        another span (a timer published a week ago, an event sent under another trace).
    """
    message_context = context_from_headers(headers)
    cause = trace.get_current_span(message_context).get_span_context()
    root_context = context_from_traceparent(stored_traceparent)
    root = trace.get_current_span(root_context).get_span_context()
    if not root.is_valid:
        return SpanParent(message_context if cause.is_valid else None)
    if cause.is_valid and cause.span_id != root.span_id:
        return SpanParent(root_context, (Link(cause),))
    return SpanParent(root_context)


@contextmanager
def instance_span(
    name: str,
    *,
    instance_id: str,
    workflow: str,
    parent: SpanParent | None = None,
    tracer: Tracer | None = None,
) -> Iterator[Span]:
    """A current span about one instance (its creation, a round of replay).

    Args:
        name: the span name, e.g. `create ship-order` or `run ship-order`.
        instance_id: recorded as `warren.instance_id`.
        workflow: recorded as `warren.workflow`.
        parent: from `instance_parent`; None continues the current context.
        tracer: for tests; the process's tracer by default.
    """
    parent = parent or SpanParent()
    with (tracer or _tracer).start_as_current_span(
        name,
        context=parent.context,
        links=parent.links,
        attributes={"warren.instance_id": instance_id, "warren.workflow": workflow},
    ) as span:
        yield span


@dataclass
class StepAttemptSpan:
    """The span of one step attempt; the engine says how the attempt ended."""

    span: Span

    def set_outcome(
        self,
        outcome: StepOutcome,
        *,
        retry_delay: timedelta | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Record the attempt's outcome, its retry delay and the error it raised, if any."""
        self.span.set_attribute("warren.outcome", outcome)
        if retry_delay is not None:
            self.span.set_attribute("warren.retry_delay_s", retry_delay.total_seconds())
        if error is not None:
            self.span.record_exception(error)
        if outcome != "completed":
            self.span.set_status(StatusCode.ERROR, str(error) if error is not None else outcome)


@contextmanager
def step_attempt_span(
    step: str,
    *,
    instance_id: str,
    workflow: str,
    attempt: int,
    parent: SpanParent | None = None,
    tracer: Tracer | None = None,
) -> Iterator[StepAttemptSpan]:
    """A current span named after the step, around one attempt of its body.

    Work the body does (SQL, HTTP, messages) nests under it when that work is instrumented.
    Call `set_outcome` on the yielded object before the block ends; an exception escaping the
    block (a cancelled attempt) is recorded on the span as an error.

    Args:
        step: the step's name (its memo key), which names the span.
        instance_id: recorded as `warren.instance_id`.
        workflow: recorded as `warren.workflow`.
        attempt: counted from 1, recorded as `warren.attempt`.
        parent: from `instance_parent`; None continues the current context (a round's span).
        tracer: for tests; the process's tracer by default.
    """
    attributes: dict[str, AttributeValue] = {
        "warren.instance_id": instance_id,
        "warren.workflow": workflow,
        "warren.step": step,
        "warren.attempt": attempt,
    }
    parent = parent or SpanParent()
    with (tracer or _tracer).start_as_current_span(
        step,
        context=parent.context,
        links=parent.links,
        attributes=attributes,
    ) as span:
        yield StepAttemptSpan(span)


def record_wait_span(
    step: str,
    *,
    kind: WaitKind,
    instance_id: str,
    workflow: str,
    started: datetime,
    ended: datetime,
    parent: SpanParent,
    attributes: Mapping[str, AttributeValue] | None = None,
    tracer: Tracer | None = None,
) -> None:
    """Record a sleep or an event wait once it is over, with its real start and end times.

    No process holds a span open while an instance waits (it may wait for months), so the
    span is written after the fact by whichever worker sees the wait end.

    Args:
        step: the sleep's or wait's name, which names the span.
        kind: recorded as `warren.step_kind`.
        instance_id: recorded as `warren.instance_id`.
        workflow: recorded as `warren.workflow`.
        started: when the wait began (aware).
        ended: when it ended (aware): the wake-up, the event, or the timeout.
        parent: from `instance_parent`.
        attributes: more attributes, e.g. `warren.due_at` or `warren.event_type`.
        tracer: for tests; the process's tracer by default.
    """
    span = (tracer or _tracer).start_span(
        step,
        context=parent.context,
        links=parent.links,
        attributes={
            "warren.instance_id": instance_id,
            "warren.workflow": workflow,
            "warren.step": step,
            "warren.step_kind": kind,
            **(attributes or {}),
        },
        start_time=_nanoseconds(started),
    )
    span.end(end_time=_nanoseconds(ended))


def _nanoseconds(moment: datetime) -> int:
    # Integer arithmetic: a float timestamp in nanoseconds would lose the microseconds.
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000
