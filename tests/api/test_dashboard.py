"""The dashboard's pages and actions, through httpx (the browser test clicks through them too)."""

from __future__ import annotations

import base64
import functools
import json
import re

import httpx
import pytest

from processor import Client
from processor.api import ApiConfig, create_app
from processor.api.app import MAX_BODY_BYTES
from processor.api.ui import milliseconds
from tests.api.conftest import EVENTS, READ, WRITE, Api, Approval, Other, bearer
from tests.conftest import TestEnv

pytestmark = pytest.mark.integration


async def log_in(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.post("/ui/login", data={"token": token, "next": "/ui/workflows"})


async def test_the_dashboard_asks_for_a_token_with_the_read_scope(api: Api) -> None:
    http = api.http
    anonymous = await http.get("/ui/instances?status=waiting")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/ui/login?next=/ui/instances%3Fstatus%3Dwaiting"
    assert (await http.get("/ui/instances-table")).status_code == 401

    for token in ("forged", EVENTS):
        refused = await log_in(http, token)
        assert refused.status_code == 401
        assert "unknown or lacks the read scope" in refused.text
        assert "warren_token" not in http.cookies

    accepted = await log_in(http, READ)
    assert accepted.status_code == 303
    assert accepted.headers["location"] == "/ui/workflows"
    assert "httponly" in accepted.headers["set-cookie"].lower()
    assert "samesite=strict" in accepted.headers["set-cookie"].lower()
    assert (await http.get("/ui/workflows")).status_code == 200

    await http.post("/ui/logout")
    assert (await http.get("/ui/workflows")).status_code == 303
    elsewhere = await http.post("/ui/login", data={"token": READ, "next": "https://evil.example"})
    assert elsewhere.headers["location"] == "/ui/instances"


async def test_approve_on_the_instance_page_sends_the_awaited_event(api: Api) -> None:
    await api.env.start_worker(Approval)
    params = {"note": "<script>alert(1)</script>"}
    await api.json(
        "POST", "/workflows/api-approval/instances", json={"id": "ui-1", "params": params}
    )
    await api.until("ui-1", "waiting")
    http = api.http

    await log_in(http, READ)
    page = await http.get("/ui/instances/ui-1")
    assert page.status_code == 200
    assert "<script>alert(1)</script>" not in page.text
    assert "\\u003cscript\\u003e" in page.text  # tojson escapes HTML in JSON
    assert 'class="bar do complete"' in page.text
    assert 'class="bar wait_for_event waiting"' in page.text
    assert "event &#39;approval&#39;" in page.text
    assert 'data-refresh="/ui/instances/ui-1/detail"' in page.text
    assert "Approve" not in page.text  # a read-only token gets no actions
    refused = await http.post(
        "/ui/instances/ui-1/decide", data={"event_type": "approval", "decision": "approve"}
    )
    assert refused.status_code == 403

    await log_in(http, WRITE)
    page = await http.get("/ui/instances/ui-1")
    assert re.search(r'<form class="decide"[^>]*data-confirm="Send event', page.text)
    decided = await http.post(
        "/ui/instances/ui-1/decide",
        data={"event_type": "approval", "decision": "approve", "payload": '{"by": "ann"}'},
    )
    assert decided.status_code == 303
    assert decided.headers["location"].startswith("/ui/instances/ui-1?notice=approved")

    done = await api.until("ui-1", "complete")
    assert done["output"] == {"approval": {"by": "ann", "approved": True}}
    page = await http.get("/ui/instances/ui-1")
    assert "data-refresh" not in page.text  # finished: the page stops refreshing
    bad_payload = await http.post(
        "/ui/instances/ui-1/decide",
        data={"event_type": "approval", "decision": "reject", "payload": "[1]"},
    )
    assert bad_payload.status_code == 400
    assert "must be a JSON object" in bad_payload.text
    too_deep = await http.post(
        "/ui/instances/ui-1/decide",
        data={"event_type": "approval", "decision": "reject", "payload": "[" * 100_000},
    )
    assert too_deep.status_code == 400
    assert "nested too deeply" in too_deep.text


async def test_control_buttons_list_and_workflow_counts(api: Api) -> None:
    await api.env.start_worker(Other)
    await api.json("POST", "/workflows/api-other/instances", json=[{"id": "w-1"}, {"id": "w-2"}])
    await api.until("w-1", "waiting")
    http = api.http
    await log_in(http, WRITE)

    page = await http.get("/ui/instances/w-1")
    for action in ("pause", "terminate", "restart"):
        assert f'action="/ui/instances/w-1/control/{action}"' in page.text
    assert 'action="/ui/instances/w-1/control/resume"' not in page.text
    terminated = await http.post("/ui/instances/w-1/control/terminate")
    assert terminated.status_code == 303
    assert (await api.status("w-1"))["status"] == "terminated"
    again = await http.post("/ui/instances/w-1/control/terminate")
    assert again.status_code == 303  # terminating twice changes nothing
    refused = await http.post("/ui/instances/w-1/control/resume")
    assert refused.status_code == 409
    assert "409 Conflict" in refused.text

    listing = await http.get("/ui/instances?workflow=api-other&status=terminated")
    assert listing.status_code == 200
    assert ">w-1</a>" in listing.text
    assert ">w-2</a>" not in listing.text
    table = await http.get("/ui/instances-table?workflow=api-other")
    assert table.text.startswith('<section id="instances" data-refresh=')
    assert (await http.get("/ui/instances/nope")).status_code == 404

    counts = await http.get("/ui/workflows")
    row = re.search(r"<td><a [^>]*>api-other</a></td>\s*<td>(\d+)</td>", counts.text)
    assert row is not None
    assert row.group(1) == "2"


async def test_compute_time_shows_per_instance_and_per_workflow(api: Api) -> None:
    await api.env.start_worker(Approval)
    await api.json("POST", "/workflows/api-approval/instances", json=[{"id": "t-1"}, {"id": "t-2"}])
    # Parked on their wait: nothing adds compute time until the event comes.
    first = await api.until("t-1", "waiting")
    await api.until("t-2", "waiting")
    assert first["compute_ms"] > 0
    compute = milliseconds(first["compute_ms"])
    http = api.http
    await log_in(http, READ)

    table = await http.get("/ui/instances-table")
    row = re.search(r">t-1</a>.*?</tr>", table.text, re.DOTALL)
    assert row is not None
    assert f'<td class="number">{compute}</td>' in row.group(0)

    page = await http.get("/ui/instances/t-1")
    shown = re.search(r'<dd id="compute"[^>]*>([^<]*)<span class="muted">\(CPU ([^,]*),', page.text)
    assert shown is not None
    assert (shown.group(1).strip(), shown.group(2)) == (compute, milliseconds(first["cpu_ms"]))

    (usage,) = await api.env.client.usage("api-approval")
    workflows = await http.get("/ui/workflows")
    row = re.search(r">api-approval</a></td>\s*<td>2</td>\s*<td[^>]*>([^<]*)</td>", workflows.text)
    assert row is not None
    assert row.group(1) == milliseconds(usage.compute_ms)


async def test_dashboard_errors_are_html_pages_while_the_api_keeps_json(api: Api) -> None:
    http = api.http
    await log_in(http, READ)
    too_big = {"content": b"x" * (MAX_BODY_BYTES + 1)}
    cross_site = {"headers": {"Origin": "https://evil.example"}}
    for method, url, options, code, says in [
        ("POST", "/ui/instances/any/decide", {}, 403, "lacks the events scope"),
        ("POST", "/ui/instances/any/control/pause", {}, 403, "lacks the write scope"),
        ("POST", "/ui/instances/any/control/explode", {}, 422, "action: Input should be"),
        ("GET", "/ui/instances/bad%20id", {}, 400, "instance id must match"),
        ("GET", "/ui/instances/nobody", {}, 404, "nobody"),
        ("GET", "/ui/no-such-page", {}, 404, "Not Found"),
        ("POST", "/ui/instances", {}, 405, "Method Not Allowed"),
        ("POST", "/ui/login", too_big, 413, "the body is over"),
        ("POST", "/ui/logout", cross_site, 403, "cross-site requests are refused"),
    ]:
        response = await http.request(method, url, **options)
        assert response.status_code == code, url
        assert response.headers["content-type"].startswith("text/html"), url
        assert f"<h1>{code} " in response.text, url
        assert says in response.text, url

    for method, url, token, code in [
        ("POST", "/instances/any/pause", READ, 403),
        ("POST", "/instances/any/explode", WRITE, 422),
        ("GET", "/instances/bad%20id", READ, 400),
        ("GET", "/no-such-route", READ, 404),
    ]:
        response = await http.request(method, url, headers=bearer(token))
        assert response.status_code == code, url
        assert "detail" in response.json(), url


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor("[" * 5000),  # json.loads: RecursionError
        _cursor(json.dumps(["9999-12-31T23:59:59-23:59", "x"])),  # past the year 9999 in UTC
        _cursor(json.dumps(["0001-01-01T00:00:00+23:59", "x"])),  # before the year 1 in UTC
    ],
    ids=["deeply-nested", "after-year-9999-in-utc", "before-year-1-in-utc"],
)
async def test_a_malformed_cursor_gets_400_not_a_server_error(server: str, cursor: str) -> None:
    async with httpx.AsyncClient(base_url=server) as http:
        listed = await http.get(f"/instances?cursor={cursor}", headers=bearer(READ))
        assert listed.status_code == 400, listed.text
        http.cookies.set("warren_token", READ)
        page = await http.get(f"/ui/instances?cursor={cursor}")
        assert page.status_code == 400, page.text


async def test_an_instance_named_table_has_its_own_dashboard_page(api: Api) -> None:
    await api.env.start_worker(Other)
    await api.json("POST", "/workflows/api-other/instances", json={"id": "table"})
    await api.until("table", "waiting")
    await log_in(api.http, WRITE)

    listing = await api.http.get("/ui/instances")
    assert 'href="/ui/instances/table"' in listing.text  # the link the table shows
    page = await api.http.get("/ui/instances/table")
    assert "Instance <code>table</code>" in page.text, page.text[:300]


async def test_with_authentication_off_a_login_without_a_token_is_not_a_server_error(
    env: TestEnv,
) -> None:
    app = create_app(ApiConfig(auth=False), functools.partial(Client, **env.settings()))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://localhost") as http,
    ):
        response = await http.post("/ui/login", data={"next": "/ui/workflows"})
        assert response.status_code == 303, response.text
