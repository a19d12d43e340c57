"""The Helm chart helm/cycles-events, rendered by a real Helm engine.

The engine is Helm v4's Go SDK embedded in PyPI's ``helm-python-sdk`` (a dev extra): it
loads, lints, validates values against values.schema.json and renders templates offline,
exactly as ``helm template`` does. Built-in Kubernetes kinds are checked against the
Kubernetes OpenAPI schemas of PyPI's ``kubernetes-validate`` (strict: unknown fields
fail); the CRD kinds (ServiceMonitor, PrometheusRule, ScaledObject, TriggerAuthentication)
have no schema there and are checked structurally below.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "cycles-events"
RULES = ROOT / "deploy" / "prometheus" / "cycles-events.rules.yml"
RELEASE = "prod"
NAMESPACE = "cycles"
FULLNAME = "prod-cycles-events"
KEY_B64 = base64.b64encode(bytes(range(32))).decode()
K8S_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
CRD_GROUPS = {"monitoring.coreos.com", "keda.sh"}

# Every setting of the daemon with its documented default, as the container sees it.
PLAIN_SETTINGS = {
    "REDIS_HOST": "redis",
    "REDIS_PORT": "6379",
    "REDIS_TLS_ENABLED": "false",
    "REDIS_CONNECT_TIMEOUT_MS": "2000",
    "REDIS_SOCKET_TIMEOUT_MS": "5000",
    "REDIS_BLOCKING_SOCKET_TIMEOUT_MS": "10000",
    "DISPATCH_PENDING_TIMEOUT_SECONDS": "5",
    "DISPATCH_RETRY_POLL_INTERVAL_MS": "5000",
    "RETRY_BATCH_SIZE": "100",
    "DISPATCH_HTTP_TIMEOUT_SECONDS": "30",
    "DISPATCH_HTTP_CONNECT_TIMEOUT_SECONDS": "5",
    "MAX_DELIVERY_AGE_MS": "86400000",
    "EVENT_TTL_DAYS": "90",
    "DELIVERY_TTL_DAYS": "14",
    "RETENTION_CLEANUP_INTERVAL_MS": "3600000",
    "MANAGEMENT_PORT": "9980",
    "MANAGEMENT_ADDRESS": "0.0.0.0",
    "CYCLES_METRICS_TENANT_TAG_ENABLED": "true",
    "WEBHOOK_URL_GUARD_ALLOW_PRIVATE_NETWORKS": "false",
    "DISPATCH_PROCESSING_RECOVERY_IDLE_MS": "180000",
    "DISPATCH_PROCESSING_RECOVERY_INTERVAL_MS": "30000",
    "DISPATCH_FAILED_MAX_LEN": "10000",
    "DISPATCH_CONCURRENCY": "64",
    "DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION": "8",
    "SHUTDOWN_GRACE_SECONDS": "25",
    "LOG_LEVEL": "INFO",
    "DISPATCH_RETRY_JITTER": "0",
    "DISPATCH_RETRY_HONOR_RETRY_AFTER": "false",
    "DISPATCH_RETRY_AFTER_MIN_MS": "1000",
    "DISPATCH_RETRY_AFTER_MAX_MS": "3600000",
    "DISPATCH_RETRY_OVERLOAD_FLOOR_MS": "0",
    "DISPATCH_DISABLE_ON_410": "false",
    "WEBHOOK_STANDARD_HEADERS_ENABLED": "false",
    "DISPATCH_ADAPTIVE_CONCURRENCY_ENABLED": "false",
    "DISPATCH_FIRST_ATTEMPT_SHARE": "0",
}
SECRET_SETTINGS = {
    "WEBHOOK_SECRET_ENCRYPTION_KEY": "WEBHOOK_SECRET_ENCRYPTION_KEY",
    "REDIS_PASSWORD": "REDIS_PASSWORD",
    "REDIS_URL": "REDIS_URL",
}
# Rendered only when their values are set: unset, the daemon applies its own default.
OPTIONAL_SETTINGS = {
    "REDIS_USERNAME",
    "REDIS_TLS_CA_FILE",
    "REDIS_SENTINEL_MASTER",
    "REDIS_SENTINEL_NODES",
    "REDIS_SENTINEL_PASSWORD",
    "WEBHOOK_SECRET_ALLOW_PLAINTEXT",
}
CA_FILE = "/etc/cycles-events/redis-ca/ca.crt"

# Redis over TLS with a private CA and an ACL user.
TLS_ACL: dict[str, Any] = {
    "redis": {
        "username": "cycles-events",
        "password": "acl-pw",
        "tls": {"enabled": True, "caSecret": {"name": "redis-ca", "key": "ca.pem"}},
    }
}
# Redis through Sentinel, the Sentinels' password in the chart's Secret.
SENTINEL: dict[str, Any] = {
    "redis": {
        "password": "redis-pw",
        "sentinel": {
            "master": "cycles",
            "nodes": ["sentinel-0.sentinel:26379", "sentinel-1.sentinel:26379", "[fd00::3]:26380"],
            "password": "sentinel-pw",
        },
    }
}

ALL_ON: dict[str, Any] = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {
        "enabled": True,
        "runbookBaseUrl": "https://git.example.com/ops/cycles-events/blob/main/docs/operations.md",
    },
    "keda": {"enabled": True, "usePassword": True, "listLength": 500, "maxReplicaCount": 12},
    "existingSecret": {
        "name": "cycles-events-credentials",
        "encryptionKeyKey": "encryption-key",
        "redisPasswordKey": "redis-password",
        "redisUrlKey": "redis-url",
        "redisSentinelPasswordKey": "redis-sentinel-password",
    },
    "redis": {
        "username": "cycles-events",
        "tls": {"enabled": True, "caConfigMap": {"name": "redis-trust", "key": "bundle.pem"}},
        "sentinel": {"master": "cycles", "nodes": ["sentinel-0:26379", "sentinel-1:26379"]},
    },
    "config": {"webhookSecretAllowPlaintext": False},  # the key is in existingSecret
    "networkPolicy": {
        "metricsNamespaceLabel": {"key": "team", "value": "observability"},
        "metricsPodSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        "egress": [{"ports": [{"port": 6379, "protocol": "TCP"}]}, {"to": []}],
    },
    "podDisruptionBudget": {"minAvailable": None, "maxUnavailable": 1},
    "imagePullSecrets": [{"name": "registry"}],
    "image": {"digest": "sha256:" + "a" * 64},
    "extraEnv": [{"name": "EXTRA", "value": "1"}],
    "podAnnotations": {"example.com/team": "payments"},
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "cycles-events"}},
        }
    ],
    "priorityClassName": "high",
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if not path.endswith(".yaml"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def env_of(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(docs)["env"]}


def test_helm_engine_is_real() -> None:
    assert helm.helm_sdk_version().startswith("v4.")


def test_chart_lints_clean(chart: helm.Chart) -> None:
    for values in ({}, ALL_ON, TLS_ACL, SENTINEL):
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_render_kinds(chart: helm.Chart) -> None:
    kinds = sorted(d["kind"] for d in render(chart))
    assert kinds == sorted(
        [
            "ServiceAccount",
            "Secret",
            "Service",
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
        ]
    )


def test_all_options_render_kinds(chart: helm.Chart) -> None:
    kinds = sorted(d["kind"] for d in render(chart, ALL_ON))
    assert kinds == sorted(
        [
            "ServiceAccount",
            "Service",
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "ServiceMonitor",
            "PrometheusRule",
            "ScaledObject",
            "TriggerAuthentication",
        ]
    )  # no Secret: existingSecret is used


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "values",
    [{}, ALL_ON, TLS_ACL, SENTINEL],
    ids=["defaults", "all-options", "tls-acl", "sentinel"],
)
def test_manifests_pass_kubernetes_schema(
    chart: helm.Chart, values: dict[str, Any], k8s_version: str
) -> None:
    validated = 0
    for doc in render(chart, values):
        group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
        if group in CRD_GROUPS:
            continue  # no schema in kubernetes-validate; see the structural tests below
        kubernetes_validate.validate(doc, k8s_version, strict=True)
        validated += 1
    assert validated == (5 if "existingSecret" in values else 6)  # no Secret then


def test_schema_validation_is_live() -> None:
    """kubernetes-validate rejects a manifest with a wrong type or an unknown field."""
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"a": 1}},
            K8S_VERSIONS[0],
            strict=True,
        )


def test_all_objects_are_named_labelled_and_namespaced(chart: helm.Chart) -> None:
    for doc in render(chart, ALL_ON):
        meta = doc["metadata"]
        assert meta["name"].startswith(FULLNAME), meta
        assert meta["namespace"] == NAMESPACE
        assert meta["labels"]["app.kubernetes.io/name"] == "cycles-events"
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_deployment_defaults(chart: helm.Chart) -> None:
    docs = render(chart)
    deployment = by_kind(docs, "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    c = container(docs)
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["terminationGracePeriodSeconds"] == 40
    assert c["image"] == "cycles-events:0.2.0"
    assert c["args"] == ["run"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "traffic": 7980,
        "management": 9980,
    }
    assert c["startupProbe"] == {
        "httpGet": {"path": "/actuator/health/readiness", "port": "management"},
        "periodSeconds": 5,
        "failureThreshold": 24,
        "timeoutSeconds": 3,
    }
    assert c["livenessProbe"]["httpGet"] == {
        "path": "/actuator/health/liveness",
        "port": "management",
    }
    assert (c["livenessProbe"]["periodSeconds"], c["livenessProbe"]["failureThreshold"]) == (10, 3)
    assert c["readinessProbe"]["httpGet"] == {
        "path": "/actuator/health/readiness",
        "port": "management",
    }
    assert (c["readinessProbe"]["periodSeconds"], c["readinessProbe"]["failureThreshold"]) == (5, 2)
    assert c["resources"]["requests"] and c["resources"]["limits"]


def test_deployment_security(chart: helm.Chart) -> None:
    for values in ({}, ALL_ON, TLS_ACL):
        docs = render(chart, values)
        pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
        c = container(docs)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        # read-only root: /tmp is the only writable mount (the Redis CA is read-only)
        assert [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")] == ["/tmp"]
        assert len(c["volumeMounts"]) == (1 if not values else 2)


def test_every_setting_is_rendered_into_env(chart: helm.Chart) -> None:
    env = env_of(render(chart))
    for name, value in PLAIN_SETTINGS.items():
        assert env[name] == {"name": name, "value": value}, name
    for name, key in SECRET_SETTINGS.items():
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == FULLNAME and ref["key"] == key
    assert set(env) == set(PLAIN_SETTINGS) | set(SECRET_SETTINGS)
    assert not OPTIONAL_SETTINGS & set(env)


def test_chart_defaults_are_the_daemon_defaults(chart: helm.Chart) -> None:
    """Each default the chart renders is the daemon's own default (REDIS_HOST aside)."""
    from cycles_events.config import Settings

    env = env_of(render(chart))
    for name in set(PLAIN_SETTINGS) - {"REDIS_HOST"}:  # the chart's Redis Service: "redis"
        field = _field_for(name)
        parsed = getattr(Settings(**{name: env[name]["value"]}), field)
        assert parsed == Settings.model_fields[field].default, name
    # the default render has no CA volume and the Secret only the three keys
    docs = render(chart)
    volumes = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert [v["name"] for v in volumes] == ["tmp"]
    assert set(by_kind(docs, "Secret")["data"]) == set(SECRET_SETTINGS)


