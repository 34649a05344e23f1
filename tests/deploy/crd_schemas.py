"""Structural JSON Schemas for the custom resources in k8s/, written from their operators' docs.

Kubernetes' own schemas do not cover custom resources, and the operators' CRDs are not
installable offline, so each schema lists the `spec` fields its operator documents (unknown
fields fail, as they would under a strict CRD) and checks the types of the fields Warren uses.
Each names the page it was written from; update both together when moving to a newer operator.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR: Schema = {
    "type": "object",
    "properties": {"matchLabels": _STRING_MAP, "matchExpressions": {"type": "array"}},
    "additionalProperties": False,
}
#: Prometheus durations, as the operator's CRD validates them.
_DURATION: Schema = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
    r"(([0-9]+)ms)?)$",
}


def _resource(api_version: str, kind: str, spec: Schema) -> Schema:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": {"type": "object", "required": ["name"]},
            "spec": spec,
        },
        "additionalProperties": False,
    }


def _spec(required: list[str], **properties: Schema) -> Schema:
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


_ANY: Schema = {}
_INT: Schema = {"type": "integer"}
_STR: Schema = {"type": "string"}
_BOOL: Schema = {"type": "boolean"}
_OBJ: Schema = {"type": "object"}
_LIST: Schema = {"type": "array"}

# https://keda.sh/docs/2.15/reference/scaledobject-spec/ and, for the trigger's metadata,
# https://keda.sh/docs/2.15/scalers/rabbitmq-queue/ (metadata values are strings).
SCALED_OBJECT = _resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    _spec(
        ["scaleTargetRef", "triggers"],
        scaleTargetRef=_spec(
            ["name"], name=_STR, kind=_STR, apiVersion=_STR, envSourceContainerName=_STR
        ),
        pollingInterval=_INT,
        cooldownPeriod=_INT,
        initialCooldownPeriod=_INT,
        idleReplicaCount=_INT,
        minReplicaCount=_INT,
        maxReplicaCount=_INT,
        fallback=_spec(["failureThreshold", "replicas"], failureThreshold=_INT, replicas=_INT),
        advanced=_spec(
            [],
            restoreToOriginalReplicaCount=_BOOL,
            horizontalPodAutoscalerConfig=_spec([], name=_STR, behavior=_OBJ),
            scalingModifiers=_OBJ,
        ),
        triggers={
            "type": "array",
            "minItems": 1,
            "items": _spec(
                ["type", "metadata"],
                type=_STR,
                name=_STR,
                metricType={"enum": ["AverageValue", "Value", "Utilization"]},
                useCachedMetrics=_BOOL,
                authenticationRef=_spec(["name"], name=_STR, kind=_STR),
                metadata={
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "propertyNames": {
                        "enum": [
                            "host",
                            "hostFromEnv",
                            "usernameFromEnv",
                            "passwordFromEnv",
                            "protocol",
                            "mode",
                            "value",
                            "activationValue",
                            "queueName",
                            "vhostName",
                            "useRegex",
                            "pageSize",
                            "operation",
                            "timeout",
                            "excludeUnacknowledged",
                            "unsafeSsl",
                        ]
                    },
                    "properties": {
                        "protocol": {"enum": ["auto", "amqp", "http"]},
                        "mode": {"enum": ["QueueLength", "MessageRate"]},
                        "useRegex": {"enum": ["true", "false"]},
                        "operation": {"enum": ["sum", "max", "avg"]},
                    },
                },
            ),
        },
    ),
)

# https://keda.sh/docs/2.15/concepts/authentication/
TRIGGER_AUTHENTICATION = _resource(
    "keda.sh/v1alpha1",
    "TriggerAuthentication",
    _spec(
        [],
        secretTargetRef={
            "type": "array",
            "items": _spec(["parameter", "name", "key"], parameter=_STR, name=_STR, key=_STR),
        },
        env=_LIST,
        configMapTargetRef=_LIST,
        podIdentity=_OBJ,
        hashiCorpVault=_OBJ,
        azureKeyVault=_OBJ,
        awsSecretManager=_OBJ,
        gcpSecretManager=_OBJ,
        boundServiceAccountToken=_LIST,
    ),
)

# https://prometheus-operator.dev/docs/api-reference/api/#monitoring.coreos.com/v1.ServiceMonitor
SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    _spec(
        ["endpoints", "selector"],
        jobLabel=_STR,
        targetLabels=_LIST,
        podTargetLabels=_LIST,
        selector=_LABEL_SELECTOR,
        namespaceSelector=_spec([], any=_BOOL, matchNames=_LIST),
        sampleLimit=_INT,
        targetLimit=_INT,
        labelLimit=_INT,
        labelNameLengthLimit=_INT,
        labelValueLengthLimit=_INT,
        keepDroppedTargets=_INT,
        attachMetadata=_OBJ,
        scrapeClass=_STR,
        scrapeProtocols=_LIST,
        bodySizeLimit=_STR,
        endpoints={
            "type": "array",
            "minItems": 1,
            "items": _spec(
                [],
                port=_STR,
                targetPort=_ANY,
                path=_STR,
                scheme={"enum": ["http", "https"]},
                params=_OBJ,
                interval=_DURATION,
                scrapeTimeout=_DURATION,
                tlsConfig=_OBJ,
                bearerTokenSecret=_OBJ,
                authorization=_OBJ,
                basicAuth=_OBJ,
                oauth2=_OBJ,
                honorLabels=_BOOL,
                honorTimestamps=_BOOL,
                trackTimestampsStaleness=_BOOL,
                metricRelabelings=_LIST,
                relabelings=_LIST,
                proxyUrl=_STR,
                followRedirects=_BOOL,
                enableHttp2=_BOOL,
                filterRunning=_BOOL,
            ),
        },
    ),
)

# https://www.rabbitmq.com/kubernetes/operator/using-operator and the API reference,
# https://github.com/rabbitmq/cluster-operator/blob/main/docs/api/rabbitmq.com.ref.asciidoc
RABBITMQ_CLUSTER = _resource(
    "rabbitmq.com/v1beta1",
    "RabbitmqCluster",
    _spec(
        [],
        replicas={"type": "integer", "minimum": 0},
        image=_STR,
        imagePullSecrets=_LIST,
        service=_spec(
            [],
            type={"enum": ["ClusterIP", "LoadBalancer", "NodePort"]},
            annotations=_STRING_MAP,
            ipFamilyPolicy=_STR,
        ),
        persistence=_spec([], storageClassName=_STR, storage=_STR),
        resources=_OBJ,
        affinity=_OBJ,
        tolerations=_LIST,
        rabbitmq=_spec(
            [],
            additionalPlugins=_LIST,
            additionalConfig={"type": "string", "maxLength": 2000},
            advancedConfig=_STR,
            envConfig=_STR,
            erlangInetConfig=_STR,
        ),
        tls=_OBJ,
        override=_spec([], statefulSet=_OBJ, service=_OBJ),
        skipPostDeploySteps=_BOOL,
        terminationGracePeriodSeconds=_INT,
        delayStartSeconds=_INT,
        secretBackend=_OBJ,
    ),
)

# https://cloudnative-pg.io/documentation/current/cloudnative-pg.v1/#postgresql-cnpg-io-v1-ClusterSpec
POSTGRES_CLUSTER = _resource(
    "postgresql.cnpg.io/v1",
    "Cluster",
    _spec(
        ["instances"],
        description=_STR,
        inheritedMetadata=_OBJ,
        imageName=_STR,
        imageCatalogRef=_OBJ,
        imagePullPolicy=_STR,
        imagePullSecrets=_LIST,
        schedulerName=_STR,
        postgresUID=_INT,
        postgresGID=_INT,
        instances={"type": "integer", "minimum": 1},
        minSyncReplicas=_INT,
        maxSyncReplicas=_INT,
        postgresql=_spec(
            [],
            # Every parameter is a string, numbers included.
            parameters=_STRING_MAP,
            synchronous=_OBJ,
            pg_hba=_LIST,
            pg_ident=_LIST,
            syncReplicaElectionConstraint=_OBJ,
            shared_preload_libraries=_LIST,
            ldap=_OBJ,
            promotionTimeout=_INT,
            enableAlterSystem=_BOOL,
        ),
        replicationSlots=_OBJ,
        bootstrap=_spec(
            [],
            initdb=_spec(
                [],
                database=_STR,
                owner=_STR,
                secret=_OBJ,
                options=_LIST,
                dataChecksums=_BOOL,
                encoding=_STR,
                localeCollate=_STR,
                localeCType=_STR,
                walSegmentSize=_INT,
                postInitSQL=_LIST,
                postInitApplicationSQL=_LIST,
                postInitTemplateSQL=_LIST,
                postInitApplicationSQLRefs=_OBJ,
                **{"import": _OBJ},
            ),
            recovery=_OBJ,
            pg_basebackup=_OBJ,
        ),
        replica=_OBJ,
        superuserSecret=_OBJ,
        enableSuperuserAccess=_BOOL,
        certificates=_OBJ,
        storage=_spec([], size=_STR, storageClass=_STR, resizeInUseVolumes=_BOOL, pvcTemplate=_OBJ),
        walStorage=_OBJ,
        serviceAccountTemplate=_OBJ,
        ephemeralVolumeSource=_OBJ,
        startDelay=_INT,
        stopDelay=_INT,
        smartShutdownTimeout=_INT,
        switchoverDelay=_INT,
        failoverDelay=_INT,
        livenessProbeTimeout=_INT,
        affinity=_spec(
            [],
            enablePodAntiAffinity=_BOOL,
            topologyKey=_STR,
            nodeSelector=_STRING_MAP,
            nodeAffinity=_OBJ,
            tolerations=_LIST,
            podAntiAffinityType={"enum": ["preferred", "required"]},
            additionalPodAntiAffinity=_OBJ,
            additionalPodAffinity=_OBJ,
        ),
        topologySpreadConstraints=_LIST,
        resources=_OBJ,
        ephemeralVolumesSizeLimit=_OBJ,
        priorityClassName=_STR,
        primaryUpdateStrategy={"enum": ["unsupervised", "supervised"]},
        primaryUpdateMethod={"enum": ["switchover", "restart"]},
        backup=_OBJ,
        nodeMaintenanceWindow=_OBJ,
        monitoring=_spec(
            [],
            customQueriesConfigMap=_LIST,
            customQueriesSecret=_LIST,
            disableDefaultQueries=_BOOL,
            enablePodMonitor=_BOOL,
            tls=_OBJ,
            podMonitorMetricRelabelings=_LIST,
            podMonitorRelabelings=_LIST,
        ),
        externalClusters=_LIST,
        logLevel=_STR,
        projectedVolumeTemplate=_OBJ,
        env=_LIST,
        envFrom=_LIST,
        managed=_OBJ,
        seccompProfile=_OBJ,
        tablespaces=_LIST,
        enablePDB=_BOOL,
        plugins=_LIST,
        probes=_OBJ,
    ),
)

# https://github.com/rabbitmq/messaging-topology-operator/blob/main/api/v1beta1/policy_types.go
# (the reference the operator's docs link: https://www.rabbitmq.com/kubernetes/operator/using-topology-operator)
POLICY = _resource(
    "rabbitmq.com/v1beta1",
    "Policy",
    _spec(
        ["name", "pattern", "definition", "rabbitmqClusterReference"],
        name=_STR,
        vhost=_STR,
        pattern=_STR,
        applyTo={"enum": ["queues", "classic_queues", "quorum_queues", "exchanges", "all"]},
        priority=_INT,
        definition=_OBJ,
        rabbitmqClusterReference=_spec([], name=_STR, namespace=_STR, connectionSecret=_OBJ),
    ),
)

#: (apiVersion, kind) -> schema, for every custom resource kind k8s/ may use.
CUSTOM_RESOURCE_SCHEMAS: dict[tuple[str, str], Schema] = {
    (schema["properties"]["apiVersion"]["const"], schema["properties"]["kind"]["const"]): schema
    for schema in (
        SCALED_OBJECT,
        TRIGGER_AUTHENTICATION,
        SERVICE_MONITOR,
        RABBITMQ_CLUSTER,
        POSTGRES_CLUSTER,
        POLICY,
    )
}
