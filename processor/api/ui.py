"""The dashboard at /ui: server-rendered pages on the same Client and rules as the REST API.

A browser cannot send a bearer token, so the dashboard keeps the token in an HttpOnly,
SameSite=Strict cookie set by its login form (no login when authentication is off). Pages that
show running instances refresh themselves every two seconds (static/app.js), and every action
asks for confirmation first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from processor.api.auth import Principal, Scope
from processor.api.routes import (
    authenticator,
    check_visible,
    checked_event_type,
    checked_id,
    client_of,
    visible_status,
    visible_workflows,
)
from processor.client import InstancePage, WorkflowUsage
from schemas import (
    TERMINAL_STATUSES,
    ControlAction,
    InstanceStatus,
    InstanceStatusName,
    StepKind,
    StepRecord,
    StepStatusName,
)

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

#: The dashboard's session: the token itself, which only this server's pages can read.
COOKIE = "warren_token"
#: A page whose instances may still change refreshes this often (milliseconds).
REFRESH_MS = 2000


class LoginRequiredError(Exception):
    """A dashboard request without a valid session: the browser is sent to the login form."""


def is_dashboard(request: Request) -> bool:
    path = request.url.path
    return path == "/ui" or path.startswith("/ui/")


async def to_login(request: Request, error: Exception) -> Response:
    if request.method != "GET" or _is_fragment(request.url.path):
        return Response(status_code=HTTPStatus.UNAUTHORIZED)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target)}", HTTPStatus.SEE_OTHER)


def _is_fragment(path: str) -> bool:
    """A part of a page that the page reloads, not a page: the instances table, or an
    instance's detail (`/ui/instances/{id}/detail`; an instance may be called "detail")."""
    return path == "/ui/instances-table" or (path.count("/") == 4 and path.endswith("/detail"))


