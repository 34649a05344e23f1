"""The HTTP gateway: the REST API and the dashboard at /ui, both on one Client."""

from __future__ import annotations

import importlib.metadata
import ipaddress
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydantic
from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from processor.api import routes, ui
from processor.api.auth import ApiConfig, Authenticator
from processor.client import Client
from processor.errors import (
    DatabaseNotMigratedError,
    InfrastructureError,
    InstanceExistsError,
    InstanceNotFoundError,
    InstanceStateError,
    WorkflowNotFoundError,
)
from schemas import MAX_MESSAGE_BYTES

log = logging.getLogger("warren.api")

HERE = Path(__file__).parent
#: The checked-in OpenAPI document; `python -m processor.api` rewrites it.
OPENAPI_PATH = HERE / "openapi.json"
#: The largest request body accepted: the largest message Warren takes.
MAX_BODY_BYTES = MAX_MESSAGE_BYTES

#: The HTTP status of each error the Client raises. Lookups follow the exception's MRO, so
#: pydantic's ValidationError (a ValueError) gets 422 and other ValueErrors 400.
ERROR_STATUSES: dict[type[Exception], HTTPStatus] = {
    InstanceNotFoundError: HTTPStatus.NOT_FOUND,
    WorkflowNotFoundError: HTTPStatus.NOT_FOUND,
    InstanceExistsError: HTTPStatus.CONFLICT,
    InstanceStateError: HTTPStatus.CONFLICT,
    pydantic.ValidationError: HTTPStatus.UNPROCESSABLE_ENTITY,
    ValueError: HTTPStatus.BAD_REQUEST,
    InfrastructureError: HTTPStatus.SERVICE_UNAVAILABLE,
    DatabaseNotMigratedError: HTTPStatus.SERVICE_UNAVAILABLE,
    OperationalError: HTTPStatus.SERVICE_UNAVAILABLE,
    InterfaceError: HTTPStatus.SERVICE_UNAVAILABLE,
}


def create_app(
    config: ApiConfig,
    client: Callable[[], Client] = Client,
    environ: Mapping[str, str] = os.environ,
) -> FastAPI:
    """The ASGI app. It opens a Client from `client()` on start-up and closes it on shutdown.

    Args:
        config: tokens and webhook sources (see `processor.api.auth`).
        client: makes the Client every route uses, e.g. `functools.partial(Client, ...)`.
        environ: where webhook secrets are read from.

    Raises:
        ValueError: a webhook secret is missing from `environ`.
    """
    authenticator = Authenticator(config, environ)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not config.auth:
            log.warning("authentication is off: anyone who reaches this server may do anything")
        async with client() as opened:
            app.state.client = opened
            yield

    app = FastAPI(
        title="Warren",
        version=importlib.metadata.version("warren"),
        description=(
            "Create, inspect and steer workflow instances; deliver events from webhooks. "
            "Every route takes a bearer token with the `read`, `write` or `events` scope."
        ),
        lifespan=lifespan,
    )
    app.state.auth = authenticator
    app.include_router(routes.router)
    app.include_router(ui.router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(RequestGuard, loopback_only=not config.auth)
    for error_type in ERROR_STATUSES:
        app.add_exception_handler(error_type, _error_response)
    app.add_exception_handler(ui.LoginRequiredError, ui.to_login)
    # Starlette's class, not FastAPI's subclass: routing's own 404 and 405 are pages too.
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    return app


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    if ui.is_dashboard(request):
        return ui.error_page(request, error.status_code, str(error.detail), error.headers)
    return await http_exception_handler(request, error)


async def _invalid_request(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    if ui.is_dashboard(request):
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'][1:])}: {problem['msg']}"
            for problem in error.errors()
        )
        return ui.error_page(request, HTTPStatus.UNPROCESSABLE_ENTITY, problems)
    return await request_validation_exception_handler(request, error)


async def _error_response(request: Request, error: Exception) -> Response:
    code = next(ERROR_STATUSES[t] for t in type(error).__mro__ if t in ERROR_STATUSES)
    if code >= HTTPStatus.INTERNAL_SERVER_ERROR:
        log.warning("%s %s: %r", request.method, request.url.path, error)
    detail: Any = str(error)
    if isinstance(error, pydantic.ValidationError):
        detail = json.loads(error.json(include_url=False, include_context=False))
    if ui.is_dashboard(request):
        return ui.error_page(request, code, str(error))
    return JSONResponse({"detail": detail}, status_code=code)


class RequestGuard:
    """Refuses three kinds of request before the app sees them.

    - With `loopback_only` (authentication off), a Host header other than a loopback address
      (403). A DNS-rebinding page, served from evil.example and then resolved to 127.0.0.1,
      is same-origin with its own host name, so the Origin check below cannot tell it apart;
      its Host header still names evil.example.
    - A body over MAX_BODY_BYTES (413), whether or not it announces its length.
    - A state-changing request that a browser sends from another site's page (403): with
      authentication off, any web page could otherwise post to a dashboard on localhost.
    """

    def __init__(self, app: ASGIApp, *, loopback_only: bool) -> None:
        self.app = app
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.loopback_only and not _is_loopback_host(headers.get("host")):
            await _refuse(HTTPStatus.FORBIDDEN, _NOT_LOOPBACK, scope, send)
            return
        origin = headers.get("origin")
        if (
            scope["method"] not in ("GET", "HEAD", "OPTIONS")
            and origin is not None
            and urlsplit(origin).netloc != headers.get("host")
        ):
            await _refuse(HTTPStatus.FORBIDDEN, "cross-site requests are refused", scope, send)
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            await _refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, _TOO_LARGE, scope, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                # Raised inside the app, whose exception middleware turns it into the response.
                raise HTTPException(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, _TOO_LARGE)
            return message

        await self.app(scope, limited_receive, send)


_TOO_LARGE = f"the body is over {MAX_BODY_BYTES} bytes"
_NOT_LOOPBACK = "with authentication off, the Host header must name a loopback address"


def _is_loopback_host(host: str | None) -> bool:
    """Whether a Host header names this machine by a loopback address (`localhost`,
    `127.0.0.1`, `[::1]`, ...), with or without a port."""
    if host is None:
        return False
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:  # a malformed port or IPv6 literal
        return False
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name or "").is_loopback
    except ValueError:
        return False


async def _refuse(code: HTTPStatus, detail: str, scope: Scope, send: Send) -> None:
    async def no_body() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    request = Request(scope, no_body)
    if ui.is_dashboard(request):
        response = ui.error_page(request, code, detail)
    else:
        response = JSONResponse({"detail": detail}, status_code=code)
    await response(scope, no_body, send)


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI document, as checked in at OPENAPI_PATH."""
    return create_app(ApiConfig()).openapi()
