"""A small kustomize renderer for the subset k8s/ uses, so that the tests render the overlays
without the kustomize binary (a test compares it with `kubectl kustomize` where that exists).

Supported in a kustomization.yaml: `resources` (files and directories), `namespace`, `images`
(`name` with `newName` and/or `newTag`) and `patches` (inline JSON 6902 operations `add`,
`replace` and `remove`, with a `target` of `kind` and `name`). Anything else raises
`UnsupportedError`, so a manifest never silently relies on a feature this renderer ignores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

SUPPORTED_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
#: Kinds that live outside any namespace (the only ones k8s/ has).
CLUSTER_SCOPED_KINDS = {"Namespace"}


class UnsupportedError(Exception):
    """The kustomization uses a feature this renderer does not implement."""


def load_documents(path: Path) -> list[Resource]:
    """Every non-empty YAML document in a file."""
    with path.open() as stream:
        return [document for document in yaml.safe_load_all(stream) if document]


def render(directory: Path) -> list[Resource]:
    """The resources `kustomize build directory` would print, in kustomization order."""
    kustomization = load_documents(directory / "kustomization.yaml")[0]
    unknown = set(kustomization) - SUPPORTED_KEYS
    if unknown:
        raise UnsupportedError(f"{directory}: unsupported kustomization keys {sorted(unknown)}")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        resources.extend(render(path) if path.is_dir() else load_documents(path))
    for patch in kustomization.get("patches", []):
        _apply_patch(resources, patch, directory)
    if "namespace" in kustomization:
        _set_namespace(resources, kustomization["namespace"])
    for image in kustomization.get("images", []):
        _set_image(resources, image)
    return resources


def _apply_patch(resources: list[Resource], patch: dict[str, Any], directory: Path) -> None:
    if set(patch) != {"target", "patch"} or set(patch["target"]) - {"kind", "name"}:
        raise UnsupportedError(f"{directory}: only inline patches with a kind/name target")
    target = patch["target"]
    matches = [
        resource
        for resource in resources
        if resource["kind"] == target["kind"] and resource["metadata"]["name"] == target["name"]
    ]
    if not matches:
        raise ValueError(f"{directory}: patch target {target} matches no resource")
    for resource in matches:
        for operation in yaml.safe_load(patch["patch"]):
            _apply_operation(resource, operation)


def _apply_operation(resource: Resource, operation: dict[str, Any]) -> None:
    """One JSON 6902 operation; a missing path raises, as it does in kustomize."""
    *parents, last = [_unescape(part) for part in operation["path"].split("/")[1:]]
    node: Any = resource
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    match operation["op"]:
        case "replace":
            if isinstance(node, dict) and key not in node:
                raise KeyError(f"replace: {operation['path']} does not exist")
            node[key] = operation["value"]
        case "add":
            if isinstance(node, list):
                node.insert(key, operation["value"])
            else:
                node[key] = operation["value"]
        case "remove":
            del node[key]
        case other:
            raise UnsupportedError(f"JSON patch operation {other!r}")


def _unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")


def _set_namespace(resources: list[Resource], namespace: str) -> None:
    # As kustomize does, a Namespace resource is renamed to the kustomization's namespace.
    for resource in resources:
        if resource["kind"] == "Namespace":
            resource["metadata"]["name"] = namespace
        elif resource["kind"] not in CLUSTER_SCOPED_KINDS:
            resource["metadata"]["namespace"] = namespace


def _set_image(resources: list[Resource], image: dict[str, str]) -> None:
    for resource in resources:
        pod_spec = resource.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
            name, tag = _split_image(container["image"])
            if name == image["name"]:
                name, tag = image.get("newName", name), image.get("newTag", tag)
                container["image"] = f"{name}:{tag}" if tag else name


def _split_image(reference: str) -> tuple[str, str]:
    """`registry:5000/warren:1.0` -> (`registry:5000/warren`, `1.0`); no tag -> ``."""
    name, colon, tag = reference.rpartition(":")
    if not colon or "/" in tag:
        return reference, ""
    return name, tag