def error_page(
    request: Request, code: int, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """An HTTP error as a page a person reads: the dashboard's answer where the API's is JSON."""
    return templates.TemplateResponse(
        request,
        "error.html",
        {"code": code, "reason": HTTPStatus(code).phrase, "message": message},
        status_code=code,
        headers=headers,
    )


def viewer(request: Request) -> Principal:
    principal = authenticator(request).token(request.cookies.get(COOKIE))
    if principal is None:
        raise LoginRequiredError
    principal.require(Scope.READ)
    return principal


Viewer = Annotated[Principal, Depends(viewer)]


def _render(request: Request, name: str, principal: Principal, **context: Any) -> Response:
    context.update(
        principal=principal,
        auth_enabled=authenticator(request).enabled,
        refresh_ms=REFRESH_MS,
        now=datetime.now(UTC),
    )
    return templates.TemplateResponse(request, name, context)


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form body (the dashboard's forms post nothing else)."""
    fields = parse_qs((await request.body()).decode("utf-8", "replace"))
    return {key: values[-1] for key, values in fields.items()}


@router.get("")
async def home() -> Response:
    return RedirectResponse("/ui/instances", HTTPStatus.SEE_OTHER)


@router.get("/login")
async def login_form(request: Request, next: str = "/ui/instances") -> Response:
    return templates.TemplateResponse(request, "login.html", {"next": _local(next)})


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    principal = authenticator(request).token(form.get("token", "").strip())
    target = _local(form.get("next", ""))
    if principal is None or not principal.may(Scope.READ):
        return templates.TemplateResponse(
            request,
            "login.html",
            {"next": target, "error": "That token is unknown or lacks the read scope."},
            status_code=HTTPStatus.UNAUTHORIZED,
        )
    response = RedirectResponse(target, HTTPStatus.SEE_OTHER)
    response.set_cookie(
        COOKIE,
        form.get("token", "").strip(),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/ui",
    )
    return response


@router.post("/logout")
async def logout() -> Response:
    response = RedirectResponse("/ui/login", HTTPStatus.SEE_OTHER)
    response.delete_cookie(COOKIE, path="/ui")
    return response


def _local(target: str) -> str:
    """Only a dashboard path may follow a login: never another site."""
    return (
        target if target.startswith("/ui/") and not target.startswith("/ui//") else "/ui/instances"
    )


async def _instances_page(
    request: Request, principal: Principal, workflow: str, status: str, cursor: str
) -> tuple[InstancePage, dict[str, str]]:
    filters = {"workflow": workflow, "status": status}
    workflows = visible_workflows(principal, workflow or None)
    if workflows == []:
        return InstancePage(instances=[]), filters
    page = await client_of(request).list_page(workflows, status or None, 50, cursor or None)
    return page, filters


def _table_context(page: InstancePage, filters: dict[str, str], cursor: str) -> dict[str, Any]:
    query = {key: value for key, value in filters.items() if value}
    return {
        "page": page,
        "cursor": cursor,
        "query": urlencode(query),
        "next_query": urlencode({**query, "cursor": page.next_cursor or ""}),
        # The first page shows new instances as they come; any page, those that change.
        "live": not cursor or any(i.status not in TERMINAL_STATUSES for i in page.instances),
        "table_url": "/ui/instances-table?" + urlencode({**query, "cursor": cursor}),
    }


@router.get("/instances")
async def instances(
    request: Request, principal: Viewer, workflow: str = "", status: str = "", cursor: str = ""
) -> Response:
    page, filters = await _instances_page(request, principal, workflow, status, cursor)
    counts = await client_of(request).workflow_counts()
    return _render(
        request,
        "instances.html",
        principal,
        filters=filters,
        workflows=sorted(name for name in counts if principal.sees(name)),
        statuses=[s.value for s in InstanceStatusName],
        **_table_context(page, filters, cursor),
    )


# Not under /instances/: an instance may be called "table".
@router.get("/instances-table")
async def instances_table(
    request: Request, principal: Viewer, workflow: str = "", status: str = "", cursor: str = ""
) -> Response:
    page, filters = await _instances_page(request, principal, workflow, status, cursor)
    return _render(
        request, "_instances_table.html", principal, **_table_context(page, filters, cursor)
    )


async def _detail_context(
    request: Request, principal: Principal, instance_id: str
) -> dict[str, Any]:
    client = client_of(request)
    instance = await visible_status(client, principal, instance_id)
    now = datetime.now(UTC)
    waiting = [s for s in instance.steps if s.status == StepStatusName.WAITING]
    waiting_for = waiting[0].event_type if waiting and not instance.status.is_terminal else None
    return {
        "instance": instance,
        "events": await client.events(instance_id),
        "timeline": timeline(instance, now),
        "waiting_for": waiting_for,
        "actions": control_actions(instance),
        "live": not instance.status.is_terminal,
        "detail_url": f"/ui/instances/{quote(instance_id)}/detail",
    }


@router.get("/instances/{instance_id}")
async def instance_page(
    request: Request, instance_id: str, principal: Viewer, notice: str = ""
) -> Response:
    context = await _detail_context(request, principal, instance_id)
    return _render(request, "instance.html", principal, notice=notice, **context)


@router.get("/instances/{instance_id}/detail")
async def instance_detail(request: Request, instance_id: str, principal: Viewer) -> Response:
    context = await _detail_context(request, principal, instance_id)
    return _render(request, "_instance_detail.html", principal, **context)


@router.post("/instances/{instance_id}/decide")
async def decide(request: Request, instance_id: str, principal: Viewer) -> Response:
    """Approve or reject: send the event the instance waits for, with `approved` set in the
    JSON object given as payload."""
    principal.require(Scope.EVENTS)
    form = await _form(request)
    event_type = checked_event_type(form.get("event_type", ""))
    approved = form.get("decision") == "approve"
    try:
        extra = json.loads(form.get("payload") or "{}")
    except RecursionError:
        raise ValueError("the payload is nested too deeply") from None
    except ValueError as error:
        raise ValueError(f"the payload is not JSON: {error}") from None
    if not isinstance(extra, dict):
        raise ValueError("the payload must be a JSON object")
    client = client_of(request)
    await check_visible(client, principal, instance_id)
    await client.send_event(instance_id, event_type, {**extra, "approved": approved})
    verb = "approved" if approved else "rejected"
    return _back_to(instance_id, f"{verb}: sent event {event_type!r}")


@router.post("/instances/{instance_id}/control/{action}")
async def control(
    request: Request, instance_id: str, action: ControlAction, principal: Viewer
) -> Response:
    principal.require(Scope.WRITE)
    client = client_of(request)
    await check_visible(client, principal, instance_id)
    await client.control(instance_id, action)
    return _back_to(instance_id, f"{action.value}: done")


def _back_to(instance_id: str, notice: str) -> Response:
    return RedirectResponse(
        f"/ui/instances/{quote(checked_id(instance_id))}?{urlencode({'notice': notice})}",
        HTTPStatus.SEE_OTHER,
    )


@dataclass(frozen=True)
class WorkflowRow:
    """One workflow on the workflows page."""

    name: str
    by_status: dict[InstanceStatusName, int]
    #: Totals over its instances (`Client.usage`); None while it has none.
    usage: WorkflowUsage | None

    @property
    def instances(self) -> int:
        return sum(self.by_status.values())


@router.get("/workflows")
async def workflows(request: Request, principal: Viewer) -> Response:
    client = client_of(request)
    counts = await client.workflow_counts()
    usage = {totals.workflow: totals for totals in await client.usage()}
    rows = [
        WorkflowRow(name, by_status, usage.get(name))
        for name, by_status in sorted(counts.items())
        if principal.sees(name)
    ]
    return _render(
        request,
        "workflows.html",
        principal,
        rows=rows,
        statuses=[s for s in InstanceStatusName if any(s in row.by_status for row in rows)],
    )


PAUSABLE = (InstanceStatusName.QUEUED, InstanceStatusName.RUNNING, InstanceStatusName.WAITING)


def control_actions(instance: InstanceStatus) -> list[ControlAction]:
    """The control actions the instance's status allows, as `commands.control` decides."""
    status = instance.status
    actions = []
    if status in (
        InstanceStatusName.QUEUED,
        InstanceStatusName.RUNNING,
        InstanceStatusName.WAITING,
    ):
        actions.append(ControlAction.PAUSE)
    if status in (InstanceStatusName.PAUSED, InstanceStatusName.WAITING_FOR_PAUSE):
        actions.append(ControlAction.RESUME)
    if not status.is_terminal:
        actions.append(ControlAction.TERMINATE)
    if status != InstanceStatusName.TERMINATED:
        actions.append(ControlAction.RESTART)
    return actions


@dataclass(frozen=True)
class Bar:
    """One step on the timeline: where its bar starts and how wide it is, in percent."""

    step: StepRecord
    left: float
    width: float
    #: What the bar says besides the step's name: attempts, a due time, an event type.
    note: str


@dataclass(frozen=True)
class Timeline:
    bars: list[Bar]
    #: (percent from the left, label) of each tick on the time axis.
    ticks: list[tuple[float, str]]


def timeline(instance: InstanceStatus, now: datetime) -> Timeline:
    """The steps as bars on a time axis from the instance's creation to now (or, once it has
    finished, to its last change). A pending sleep or wait runs to the end of the axis: its due
    time or timeout is written on it rather than stretching the axis to days away."""
    origin = instance.created_at
    end = instance.updated_at if instance.status.is_terminal else now
    for step in instance.steps:
        end = max(end, step.ended_at or step.started_at or origin)
    span = max((end - origin).total_seconds(), 0.001)

    def percent(moment: datetime) -> float:
        return min(max((moment - origin).total_seconds() / span * 100, 0.0), 100.0)

    bars = []
    for step in instance.steps:
        if step.started_at is None:
            continue
        left = percent(step.started_at)
        right = percent(step.ended_at or end)
        bars.append(Bar(step, left, max(right - left, 0.5), _note(step, origin)))
    ticks = [
        (p, "+" + duration(timedelta(seconds=span * p / 100)))
        for p in (0.0, 25.0, 50.0, 75.0, 100.0)
    ]
    return Timeline(bars, ticks)


def _note(step: StepRecord, origin: datetime) -> str:
    def when(moment: datetime | None) -> str:
        # The date only when it is not the day the instance was created.
        if moment is not None and moment.date() == origin.date():
            return moment.strftime("%H:%M:%S")
        return _clock(moment)

    if step.kind == StepKind.SLEEP:
        verb = "woke" if step.ended_at else "due"
        return f"{verb} {when(step.wake_at or step.ended_at)}"
    if step.kind == StepKind.WAIT_FOR_EVENT:
        note = f"event {step.event_type!r}"
        if step.wake_at and not step.ended_at:
            note += f", times out {when(step.wake_at)}"
        return note
    note = f"{step.attempts} attempt{'s' if step.attempts != 1 else ''}"
    if step.wake_at and not step.ended_at:
        note += f", next at {when(step.wake_at)}"
    return note


def _clock(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"


def milliseconds(value: float) -> str:
    """Compute time given in milliseconds: tenths of a millisecond below 10 ms (a replay may
    take less than one), else as `duration`."""
    if value < 10:
        return f"{value:.1f} ms"
    return duration(timedelta(milliseconds=value))


def duration(delta: timedelta) -> str:
    """A short human duration: 350 ms, 4.2 s, 3 min 5 s, 2 h 3 min, 3 d 4 h."""
    seconds = delta.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


templates.env.filters["duration"] = duration
templates.env.filters["milliseconds"] = milliseconds
templates.env.filters["clock"] = _clock
templates.env.globals["Scope"] = Scope