@pytest.mark.parametrize(
    ("values", "name", "expected"),
    [
        ({"config": {"dispatchPendingTimeoutSeconds": 2}}, "DISPATCH_PENDING_TIMEOUT_SECONDS", "2"),
        (
            {"config": {"dispatchRetryPollIntervalMs": 250}},
            "DISPATCH_RETRY_POLL_INTERVAL_MS",
            "250",
        ),
        ({"config": {"retryBatchSize": 500}}, "RETRY_BATCH_SIZE", "500"),
        ({"config": {"dispatchHttpTimeoutSeconds": 10}}, "DISPATCH_HTTP_TIMEOUT_SECONDS", "10"),
        (
            {"config": {"dispatchHttpConnectTimeoutSeconds": 2}},
            "DISPATCH_HTTP_CONNECT_TIMEOUT_SECONDS",
            "2",
        ),
        ({"config": {"maxDeliveryAgeMs": 172800000}}, "MAX_DELIVERY_AGE_MS", "172800000"),
        ({"config": {"eventTtlDays": 30}}, "EVENT_TTL_DAYS", "30"),
        ({"config": {"deliveryTtlDays": 7}}, "DELIVERY_TTL_DAYS", "7"),
        (
            {"config": {"retentionCleanupIntervalMs": 600000}},
            "RETENTION_CLEANUP_INTERVAL_MS",
            "600000",
        ),
        (
            {"config": {"metricsTenantTagEnabled": False}},
            "CYCLES_METRICS_TENANT_TAG_ENABLED",
            "false",
        ),
        (
            {"config": {"webhookUrlGuardAllowPrivateNetworks": True}},
            "WEBHOOK_URL_GUARD_ALLOW_PRIVATE_NETWORKS",
            "true",
        ),
        (
            {"config": {"dispatchProcessingRecoveryIdleMs": 60000}},
            "DISPATCH_PROCESSING_RECOVERY_IDLE_MS",
            "60000",
        ),
        ({"config": {"dispatchFailedMaxLen": 50000}}, "DISPATCH_FAILED_MAX_LEN", "50000"),
        ({"config": {"dispatchConcurrency": 256}}, "DISPATCH_CONCURRENCY", "256"),
        (
            {"config": {"dispatchMaxInFlightPerSubscription": 2}},
            "DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION",
            "2",
        ),
        ({"config": {"shutdownGraceSeconds": 10}}, "SHUTDOWN_GRACE_SECONDS", "10"),
        ({"config": {"logLevel": "DEBUG"}}, "LOG_LEVEL", "DEBUG"),
        (
            {"config": {"dispatchProcessingRecoveryIntervalMs": 5000}},
            "DISPATCH_PROCESSING_RECOVERY_INTERVAL_MS",
            "5000",
        ),
        ({"redis": {"tls": {"enabled": True}}}, "REDIS_TLS_ENABLED", "true"),
        ({"redis": {"timeouts": {"connectMs": 500}}}, "REDIS_CONNECT_TIMEOUT_MS", "500"),
        ({"redis": {"timeouts": {"socketMs": 3000}}}, "REDIS_SOCKET_TIMEOUT_MS", "3000"),
        (
            {"redis": {"timeouts": {"blockingSocketMs": 20000}}},
            "REDIS_BLOCKING_SOCKET_TIMEOUT_MS",
            "20000",
        ),
        ({"redis": {"host": "redis-master.data"}}, "REDIS_HOST", "redis-master.data"),
        ({"redis": {"port": 6380}}, "REDIS_PORT", "6380"),
        ({"management": {"port": 9090}}, "MANAGEMENT_PORT", "9090"),
        ({"management": {"address": "127.0.0.1"}}, "MANAGEMENT_ADDRESS", "127.0.0.1"),
    ],
)
def test_setting_values_reach_the_container(
    chart: helm.Chart, values: dict[str, Any], name: str, expected: str
) -> None:
    env = env_of(render(chart, values))
    assert env[name]["value"] == expected
    assert PLAIN_SETTINGS[name] != expected  # the override is not the default


