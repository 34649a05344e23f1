"""Who may call the HTTP API: bearer tokens with scopes, and webhooks signed with HMAC.

The configuration is a TOML file (`warren api --config api.toml`):

    [[tokens]]
    name = "ops"                           # names the caller in logs and in the dashboard
    sha256 = "5e88...e3"                   # SHA-256 of the token, in hex: never the token
    scopes = ["read", "write"]
    workflows = ["ship-order"]             # optional: the only workflows it may see

    [[webhooks]]
    name = "github"                        # senders post to ...?source=github
    secret_env = "GITHUB_WEBHOOK_SECRET"   # the environment variable holding the secret
    signature_header = "X-Hub-Signature-256"
    signature_prefix = "sha256="           # the header is prefix + hex HMAC-SHA256 of the body

Scopes: `read` lists and inspects instances; `write` creates and controls them and sends
events; `events` only sends events, the one thing a webhook sender's token should do. A webhook
source authenticates by its signature alone (code hosts and payment processors cannot send a
bearer token) and may only send events. An instance of a workflow a caller may not see is
reported as not found, so its existence does not leak.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus
from pathlib import Path
from typing import Annotated

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, StringConstraints, model_validator

from schemas import ID_PATTERN


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"
    EVENTS = "events"


class TokenConfig(BaseModel):
    """One bearer token, stored as its SHA-256 (tokens are random, so a plain hash is safe)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    scopes: frozenset[Scope]
    workflows: frozenset[str] | None = None


class WebhookConfig(BaseModel):
    """A webhook sender that signs each body with a shared secret."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, StringConstraints(pattern=ID_PATTERN)]
    secret_env: str
    signature_header: str
    signature_prefix: str = ""
    workflows: frozenset[str] | None = None


class ApiConfig(BaseModel):
    """Who may call the API. `auth=False` lets anyone do anything: loopback only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    auth: bool = True
    tokens: list[TokenConfig] = []
    webhooks: list[WebhookConfig] = []

    @model_validator(mode="after")
    def _names_are_unique(self) -> ApiConfig:
        for what, names in (
            ("token", [t.name for t in self.tokens]),
            ("token hash", [t.sha256 for t in self.tokens]),
            ("webhook", [w.name for w in self.webhooks]),
        ):
            if len(names) != len(set(names)):
                raise ValueError(f"two {what}s are the same")
        return self


def load_config(path: Path) -> ApiConfig:
    """Read and check an API configuration file (TOML).

    Raises:
        ValueError: the file cannot be read, is not TOML or is not a valid configuration.
    """
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not TOML: {error}") from None
    return ApiConfig.model_validate(data)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A new random token and the SHA-256 to put in the configuration."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


@dataclass(frozen=True)
class Principal:
    """A caller: what it may do and which workflows' instances it may see."""

    name: str
    scopes: frozenset[Scope]
    #: None: every workflow.
    workflows: frozenset[str] | None = None

    def may(self, scope: Scope) -> bool:
        # Sending events is part of writing.
        return scope in self.scopes or (scope is Scope.EVENTS and Scope.WRITE in self.scopes)

    def require(self, scope: Scope) -> None:
        """Raises HTTP 403 unless the caller has `scope`."""
        if not self.may(scope):
            raise HTTPException(HTTPStatus.FORBIDDEN, f"this token lacks the {scope} scope")

    def sees(self, workflow: str) -> bool:
        return self.workflows is None or workflow in self.workflows


#: The caller when authentication is off.
ANYONE = Principal("anyone", frozenset(Scope))


@dataclass(frozen=True)
class _Webhook:
    config: WebhookConfig
    secret: bytes


class Authenticator:
    """Checks bearer tokens and webhook signatures against an ApiConfig.

    Raises:
        ValueError: a webhook's secret variable is not set in `environ`.
    """

    def __init__(self, config: ApiConfig, environ: Mapping[str, str] = os.environ) -> None:
        self.enabled = config.auth
        self._tokens = {token.sha256: token for token in config.tokens}
        self._webhooks = {}
        for webhook in config.webhooks:
            secret = environ.get(webhook.secret_env)
            if not secret:
                raise ValueError(
                    f"webhook {webhook.name!r}: environment variable {webhook.secret_env} "
                    "is not set"
                )
            self._webhooks[webhook.name] = _Webhook(webhook, secret.encode())

    def token(self, token: str | None) -> Principal | None:
        """The caller a token stands for; None for a missing or unknown token."""
        if not self.enabled:
            return ANYONE
        if not token:
            return None
        found = self._tokens.get(hash_token(token))
        if found is None:
            return None
        return Principal(found.name, found.scopes, found.workflows)

    def webhook(self, source: str, headers: Mapping[str, str], body: bytes) -> Principal:
        """The webhook source whose secret signed `body`; it may only send events.

        Raises:
            HTTPException: 401 for an unknown source or a missing or wrong signature.
        """
        webhook = self._webhooks.get(source)
        signature = headers.get(webhook.config.signature_header, "") if webhook else ""
        prefix = webhook.config.signature_prefix if webhook else ""
        if webhook is None or not signature.startswith(prefix):
            raise HTTPException(HTTPStatus.UNAUTHORIZED, "a valid signature is required")
        expected = hmac.new(webhook.secret, body, hashlib.sha256).hexdigest()
        given = signature[len(prefix) :].strip().lower().encode()
        if not hmac.compare_digest(given, expected.encode()):
            raise HTTPException(HTTPStatus.UNAUTHORIZED, "a valid signature is required")
        return Principal(f"webhook {source}", frozenset({Scope.EVENTS}), webhook.config.workflows)
