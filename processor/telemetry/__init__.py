"""Telemetry: traces, metrics, health probes and structured logs for operators.

- `tracing`: OpenTelemetry spans per instance and step attempt, carried in AMQP headers.
- `metrics`: the `warren_*` instruments, read out in Prometheus text format.
- `http`: `/healthz`, `/readyz` and `/metrics` on one small HTTP port.
- `logs`: a JSON log formatter tagged with instance, workflow, step and trace id.
"""