def test_management_port_moves_ports_and_probes_together(chart: helm.Chart) -> None:
    docs = render(chart, {"management": {"port": 9090}})
    c = container(docs)
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["management"] == 9090
    service = by_kind(docs, "Service")
    assert service["spec"]["ports"][0]["port"] == 9090
    policy = by_kind(docs, "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": 9090, "protocol": "TCP"}]


def test_secret_holds_the_secret_values(chart: helm.Chart) -> None:
    values = {
        "webhookSecretEncryptionKey": KEY_B64,
        "redis": {"password": "s3cret", "url": "rediss://u:p@redis:6380/1"},
    }
    docs = render(chart, values)
    secret = by_kind(docs, "Secret")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {
        "WEBHOOK_SECRET_ENCRYPTION_KEY": KEY_B64,
        "REDIS_PASSWORD": "s3cret",
        "REDIS_URL": "rediss://u:p@redis:6380/1",
    }
    deployment_text = yaml.safe_dump(by_kind(docs, "Deployment"))
    for plain in ("s3cret", KEY_B64, "rediss://"):
        assert plain not in deployment_text
    # pods roll when the secret changes
    before = by_kind(render(chart), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    after = by_kind(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert before["checksum/secret"] != after["checksum/secret"]


def test_existing_secret(chart: helm.Chart) -> None:
    docs = render(chart, ALL_ON)
    assert not [d for d in docs if d["kind"] == "Secret"]
    env = env_of(docs)
    refs = {n: env[n]["valueFrom"]["secretKeyRef"] for n in SECRET_SETTINGS}
    assert {r["name"] for r in refs.values()} == {"cycles-events-credentials"}
    assert refs["WEBHOOK_SECRET_ENCRYPTION_KEY"]["key"] == "encryption-key"
    assert refs["REDIS_PASSWORD"]["key"] == "redis-password"
    assert refs["REDIS_URL"]["key"] == "redis-url"
    sentinel_ref = env["REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert sentinel_ref == {
        "name": "cycles-events-credentials",
        "key": "redis-sentinel-password",
        "optional": True,
    }
    assert env["EXTRA"] == {"name": "EXTRA", "value": "1"}
    assert container(docs)["image"] == "cycles-events@sha256:" + "a" * 64


def _ca_volume(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in container(docs)["volumeMounts"]}
    assert mounts["redis-ca"] == {
        "name": "redis-ca",
        "mountPath": CA_FILE.rsplit("/", 1)[0],
        "readOnly": True,
    }
    (volume,) = [v for v in pod["volumes"] if v["name"] == "redis-ca"]
    return volume


def test_redis_tls_with_a_private_ca_and_an_acl_user(chart: helm.Chart) -> None:
    docs = render(chart, TLS_ACL)
    env = env_of(docs)
    assert env["REDIS_TLS_ENABLED"] == {"name": "REDIS_TLS_ENABLED", "value": "true"}
    assert env["REDIS_TLS_CA_FILE"] == {"name": "REDIS_TLS_CA_FILE", "value": CA_FILE}
    assert env["REDIS_USERNAME"] == {"name": "REDIS_USERNAME", "value": "cycles-events"}
    # the Secret's key, whatever its name, is mounted as the file REDIS_TLS_CA_FILE names
    assert _ca_volume(docs) == {
        "name": "redis-ca",
        "secret": {"secretName": "redis-ca", "items": [{"key": "ca.pem", "path": "ca.crt"}]},
    }
    assert "optional" not in _ca_volume(docs)["secret"]  # no pod without its CA
    assert not {"REDIS_SENTINEL_MASTER", "WEBHOOK_SECRET_ALLOW_PLAINTEXT"} & set(env)
    # the same from a ConfigMap (e.g. a trust-manager bundle); default key ca.crt
    values = {"redis": {"tls": {"enabled": True, "caConfigMap": {"name": "redis-trust"}}}}
    docs = render(chart, values)
    assert env_of(docs)["REDIS_TLS_CA_FILE"]["value"] == CA_FILE
    assert _ca_volume(docs) == {
        "name": "redis-ca",
        "configMap": {"name": "redis-trust", "items": [{"key": "ca.crt", "path": "ca.crt"}]},
    }
    # TLS against the system trust store: no CA file, no volume
    docs = render(chart, {"redis": {"tls": {"enabled": True}}})
    assert "REDIS_TLS_CA_FILE" not in env_of(docs)
    assert [m["name"] for m in container(docs)["volumeMounts"]] == ["tmp"]


def test_redis_sentinel(chart: helm.Chart) -> None:
    docs = render(chart, SENTINEL)
    env = env_of(docs)
    assert env["REDIS_SENTINEL_MASTER"] == {"name": "REDIS_SENTINEL_MASTER", "value": "cycles"}
    assert env["REDIS_SENTINEL_NODES"] == {
        "name": "REDIS_SENTINEL_NODES",
        "value": "sentinel-0.sentinel:26379,sentinel-1.sentinel:26379,[fd00::3]:26380",
    }
    ref = env["REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": FULLNAME, "key": "REDIS_SENTINEL_PASSWORD", "optional": True}
    secret = by_kind(docs, "Secret")["data"]
    assert base64.b64decode(secret["REDIS_SENTINEL_PASSWORD"]).decode() == "sentinel-pw"
    assert base64.b64decode(secret["REDIS_PASSWORD"]).decode() == "redis-pw"
    assert "sentinel-pw" not in yaml.safe_dump(by_kind(docs, "Deployment"))
    # the daemon parses the rendered nodes into the Sentinels given
    from cycles_events.config import Settings

    settings = Settings(**{n: e["value"] for n, e in env.items() if "value" in e})
    assert settings.sentinels == [
        ("sentinel-0.sentinel", 26379),
        ("sentinel-1.sentinel", 26379),
        ("fd00::3", 26380),
    ]
    # pods roll when the Sentinels' password changes
    other = {"redis": dict(SENTINEL["redis"], sentinel=dict(SENTINEL["redis"]["sentinel"]))}
    other["redis"]["sentinel"]["password"] = "rotated"
    annotations = [
        by_kind(render(chart, v), "Deployment")["spec"]["template"]["metadata"]["annotations"]
        for v in (SENTINEL, other)
    ]
    assert annotations[0]["checksum/secret"] != annotations[1]["checksum/secret"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, None),
        ({"config": {"webhookSecretAllowPlaintext": None}}, None),
        ({"config": {"webhookSecretAllowPlaintext": ""}}, None),
        ({"config": {"webhookSecretAllowPlaintext": True}}, "true"),
        (
            {
                "config": {"webhookSecretAllowPlaintext": False},
                "webhookSecretEncryptionKey": KEY_B64,
            },
            "false",
        ),
    ],
    ids=["default", "null", "empty", "true", "false"],
)
def test_webhook_secret_allow_plaintext_is_rendered_only_when_set(
    chart: helm.Chart, values: dict[str, Any], expected: str | None
) -> None:
    env = env_of(render(chart, values))
    if expected is None:
        assert "WEBHOOK_SECRET_ALLOW_PLAINTEXT" not in env
    else:
        assert env["WEBHOOK_SECRET_ALLOW_PLAINTEXT"]["value"] == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis": {"sentinel": {"master": "cycles"}}}, "redis.sentinel.nodes is empty"),
        ({"redis": {"sentinel": {"nodes": ["s-0:26379"]}}}, "redis.sentinel.master is empty"),
        ({"redis": {"sentinel": {"password": "x"}}}, "Sentinel is not"),
        (
            {"redis": {"url": "redis://r:6379", "sentinel": SENTINEL["redis"]["sentinel"]}},
            "exclusive",
        ),
        (
            {
                "redis": {
                    "tls": {
                        "enabled": True,
                        "caSecret": {"name": "a"},
                        "caConfigMap": {"name": "b"},
                    }
                }
            },
            "not both",
        ),
        ({"redis": {"tls": {"caSecret": {"name": "redis-ca"}}}}, "redis.tls.enabled"),
        ({"config": {"webhookSecretAllowPlaintext": False}}, "webhookSecretEncryptionKey"),
    ],
)
def test_templates_refuse_inconsistent_redis_values(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)


