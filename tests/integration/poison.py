"""Poison messages for the ingress exchange, one of each kind another service might send by
mistake: each must be dead-lettered with a reason, and must not hold up good messages.

They name workflow `wire-echo` and instance `poison-target`, but every one is refused before
either is looked up (or, for `unknown-workflow` and `event-for-nobody`, because what it names
does not exist), so any namespace can take them.
"""

from __future__ import annotations

import json
import pickle

NESTED = ("[" * 100_000 + "]" * 100_000).encode()
OVERSIZED = json.dumps({"workflow": "wire-echo", "params": {"pad": "x" * (1024 * 1024)}}).encode()

#: kind -> (routing key, body, content type, words the dead-letter reason must contain)
POISON: dict[str, tuple[str, bytes, str, list[str]]] = {
    "invalid-json": ("instance.create", b'{"workflow": ', "application/json", ["not JSON"]),
    "wrong-schema": (
        "instance.create",
        json.dumps({"workflow": "wire-echo", "colour": "blue"}).encode(),
        "application/json",
        ["CreateInstance", "colour"],
    ),
    "missing-field": (
        "instance.create",
        json.dumps({"params": {}}).encode(),
        "application/json",
        ["CreateInstance", "workflow"],
    ),
    "unknown-workflow": (
        "instance.create",
        json.dumps({"workflow": "no-such-workflow"}).encode(),
        "application/json",
        ["not registered", "no-such-workflow"],
    ),
    "not-utf8": ("instance.create", b'{"workflow": "\xff\xfe"}', "application/json", ["UTF-8"]),
    "pickle-content-type": (
        "instance.create",
        pickle.dumps({"workflow": "wire-echo"}),
        "application/x-python-pickle",
        ["content type", "application/x-python-pickle"],
    ),
    "pickle-body": (
        "instance.create",
        pickle.dumps({"workflow": "wire-echo"}),
        "application/json",
        ["UTF-8"],
    ),
    "ascii-pickle-body": (
        "instance.create",
        pickle.dumps({"workflow": "wire-echo"}, protocol=0),
        "application/json",
        ["not JSON"],
    ),
    "nested": ("instance.create", NESTED, "application/json", ["nested"]),
    "nan": (
        "instance.create",
        b'{"workflow": "wire-echo", "params": {"x": NaN}}',
        "application/json",
        ["not JSON", "NaN"],
    ),
    "oversized": ("instance.create", OVERSIZED, "application/json", ["1048576"]),
    "unknown-route": (
        "instance.frobnicate",
        json.dumps({"workflow": "wire-echo"}).encode(),
        "application/json",
        ["routing key", "instance.frobnicate"],
    ),
    "event-for-nobody": (
        "instance.event",
        json.dumps({"instance_id": "nobody", "type": "ping"}).encode(),
        "application/json",
        ["nobody"],
    ),
    "unknown-action": (
        "instance.control",
        json.dumps({"instance_id": "poison-target", "action": "frobnicate"}).encode(),
        "application/json",
        ["ControlInstance", "action"],
    ),
}
