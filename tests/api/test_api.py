"""The REST API against the real engine: a worker and the API's Client on the real RabbitMQ,
SQLite and PostgreSQL. Requests go through httpx to the ASGI app in-process."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from processor import Client
from processor.api import ApiConfig, create_app
from processor.api.app import MAX_BODY_BYTES
from tests.api.conftest import (
    EVENTS,
    NARROW,
    READ,
    WRITE,
    Api,
    Approval,
    Other,
    bearer,
    signature,
)
from tests.conftest import TestEnv

pytestmark = pytest.mark.integration


async def test_an_instance_created_over_http_completes_when_its_webhook_arrives(api: Api) -> None:
    await api.env.start_worker(Approval)

    created = await api.http.post(
        "/workflows/api-approval/instances",
        json={"id": "order-1", "params": {"amount": 5}},
        headers=bearer(WRITE),
    )
    assert created.status_code == 201, created.text
    assert created.json() == {"ids": ["order-1"]}
    waiting = await api.until("order-1", "waiting")
    assert [(s["name"], s["status"]) for s in waiting["steps"]] == [
        ("prepare", "complete"),
        ("approval", "waiting"),
    ]
    assert waiting["params"] == {"amount": 5}

    sent = await api.http.post(
        "/instances/order-1/events/approval", json={"by": "ann"}, headers=bearer(EVENTS)
    )
    assert sent.status_code == 202, sent.text
    assert sent.json() == {"delivered": True}

    done = await api.until("order-1", "complete")
    assert done["output"] == {"approval": {"by": "ann"}}


async def test_a_batch_is_created_all_or_none(api: Api) -> None:
    await api.env.start_worker(Other)
    url = "/workflows/api-other/instances"

    created = await api.json("POST", url, json=[{"id": "b-1"}, {"id": "b-2"}, {}])
    assert created["ids"][:2] == ["b-1", "b-2"]
    assert len(created["ids"]) == 3

    clash = await api.http.post(url, json=[{"id": "b-3"}, {"id": "b-1"}], headers=bearer(WRITE))
    assert clash.status_code == 409
    assert (await api.http.get("/instances/b-3", headers=bearer(READ))).status_code == 404
    too_many = await api.http.post(url, json=[{}] * 101, headers=bearer(WRITE))
    assert too_many.status_code == 400
    unknown = await api.http.post(
        "/workflows/never-registered/instances", json={}, headers=bearer(WRITE)
    )
    assert unknown.status_code == 404


async def test_pause_resume_terminate_and_restart_follow_the_instance_status(api: Api) -> None:
    await api.env.start_worker(Other)
    await api.json("POST", "/workflows/api-other/instances", json={"id": "c-1"})
    await api.until("c-1", "waiting")

    paused = await api.json("POST", "/instances/c-1/pause")
    assert paused["status"] == "paused"
    resumed = await api.json("POST", "/instances/c-1/resume")
    assert resumed["status"] in ("running", "waiting")
    terminated = await api.json("POST", "/instances/c-1/terminate")
    assert terminated["status"] == "terminated"

    for action in ("resume", "restart"):
        refused = await api.http.post(f"/instances/c-1/{action}", headers=bearer(WRITE))
        assert refused.status_code == 409, action
    unknown_action = await api.http.post("/instances/c-1/explode", headers=bearer(WRITE))
    assert unknown_action.status_code == 422


async def test_listing_pages_through_every_instance_once_newest_first(api: Api) -> None:
    await api.env.start_worker(Approval, Other)
    await api.json(
        "POST", "/workflows/api-other/instances", json=[{"id": f"o-{i}"} for i in range(5)]
    )
    await api.json("POST", "/workflows/api-approval/instances", json=[{"id": "a-0"}, {"id": "a-1"}])

    async def pages(query: str) -> list[list[str]]:
        result, cursor = [], ""
        while True:
            page = await api.json("GET", f"/instances?limit=3{query}{cursor}", token=READ)
            result.append([item["id"] for item in page["instances"]])
            if page["next_cursor"] is None:
                return result
            cursor = f"&cursor={page['next_cursor']}"

    every = await pages("")
    ids = [i for page in every for i in page]
    assert sorted(ids) == ["a-0", "a-1", "o-0", "o-1", "o-2", "o-3", "o-4"]
    assert [len(page) for page in every] == [3, 3, 1]
    # Each batch shares its creation time; the later batch comes first.
    assert set(ids[:2]) == {"a-0", "a-1"}
    assert sorted(i for p in await pages("&workflow=api-approval") for i in p) == ["a-0", "a-1"]

    await api.until("a-0", "waiting")
    await api.until("a-1", "waiting")
    waiting = await api.json("GET", "/instances?workflow=api-approval&status=waiting", token=READ)
    assert {i["current_step"] for i in waiting["instances"]} == {"approval"}
    assert {i["current_step_status"] for i in waiting["instances"]} == {"waiting"}

    for query, code in [("cursor=not-a-cursor", 400), ("status=asleep", 422), ("limit=0", 422)]:
        refused = await api.http.get(f"/instances?{query}", headers=bearer(READ))
        assert refused.status_code == code, query


async def test_listings_carry_compute_time_per_instance_and_per_workflow(api: Api) -> None:
    await api.env.start_worker(Approval, Other)
    await api.json("POST", "/workflows/api-approval/instances", json=[{"id": "t-1"}, {"id": "t-2"}])
    # Parked on their wait: nothing adds compute time until the event comes.
    parked = [await api.until(instance_id, "waiting") for instance_id in ("t-1", "t-2")]
    assert all(status["compute_ms"] > 0 for status in parked)

    listed = await api.json("GET", "/instances?workflow=api-approval", token=READ)
    workflows = {w["name"]: w for w in await api.json("GET", "/workflows", token=READ)}

    assert {i["id"]: i["compute_ms"] for i in listed["instances"]} == {
        status["id"]: status["compute_ms"] for status in parked
    }
    approval = workflows["api-approval"]
    assert approval["compute_ms"] == pytest.approx(sum(s["compute_ms"] for s in parked))
    assert approval["cpu_ms"] == pytest.approx(sum(s["cpu_ms"] for s in parked))
    assert (workflows["api-other"]["compute_ms"], workflows["api-other"]["cpu_ms"]) == (0, 0)


async def test_scopes_decide_what_each_token_may_do(api: Api) -> None:
    await api.env.start_worker(Other)
    await api.json("POST", "/workflows/api-other/instances", json={"id": "s-1"})
    http = api.http

    anonymous = await http.get("/instances/s-1")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert (await http.get("/instances/s-1", headers=bearer("forged"))).status_code == 401

    assert (await http.get("/instances/s-1", headers=bearer(READ))).status_code == 200
    assert (await http.post("/instances/s-1/pause", headers=bearer(READ))).status_code == 403
    assert (
        await http.post("/instances/s-1/events/go", json=1, headers=bearer(READ))
    ).status_code == 403

    # A webhook sender's token sends events and does nothing else.
    assert (await http.get("/instances/s-1", headers=bearer(EVENTS))).status_code == 403
    assert (await http.get("/instances", headers=bearer(EVENTS))).status_code == 403
    assert (await http.post("/instances/s-1/pause", headers=bearer(EVENTS))).status_code == 403
    create = await http.post("/workflows/api-other/instances", json={}, headers=bearer(EVENTS))
    assert create.status_code == 403
    sent = await http.post("/instances/s-1/events/note", json=1, headers=bearer(EVENTS))
    assert sent.status_code == 202

    # Writing includes sending events.
    sent = await http.post("/instances/s-1/events/note", json=2, headers=bearer(WRITE))
    assert sent.status_code == 202
    events = await api.json("GET", "/instances/s-1/events", token=READ)
    assert [(e["type"], e["payload"]) for e in events] == [("note", 1), ("note", 2)]


async def test_a_token_limited_to_a_workflow_gets_404_for_other_instances(api: Api) -> None:
    await api.env.start_worker(Approval, Other)
    await api.json("POST", "/workflows/api-approval/instances", json={"id": "hidden"})
    await api.json("POST", "/workflows/api-other/instances", json={"id": "shown"})
    http = api.http

    hidden = await http.get("/instances/hidden", headers=bearer(NARROW))
    missing = await http.get("/instances/no-such-thing", headers=bearer(NARROW))
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["detail"] == "no instance with id 'hidden'"
    for method, url in [
        ("GET", "/instances/hidden/events"),
        ("POST", "/instances/hidden/terminate"),
        ("POST", "/instances/hidden/events/approval"),
    ]:
        assert (await http.request(method, url, headers=bearer(NARROW))).status_code == 404, url
    create = await http.post("/workflows/api-approval/instances", json={}, headers=bearer(NARROW))
    assert create.status_code == 404

    listed = await api.json("GET", "/instances", token=NARROW)
    assert [i["id"] for i in listed["instances"]] == ["shown"]
    assert (await api.json("GET", "/instances?workflow=api-approval", token=NARROW)) == {
        "instances": [],
        "next_cursor": None,
    }
    workflows = await api.json("GET", "/workflows", token=NARROW)
    assert [w["name"] for w in workflows] == ["api-other"]
    assert (await api.status("hidden"))["status"] != "terminated"


async def test_a_retried_webhook_with_an_idempotency_key_delivers_its_event_once(api: Api) -> None:
    await api.env.start_worker(Other)
    await api.json("POST", "/workflows/api-other/instances", json={"id": "pay-1"})

    async def deliver(key: str | None, amount: int) -> Any:
        headers = bearer(EVENTS) | ({"Idempotency-Key": key} if key else {})
        response = await api.http.post(
            "/instances/pay-1/events/payment", json={"amount": amount}, headers=headers
        )
        assert response.status_code == 202, response.text
        return response.json()

    assert await deliver("charge-77", 1) == {"delivered": True}
    assert await deliver("charge-77", 1) == {"delivered": False}
    assert await deliver("charge-78", 2) == {"delivered": True}
    assert await deliver(None, 3) == {"delivered": True}
    assert await deliver(None, 3) == {"delivered": True}

    events = await api.json("GET", "/instances/pay-1/events", token=READ)
    assert [e["payload"]["amount"] for e in events] == [1, 2, 3, 3]
    # A key used on an unknown instance is not spent: the 404 recorded nothing.
    response = await api.http.post(
        "/instances/pay-2/events/payment", headers=bearer(EVENTS) | {"Idempotency-Key": "k"}
    )
    assert response.status_code == 404


async def test_a_webhook_source_authenticates_by_its_hmac_signature(api: Api) -> None:
    await api.env.start_worker(Other)
    await api.json("POST", "/workflows/api-other/instances", json={"id": "gh-1"})
    url = "/instances/gh-1/events/push?source=github"
    body = json.dumps({"ref": "refs/heads/main"}).encode()

    signed = await api.http.post(url, content=body, headers=signature(body))
    assert signed.status_code == 202, signed.text
    for headers in [
        {},
        signature(body, secret="wrong secret"),
        signature(b"another body"),
        {"X-Hub-Signature-256": signature(body)["X-Hub-Signature-256"].removeprefix("sha256=")},
    ]:
        refused = await api.http.post(url, content=body, headers=headers)
        assert refused.status_code == 401, headers
    unknown_source = await api.http.post(
        "/instances/gh-1/events/push?source=gitlab", content=body, headers=signature(body)
    )
    assert unknown_source.status_code == 401
    events = await api.json("GET", "/instances/gh-1/events", token=READ)
    assert [(e["type"], e["payload"]) for e in events] == [("push", {"ref": "refs/heads/main"})]


async def _chunks(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // 65536 + 1):
        yield b" " * 65536


async def test_bad_input_gets_a_4xx_never_a_server_error(api: Api) -> None:
    await api.env.start_worker(Other)
    await api.json("POST", "/workflows/api-other/instances", json={"id": "bad-1"})
    http = api.http
    headers = bearer(WRITE)
    url = "/instances/bad-1/events/note"

    too_big = b'"' + b"x" * MAX_BODY_BYTES + b'"'
    assert (await http.post(url, content=too_big, headers=headers)).status_code == 413
    # Without a Content-Length (chunked), the body is cut off at the limit too.
    chunked = await http.post(url, content=_chunks(MAX_BODY_BYTES), headers=headers)
    assert chunked.status_code == 413
    for bad_url, code in [
        ("/instances/bad id/pause", 400),
        ("/instances/" + "x" * 101 + "/pause", 400),
        ("/instances/bad-1/events/" + "t" * 101, 400),
        ("/instances/bad-1/events/a%00b", 400),
        ("/instances/unknown/pause", 404),
        ("/workflows/bad%20name/instances", 400),
    ]:
        response = await http.post(bad_url, json={}, headers=headers)
        assert response.status_code == code, bad_url
    for body in [b"{not json", b"NaN", b"[" * 100_000]:
        assert (await http.post(url, content=body, headers=headers)).status_code == 400, body[:9]
    bad_id = await http.post(
        "/workflows/api-other/instances", json={"id": "no spaces"}, headers=headers
    )
    assert bad_id.status_code == 400
    # A page on another site cannot make a browser post here, even with auth off.
    cross_site = headers | {"Origin": "https://evil.example"}
    assert (await http.post("/instances/bad-1/terminate", headers=cross_site)).status_code == 403
    same_site = headers | {"Origin": "http://warren.test"}
    assert (await http.post("/instances/bad-1/terminate", headers=same_site)).status_code == 200


async def test_with_authentication_off_only_a_loopback_host_name_reaches_the_app(
    env: TestEnv,
) -> None:
    await env.start_worker(Other)
    app = create_app(ApiConfig(auth=False), functools.partial(Client, **env.settings()))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as http,
    ):
        # A DNS-rebinding page: evil.example now resolves to 127.0.0.1, so the browser sends
        # an Origin that matches the Host, and both name evil.example.
        rebound = {"Host": "evil.example:8000", "Origin": "http://evil.example:8000"}
        created = await http.post(
            "/workflows/api-other/instances", json={"id": "rebound-1"}, headers=rebound
        )
        assert created.status_code == 403
        assert "Host header must name a loopback address" in created.json()["detail"]
        assert (await http.get("/instances", headers=rebound)).status_code == 403
        page = await http.get("/ui/instances", headers=rebound)
        assert page.status_code == 403
        assert page.headers["content-type"].startswith("text/html")

        for number, host in enumerate(["localhost:8000", "127.0.0.1:8000", "[::1]:8000"]):
            loopback = {"Host": host, "Origin": f"http://{host}"}
            instance_id = f"local-{number}"
            created = await http.post(
                "/workflows/api-other/instances", json={"id": instance_id}, headers=loopback
            )
            assert created.status_code == 201, host
            listed = await http.get("/instances", headers=loopback)
            assert instance_id in listed.text, host
        assert "rebound-1" not in listed.text
