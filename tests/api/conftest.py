"""The HTTP API in-process (httpx over ASGI) on a real Client: RabbitMQ plus SQLite or
PostgreSQL, one namespace and database per test (the `env` fixture)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from processor import Client, Workflow, WorkflowEvent, WorkflowStep
from processor.api import ApiConfig, create_app, new_token
from processor.api.auth import Scope, TokenConfig, WebhookConfig
from tests.conftest import TestEnv, assert_eventually


def _token(
    name: str, *scopes: Scope, workflows: list[str] | None = None
) -> tuple[str, TokenConfig]:
    token, digest = new_token()
    config = TokenConfig(
        name=name,
        sha256=digest,
        scopes=frozenset(scopes),
        workflows=frozenset(workflows) if workflows is not None else None,
    )
    return token, config


READ, _read = _token("reader", Scope.READ)
WRITE, _write = _token("writer", Scope.READ, Scope.WRITE)
EVENTS, _events = _token("payments", Scope.EVENTS)
#: Sees only instances of the "api-other" workflow.
NARROW, _narrow = _token("narrow", Scope.READ, Scope.WRITE, workflows=["api-other"])

WEBHOOK_SECRET = "it is a secret"
SIGNATURE_HEADER = "X-Hub-Signature-256"
CONFIG = ApiConfig(
    tokens=[_read, _write, _events, _narrow],
    webhooks=[
        WebhookConfig(
            name="github",
            secret_env="TEST_WEBHOOK_SECRET",
            signature_header=SIGNATURE_HEADER,
            signature_prefix="sha256=",
        )
    ],
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def signature(body: bytes, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {SIGNATURE_HEADER: f"sha256={digest}"}


async def prepare(instance_id: str) -> str:
    return f"prepared {instance_id}"


class Approval(Workflow[dict[str, Any]]):
    """A step, then a wait for an "approval" event, whose payload becomes the output."""

    name = "api-approval"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        await step.do("prepare", prepare, event.instance_id)
        approval = await step.wait_for_event("approval", type="approval", timeout="1 hour")
        return {"approval": approval.payload}


class Other(Workflow[dict[str, Any]]):
    """A second workflow that waits, so its instances stay put while a test looks at them."""

    name = "api-other"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        await step.wait_for_event("go", type="go", timeout="1 hour")
        return "went"


@dataclass
class Api:
    http: httpx.AsyncClient
    env: TestEnv

    async def json(self, method: str, url: str, token: str = WRITE, **options: Any) -> Any:
        """Call the API with a token; returns the JSON body, failing on an error status."""
        response = await self.http.request(method, url, headers=bearer(token), **options)
        assert response.status_code < 300, response.text
        return response.json()

    async def status(self, instance_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.json("GET", f"/instances/{instance_id}")
        return result

    async def until(self, instance_id: str, status: str) -> dict[str, Any]:
        """The instance's status once it is `status`."""
        found: dict[str, Any] = {}

        async def reached() -> bool:
            found.update(await self.status(instance_id))
            return bool(found["status"] == status)

        await assert_eventually(reached, what=f"{instance_id} to be {status}")
        return found


def make_app(env: TestEnv) -> FastAPI:
    """The API app with the test configuration, on a Client of the test's namespace."""
    return create_app(
        CONFIG,
        functools.partial(Client, **env.settings()),
        environ={"TEST_WEBHOOK_SECRET": WEBHOOK_SECRET},
    )


@pytest.fixture
async def api(env: TestEnv) -> AsyncIterator[Api]:
    app = make_app(env)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://warren.test"
        ) as http,
    ):
        yield Api(http, env)


@pytest.fixture
async def server(env: TestEnv) -> AsyncIterator[str]:
    """The app served by uvicorn, as `warren api` serves it, on a free loopback port; yields
    its URL."""
    app = make_app(env)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[listener]))

    async def started() -> bool:
        return server.started or serving.done()

    await assert_eventually(started, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving
        listener.close()
