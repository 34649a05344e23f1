"""The API's configuration, its bind-address rule, its checked-in OpenAPI document and the
dashboard's timeline geometry: no services needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from processor.api import ApiConfig, create_app, load_config, new_token
from processor.api.app import OPENAPI_PATH, openapi_document
from processor.api.auth import Authenticator, Scope
from processor.api.server import check_bind
from processor.api.ui import duration, milliseconds, timeline
from schemas import InstanceStatus, StepKind, StepRecord, StepStatusName

ROOT = Path(__file__).resolve().parents[2]


def test_the_checked_in_openapi_document_matches_the_app() -> None:
    checked_in = json.loads(OPENAPI_PATH.read_text())
    assert checked_in == openapi_document(), "regenerate it: python -m processor.api"


def test_a_configuration_file_names_hashed_tokens_with_scopes(tmp_path: Path) -> None:
    token, digest = new_token()
    path = tmp_path / "api.toml"
    path.write_text(
        f"""
        [[tokens]]
        name = "ops"
        sha256 = "{digest}"
        scopes = ["read", "write"]
        workflows = ["ship-order"]
        """
    )
    config = load_config(path)

    assert token not in path.read_text()
    principal = Authenticator(config).token(token)
    assert principal is not None
    assert principal.name == "ops"
    assert principal.may(Scope.EVENTS)  # writing includes sending events
    assert principal.sees("ship-order")
    assert not principal.sees("other")
    assert Authenticator(config).token(token + "x") is None


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("tokens = [", "not TOML"),
        ('[[tokens]]\nname = "a"\nsha256 = "abc"\nscopes = ["read"]', "sha256"),
        (f'[[tokens]]\nname = "a"\nsha256 = "{"0" * 64}"\nscopes = ["admin"]', "scopes"),
        ('auth = true\nusers = ["ann"]', "users"),
        (
            f'[[tokens]]\nname = "a"\nsha256 = "{"0" * 64}"\nscopes = []\n'
            f'[[tokens]]\nname = "a"\nsha256 = "{"1" * 64}"\nscopes = []',
            "two tokens are the same",
        ),
    ],
)
def test_a_bad_configuration_file_is_refused_saying_why(
    tmp_path: Path, text: str, complaint: str
) -> None:
    path = tmp_path / "api.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=complaint):
        load_config(path)


def test_a_missing_configuration_file_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot read"):
        load_config(Path("/nonexistent/api.toml"))


def test_a_webhook_whose_secret_is_not_in_the_environment_stops_the_app() -> None:
    config = ApiConfig.model_validate(
        {"webhooks": [{"name": "gh", "secret_env": "NO_SUCH_VAR", "signature_header": "X-Sig"}]}
    )
    with pytest.raises(ValueError, match="NO_SUCH_VAR is not set"):
        create_app(config, environ={})


def test_authentication_off_is_allowed_on_loopback_addresses_only() -> None:
    open_config = ApiConfig(auth=False)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        check_bind(host, open_config)
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        with pytest.raises(ValueError, match="authentication off"):
            check_bind(host, open_config)
    with pytest.raises(ValueError, match="no tokens are configured"):
        check_bind("0.0.0.0", ApiConfig())


def test_warren_api_refuses_to_serve_every_address_without_authentication() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "processor", "api", "--no-auth", "--host", "0.0.0.0"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "refusing to serve 0.0.0.0 with authentication off" in result.stderr


def test_the_timeline_places_each_step_on_one_time_axis() -> None:
    created = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    def at(seconds: float) -> datetime:
        return created + timedelta(seconds=seconds)

    steps = [
        StepRecord(
            name="fetch",
            kind=StepKind.DO,
            status=StepStatusName.COMPLETE,
            attempts=2,
            started_at=at(0),
            ended_at=at(2),
        ),
        StepRecord(
            name="nap",
            kind=StepKind.SLEEP,
            status=StepStatusName.SLEEPING,
            attempts=0,
            started_at=at(2),
            wake_at=at(3600),
        ),
        StepRecord(name="never started", kind=StepKind.DO, status="running", attempts=0),
    ]
    instance = InstanceStatus(
        id="i",
        workflow="w",
        status="waiting",
        created_at=created,
        updated_at=at(2),
        steps=steps,
    )

    drawn = timeline(instance, now=at(8))

    assert [(bar.step.name, bar.left, bar.width) for bar in drawn.bars] == [
        ("fetch", 0.0, 25.0),
        ("nap", 25.0, 75.0),  # a pending sleep runs to now, its due time written on it
    ]
    assert [bar.note for bar in drawn.bars] == ["2 attempts", "due 13:00:00"]
    assert drawn.ticks[-1] == (100.0, "+8.0 s")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "250 ms"),
        (4.2, "4.2 s"),
        (185, "3 min 5 s"),
        (7380, "2 h 3 min"),
        (273600, "3 d 4 h"),
    ],
)
def test_durations_read_at_a_glance(seconds: float, text: str) -> None:
    assert duration(timedelta(seconds=seconds)) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.042, "0.0 ms"), (0.42, "0.4 ms"), (9.5, "9.5 ms"), (12.3, "12 ms"), (4200, "4.2 s")],
)
def test_compute_times_keep_a_tenth_of_a_millisecond_below_ten(value: float, text: str) -> None:
    assert milliseconds(value) == text