@pytest.mark.parametrize(
    ("values", "ok"),
    [
        ({"terminationGracePeriodSeconds": 30}, False),  # 25 + 5 is not enough
        ({"terminationGracePeriodSeconds": 31}, True),
        ({"config": {"shutdownGraceSeconds": 40}}, False),
        ({"config": {"shutdownGraceSeconds": 40}, "terminationGracePeriodSeconds": 60}, True),
        ({"config": {"dispatchPendingTimeoutSeconds": 15}}, False),
    ],
)
def test_termination_grace_must_exceed_drain_time(
    chart: helm.Chart, values: dict[str, Any], ok: bool
) -> None:
    if ok:
        assert by_kind(render(chart, values), "Deployment")
    else:
        with pytest.raises(helm.HelmRenderError, match="terminationGracePeriodSeconds"):
            render(chart, values)


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": "two"},
        {"replicaCount": 0},
        {"replicas": 3},  # unknown key (typo of replicaCount)
        {"image": {"pullPolicy": "Sometimes"}},
        {"image": {"digest": "latest"}},
        {"config": {"logLevel": "LOUD"}},
        {"config": {"dispatchConcurrency": 0}},
        {"config": {"dispatchConcurrency": 1.5}},
        {"config": {"dispatchPendingTimeoutSeconds": "5"}},
        {"config": {"metricsTenantTagEnabled": "yes"}},
        {"config": {"unknownSetting": 1}},
        {"management": {"port": 70000}},
        {"redis": {"port": 0}},
        {"redis": {"url": "http://redis:6379"}},
        {"webhookSecretEncryptionKey": "not-base64-of-32-bytes"},
        {"webhookSecretEncryptionKey": base64.b64encode(bytes(16)).decode()},
        {"podSecurityContext": {"runAsUser": 0}},
        {"service": {"type": "LoadBalancer"}},
        {"serviceMonitor": {"interval": "30 seconds"}},
        {"keda": {"listLength": 0}},
        {"keda": {"enabled": "true"}},
        {"networkPolicy": {"enabled": 1}},
        {"terminationGracePeriodSeconds": -1},
        {"existingSecret": {"name": "Not_A_Name"}},
        {"networkPolicy": {"metricsNamespaceLabel": {"key": ""}}},
        {"networkPolicy": {"metricsNamespaceLabel": {"key": "team", "value": "a b"}}},
        {"redis": {"username": "two words"}},
        {"redis": {"tls": {"enabled": "true"}}},
        {"redis": {"tls": {"caFile": "/etc/ssl/ca.pem"}}},  # unknown key
        {"redis": {"tls": {"caSecret": {"name": "Redis_CA"}}}},
        {"redis": {"tls": {"caConfigMap": {"name": "redis-ca", "key": ""}}}},
        {"redis": {"timeouts": {"connectMs": 0}}},
        {"redis": {"timeouts": {"socketMs": "5000"}}},
        {"redis": {"timeouts": {"blockingSocketMs": 600001}}},
        {"redis": {"timeouts": {"readMs": 1}}},  # unknown key
        {"redis": {"sentinel": {"nodes": "s-0:26379,s-1:26379"}}},  # a list, not a string
        {"redis": {"sentinel": {"nodes": ["s-0"]}}},  # no port
        {"redis": {"sentinel": {"nodes": ["s-0:70000"]}}},
        {"redis": {"sentinel": {"nodes": ["s-0:26379,s-1:26379"]}}},
        {"redis": {"sentinel": {"nodes": ["s-0:26379", "s-0:26379"]}}},
        {"redis": {"sentinel": {"nodes": ["http://s-0:26379"]}}},
        {"redis": {"sentinel": {"master": "my master"}}},
        {"redis": {"sentinel": {"masterName": "cycles"}}},  # unknown key
        {"existingSecret": {"redisSentinelPasswordKey": ""}},
        {"config": {"webhookSecretAllowPlaintext": "false"}},
        {"config": {"dispatchProcessingRecoveryIntervalMs": 0}},
    ],
)
def test_values_schema_rejects_wrong_values(chart: helm.Chart, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)


