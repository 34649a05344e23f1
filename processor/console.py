"""What the command line shows people: step timelines, instance lists and usage, with rich."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from processor.client import InstanceSummary, WorkflowUsage
from schemas import InstanceStatus, InstanceStatusName, StepRecord, StepStatusName

#: Columns when the output is not a terminal (a pipe, a file, a test): wide enough that no
#: cell wraps, so each step stays on one line for grep.
PIPE_WIDTH = 200

_STATUS_STYLES: dict[str, str] = {
    InstanceStatusName.COMPLETE: "green",
    InstanceStatusName.ERRORED: "red",
    InstanceStatusName.TERMINATED: "red",
    InstanceStatusName.RUNNING: "cyan",
    InstanceStatusName.PAUSED: "yellow",
    InstanceStatusName.WAITING_FOR_PAUSE: "yellow",
    StepStatusName.FAILED: "red",
    StepStatusName.RETRYING: "yellow",
    StepStatusName.SLEEPING: "blue",
    StepStatusName.WAITING: "blue",
}


def make_console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr): the terminal's width, or PIPE_WIDTH when piped."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else PIPE_WIDTH)


def duration_text(delta: timedelta) -> str:
    """A duration as people read it: `0.4 ms`, `12 ms`, `1.23 s`, `5m 03s`, `3h 12m`, `4d 3h`."""
    seconds = delta.total_seconds()
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    if days:
        return f"{days}d {hour}h"
    if hours:
        return f"{hours}h {minute:02d}m"
    return f"{minutes}m {second:02d}s"


def age_text(delta: timedelta) -> str:
    """How long ago, as people read it: `8s`, `5m 03s`, `3h 12m`, `4d 3h`."""
    if delta.total_seconds() < 60:
        return f"{max(int(delta.total_seconds()), 0)}s"
    return duration_text(delta)


def _offset(moment: datetime | None, origin: datetime) -> str:
    """`moment` as an offset from the instance's creation: `+1.085s`, `+3d 0h`."""
    if moment is None:
        return ""
    delta = moment - origin
    if abs(delta.total_seconds()) < 60:
        return f"+{delta.total_seconds():.3f}s"
    return f"+{duration_text(delta)}"


#: Step statuses a step ends in; any other, in an ended instance, was cut short.
_STEP_ENDS = (StepStatusName.COMPLETE, StepStatusName.FAILED)


def _styled(value: StepStatusName | InstanceStatusName) -> Text:
    return Text(value.value, style=_STATUS_STYLES.get(value, ""))


def _step_row(
    step: StepRecord, origin: datetime, now: datetime, ended: InstanceStatus | None
) -> list[str | Text]:
    """`ended`: the instance, if it has ended: a step it left unfinished is shown as such
    (terminate stops an instance wherever it is)."""
    status = _styled(step.status)
    if step.started_at is None:
        duration = ""
    elif step.ended_at is not None:
        duration = duration_text(step.ended_at - step.started_at)
    elif ended is not None:
        duration = duration_text(ended.updated_at - step.started_at)
        status.append(f", then {ended.status.value}")
    else:
        duration = f"{duration_text(now - step.started_at)} so far"
    if step.error is not None:
        detail = Text(f"{step.error.name}: {step.error.message}", style="red")
    elif step.kind == "wait_for_event":
        detail = Text(f"event {step.event_type!r}")
    elif step.output is not None:
        detail = Text(json.dumps(step.output))
    else:
        detail = Text("")
    detail.truncate(80, overflow="ellipsis")
    return [
        step.name,
        step.kind.value,
        status,
        str(step.attempts) if step.kind == "do" else "",
        _offset(step.started_at, origin),
        duration,
        _offset(step.wake_at, origin),
        detail,
    ]


def status_view(status: InstanceStatus, now: datetime) -> Group:
    """An instance's header lines and its step timeline, for `warren status`.

    Times in the table are offsets from the instance's creation. `due` is when a sleep
    wakes, a wait times out, or a failed step's next attempt may start.
    """
    header = Text.assemble(
        f"instance {status.id}  workflow {status.workflow}  status ",
        _styled(status.status),
    )
    times = (
        f"created {status.created_at.isoformat(timespec='milliseconds')}  "
        f"compute {duration_text(timedelta(milliseconds=status.compute_ms))} "
        f"(cpu {duration_text(timedelta(milliseconds=status.cpu_ms))})  "
        f"wall {duration_text(timedelta(milliseconds=status.wall_ms))}"
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("step", "kind", "status", "attempts", "start", "duration", "due", "detail"):
        table.add_column(column, no_wrap=column != "detail")
    for step in status.steps:
        ended = status if status.status.is_terminal else None
        table.add_row(*_step_row(step, status.created_at, now, ended))
    parts: list[Text | Table] = [header, Text(times), table]
    if status.output is not None:
        parts.append(Text(f"output: {json.dumps(status.output)}"))
    if status.error is not None:
        parts.append(Text(f"error: {status.error.name}: {status.error.message}", style="red"))
    return Group(*parts)


def instances_table(instances: Sequence[InstanceSummary], now: datetime) -> Table:
    """The instances with their status, age and current step, for `warren list`."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("id", "workflow", "status", "age", "current step"):
        table.add_column(column, no_wrap=True)
    for item in instances:
        current = Text("")
        if item.current_step is not None:
            current = Text(item.current_step + " (")
            if item.current_step_status is not None:
                current.append_text(_styled(item.current_step_status))
                if item.status.is_terminal and item.current_step_status not in _STEP_ENDS:
                    current.append(f", then {item.status.value}")  # left unfinished
            current.append(")")
        table.add_row(
            item.id,
            item.workflow,
            _styled(item.status),
            age_text(now - item.created_at),
            current,
        )
    return table


def usage_table(usage: Sequence[WorkflowUsage]) -> Table:
    """Compute and wall time per workflow, for `warren usage`."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("workflow", no_wrap=True)
    for column in ("instances", "compute", "cpu", "wall", "compute/wall"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in usage:
        share = f"{row.compute_ms / row.wall_ms:.2%}" if row.wall_ms > 0 else ""
        table.add_row(
            row.workflow,
            str(row.instances),
            duration_text(timedelta(milliseconds=row.compute_ms)),
            duration_text(timedelta(milliseconds=row.cpu_ms)),
            duration_text(timedelta(milliseconds=row.wall_ms)),
            share,
        )
    return table
