"""decode: a message body becomes a wire model, or a BadMessageError whose text is the
dead-letter reason."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from typing import Any, cast

import pytest
from aio_pika.abc import AbstractIncomingMessage

from processor.consumers.decoding import BadMessageError, decode
from schemas import MAX_MESSAGE_BYTES, ControlInstance, CreateInstance, SendEvent


@dataclass
class FakeMessage:
    body: bytes
    content_type: str | None = "application/json"
    message_id: str | None = None


def message(body: bytes | dict[str, Any], content_type: str | None = "application/json") -> Any:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    return cast(AbstractIncomingMessage, FakeMessage(data, content_type))


def test_a_valid_create_decodes_into_its_model() -> None:
    command = decode(
        message({"workflow": "ship-order", "id": "o-1", "params": {"a": 1}}), CreateInstance
    )
    assert command == CreateInstance(workflow="ship-order", id="o-1", params={"a": 1})


def test_a_content_type_with_a_charset_parameter_is_json() -> None:
    command = decode(
        message({"workflow": "ship-order"}, "application/json; charset=utf-8"), CreateInstance
    )
    assert command.workflow == "ship-order"


def test_a_body_of_exactly_the_limit_is_not_refused_for_its_size() -> None:
    body = json.dumps({"workflow": "ship-order", "params": {"pad": ""}}).encode()
    padded = body[:-3] + b"x" * (MAX_MESSAGE_BYTES - len(body)) + body[-3:]
    assert len(padded) == MAX_MESSAGE_BYTES
    assert decode(message(padded), CreateInstance).workflow == "ship-order"


@pytest.mark.parametrize(
    ("body", "content_type", "model", "words"),
    [
        pytest.param(
            b'{"workflow": ', "application/json", CreateInstance, ["not JSON"], id="invalid-json"
        ),
        pytest.param(b"", "application/json", CreateInstance, ["not JSON"], id="empty"),
        pytest.param(
            b'{"workflow": "\xff\xfe"}',
            "application/json",
            CreateInstance,
            ["UTF-8"],
            id="not-utf8",
        ),
        pytest.param(
            pickle.dumps({"workflow": "w"}),
            "application/x-python-pickle",
            CreateInstance,
            ["content type", "application/x-python-pickle"],
            id="pickle-content-type",
        ),
        pytest.param(
            pickle.dumps({"workflow": "w"}),
            "application/json",
            CreateInstance,
            ["UTF-8"],
            id="pickle-body",
        ),
        pytest.param(
            pickle.dumps({"workflow": "w"}, protocol=0),
            "application/json",
            CreateInstance,
            ["not JSON"],
            id="ascii-pickle-body",
        ),
        pytest.param(
            b'{"workflow": "w"}',
            "text/plain",
            CreateInstance,
            ["content type", "text/plain"],
            id="text",
        ),
        pytest.param(
            ("[" * 100_000 + "]" * 100_000).encode(),
            "application/json",
            CreateInstance,
            ["nested"],
            id="nested-array",
        ),
        pytest.param(
            ('{"a":' * 100_000 + "1" + "}" * 100_000).encode(),
            "application/json",
            CreateInstance,
            ["nested"],
            id="nested-object",
        ),
        pytest.param(
            b'{"workflow": "w", "params": {"x": NaN}}',
            "application/json",
            CreateInstance,
            ["not JSON", "NaN"],
            id="nan",
        ),
        pytest.param(
            b'{"workflow": "w", "params": {"x": -Infinity}}',
            "application/json",
            CreateInstance,
            ["not JSON", "Infinity"],
            id="infinity",
        ),
        pytest.param(
            b"x" * (MAX_MESSAGE_BYTES + 1),
            "application/json",
            CreateInstance,
            [str(MAX_MESSAGE_BYTES), str(MAX_MESSAGE_BYTES + 1)],
            id="oversized",
        ),
        pytest.param(
            b'{"workflow": "w", "colour": "blue"}',
            "application/json",
            CreateInstance,
            ["CreateInstance", "colour"],
            id="extra-field",
        ),
        pytest.param(b"[1, 2]", "application/json", CreateInstance, ["CreateInstance"], id="array"),
        pytest.param(
            b'{"instance_id": "o-1"}',
            "application/json",
            SendEvent,
            ["SendEvent", "type"],
            id="missing",
        ),
        pytest.param(
            b'{"instance_id": "o-1", "action": "frobnicate"}',
            "application/json",
            ControlInstance,
            ["ControlInstance", "action"],
            id="unknown-action",
        ),
        pytest.param(
            b'{"workflow": "bad name!"}',
            "application/json",
            CreateInstance,
            ["CreateInstance", "workflow"],
            id="bad-workflow-name",
        ),
    ],
)
def test_a_poison_message_is_refused_with_a_reason_that_names_the_problem(
    body: bytes, content_type: str, model: Any, words: list[str]
) -> None:
    with pytest.raises(BadMessageError) as refused:
        decode(message(body, content_type), model)

    reason = str(refused.value)
    for word in words:
        assert word in reason, f"{word!r} not in {reason!r}"
    assert len(reason) < 2000


def test_a_message_id_too_long_to_record_is_refused() -> None:
    fake = FakeMessage(b'{"workflow": "w"}', "application/json", "m" * 201)
    with pytest.raises(BadMessageError, match="message_id is over 200 characters"):
        decode(cast(AbstractIncomingMessage, fake), CreateInstance)


@pytest.mark.parametrize("message_id", ["m\x00", "m\n", "\x7f"])
def test_a_message_id_with_a_control_character_is_refused(message_id: str) -> None:
    fake = FakeMessage(b'{"workflow": "w"}', "application/json", message_id)
    with pytest.raises(BadMessageError, match="message_id contains a control character"):
        decode(cast(AbstractIncomingMessage, fake), CreateInstance)


@pytest.mark.parametrize("event_type", ["ping\x00", "ping\n", "\t"])
def test_an_event_type_with_a_control_character_is_refused(event_type: str) -> None:
    body = {"instance_id": "o-1", "type": event_type}
    with pytest.raises(BadMessageError, match="type: String should match pattern"):
        decode(message(body), SendEvent)


@pytest.mark.parametrize(
    ("body", "model"),
    [
        (b'{"workflow": "w", "params": {"x": 1e400}}', CreateInstance),
        (b'{"instance_id": "o-1", "type": "t", "payload": -1e400}', SendEvent),
    ],
)
def test_a_number_no_float_holds_is_refused_not_read_as_infinity(body: bytes, model: Any) -> None:
    with pytest.raises(BadMessageError, match=r"the number -?1e400 is out of range"):
        decode(message(body), model)