def test_values_schema_accepts_the_defaults_and_all_options(chart: helm.Chart) -> None:
    chart.validate_schema(chart.merge_values({}))
    chart.validate_schema(chart.merge_values(ALL_ON))
    chart.validate_schema(chart.merge_values({"webhookSecretEncryptionKey": KEY_B64}))
    chart.validate_schema(chart.merge_values(TLS_ACL))
    chart.validate_schema(chart.merge_values(SENTINEL))


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_selectors_match_the_pods(chart: helm.Chart) -> None:
    docs = render(chart, ALL_ON)
    pod_labels = by_kind(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(
        by_kind(docs, "Deployment")["spec"]["selector"]["matchLabels"], pod_labels
    )
    assert selector_matches(by_kind(docs, "Service")["spec"]["selector"], pod_labels)
    assert selector_matches(
        by_kind(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], pod_labels
    )
    assert selector_matches(
        by_kind(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels
    )


def test_service_exposes_only_the_management_port(chart: helm.Chart) -> None:
    service = by_kind(render(chart), "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "management", "port": 9980, "targetPort": "management", "protocol": "TCP"}
    ]


def test_network_policy_defaults(chart: helm.Chart) -> None:
    policy = by_kind(render(chart), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]  # egress stays open
    assert "egress" not in policy
    assert policy["ingress"] == [
        {
            "from": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                }
            ],
            "ports": [{"port": 9980, "protocol": "TCP"}],
        }
    ]
    assert "7980" not in yaml.safe_dump(policy) and "traffic" not in yaml.safe_dump(policy)


