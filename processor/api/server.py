"""`warren api`: serve the HTTP API and dashboard with uvicorn."""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

import uvicorn

from processor.api.app import create_app
from processor.api.auth import ApiConfig
from processor.client import Client


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server unreachable from other machines."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, config: ApiConfig) -> None:
    """Raises ValueError for authentication off on an address other machines can reach."""
    if not config.auth and not is_loopback(host):
        raise ValueError(
            f"refusing to serve {host} with authentication off: bind 127.0.0.1, or configure "
            "tokens with --config"
        )
    if config.auth and not config.tokens and not config.webhooks:
        raise ValueError("no tokens are configured: pass --config FILE, or --no-auth on loopback")


async def serve(config: ApiConfig, host: str, port: int, **client_options: Any) -> None:
    """Serve until SIGINT or SIGTERM.

    Args:
        client_options: `broker_url`, `database_url`, `namespace` for the Client.
    """
    check_bind(host, config)
    app = create_app(config, functools.partial(Client, **client_options))
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info"))
    await server.serve()
