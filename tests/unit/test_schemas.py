"""The wire models and their exported JSON Schemas."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas import (
    INGRESS_ROUTES,
    ControlAction,
    ControlInstance,
    CreateInstance,
    InstanceStatus,
    InstanceStatusName,
    RunInstance,
    SendEvent,
)
from schemas.__main__ import main

VALID: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (CreateInstance, {"workflow": "ship-order", "id": "o-1", "params": {"a": 1}}),
    (SendEvent, {"instance_id": "o-1", "type": "approval", "payload": {"ok": True}}),
    (ControlInstance, {"instance_id": "o-1", "action": "pause"}),
    (RunInstance, {"instance_id": "o-1"}),
]


def test_the_exported_json_schemas_are_up_to_date() -> None:
    assert main(["--check"]) == 0, "run `python -m schemas` and commit schemas/json/"


def test_the_ingress_routes_are_the_three_wire_commands() -> None:
    routes = {
        "instance.create": CreateInstance,
        "instance.event": SendEvent,
        "instance.control": ControlInstance,
    }
    assert routes == INGRESS_ROUTES


@pytest.mark.parametrize(("model", "data"), VALID)
def test_the_wire_models_accept_a_valid_message(
    model: type[BaseModel], data: dict[str, Any]
) -> None:
    model.model_validate(data)


@pytest.mark.parametrize(("model", "data"), VALID)
def test_the_wire_models_forbid_extra_fields(model: type[BaseModel], data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="extra"):
        model.model_validate({**data, "surprise": 1})


def test_the_wire_models_are_frozen() -> None:
    command = ControlInstance(instance_id="o-1", action=ControlAction.PAUSE)
    with pytest.raises(ValidationError):
        command.action = ControlAction.RESUME  # type: ignore[misc]


@pytest.mark.parametrize("action", ["pause", "resume", "terminate", "restart"])
def test_control_instance_takes_the_four_actions(action: str) -> None:
    assert ControlInstance(instance_id="o-1", action=action).action == action


@pytest.mark.parametrize("action", ["frobnicate", "PAUSE", "", None])
def test_control_instance_rejects_an_unknown_action(action: Any) -> None:
    with pytest.raises(ValidationError, match="action"):
        ControlInstance(instance_id="o-1", action=action)


@pytest.mark.parametrize("bad_id", ["bad id!", "", "x" * 101, "-leading"])
def test_wire_ids_follow_the_id_pattern(bad_id: str) -> None:
    with pytest.raises(ValidationError):
        CreateInstance(workflow="ship-order", id=bad_id)
    with pytest.raises(ValidationError):
        CreateInstance(workflow=bad_id)
    with pytest.raises(ValidationError):
        SendEvent(instance_id=bad_id, type="approval")


def test_run_instance_needs_an_aware_wake_at() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        RunInstance(instance_id="o-1", wake_at="2030-01-01T00:00:00")


def test_instance_status_names_compare_equal_to_plain_strings() -> None:
    plain: str = "complete"
    assert plain == InstanceStatusName.COMPLETE
    assert plain in {InstanceStatusName.COMPLETE}
    assert InstanceStatusName("waiting_for_pause") == "waiting_for_pause"
    assert {s.value for s in InstanceStatusName} == {
        "queued",
        "running",
        "paused",
        "errored",
        "terminated",
        "complete",
        "waiting",
        "waiting_for_pause",
        "unknown",
    }
    status = InstanceStatus.model_validate(
        {
            "id": "o-1",
            "workflow": "ship-order",
            "status": "complete",
            "created_at": "2030-01-01T00:00:00Z",
            "updated_at": "2030-01-01T00:00:00Z",
        }
    )
    assert status.status == "complete"
    assert status.model_dump(mode="json")["status"] == "complete"


def test_only_complete_errored_and_terminated_are_terminal() -> None:
    terminal = {s.value for s in InstanceStatusName if s.is_terminal}
    assert terminal == {"complete", "errored", "terminated"}