def test_network_policy_options(chart: helm.Chart) -> None:
    policy = by_kind(render(chart, ALL_ON), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["egress"] == ALL_ON["networkPolicy"]["egress"]
    (peer,) = policy["ingress"][0]["from"]
    assert peer == {
        "namespaceSelector": {"matchLabels": {"team": "observability"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    assert "NetworkPolicy" not in [
        d["kind"] for d in render(chart, {"networkPolicy": {"enabled": False}})
    ]


def test_pod_disruption_budget(chart: helm.Chart) -> None:
    assert by_kind(render(chart), "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    spec = by_kind(render(chart, ALL_ON), "PodDisruptionBudget")["spec"]
    assert spec["maxUnavailable"] == 1 and "minAvailable" not in spec
    with pytest.raises(helm.HelmRenderError, match="not both"):
        render(chart, {"podDisruptionBudget": {"maxUnavailable": 1}})


def test_service_monitor_structure(chart: helm.Chart) -> None:
    docs = render(chart, ALL_ON)
    monitor = by_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    assert set(spec) == {"namespaceSelector", "selector", "endpoints"}
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    service = by_kind(docs, "Service")
    assert selector_matches(spec["selector"]["matchLabels"], service["metadata"]["labels"])
    assert spec["endpoints"] == [
        {
            "port": "management",
            "path": "/actuator/prometheus",
            "interval": "30s",
            "scrapeTimeout": "10s",
        }
    ]
    assert spec["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    # the job label Prometheus gives these targets is the Service name
    assert "cycles-events" in service["metadata"]["name"]


def test_prometheus_rule_carries_the_deploy_rules(chart: helm.Chart) -> None:
    expected = yaml.safe_load(RULES.read_text())["groups"]
    plain = dict(ALL_ON, prometheusRule={"enabled": True})
    rule = by_kind(render(chart, plain), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == expected

    linked = by_kind(render(chart, ALL_ON), "PrometheusRule")["spec"]["groups"]
    base = ALL_ON["prometheusRule"]["runbookBaseUrl"]
    rules = [r for g in linked for r in g["rules"]]
    assert len(rules) == sum(len(g["rules"]) for g in expected)
    for r, original in zip(rules, [r for g in expected for r in g["rules"]], strict=True):
        anchor = original["annotations"]["runbook_url"].split("#", 1)[1]
        assert r["annotations"]["runbook_url"] == f"{base}#{anchor}"
        assert r["expr"] == original["expr"]


def test_keda_scaled_object_structure(chart: helm.Chart) -> None:
    docs = render(chart, ALL_ON)
    assert "replicas" not in by_kind(docs, "Deployment")["spec"]  # KEDA owns it
    scaled = by_kind(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 12)
    assert isinstance(spec["pollingInterval"], int) and isinstance(spec["cooldownPeriod"], int)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    # KEDA trigger metadata is map[string]string
    assert all(isinstance(v, str) for v in metadata.values()), metadata
    assert metadata["listName"] == "dispatch:pending"
    assert metadata["listLength"] == "500"
    assert metadata["address"] == "redis:6379"
    auth = by_kind(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "cycles-events-credentials", "key": "redis-password"}
    ]


def test_keda_options(chart: helm.Chart) -> None:
    docs = render(chart, {"keda": {"enabled": True, "address": "redis-master:6380"}})
    trigger = by_kind(docs, "ScaledObject")["spec"]["triggers"][0]
    assert trigger["metadata"]["address"] == "redis-master:6380"
    assert "authenticationRef" not in trigger
    assert not [d for d in docs if d["kind"] == "TriggerAuthentication"]
    with pytest.raises(helm.HelmRenderError, match="minReplicaCount"):
        render(chart, {"keda": {"enabled": True, "minReplicaCount": 5, "maxReplicaCount": 3}})


def _field_for(env_name: str) -> str:
    """The daemon's settings field that reads ``env_name`` (fails if none does)."""
    from cycles_events.config import Settings

    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", [])
        if env_name in choices:
            return name
    raise AssertionError(f"the daemon reads no setting named {env_name}")


def _typed(value: Any) -> Any:
    secret = getattr(value, "get_secret_value", None)
    return secret() if callable(secret) else value


# Settings of the daemon the chart does not expose, and why.
NOT_IN_CHART = {"evidence_server_id": "read only to warn: a Java feature not done here"}


def test_rendered_env_is_read_back_by_the_daemon_settings(chart: helm.Chart) -> None:
    """The env names the chart renders are the names the daemon reads, with the values.

    Every value is set away from its default, so every env var the chart can render is
    rendered; together they cover every setting of the daemon (but NOT_IN_CHART).
    """
    from cycles_events.config import Settings

    overrides: dict[str, Any] = {
        "config": {
            "dispatchPendingTimeoutSeconds": 3,
            "dispatchRetryPollIntervalMs": 700,
            "retryBatchSize": 42,
            "dispatchHttpTimeoutSeconds": 12,
            "dispatchHttpConnectTimeoutSeconds": 4,
            "maxDeliveryAgeMs": 3600000,
            "eventTtlDays": 30,
            "deliveryTtlDays": 7,
            "retentionCleanupIntervalMs": 120000,
            "metricsTenantTagEnabled": False,
            "webhookUrlGuardAllowPrivateNetworks": True,
            "dispatchProcessingRecoveryIdleMs": 90000,
            "dispatchProcessingRecoveryIntervalMs": 10000,
            "dispatchFailedMaxLen": 500,
            "dispatchConcurrency": 16,
            "dispatchMaxInFlightPerSubscription": 3,
            "shutdownGraceSeconds": 20,
            "logLevel": "WARNING",
            "webhookSecretAllowPlaintext": False,
            "retryJitter": 0.2,
            "retryHonorRetryAfter": True,
            "retryAfterMinMs": 2000,
            "retryAfterMaxMs": 600000,
            "retryOverloadFloorMs": 60000,
            "disableOn410": True,
            "standardWebhooksHeaders": True,
            "adaptiveConcurrency": True,
            "firstAttemptShare": 0.25,
        },
        "redis": {
            "host": "redis-master",
            "port": 6380,
            "password": "redis-pw",
            "username": "cycles-events",
            "tls": {"enabled": True, "caSecret": {"name": "redis-ca"}},
            "timeouts": {"connectMs": 1500, "socketMs": 4000, "blockingSocketMs": 12000},
            "sentinel": {
                "master": "cycles",
                "nodes": ["sentinel-0:26379", "sentinel-1:26379"],
                "password": "sentinel-pw",
            },
        },
        "management": {"port": 9090, "address": "127.0.0.1"},
        "webhookSecretEncryptionKey": KEY_B64,
    }
    docs = render(chart, overrides)
    env = {n: e["value"] for n, e in env_of(docs).items() if "value" in e}
    secret = by_kind(docs, "Secret")["data"]
    env.update({k: base64.b64decode(v).decode() for k, v in secret.items()})
    settings = Settings(**env)
    defaults = Settings()
    for env_name, value in env.items():
        field = _field_for(env_name)
        parsed = _typed(getattr(settings, field))
        if isinstance(parsed, bool):
            assert parsed is (value == "true"), env_name
        elif isinstance(parsed, int | float):
            assert parsed == float(value), env_name
        else:
            assert parsed == value, env_name
        if env_name not in SECRET_SETTINGS or value:
            assert parsed != _typed(getattr(defaults, field)), f"{env_name} kept its default"
    assert set(env) >= OPTIONAL_SETTINGS
    missing = set(Settings.model_fields) - {_field_for(n) for n in env} - set(NOT_IN_CHART)
    assert not missing, f"settings the chart does not expose: {sorted(missing)}"


DASHBOARD = ROOT / "deploy" / "grafana" / "cycles-events.json"


def test_grafana_dashboard_config_map(chart: helm.Chart) -> None:
    """Off by default; when enabled, one ConfigMap with the sidecar label and the JSON as is."""
    assert not [d for d in render(chart) if d["kind"] == "ConfigMap"]
    assert not [d for d in render(chart, ALL_ON) if d["kind"] == "ConfigMap"]

    docs = render(chart, {"grafanaDashboard": {"enabled": True}})
    dashboard = by_kind(docs, "ConfigMap")
    meta = dashboard["metadata"]
    assert meta["name"] == f"{FULLNAME}-dashboard"
    assert meta["namespace"] == NAMESPACE
    assert meta["labels"]["grafana_dashboard"] == "1"
    assert meta["labels"]["app.kubernetes.io/name"] == "cycles-events"
    assert "annotations" not in meta
    assert dashboard["data"] == {"cycles-events.json": DASHBOARD.read_text()}
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(dashboard, version, strict=True)
    report = helm.lint(CHART, {"grafanaDashboard": {"enabled": True}}, strict=True)
    assert report["errors"] == []

    custom = {
        "enabled": True,
        "namespace": "monitoring",
        "labelKey": "example.com/dashboard",
        "labelValue": "cycles",
        "labels": {"team": "payments"},
        "annotations": {"grafana_folder": "Cycles"},
    }
    meta = by_kind(render(chart, {"grafanaDashboard": custom}), "ConfigMap")["metadata"]
    assert meta["namespace"] == "monitoring"
    assert meta["labels"]["example.com/dashboard"] == "cycles"
    assert "grafana_dashboard" not in meta["labels"]
    assert meta["labels"]["team"] == "payments"
    assert meta["annotations"] == {"grafana_folder": "Cycles"}


@pytest.mark.parametrize(
    "values",
    [
        {"enabled": "true"},
        {"labelKey": "two words"},
        {"labelKey": ""},
        {"labelValue": 1},
        {"labelValue": "a b"},
        {"namespace": "Monitoring"},
        {"folder": "Cycles"},  # unknown key: annotations carry the sidecar's folder
    ],
)
def test_grafana_dashboard_values_are_checked(chart: helm.Chart, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(chart, {"grafanaDashboard": values})
