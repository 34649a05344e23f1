"""Metrics: the `warren_*` instruments, read out in Prometheus text format on the worker's port.

A worker calls `setup_metrics()` once; the engine records through `get_metrics()`, which is a
no-op until then. Attributes stay low in cardinality, because every combination is a time
series: the workflow name, an outcome, a status, a bounded dead-letter reason; never an
instance id or a step name (those belong in traces and logs).

Steps: every started attempt ends as one of completed, retried (failed, a retry is
scheduled) or failed (failed for good), so `started = completed + retried + failed + running`
(plus attempts of workers that died).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, MeterProvider, NoOpMeterProvider, Observation
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from prometheus_client import CollectorRegistry

from processor.telemetry.tracing import StepOutcome, service_resource

#: Bounded dead-letter reasons; anything else is counted as `other`. The full text of a
#: reason travels in the message's `x-error-reason` header and in the log.
DEAD_LETTER_REASONS = frozenset(
    {
        "too_large",  # body or message id over its limit
        "bad_content_type",  # not application/json
        "not_utf8",
        "not_json",  # not JSON, or nested too deeply
        "invalid_message",  # JSON that the wire model rejects
        "unknown_routing_key",
        "unknown_workflow",
        "unknown_instance",  # an event or control for an id with no instance, after retries
        "invalid_state",  # a control action the instance's status does not allow
        "delivery_limit",  # redelivered past the queue's limit
        "other",
    }
)

# Seconds. OpenTelemetry's default buckets (0-10,000) are made for milliseconds.
# Floats, so that the `le` labels read 1.0 like prometheus_client's own.
_STEP_SECONDS = (
    *(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    *(10.0, 30.0, 60.0, 300.0, 600.0),  # up to the default step timeout, 10 minutes
)
_REPLAY_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_LATENESS_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """Warren's instruments on one meter provider, with a method for each thing to count."""

    def __init__(self, provider: MeterProvider, registry: CollectorRegistry) -> None:
        """Create the instruments.

        Args:
            provider: where the instruments live; a no-op provider records nothing.
            registry: the Prometheus registry that `/metrics` renders.
        """
        self.provider = provider
        self.registry = registry
        self._is_shut_down = False
        # Gauges are observed by a synchronous callback at scrape time, so they report the
        # last values the worker refreshed (None: not yet, nothing is reported).
        self._outbox_backlog: int | None = None
        self._instances_by_status: dict[str, int] = {}

        meter = provider.get_meter("warren")
        self._steps_started = meter.create_counter(
            "warren_steps_started", "{attempt}", "Step attempts started."
        )
        self._steps_ended = {
            "completed": meter.create_counter(
                "warren_steps_completed", "{attempt}", "Step attempts that returned a result."
            ),
            "retried": meter.create_counter(
                "warren_steps_retried", "{attempt}", "Step attempts that failed; a retry is due."
            ),
            "failed": meter.create_counter(
                "warren_steps_failed", "{attempt}", "Step attempts that failed for good."
            ),
        }
        self._step_duration = meter.create_histogram(
            "warren_step_duration",
            "s",
            "Duration of step attempts, by outcome.",
            explicit_bucket_boundaries_advisory=_STEP_SECONDS,
        )
        self._replay_duration = meter.create_histogram(
            "warren_replay_duration",
            "s",
            "Duration of replaying an instance's run() up to its next action.",
            explicit_bucket_boundaries_advisory=_REPLAY_SECONDS,
        )
        self._timer_lateness = meter.create_histogram(
            "warren_timer_lateness",
            "s",
            "How long after its due time a sleep, back-off or timeout was acted on.",
            explicit_bucket_boundaries_advisory=_LATENESS_SECONDS,
        )
        self._dead_lettered = meter.create_counter(
            "warren_messages_dead_lettered",
            "{message}",
            "Messages rejected to a dead-letter queue, by reason.",
        )
        meter.create_observable_gauge(
            "warren_outbox_backlog",
            [self._observe_outbox_backlog],
            "{message}",
            "Outbox rows committed but not yet published.",
        )
        meter.create_observable_gauge(
            "warren_instances",
            [self._observe_instances],
            "{instance}",
            "Instances by status.",
        )

    def step_started(self, workflow: str) -> None:
        """Count a step attempt that starts running its body."""
        self._steps_started.add(1, {"workflow": workflow})

    def step_ended(self, workflow: str, outcome: StepOutcome, duration_s: float) -> None:
        """Count a step attempt's outcome and record how long its body ran."""
        self._steps_ended[outcome].add(1, {"workflow": workflow})
        self._step_duration.record(duration_s, {"workflow": workflow, "outcome": outcome})

    def replay_finished(self, workflow: str, duration_s: float) -> None:
        """Record how long one replay of `run()` took."""
        self._replay_duration.record(duration_s, {"workflow": workflow})

    def timer_fired(self, workflow: str, lateness_s: float) -> None:
        """Record how late a timer was acted on (an early one, re-delayed, is not recorded)."""
        self._timer_lateness.record(max(lateness_s, 0.0), {"workflow": workflow})

    def message_dead_lettered(self, queue: str, reason: str) -> None:
        """Count a dead-lettered message.

        Args:
            queue: the queue it was consumed from.
            reason: one of `DEAD_LETTER_REASONS`; any other value is counted as `other`.
        """
        category = reason if reason in DEAD_LETTER_REASONS else "other"
        self._dead_lettered.add(1, {"queue": queue, "reason": category})

    def set_outbox_backlog(self, rows: int) -> None:
        """Set the outbox backlog that scrapes report until the next refresh."""
        self._outbox_backlog = rows

    def set_instance_counts(self, counts: Mapping[str, int]) -> None:
        """Set the instance counts by status that scrapes report until the next refresh.

        A status reported before and missing from `counts` reports 0, not its old count.
        """
        self._instances_by_status = {
            **dict.fromkeys(self._instances_by_status, 0),
            **counts,
        }

    def shutdown(self) -> None:
        """Release the provider; `/metrics` is empty after this. A second call does nothing."""
        if isinstance(self.provider, SdkMeterProvider) and not self._is_shut_down:
            self._is_shut_down = True
            self.provider.shutdown()

    def _observe_outbox_backlog(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._outbox_backlog is None:
            return []
        return [Observation(self._outbox_backlog)]

    def _observe_instances(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(count, {"status": status})
            for status, count in sorted(self._instances_by_status.items())
        ]


_metrics = Metrics(NoOpMeterProvider(), CollectorRegistry())


def setup_metrics() -> Metrics:
    """Create the process's instruments, which `get_metrics()` then returns.

    Call once per process (a worker, when it starts). A later call shuts the previous
    instruments down and starts fresh ones from zero.
    """
    global _metrics
    _metrics.shutdown()
    registry = CollectorRegistry()
    # Scope labels would add otel_scope_name="warren" to every series, saying nothing.
    reader = PrometheusMetricReader(registry=registry, scope_info_enabled=False)
    # A pull reader has nothing to flush at exit, so no atexit hook keeps old providers alive.
    provider = SdkMeterProvider(
        metric_readers=[reader], resource=service_resource(), shutdown_on_exit=False
    )
    _metrics = Metrics(provider, registry)
    return _metrics


def get_metrics() -> Metrics:
    """The instruments to record on: no-ops until `setup_metrics()` has run."""
    return _metrics
