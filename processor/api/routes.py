"""The REST API: the Client's operations over HTTP, and the webhook endpoint for events."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from processor.api.auth import Authenticator, Principal, Scope
from processor.client import MAX_IDEMPOTENCY_KEY, Client, InstancePage
from processor.errors import InstanceNotFoundError, WorkflowNotFoundError
from schemas import ID_PATTERN, ControlAction, InstanceStatus, InstanceStatusName

router = APIRouter()

_ID = re.compile(ID_PATTERN)
bearer_scheme = HTTPBearer(
    auto_error=False, description="A token from the API configuration (`[[tokens]]`)."
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]


class ErrorBody(BaseModel):
    detail: Any


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error responses a route can give."""
    reasons = {
        400: "malformed input: an id, a cursor, an event type, a JSON body",
        401: "no valid token or signature",
        403: "the token lacks the scope",
        404: "no such instance or workflow, or one the caller may not see",
        409: "the id is taken, or the action does not apply to the instance's status",
        413: "the body is over 1 MiB",
    }
    return {code: {"model": ErrorBody, "description": reasons[code]} for code in codes}


class NewInstance(BaseModel):
    """One instance to create: an id (a random one if omitted) and the workflow's params."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description=f"must match {ID_PATTERN}")
    params: dict[str, Any] | None = None


class Created(BaseModel):
    ids: list[str]


class BufferedEvent(BaseModel):
    type: str
    payload: Any = None
    received_at: AwareDatetime


class EventAccepted(BaseModel):
    #: False when the Idempotency-Key was used before: that earlier request delivered it.
    delivered: bool


class WorkflowSummary(BaseModel):
    name: str
    #: Instances per status; statuses with none are left out.
    instances: dict[InstanceStatusName, int]
    #: Worker time of step bodies and replays, summed over its instances (`Client.usage`).
    compute_ms: float
    #: Thread CPU time of plain-function step bodies, summed over its instances.
    cpu_ms: float


def client_of(request: Request) -> Client:
    return cast(Client, request.app.state.client)


def authenticator(request: Request) -> Authenticator:
    return cast(Authenticator, request.app.state.auth)


def checked_id(value: str, what: str = "instance id") -> str:
    """Raises HTTP 400 unless `value` is a well-formed id or workflow name."""
    if not _ID.fullmatch(value):
        raise HTTPException(HTTPStatus.BAD_REQUEST, f"{what} must match {ID_PATTERN}")
    return value


def checked_event_type(value: str) -> str:
    if not 1 <= len(value) <= 100 or not value.isprintable():
        raise HTTPException(
            HTTPStatus.BAD_REQUEST, "an event type has 1 to 100 printable characters"
        )
    return value


def _caller(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    principal = authenticator(request).token(credentials.credentials if credentials else None)
    if principal is None:
        raise HTTPException(
            HTTPStatus.UNAUTHORIZED,
            "a valid bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


def reader(request: Request, credentials: Credentials) -> Principal:
    principal = _caller(request, credentials)
    principal.require(Scope.READ)
    return principal


def writer(request: Request, credentials: Credentials) -> Principal:
    principal = _caller(request, credentials)
    principal.require(Scope.WRITE)
    return principal


Reader = Annotated[Principal, Depends(reader)]
Writer = Annotated[Principal, Depends(writer)]


async def visible_status(client: Client, principal: Principal, instance_id: str) -> InstanceStatus:
    """The instance's status, or InstanceNotFoundError if the caller may not see it."""
    found = await client.status(checked_id(instance_id))
    if not principal.sees(found.workflow):
        raise InstanceNotFoundError(instance_id)
    return found


async def check_visible(client: Client, principal: Principal, instance_id: str) -> None:
    """InstanceNotFoundError unless the instance exists and the caller may see it."""
    if principal.workflows is None:
        await client.get(checked_id(instance_id))
    else:
        await visible_status(client, principal, instance_id)


def visible_workflows(principal: Principal, workflow: str | None) -> Sequence[str] | None:
    """The workflows a listing may show: the one asked for, within what the caller sees."""
    if workflow is not None:
        checked_id(workflow, "a workflow name")
        return [workflow] if principal.sees(workflow) else []
    return None if principal.workflows is None else sorted(principal.workflows)


@router.post(
    "/workflows/{workflow}/instances",
    status_code=HTTPStatus.CREATED,
    responses=_errors(400, 401, 403, 404, 409, 413),
    tags=["instances"],
)
async def create_instances(
    request: Request, workflow: str, body: NewInstance | list[NewInstance], principal: Writer
) -> Created:
    """Create one instance (a JSON object) or up to 100 at once (a JSON array), all or none.

    When this returns, each instance exists: it waits `queued` until a worker takes it.
    """
    checked_id(workflow, "a workflow name")
    if not principal.sees(workflow):
        raise WorkflowNotFoundError(workflow)
    items = body if isinstance(body, list) else [body]
    instances = await client_of(request).create_batch(
        workflow, [item.model_dump() for item in items]
    )
    return Created(ids=[instance.id for instance in instances])


