"""docker/: Docker cannot run here, so the compose file's structure and the Dockerfile's
essentials are checked by reading them, and the lock file against pyproject.toml."""

from __future__ import annotations

import inspect
import json
import re
import tomllib
from typing import Any

import pytest

from processor.worker import Worker
from tests.deploy.manifests import (
    COMPOSE_POLICIES_DIR,
    DOCKER_DIR,
    REPOSITORY,
    compose,
)

DOCKERFILE = DOCKER_DIR / "Dockerfile"
LOCK_FILE = DOCKER_DIR / "requirements.lock"
#: Built from this repository; every other service runs a public image.
WARREN_SERVICES = {"migrate", "worker", "demo"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            instructions.append((instruction.upper(), arguments.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM")
    return instructions[last_from:]


def test_base_images_are_pinned_to_a_full_version() -> None:
    bases = [
        args.split()[0] for instruction, args in dockerfile_instructions() if instruction == "FROM"
    ]
    assert bases
    for image in bases:
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", image), image


def test_the_image_runs_as_a_non_root_user() -> None:
    users = [args for instruction, args in final_stage() if instruction == "USER"]
    assert users, "the final stage sets no USER, so it runs as root"
    # Numeric and not 0, so that Kubernetes' runAsNonRoot can check it.
    assert re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1]), users[-1]


def test_the_entrypoint_is_warren_in_exec_form() -> None:
    (entrypoint,) = [args for instruction, args in final_stage() if instruction == "ENTRYPOINT"]
    # Exec form: warren is PID 1 and gets the SIGTERM that starts the drain.
    assert json.loads(entrypoint) == ["warren"]


def test_the_image_holds_no_secret() -> None:
    for instruction, arguments in dockerfile_instructions():
        if instruction in {"ENV", "ARG", "LABEL"}:
            assert not re.search(r"(?i)pass|secret|token|key|credential", arguments), arguments
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", arguments), "a URL with credentials"
        if instruction == "ADD":
            assert "://" not in arguments, "ADD from a URL is unpinned"


def test_dependencies_are_installed_from_the_lock_file_with_hashes() -> None:
    runs = [args for instruction, args in dockerfile_instructions() if instruction == "RUN"]
    installs = [run for run in runs if "pip install" in run]
    assert any("--require-hashes" in run and "requirements.lock" in run for run in installs)
    # The project itself adds no dependency the lock does not pin.
    assert all("--no-deps" in run for run in installs)


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_lock_file_pins_every_runtime_dependency_with_hashes() -> None:
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    wanted = {
        _requirement_name(r)
        for r in project["dependencies"] + project["optional-dependencies"]["postgres"]
    }
    text = LOCK_FILE.read_text()
    pinned = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+)", text, flags=re.MULTILINE))
    assert wanted <= pinned.keys(), "refresh docker/requirements.lock (README, Deploying)"
    for block in re.split(r"\n(?=[a-z0-9])", text.split("\n\n", 1)[-1]):
        if "==" in block:
            assert "--hash=sha256:" in block, block.splitlines()[0]


def test_compose_runs_the_broker_database_tracing_migration_workers_and_demo() -> None:
    services = compose()["services"]
    assert services.keys() == {
        "rabbitmq",
        "broker-policies",
        "postgres",
        "jaeger",
        "migrate",
        "worker",
        "demo",
    }
    assert services["rabbitmq"]["image"].startswith("rabbitmq:")
    assert services["rabbitmq"]["image"].endswith("-management")
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["worker"]["command"][:2] == ["worker", "processor.demo"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["demo"]["command"] == ["demo"]


def test_every_compose_image_is_pinned_by_tag() -> None:
    for name, service in compose()["services"].items():
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), f"{name}: {image} has no tag"
        assert not image.endswith(":latest"), f"{name}: {image}"
        if name in WARREN_SERVICES:
            assert service["build"]["dockerfile"] == "docker/Dockerfile"


def test_dependencies_wait_on_health_or_completion() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} -> {dependency}"
            match condition["condition"]:
                case "service_healthy":
                    assert "healthcheck" in services[dependency], f"{name} -> {dependency}"
                case "service_completed_successfully":
                    assert services[dependency]["restart"] == "no", f"{name} -> {dependency}"
                case "service_started":
                    pass
                case other:
                    pytest.fail(f"{name} -> {dependency}: unknown condition {other}")


def _conditions(service: dict[str, Any]) -> dict[str, str]:
    return {name: c["condition"] for name, c in service["depends_on"].items()}


def test_workers_start_after_the_migration_and_the_broker_policies() -> None:
    services = compose()["services"]
    assert _conditions(services["migrate"]) == {"postgres": "service_healthy"}
    assert _conditions(services["broker-policies"]) == {"rabbitmq": "service_healthy"}
    worker = _conditions(services["worker"])
    assert worker["migrate"] == "service_completed_successfully"
    assert worker["broker-policies"] == "service_completed_successfully"
    assert worker["rabbitmq"] == "service_healthy"
    assert _conditions(services["demo"]) == {"worker": "service_healthy"}


def test_the_worker_healthcheck_asks_readyz_on_the_configured_port() -> None:
    worker = compose()["services"]["worker"]
    port = worker["environment"]["WARREN_HTTP_PORT"]
    assert f"http://127.0.0.1:{port}/readyz" in " ".join(worker["healthcheck"]["test"])


def test_compose_gives_the_worker_time_to_drain() -> None:
    worker = compose()["services"]["worker"]
    seconds = int(worker["stop_grace_period"].removesuffix("s"))
    assert seconds > inspect.signature(Worker).parameters["shutdown_grace"].default


def test_warren_services_share_one_configuration() -> None:
    services = compose()["services"]
    environments = [services[name]["environment"] for name in sorted(WARREN_SERVICES)]
    assert all(environment == environments[0] for environment in environments)
    environment = environments[0]
    assert environment["WARREN_BROKER_URL"].startswith("amqp://")
    assert environment["WARREN_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert environment["OTEL_SERVICE_NAME"] == "warren-worker"


def test_compose_passwords_come_from_the_environment() -> None:
    services = compose()["services"]
    values = [
        str(value)
        for service in services.values()
        for key, value in service.get("environment", {}).items()
        if re.search(r"(?i)pass|_URL$", key)
    ]
    assert values
    for value in values:
        if "://" in value:
            value = re.sub(r"^\w[\w+]*://[^:]+:(.*)@.*$", r"\1", value)
        assert re.fullmatch(r"\$\{[A-Z_]+:-[^}]*\}", value), value


def test_broker_policies_mounts_the_policy_files() -> None:
    service = compose()["services"]["broker-policies"]
    (volume,) = service["volumes"]
    source, target, _ = volume.split(":")
    assert (DOCKER_DIR / source).resolve() == COMPOSE_POLICIES_DIR.resolve()
    assert f"{target}/*.json" in service["command"][0]
    assert list(COMPOSE_POLICIES_DIR.glob("*.json"))
