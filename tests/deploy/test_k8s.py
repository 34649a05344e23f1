"""k8s/: every resource validated offline, the overlays rendered, and the manifests consistent
with each other and with the code (ports, queue names, the drain time, policies)."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate.utils import ValidationError as KubernetesValidationError
from kubernetes_validate.utils import validate as validate_kubernetes

from processor.broker.topology import (
    DELAY_LEVELS,
    DELAY_PREFIX,
    DELIVERY_LIMIT,
    PARKED_TTL_MS,
    PARKING,
    Topology,
)
from processor.worker import Worker
from schemas.commands import ID_PATTERN
from tests.deploy.crd_schemas import CUSTOM_RESOURCE_SCHEMAS
from tests.deploy.kustomize import Resource, UnsupportedError, load_documents, render
from tests.deploy.manifests import (
    K8S_DIR,
    KUSTOMIZATIONS,
    MANIFEST_FILES,
    base,
    compose_policies,
    find,
    k8s_policies,
    relative,
)

#: The oldest Kubernetes the manifests support, and a recent one.
KUBERNETES_VERSIONS = ["1.30", "1.33"]


def check_resource(resource: Resource, kubernetes_version: str) -> None:
    """Validate one resource: a custom resource against its operator's fields, anything else
    against Kubernetes' own schema (strict: unknown fields fail). Raises on a problem."""
    custom = CUSTOM_RESOURCE_SCHEMAS.get((resource["apiVersion"], resource["kind"]))
    if custom is not None:
        jsonschema.validate(resource, custom)
    else:
        validate_kubernetes(resource, kubernetes_version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFEST_FILES, ids=relative)
def test_every_manifest_file_is_valid(path: Path, version: str) -> None:
    resources = load_documents(path)
    assert resources, f"{relative(path)} holds no resource"
    for resource in resources:
        check_resource(resource, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=relative)
def test_every_rendered_kustomization_is_valid(directory: Path, version: str) -> None:
    for resource in render(directory):
        check_resource(resource, version)


def test_the_validators_reject_a_misspelled_field() -> None:
    resources = base()
    deployment = find(resources, "Deployment", "warren-worker")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    with pytest.raises(KubernetesValidationError):
        check_resource(deployment, KUBERNETES_VERSIONS[0])
    scaled_object = find(resources, "ScaledObject", "warren-worker")
    scaled_object["spec"]["minReplicas"] = 2
    with pytest.raises(jsonschema.ValidationError):
        check_resource(scaled_object, KUBERNETES_VERSIONS[0])


def test_every_manifest_file_is_deployed_by_a_kustomization_or_is_the_hpa_fallback() -> None:
    listed = {
        (directory / entry).resolve()
        for directory in KUSTOMIZATIONS
        for entry in load_documents(directory / "kustomization.yaml")[0].get("resources", [])
    }
    orphans = [relative(p) for p in MANIFEST_FILES if p.resolve() not in listed]
    assert orphans == ["k8s/autoscaling/hpa-cpu.yaml"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=relative)
def test_the_renderer_agrees_with_kubectl_kustomize(directory: Path) -> None:
    output = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=True
    ).stdout
    expected = [document for document in yaml.safe_load_all(output) if document]

    def by_identity(resources: list[Resource]) -> dict[tuple[str, ...], Resource]:
        return {
            (
                r["apiVersion"],
                r["kind"],
                r["metadata"].get("namespace", ""),
                r["metadata"]["name"],
            ): r
            for r in resources
        }

    assert by_identity(render(directory)) == by_identity(expected)


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("commonLabels: {team: a}\n")
    with pytest.raises(UnsupportedError):
        render(tmp_path)


def test_the_dev_overlay_shrinks_everything_into_its_own_namespace() -> None:
    resources = render(K8S_DIR / "overlays" / "dev")
    namespaces = {r["metadata"].get("namespace") for r in resources if r["kind"] != "Namespace"}
    assert namespaces == {"warren-dev"}
    assert find(resources, "Namespace", "warren-dev")
    images = {
        container["image"]
        for r in resources
        for container in r.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    }
    assert images == {"warren:dev"}
    assert find(resources, "RabbitmqCluster", "warren-rabbitmq")["spec"]["replicas"] == 1
    assert find(resources, "Cluster", "warren-postgres")["spec"]["instances"] == 1
    assert find(resources, "ScaledObject", "warren-worker")["spec"]["maxReplicaCount"] == 3


