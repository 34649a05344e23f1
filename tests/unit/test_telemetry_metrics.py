"""The `warren_*` instruments, as Prometheus renders them."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from processor.telemetry.metrics import Metrics, get_metrics, setup_metrics


def scrape(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample `/metrics` would show, keyed by sample name and labels."""
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


def test_each_step_outcome_has_its_counter_by_workflow() -> None:
    metrics = setup_metrics()
    for _ in range(3):
        metrics.step_started("ship-order")
    metrics.step_started("refund")
    metrics.step_ended("ship-order", "completed", 0.1)
    metrics.step_ended("ship-order", "retried", 0.2)
    metrics.step_ended("ship-order", "failed", 0.3)

    samples = scrape(metrics)

    assert samples[("warren_steps_started_total", labels(workflow="ship-order"))] == 3
    assert samples[("warren_steps_started_total", labels(workflow="refund"))] == 1
    assert samples[("warren_steps_completed_total", labels(workflow="ship-order"))] == 1
    assert samples[("warren_steps_retried_total", labels(workflow="ship-order"))] == 1
    assert samples[("warren_steps_failed_total", labels(workflow="ship-order"))] == 1
    assert ("warren_steps_completed_total", labels(workflow="refund")) not in samples


def test_step_durations_are_histograms_in_seconds_by_workflow_and_outcome() -> None:
    metrics = setup_metrics()
    metrics.step_ended("ship-order", "completed", 0.02)
    metrics.step_ended("ship-order", "completed", 3.0)

    samples = scrape(metrics)

    completed = {"workflow": "ship-order", "outcome": "completed"}
    bucket = "warren_step_duration_seconds_bucket"
    assert samples[(bucket, labels(**completed, le="0.01"))] == 0
    assert samples[(bucket, labels(**completed, le="0.025"))] == 1
    assert samples[(bucket, labels(**completed, le="5.0"))] == 2
    assert samples[("warren_step_duration_seconds_count", labels(**completed))] == 2
    assert samples[("warren_step_duration_seconds_sum", labels(**completed))] == 3.02


def test_replay_duration_and_timer_lateness_are_recorded_by_workflow() -> None:
    metrics = setup_metrics()
    metrics.replay_finished("ship-order", 0.004)
    metrics.timer_fired("ship-order", 0.12)
    metrics.timer_fired("ship-order", -0.5)  # a clock a little behind the due time

    samples = scrape(metrics)

    workflow = labels(workflow="ship-order")
    assert samples[("warren_replay_duration_seconds_count", workflow)] == 1
    assert samples[("warren_replay_duration_seconds_sum", workflow)] == 0.004
    assert samples[("warren_timer_lateness_seconds_count", workflow)] == 2
    assert samples[("warren_timer_lateness_seconds_sum", workflow)] == 0.12


def test_dead_letter_reasons_outside_the_known_set_are_counted_as_other() -> None:
    metrics = setup_metrics()
    metrics.message_dead_lettered("warren.ingress", "not_json")
    metrics.message_dead_lettered("warren.ingress", "not_json")
    metrics.message_dead_lettered("warren.ingress", "body is not JSON: Expecting value: line 1")

    samples = scrape(metrics)

    name = "warren_messages_dead_lettered_total"
    assert samples[(name, labels(queue="warren.ingress", reason="not_json"))] == 2
    assert samples[(name, labels(queue="warren.ingress", reason="other"))] == 1


def test_gauges_report_the_last_refreshed_values_and_zero_for_a_status_gone() -> None:
    metrics = setup_metrics()
    assert not any(
        name in ("warren_outbox_backlog", "warren_instances") for name, _ in scrape(metrics)
    )

    metrics.set_outbox_backlog(7)
    metrics.set_instance_counts({"running": 3, "waiting": 5})
    first = scrape(metrics)
    metrics.set_outbox_backlog(0)
    metrics.set_instance_counts({"complete": 8})
    second = scrape(metrics)

    assert first[("warren_outbox_backlog", labels())] == 7
    assert first[("warren_instances", labels(status="running"))] == 3
    assert first[("warren_instances", labels(status="waiting"))] == 5
    assert second[("warren_outbox_backlog", labels())] == 0
    assert second[("warren_instances", labels(status="running"))] == 0
    assert second[("warren_instances", labels(status="waiting"))] == 0
    assert second[("warren_instances", labels(status="complete"))] == 8


def test_setup_metrics_installs_fresh_instruments_and_retires_the_old_ones() -> None:
    old = setup_metrics()
    old.step_started("ship-order")

    new = setup_metrics()

    assert get_metrics() is new
    assert not any(name.startswith("warren_") for name, _ in scrape(old))
    assert not any(name == "warren_steps_started_total" for name, _ in scrape(new))