@router.get("/workflows", responses=_errors(401, 403), tags=["workflows"])
async def list_workflows(request: Request, principal: Reader) -> list[WorkflowSummary]:
    """Every registered workflow: its instances per status and their compute time."""
    client = client_of(request)
    counts = await client.workflow_counts()
    usage = {totals.workflow: totals for totals in await client.usage()}
    summaries = []
    for name, by_status in sorted(counts.items()):
        if principal.sees(name):
            totals = usage.get(name)
            summaries.append(
                WorkflowSummary(
                    name=name,
                    instances=by_status,
                    compute_ms=totals.compute_ms if totals else 0.0,
                    cpu_ms=totals.cpu_ms if totals else 0.0,
                )
            )
    return summaries


@router.get("/instances", responses=_errors(400, 401, 403), tags=["instances"])
async def list_instances(
    request: Request,
    principal: Reader,
    workflow: str | None = None,
    status: InstanceStatusName | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> InstancePage:
    """Instances, newest first, a page at a time, optionally of one workflow or status."""
    workflows = visible_workflows(principal, workflow)
    if workflows == []:
        return InstancePage(instances=[])
    return await client_of(request).list_page(workflows, status, limit, cursor)


@router.get("/instances/{instance_id}", responses=_errors(400, 401, 403, 404), tags=["instances"])
async def get_instance(request: Request, instance_id: str, principal: Reader) -> InstanceStatus:
    """An instance's status, params, output or error, and its steps."""
    return await visible_status(client_of(request), principal, instance_id)


@router.get(
    "/instances/{instance_id}/events", responses=_errors(400, 401, 403, 404), tags=["events"]
)
async def buffered_events(
    request: Request, instance_id: str, principal: Reader
) -> list[BufferedEvent]:
    """Events sent to the instance that no `wait_for_event` has taken yet, oldest first."""
    client = client_of(request)
    await check_visible(client, principal, instance_id)
    return [
        BufferedEvent(type=event.type, payload=event.payload, received_at=event.timestamp)
        for event in await client.events(instance_id)
    ]


@router.post(
    "/instances/{instance_id}/{action}",
    responses=_errors(400, 401, 403, 404, 409),
    tags=["instances"],
)
async def control_instance(
    request: Request, instance_id: str, action: ControlAction, principal: Writer
) -> InstanceStatus:
    """Pause (at the next step boundary), resume, terminate or restart an instance."""
    client = client_of(request)
    await check_visible(client, principal, instance_id)
    await client.control(instance_id, action)
    return await client.status(instance_id)


@router.post(
    "/instances/{instance_id}/events/{event_type}",
    status_code=HTTPStatus.ACCEPTED,
    responses=_errors(400, 401, 403, 404, 413),
    tags=["events"],
    openapi_extra={
        "requestBody": {
            "description": "The event's payload: any JSON value; an empty body is null.",
            "required": False,
            "content": {"application/json": {"schema": {}}},
        }
    },
)
async def send_event(
    request: Request,
    instance_id: str,
    event_type: str,
    credentials: Credentials,
    source: Annotated[
        str | None,
        Query(description="a configured webhook source: its signature replaces the token"),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=MAX_IDEMPOTENCY_KEY,
            description="a retried request with the same key delivers its event once (7 days)",
        ),
    ] = None,
) -> EventAccepted:
    """Send an event to an instance, with the request body as its payload: the webhook
    endpoint. Buffered until a `wait_for_event` of this type takes it."""
    body = await request.body()
    if source is None:
        principal = _caller(request, credentials)
        principal.require(Scope.EVENTS)
    else:
        principal = authenticator(request).webhook(source, request.headers, body)
    checked_event_type(event_type)
    payload = parse_json(body)
    client = client_of(request)
    await check_visible(client, principal, instance_id)
    if idempotency_key is None:
        await client.send_event(instance_id, event_type, payload)
        return EventAccepted(delivered=True)
    delivered = await client.send_event_once(instance_id, event_type, payload, idempotency_key)
    return EventAccepted(delivered=delivered)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """A request body as JSON; an empty body is None. Raises HTTP 400 for anything else."""
    if not body.strip():
        return None
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise HTTPException(HTTPStatus.BAD_REQUEST, "the body is nested too deeply") from None
    except ValueError as error:
        raise HTTPException(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {error}") from None
