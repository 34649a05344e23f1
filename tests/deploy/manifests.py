"""Where the deployment files are, and the resources in them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.deploy.kustomize import Resource, load_documents, render

REPOSITORY = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPOSITORY / "docker"
K8S_DIR = REPOSITORY / "k8s"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
COMPOSE_POLICIES_DIR = DOCKER_DIR / "rabbitmq" / "policies"

#: Every YAML file in k8s/, kustomizations included.
K8S_YAML_FILES = sorted(K8S_DIR.rglob("*.yaml"))
#: Every directory with a kustomization.yaml.
KUSTOMIZATIONS = sorted(path.parent for path in K8S_DIR.rglob("kustomization.yaml"))
#: Every manifest file (resources, not kustomizations).
MANIFEST_FILES = [path for path in K8S_YAML_FILES if path.name != "kustomization.yaml"]


def relative(path: Path) -> str:
    """A path as the test ids show it."""
    return str(path.relative_to(REPOSITORY))


def find(resources: list[Resource], kind: str, name: str) -> Resource:
    """The one resource of this kind and name."""
    (found,) = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def base() -> list[Resource]:
    """k8s/base rendered: the production resources."""
    return render(K8S_DIR / "base")


def k8s_policies() -> dict[str, dict[str, Any]]:
    """The RabbitMQ Policy resources' specs in k8s/base, by policy name."""
    return {r["spec"]["name"]: r["spec"] for r in base() if r["kind"] == "Policy"}


def compose_policies() -> dict[str, dict[str, Any]]:
    """The bodies docker/compose.yaml PUTs to the management API, by policy name."""
    return {
        path.stem: json.loads(path.read_text())
        for path in sorted(COMPOSE_POLICIES_DIR.glob("*.json"))
    }


def compose() -> dict[str, Any]:
    """docker/compose.yaml, parsed (anchors and merge keys resolved)."""
    (document,) = load_documents(COMPOSE_FILE)
    return document