def test_the_base_runs_the_pinned_image_in_the_warren_namespace() -> None:
    resources = base()
    assert {r["metadata"].get("namespace", "warren") for r in resources} == {"warren"}
    worker = find(resources, "Deployment", "warren-worker")["spec"]["template"]["spec"]
    migrate = find(resources, "Job", "warren-migrate")["spec"]["template"]["spec"]
    assert worker["containers"][0]["image"] == "warren:0.1.0"
    assert worker["containers"][0]["args"][0] == "worker"
    assert migrate["containers"][0]["image"] == "warren:0.1.0"
    assert migrate["containers"][0]["args"] == ["db", "upgrade"]


def _worker_container(resources: list[Resource]) -> dict[str, Any]:
    pod = find(resources, "Deployment", "warren-worker")["spec"]["template"]["spec"]
    containers: list[dict[str, Any]] = pod["containers"]
    (container,) = containers
    return container


def test_probes_and_metrics_use_the_worker_http_port() -> None:
    resources = base()
    config = find(resources, "ConfigMap", "warren-config")["data"]
    container = _worker_container(resources)
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": int(config["WARREN_HTTP_PORT"])}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = find(resources, "Service", "warren-worker")["spec"]
    assert service["ports"][0]["targetPort"] == "http"
    (endpoint,) = find(resources, "ServiceMonitor", "warren-worker")["spec"]["endpoints"]
    assert endpoint["port"] == service["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"


def test_selectors_match_the_worker_pods() -> None:
    resources = base()
    deployment = find(resources, "Deployment", "warren-worker")["spec"]
    pod_labels = deployment["template"]["metadata"]["labels"]
    service_labels = find(resources, "Service", "warren-worker")["metadata"]["labels"]
    selectors = {
        "deployment": deployment["selector"]["matchLabels"],
        "service": find(resources, "Service", "warren-worker")["spec"]["selector"],
        "pdb": find(resources, "PodDisruptionBudget", "warren-worker")["spec"]["selector"][
            "matchLabels"
        ],
        **{
            f"spread {c['topologyKey']}": c["labelSelector"]["matchLabels"]
            for c in deployment["template"]["spec"]["topologySpreadConstraints"]
        },
    }
    for name, selector in selectors.items():
        assert selector.items() <= pod_labels.items(), name
    monitor = find(resources, "ServiceMonitor", "warren-worker")["spec"]["selector"]["matchLabels"]
    assert monitor.items() <= service_labels.items()
    scaled = find(resources, "ScaledObject", "warren-worker")["spec"]["scaleTargetRef"]["name"]
    assert scaled == "warren-worker"


def test_the_grace_period_covers_the_prestop_hook_and_the_worker_drain() -> None:
    resources = base()
    pod = find(resources, "Deployment", "warren-worker")["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    shutdown_grace = inspect.signature(Worker).parameters["shutdown_grace"].default
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + shutdown_grace + 5


def test_connection_urls_come_from_a_secret_and_no_secret_is_committed() -> None:
    for directory in KUSTOMIZATIONS:
        assert not [r for r in render(directory) if r["kind"] == "Secret"], relative(directory)
    resources = base()
    for kind, name in (("Deployment", "warren-worker"), ("Job", "warren-migrate")):
        (container,) = find(resources, kind, name)["spec"]["template"]["spec"]["containers"]
        for variable in container["env"]:
            assert variable["valueFrom"]["secretKeyRef"]["name"] == "warren-connection"
    worker_env = {variable["name"] for variable in _worker_container(resources)["env"]}
    assert worker_env == {"WARREN_BROKER_URL", "WARREN_DATABASE_URL"}
    authentication = find(resources, "TriggerAuthentication", "warren-rabbitmq-management")
    (reference,) = authentication["spec"]["secretTargetRef"]
    assert reference["name"] == "warren-connection"


def test_every_container_runs_as_non_root_with_memory_limits() -> None:
    for resource in base():
        pod = resource.get("spec", {}).get("template", {}).get("spec")
        if pod is None:
            continue
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
            assert "memory" in container["resources"]["limits"]


def _queue_names(namespace: str) -> dict[str, bool]:
    """Every queue name Warren declares for one workflow -> whether it holds work to do."""
    topology = Topology(namespace)
    work = [
        topology.ingress_queue,
        topology.run_queue("ship-order"),
        topology.wake_queue("ship-order"),
    ]
    return {
        **dict.fromkeys(work, True),
        **dict.fromkeys((f"{name}.dead" for name in work), False),
        **dict.fromkeys((f"{DELAY_PREFIX}.{level}" for level in range(DELAY_LEVELS)), False),
        PARKING: False,
    }


def test_workflow_names_cannot_contain_the_dot_the_queue_patterns_rely_on() -> None:
    assert re.match(ID_PATTERN, "ship-order")
    assert not re.match(ID_PATTERN, "ship.order.dead")


def test_keda_scales_on_the_ingress_run_and_wake_queues_only() -> None:
    (trigger,) = find(base(), "ScaledObject", "warren-worker")["spec"]["triggers"]
    # RE2 (KEDA is Go) and Python agree on this pattern: no look-around, no back-references.
    pattern = re.compile(trigger["metadata"]["queueName"])
    assert {name: bool(pattern.search(name)) for name in _queue_names("warren")} == _queue_names(
        "warren"
    )


def test_the_policies_and_the_keda_trigger_use_the_configured_queue_prefix() -> None:
    resources = base()
    namespace = find(resources, "ConfigMap", "warren-config")["data"]["WARREN_NAMESPACE"]
    (trigger,) = find(resources, "ScaledObject", "warren-worker")["spec"]["triggers"]
    patterns = [
        trigger["metadata"]["queueName"],
        k8s_policies()["warren-consuming-queues"]["pattern"],
    ]
    for pattern in patterns:
        assert pattern.startswith(f"^{re.escape(namespace)}\\.")


def test_policies_match_exactly_the_queues_whose_tunables_they_set() -> None:
    policies = k8s_policies()
    names = list(_queue_names("warren"))
    matched = {
        name: [n for n in names if re.search(spec["pattern"], n)] for name, spec in policies.items()
    }
    assert matched == {
        "warren-consuming-queues": [
            "warren.ingress",
            "warren.run.ship-order",
            "warren.wake.ship-order",
        ],
        "warren-parked-wakeups": [PARKING],
    }


#: Policy keys RabbitMQ 3.10+ applies to quorum queues (https://www.rabbitmq.com/docs/quorum-queues
#: "Feature Matrix" and https://www.rabbitmq.com/docs/policies). For the numeric limits the lower
#: of policy and queue argument wins; for dead-lettering keys the queue argument wins.
QUORUM_QUEUE_POLICY_KEYS = {
    "delivery-limit",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "overflow",
    "expires",
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "dead-letter-strategy",
    "queue-leader-locator",
}


def test_policy_definitions_are_quorum_queue_settings_equal_to_the_code_defaults() -> None:
    policies = k8s_policies()
    for spec in policies.values():
        assert spec["definition"].keys() <= QUORUM_QUEUE_POLICY_KEYS
        # 3.10 knows only queues, exchanges and all; quorum_queues arrived in 3.12.
        assert spec["applyTo"] == "queues"
        assert spec["vhost"] == "/"
    assert policies["warren-consuming-queues"]["definition"] == {"delivery-limit": DELIVERY_LIMIT}
    assert policies["warren-parked-wakeups"]["definition"] == {"message-ttl": PARKED_TTL_MS}


def test_compose_applies_the_same_policies_as_kubernetes() -> None:
    as_kubernetes = {
        name: {
            "pattern": spec["pattern"],
            "apply-to": spec["applyTo"],
            "priority": spec["priority"],
            "definition": spec["definition"],
        }
        for name, spec in k8s_policies().items()
    }
    assert compose_policies() == as_kubernetes


def test_policies_name_the_rabbitmq_cluster_of_the_backing_services() -> None:
    (cluster,) = [r for r in render(K8S_DIR / "backing") if r["kind"] == "RabbitmqCluster"]
    assert cluster["spec"]["replicas"] == 3
    for spec in k8s_policies().values():
        assert spec["rabbitmqClusterReference"] == {"name": cluster["metadata"]["name"]}
