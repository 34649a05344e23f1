"""Configuration from the environment."""

from __future__ import annotations

import os
import re

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///warren.db"
DEFAULT_NAMESPACE = "warren"

_NAMESPACE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def broker_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get("WARREN_BROKER_URL") or DEFAULT_BROKER_URL


def database_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get("WARREN_DATABASE_URL") or DEFAULT_DATABASE_URL


def namespace(explicit: str | None = None) -> str:
    """The prefix of every queue and exchange this deployment owns (`warren` by default)."""
    value = explicit or os.environ.get("WARREN_NAMESPACE") or DEFAULT_NAMESPACE
    if not _NAMESPACE_PATTERN.match(value):
        raise ValueError(f"namespace {value!r} must match {_NAMESPACE_PATTERN.pattern}")
    return value
