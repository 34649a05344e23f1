"""Configuration from the environment."""

from __future__ import annotations

import os
import re

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///warren.db"
DEFAULT_NAMESPACE = "warren"

_NAMESPACE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def redact_url(url: str) -> str:
    """`url` with its password replaced by `***`, for logs, errors and printed messages.

    Works on broker and SQLAlchemy URLs alike; the user name stays, so an operator can still
    tell which account was used. A password with an unescaped `@` or `/` is hidden too: the
    user part runs to the last `@` before the query string.
    """
    scheme, separator, rest = url.partition("://")
    query_at = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    userinfo, at, host = rest[:query_at].rpartition("@")
    if not separator or not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}{rest[query_at:]}"


def broker_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get("WARREN_BROKER_URL") or DEFAULT_BROKER_URL


def database_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get("WARREN_DATABASE_URL") or DEFAULT_DATABASE_URL


def namespace(explicit: str | None = None) -> str:
    """The prefix of every queue and exchange this deployment owns (`warren` by default)."""
    value = explicit or os.environ.get("WARREN_NAMESPACE") or DEFAULT_NAMESPACE
    if not _NAMESPACE_PATTERN.fullmatch(value):
        raise ValueError(f"namespace {value!r} must match {_NAMESPACE_PATTERN.pattern}")
    return value


#: The worker's port for /healthz, /readyz and /metrics (OpenTelemetry's Prometheus port).
DEFAULT_HTTP_PORT = 9464


def http_port(explicit: str | None = None) -> int | None:
    """The worker's probe and metrics port: `explicit` (`--http-port`), else WARREN_HTTP_PORT,
    else 9464; `off` for none.

    Raises:
        ValueError: a value that is neither a port number nor `off`.
    """
    setting = "--http-port" if explicit is not None else "WARREN_HTTP_PORT"
    value = explicit if explicit is not None else os.environ.get("WARREN_HTTP_PORT", "")
    value = value.strip().lower()
    if not value:
        return DEFAULT_HTTP_PORT
    if value == "off":
        return None
    if not value.isdigit() or int(value) > 65535:
        raise ValueError(f"{setting}={value!r}: use a port number, or off")
    return int(value)
