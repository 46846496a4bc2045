"""Tests of the Helm chart (charts/phx-gateway), its Grafana dashboard, the PrometheusRule
example in docs/operations.md and the container image files (docker/).

No cluster, no helm binary and no Docker engine: the chart is rendered and linted by Helm's
own Go engine through helm-python-sdk (`import helm_python`), which binds libhelm_c (a C ABI
over the Helm v4 SDK) with ctypes. Rendering validates values against values.schema.json as
`helm install` does. Run through scripts/test-chart.sh.
"""

from __future__ import annotations

import base64
import copy
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import helm_python as helm
import jsonschema
import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "phx-gateway"
CI_VALUES = CHART / "ci"
DASHBOARD = CHART / "dashboards" / "phx-gateway.json"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HEALTHCHECK = ROOT / "docker" / "healthcheck.sh"
OPERATIONS = ROOT / "docs" / "operations.md"

RELEASE = "rt"
NAMESPACE = "realtime"
FULLNAME = "rt-phx-gateway"

# Every metric the gateway exports (admin port /metrics), as documented for the issue
# "Production on Kubernetes" and src/metrics.rs.
KNOWN_METRICS = {
    "phx_gateway_sockets",
    "phx_gateway_channels",
    "phx_gateway_connects_total",
    "phx_gateway_joins_total",
    "phx_gateway_messages_in_total",
    "phx_gateway_messages_out_total",
    "phx_gateway_bytes_in_total",
    "phx_gateway_bytes_out_total",
    "phx_gateway_broadcast_fanout_seconds",
    "phx_gateway_broadcast_lag_seconds",
    "phx_gateway_redis_command_duration_seconds",
    "phx_gateway_presence_entries",
    "phx_gateway_presence_heartbeats_total",
    "phx_gateway_presence_reaper_runs_total",
    "phx_gateway_presence_reaped_nodes_total",
    "phx_gateway_redis_up",
    "phx_gateway_redis_errors_total",
    "phx_gateway_redis_reconnects_total",
    "phx_gateway_redis_publish_dropped_total",
    "phx_gateway_slow_consumer_disconnects_total",
    "phx_gateway_socket_closes_total",
    "phx_gateway_webhook_duration_seconds",
    "phx_gateway_webhook_errors_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_threads",
    "process_start_time_seconds",
    "process_virtual_memory_max_bytes",
}
HISTOGRAMS = {
    "phx_gateway_broadcast_fanout_seconds",
    "phx_gateway_broadcast_lag_seconds",
    "phx_gateway_redis_command_duration_seconds",
    "phx_gateway_webhook_duration_seconds",
}
# Series Prometheus itself attaches to every scrape target.
SCRAPE_SERIES = {"up"}

SECRET_ENV = {
    "PHX_GATEWAY__REDIS__URL",
    "PHX_GATEWAY__REDIS__CLUSTER_URLS",
    "PHX_GATEWAY__REDIS__SENTINEL_URLS",
    "PHX_GATEWAY__REDIS__PASSWORD",
    "PHX_GATEWAY__API__KEY",
    "PHX_GATEWAY__AUTH__SECRET_KEY_BASE",
    "PHX_GATEWAY__AUTH__JWT_SECRET",
}


# --------------------------------------------------------------------------------------------
# Rendering helpers
# --------------------------------------------------------------------------------------------


def load_values(name: str) -> dict:
    return yaml.safe_load((CI_VALUES / f"{name}-values.yaml").read_text()) or {}


VALUE_SETS = {
    "default": {},
    "production": load_values("production"),
    "tls-redis": load_values("tls-redis"),
    "redis-cluster": load_values("redis-cluster"),
    "redis-sentinel": load_values("redis-sentinel"),
    "minimal": load_values("minimal"),
}


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(CHART) as c:
        yield c


class Rendered:
    """The objects of one render, by kind and name, plus the raw manifests."""

    def __init__(self, manifests: dict[str, str]):
        self.manifests = manifests
        self.objects: list[dict] = []
        for path, text in manifests.items():
            if path.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc["__template"] = path
                    self.objects.append(doc)
        self.notes = next((t for p, t in manifests.items() if p.endswith("NOTES.txt")), "")

    def all(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
        return found[0]

    def has(self, kind: str) -> bool:
        return bool(self.all(kind))

    def text_of(self, kind: str) -> str:
        return "\n".join(
            t for p, t in self.manifests.items() if any(o["__template"] == p for o in self.all(kind))
        )

    @property
    def deployment(self) -> dict:
        return self.one("Deployment", FULLNAME)

    @property
    def pod(self) -> dict:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self) -> dict:
        containers = self.pod["containers"]
        assert [c["name"] for c in containers] == ["gateway"]
        return containers[0]

    def env(self) -> dict[str, dict]:
        return {e["name"]: e for e in self.container.get("env", [])}

    def gateway_toml(self) -> dict:
        cm = self.one("ConfigMap", f"{FULLNAME}-config")
        return tomllib.loads(cm["data"]["gateway.toml"])


def render(chart, values: dict | None) -> Rendered:
    return Rendered(chart.render(copy.deepcopy(values) or None, name=RELEASE, namespace=NAMESPACE))


@pytest.fixture(scope="session")
def renders(chart) -> dict[str, Rendered]:
    return {name: render(chart, values) for name, values in VALUE_SETS.items()}


def merged(chart, name: str) -> dict:
    return chart.merge_values(copy.deepcopy(VALUE_SETS[name]) or None)


def metric_names(expr: str) -> set[str]:
    """Metric names used in a PromQL expression (identifiers that look like our metrics)."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    names = set(re.findall(r"\b(?:phx_gateway|process)_[a-z0-9_]+\b", expr))
    names |= set(re.findall(r"\bup(?=\s*\{)", expr))
    out = set()
    for n in names:
        base = re.sub(r"_(bucket|sum|count)$", "", n)
        out.add(base if base in HISTOGRAMS else n)
    return out


def assert_known_metrics(expr: str, where: str) -> None:
    used = metric_names(expr)
    assert used, f"{where}: no metric in {expr!r}"
    unknown = used - KNOWN_METRICS - SCRAPE_SERIES
    assert not unknown, f"{where}: unknown metrics {sorted(unknown)} in {expr!r}"
    for name in used & HISTOGRAMS:
        assert f"{name}_bucket" in expr or f"{name}_sum" in expr or f"{name}_count" in expr, (
            f"{where}: histogram {name} used without _bucket/_sum/_count"
        )


# --------------------------------------------------------------------------------------------
# Lint and render
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_strict(name):
    report = helm.lint(CHART, copy.deepcopy(VALUE_SETS[name]) or None, strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report
    assert report["total_charts_linted"] == 1


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_object_is_well_formed(renders, name):
    r = renders[name]
    assert r.objects
    seen = set()
    for o in r.objects:
        assert o.get("apiVersion") and o.get("kind"), o
        meta = o["metadata"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", meta["name"]) and len(meta["name"]) <= 63
        key = (o["kind"], meta["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "phx-gateway"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
    assert r.notes.strip()


def test_default_objects(renders):
    r = renders["default"]
    kinds = sorted(o["kind"] for o in r.objects)
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "Service", "ServiceAccount"]
    )
    assert r.deployment["spec"]["replicas"] == 1
    assert not r.has("Secret") and not r.has("HorizontalPodAutoscaler") and not r.has("Ingress")
    assert not r.has("ServiceMonitor") and not r.has("PrometheusRule")


# --------------------------------------------------------------------------------------------
# Deployment
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_ports_and_probes(chart, renders, name):
    r, v = renders[name], merged(chart, name)
    c = r.container
    ports = {p["name"]: p for p in c["ports"]}
    assert ports["http"]["containerPort"] == v["ports"]["http"] == 4000
    assert ports["admin"]["containerPort"] == v["ports"]["admin"] == 9568
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    if v["probes"]["startup"]["enabled"]:
        assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    else:
        assert "startupProbe" not in c
    env = r.env()
    assert env["PHX_GATEWAY__HTTP__PORT"]["value"] == "4000"
    assert env["PHX_GATEWAY__ADMIN__PORT"]["value"] == "9568"
    assert env["PHX_GATEWAY__HTTP__HOST"]["value"] == "0.0.0.0"
    assert env["PHX_GATEWAY__ADMIN__HOST"]["value"] == "0.0.0.0"
    assert env["PHX_GATEWAY__DEMO__ENABLED"]["value"] == "false"
    assert c["args"] == ["--config", "/etc/phx-gateway/gateway.toml", "serve"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["config"]["mountPath"] == "/etc/phx-gateway" and mounts["config"]["readOnly"]
    volumes = {vol["name"]: vol for vol in r.pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == f"{FULLNAME}-config"


def test_ports_follow_values(chart):
    r = render(chart, {"ports": {"http": 8080, "admin": 9100}, "service": {"port": 80}})
    ports = {p["name"]: p["containerPort"] for p in r.container["ports"]}
    assert ports == {"http": 8080, "admin": 9100}
    env = r.env()
    assert env["PHX_GATEWAY__HTTP__PORT"]["value"] == "8080"
    assert env["PHX_GATEWAY__ADMIN__PORT"]["value"] == "9100"
    svc = r.one("Service", FULLNAME)
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}
    ]
    admin = r.one("Service", f"{FULLNAME}-admin")
    assert admin["spec"]["ports"][0]["port"] == 9100


@pytest.mark.parametrize("name", VALUE_SETS)
def test_security_context(renders, name):
    r = renders[name]
    pod_sc = r.pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == 10001
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = r.container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert r.pod["automountServiceAccountToken"] is False
    assert r.pod["enableServiceLinks"] is False


@pytest.mark.parametrize("name", VALUE_SETS)
def test_drain_timing(chart, renders, name):
    r, v = renders[name], merged(chart, name)
    drain = v["drain"]
    env = r.env()
    assert env["PHX_GATEWAY__SHUTDOWN__DRAIN_MS"]["value"] == str(drain["seconds"] * 1000)
    grace = r.pod["terminationGracePeriodSeconds"]
    pre_stop = 0 if drain["preStopHook"] == "none" else drain["preStopSeconds"]
    assert grace > pre_stop + drain["seconds"], (grace, drain)
    assert grace == pre_stop + drain["seconds"] + drain["extraGraceSeconds"]
    hook = r.container["lifecycle"]["preStop"]
    if drain["preStopHook"] == "exec":
        assert hook == {"exec": {"command": ["sleep", str(drain["preStopSeconds"])]}}
    elif drain["preStopHook"] == "sleep":
        assert hook == {"sleep": {"seconds": drain["preStopSeconds"]}}


def test_drain_values(renders):
    assert renders["default"].pod["terminationGracePeriodSeconds"] == 5 + 10 + 15
    assert renders["production"].pod["terminationGracePeriodSeconds"] == 10 + 30 + 15
    assert renders["production"].env()["PHX_GATEWAY__SHUTDOWN__DRAIN_MS"]["value"] == "30000"
    assert renders["minimal"].container["lifecycle"]["preStop"] == {"sleep": {"seconds": 2}}


def test_no_prestop_hook(chart):
    r = render(chart, {"drain": {"preStopHook": "none"}})
    assert "lifecycle" not in r.container
    assert r.pod["terminationGracePeriodSeconds"] == 10 + 15


def test_production_secrets_come_from_existing_secrets(renders):
    r = renders["production"]
    env = r.env()
    expected = {
        "PHX_GATEWAY__REDIS__URL": ("phx-gateway-redis", "url"),
        "PHX_GATEWAY__API__KEY": ("phx-gateway-api", "api-key"),
        "PHX_GATEWAY__AUTH__SECRET_KEY_BASE": ("phx-gateway-auth", "secret-key-base"),
        "PHX_GATEWAY__AUTH__JWT_SECRET": ("phx-gateway-auth", "jwt-secret"),
    }
    for var, (secret, key) in expected.items():
        assert "value" not in env[var], var
        assert env[var]["valueFrom"] == {"secretKeyRef": {"name": secret, "key": key}}, var
    assert not r.has("Secret"), "existingSecret everywhere: the chart must not create a Secret"
    assert "checksum/secret" not in r.deployment["spec"]["template"]["metadata"]["annotations"]


def test_secret_created_from_values(chart, renders):
    r = renders["tls-redis"]
    v = VALUE_SETS["tls-redis"]["secrets"]
    secret = r.one("Secret", FULLNAME)
    data = {k: base64.b64decode(val).decode() for k, val in secret["data"].items()}
    assert data == {"redis-url": v["redisUrl"]["value"], "api-key": v["apiKey"]["value"]}
    env = r.env()
    assert env["PHX_GATEWAY__REDIS__URL"]["valueFrom"] == {"secretKeyRef": {"name": FULLNAME, "key": "redis-url"}}
    assert env["PHX_GATEWAY__API__KEY"]["valueFrom"] == {"secretKeyRef": {"name": FULLNAME, "key": "api-key"}}
    assert "PHX_GATEWAY__AUTH__JWT_SECRET" not in env and "PHX_GATEWAY__AUTH__SECRET_KEY_BASE" not in env
    annotations = r.deployment["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/secret"])


def test_mixed_secret_sources(chart):
    r = render(
        chart,
        {"secrets": {"redisUrl": {"existingSecret": "redis"}, "jwtSecret": {"value": "jwt-from-values"}}},
    )
    env = r.env()
    assert env["PHX_GATEWAY__REDIS__URL"]["valueFrom"]["secretKeyRef"] == {"name": "redis", "key": "redis-url"}
    assert env["PHX_GATEWAY__AUTH__JWT_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": FULLNAME, "key": "jwt-secret"}
    secret = r.one("Secret", FULLNAME)
    assert set(secret["data"]) == {"jwt-secret"}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_no_plaintext_secrets_outside_the_secret(chart, renders, name):
    r = renders[name]
    env = r.env()
    for var in SECRET_ENV & set(env):
        assert "value" not in env[var] and "secretKeyRef" in env[var]["valueFrom"], var
    secret_values = [
        e["value"] for e in merged(chart, name)["secrets"].values() if isinstance(e, dict) and e.get("value")
    ]
    for kind in ("Deployment", "ConfigMap", "Service", "Ingress", "ServiceMonitor", "PrometheusRule"):
        text = r.text_of(kind)
        for s in secret_values:
            assert s not in text, f"secret value in a {kind}"
            assert base64.b64encode(s.encode()).decode() not in text, f"encoded secret in a {kind}"
    assert not any(s in r.notes for s in secret_values)
    toml = r.gateway_toml()
    assert not {"url", "cluster_urls", "sentinel_urls", "password"} & set(toml.get("redis", {}))
    assert "key" not in toml.get("api", {})
    assert not {"secret_key_base", "jwt_secret"} & set(toml.get("auth", {}))


def test_redis_ca_from_secret_volume(renders):
    r = renders["tls-redis"]
    env = r.env()
    ca_file = env["PHX_GATEWAY__REDIS__TLS_CA_FILE"]["value"]
    volumes = {v["name"]: v for v in r.pod["volumes"]}
    assert volumes["redis-ca"]["secret"] == {
        "secretName": "redis-tls",
        "items": [{"key": "ca.crt", "path": "redis-ca.crt"}],
    }
    mount = next(m for m in r.container["volumeMounts"] if m["name"] == "redis-ca")
    assert mount["readOnly"] is True
    assert ca_file == f"{mount['mountPath']}/redis-ca.crt"
    assert not mount["mountPath"].startswith("/etc/phx-gateway/"), "must not nest in the config mount"
    assert env["PHX_GATEWAY__REDIS__URL"]["valueFrom"]["secretKeyRef"]["key"] == "redis-url"
    assert renders["tls-redis"].deployment["spec"]["replicas"] == 3


def test_redis_ca_from_configmap(chart):
    r = render(chart, {"redis": {"tls": {"ca": {"configMapName": "redis-ca", "key": "ca.pem"}}}})
    volumes = {v["name"]: v for v in r.pod["volumes"]}
    assert volumes["redis-ca"]["configMap"] == {"name": "redis-ca", "items": [{"key": "ca.pem", "path": "redis-ca.crt"}]}
    assert "PHX_GATEWAY__REDIS__TLS_CA_FILE" in r.env()


def test_no_redis_ca_by_default(renders):
    assert "PHX_GATEWAY__REDIS__TLS_CA_FILE" not in renders["default"].env()
    assert "redis-ca" not in {v["name"] for v in renders["default"].pod["volumes"]}


# --------------------------------------------------------------------------------------------
# Redis topologies: one endpoint, Redis Cluster, Sentinel
# --------------------------------------------------------------------------------------------

REDIS_MODE_ENV = {
    "redisUrl": "PHX_GATEWAY__REDIS__URL",
    "redisClusterUrls": "PHX_GATEWAY__REDIS__CLUSTER_URLS",
    "redisSentinelUrls": "PHX_GATEWAY__REDIS__SENTINEL_URLS",
}
# Values selecting each mode from an existing Secret, and the wording of NOTES.txt for it.
REDIS_MODES = {
    "redisUrl": ({"secrets": {"redisUrl": {"existingSecret": "redis"}}}, "one endpoint"),
    "redisClusterUrls": ({"secrets": {"redisClusterUrls": {"existingSecret": "redis"}}}, "a Redis Cluster"),
    "redisSentinelUrls": (
        {"secrets": {"redisSentinelUrls": {"existingSecret": "redis"}}, "config": {"redis": {"sentinel_master": "mymaster"}}},
        "through Sentinel",
    ),
}


def test_redis_cluster_urls_from_the_secret(renders):
    r = renders["redis-cluster"]
    urls = VALUE_SETS["redis-cluster"]["secrets"]["redisClusterUrls"]["value"]
    env = r.env()
    assert env["PHX_GATEWAY__REDIS__CLUSTER_URLS"] == {
        "name": "PHX_GATEWAY__REDIS__CLUSTER_URLS",
        "valueFrom": {"secretKeyRef": {"name": FULLNAME, "key": "redis-cluster-urls"}},
    }
    assert not {"PHX_GATEWAY__REDIS__URL", "PHX_GATEWAY__REDIS__SENTINEL_URLS", "PHX_GATEWAY__REDIS__PASSWORD"} & set(env)
    secret = r.one("Secret", FULLNAME)
    data = {k: base64.b64decode(val).decode() for k, val in secret["data"].items()}
    assert data == {"redis-cluster-urls": urls}
    assert len(urls.split(",")) == 3
    assert "sentinel_master" not in r.gateway_toml()["redis"]
    assert "Redis Cluster" in r.notes and "PHX_GATEWAY__REDIS__CLUSTER_URLS" in r.notes
    assert "WARNING" not in r.notes


def test_redis_cluster_urls_from_an_existing_secret(chart):
    r = render(chart, {"secrets": {"redisClusterUrls": {"existingSecret": "redis-cluster", "key": "seeds"}}})
    assert r.env()["PHX_GATEWAY__REDIS__CLUSTER_URLS"]["valueFrom"] == {
        "secretKeyRef": {"name": "redis-cluster", "key": "seeds"}
    }
    assert not r.has("Secret")
    assert "secret redis-cluster, key seeds" in r.notes


def test_redis_sentinel_from_the_secret_and_config(renders):
    r = renders["redis-sentinel"]
    v = VALUE_SETS["redis-sentinel"]
    env = r.env()
    assert env["PHX_GATEWAY__REDIS__SENTINEL_URLS"]["valueFrom"] == {
        "secretKeyRef": {"name": FULLNAME, "key": "redis-sentinel-urls"}
    }
    assert env["PHX_GATEWAY__REDIS__PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": FULLNAME, "key": "redis-password"}
    }
    assert not {"PHX_GATEWAY__REDIS__URL", "PHX_GATEWAY__REDIS__CLUSTER_URLS"} & set(env)
    secret = r.one("Secret", FULLNAME)
    data = {k: base64.b64decode(val).decode() for k, val in secret["data"].items()}
    assert data == {
        "redis-sentinel-urls": v["secrets"]["redisSentinelUrls"]["value"],
        "redis-password": v["secrets"]["redisPassword"]["value"],
    }
    redis = r.gateway_toml()["redis"]
    assert redis["sentinel_master"] == "mymaster"
    assert redis["username"] == "gateway"
    assert "Sentinel" in r.notes and '"mymaster"' in r.notes and '"gateway"' in r.notes
    assert "password from secrets.redisPassword" in r.notes


def test_redis_sentinel_from_existing_secrets(chart):
    r = render(
        chart,
        {
            "secrets": {
                "redisSentinelUrls": {"existingSecret": "redis", "key": "sentinels"},
                "redisPassword": {"existingSecret": "redis", "key": "password"},
            },
            "config": {"redis": {"sentinel_master": "cache-primary"}},
        },
    )
    env = r.env()
    assert env["PHX_GATEWAY__REDIS__SENTINEL_URLS"]["valueFrom"]["secretKeyRef"] == {"name": "redis", "key": "sentinels"}
    assert env["PHX_GATEWAY__REDIS__PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis", "key": "password"}
    assert not r.has("Secret")
    redis = r.gateway_toml()["redis"]
    assert redis["sentinel_master"] == "cache-primary" and "username" not in redis
    assert "user default" in r.notes


def test_default_config_has_no_sentinel_settings(renders):
    for name in ("default", "production", "tls-redis", "redis-cluster", "minimal"):
        redis = renders[name].gateway_toml().get("redis", {})
        assert not {"sentinel_master", "username"} & set(redis), name


@pytest.mark.parametrize("mode", REDIS_MODES)
def test_redis_mode_makes_a_cluster(chart, mode):
    values, wording = REDIS_MODES[mode]
    values = {**copy.deepcopy(values), "replicaCount": 3, "prometheusRule": {"enabled": True}}
    r = render(chart, values)
    env = r.env()
    assert env[REDIS_MODE_ENV[mode]]["valueFrom"]["secretKeyRef"]["name"] == "redis"
    assert set(REDIS_MODE_ENV.values()) & set(env) == {REDIS_MODE_ENV[mode]}
    assert "Cluster mode" in r.notes and wording in r.notes and f"secrets.{mode}" in r.notes
    assert "WARNING" not in r.notes
    alerts = {a["alert"] for a in r.one("PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert "PhxGatewayRedisDown" in alerts


@pytest.mark.parametrize("mode", REDIS_MODES)
def test_redis_ca_applies_to_every_mode(chart, mode):
    values = copy.deepcopy(REDIS_MODES[mode][0])
    values["redis"] = {"tls": {"ca": {"secretName": "redis-tls"}}}
    r = render(chart, values)
    assert r.env()["PHX_GATEWAY__REDIS__TLS_CA_FILE"]["value"] == "/etc/ssl/phx-gateway/redis-ca.crt"
    volumes = {v["name"]: v for v in r.pod["volumes"]}
    assert volumes["redis-ca"]["secret"]["secretName"] == "redis-tls"
    assert any(m["name"] == "redis-ca" for m in r.container["volumeMounts"])


def test_warning_when_several_pods_have_no_redis(chart):
    for values in ({"replicaCount": 3}, {"autoscaling": {"enabled": True}}):
        notes = render(chart, values).notes
        assert "WARNING: no Redis is configured" in notes
        assert "secrets.redisClusterUrls" in notes and "secrets.redisSentinelUrls" in notes
        assert "Cluster mode" not in notes
    assert "WARNING" not in render(chart, None).notes


def test_warning_when_sentinel_master_has_no_sentinels(chart):
    r = render(chart, {"config": {"redis": {"sentinel_master": "mymaster"}}})
    assert "config.redis.sentinel_master is set but secrets.redisSentinelUrls is not" in r.notes


def test_redis_mode_failures_say_why(chart):
    with pytest.raises(helm.HelmRenderError, match="set only one of redisUrl"):
        chart.render(copy.deepcopy(BAD_COMBINATIONS["Redis URL and cluster URLs"]), name=RELEASE, namespace=NAMESPACE)
    with pytest.raises(helm.HelmRenderError, match="redisSentinelUrls needs config.redis.sentinel_master"):
        chart.render(copy.deepcopy(BAD_COMBINATIONS["Sentinel URLs without a master name"]), name=RELEASE, namespace=NAMESPACE)


GOOD_URL_LISTS = [
    "redis://10.0.0.1:7000",
    "redis://10.0.0.1:7000,redis://10.0.0.2:7000",
    "rediss://user:pa55@redis-0:6380, rediss://user:pa55@redis-1:6380",
]


@pytest.mark.parametrize("urls", GOOD_URL_LISTS)
@pytest.mark.parametrize("entry", ["redisClusterUrls", "redisSentinelUrls"])
def test_schema_accepts_url_lists(chart, entry, urls):
    values = {"secrets": {entry: {"value": urls}}}
    chart.validate_schema(copy.deepcopy(values))
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(chart.merge_values(copy.deepcopy(values)), schema, cls=jsonschema.Draft7Validator)


def test_scheduling_defaults(renders):
    pod = renders["default"].pod
    selector = {"app.kubernetes.io/name": "phx-gateway", "app.kubernetes.io/instance": RELEASE}
    soft = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert soft[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    assert soft[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    spread = pod["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    assert all(c["whenUnsatisfiable"] == "ScheduleAnyway" for c in spread)
    assert all(c["labelSelector"]["matchLabels"] == selector for c in spread)
    labels = renders["default"].deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_scheduling_variants(renders):
    hard = renders["production"].pod["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in hard
    minimal = renders["minimal"].pod
    assert "affinity" not in minimal and "topologySpreadConstraints" not in minimal


def test_checksum_follows_config(chart, renders):
    before = renders["default"].deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    after = render(chart, {"routes": [{"topic": "x:*"}]}).deployment["spec"]["template"]["metadata"]["annotations"][
        "checksum/config"
    ]
    assert before != after


def test_resources(renders):
    assert renders["default"].container["resources"]["requests"] == {"cpu": "250m", "memory": "256Mi"}
    assert renders["production"].container["resources"]["limits"] == {"memory": "2Gi"}
    assert "resources" not in renders["minimal"].container


# --------------------------------------------------------------------------------------------
# ConfigMap (gateway.toml)
# --------------------------------------------------------------------------------------------


def repo_default_config() -> dict:
    return tomllib.loads((ROOT / "config" / "gateway.toml").read_text())


def test_default_config_matches_repository_defaults(renders):
    toml = renders["default"].gateway_toml()
    repo = repo_default_config()
    assert toml["routes"] == repo["routes"], "chart default routes differ from config/gateway.toml"
    assert toml["log"]["format"] == "json"
    for section, settings in toml.items():
        if section == "routes" or section not in repo:
            continue
        for key, value in settings.items():
            if (section, key) == ("log", "format"):
                continue
            if key in repo[section]:
                assert value == repo[section][key], f"{section}.{key}: chart {value!r}, repository {repo[section][key]!r}"


def test_production_config(renders):
    toml = renders["production"].gateway_toml()
    assert [r["topic"] for r in toml["routes"]] == ["admin:*", "doc:*", "notifications:*"]
    assert toml["routes"][0] == {"topic": "admin:*", "join": "deny", "deny_reason": "forbidden"}
    assert toml["routes"][1]["presence_meta"] == ["online_at", "device"]
    assert toml["socket"]["max_channels"] == 50
    assert toml["socket"]["max_frame_bytes"] == 8388608  # large integers stay integers
    assert toml["redis"]["key_prefix"] == "prod"
    assert toml["redis"]["down_ms"] == 20000


def test_minimal_config_has_no_routes(renders):
    # No [[routes]]: the gateway applies its built-in defaults (the Phoenix guide's).
    assert "routes" not in renders["minimal"].gateway_toml()


def test_config_value_types_and_escaping(chart):
    r = render(
        chart,
        {
            "config": {"socket": {"id": 'users_socket:{user_id} "quoted" \\ back', "max_channels": None}},
            "routes": [{"topic": "room:*", "echo": ["a", "b"], "join": "allow"}],
            "extraConfigToml": "[webhooks]\nurl = \"http://backend/hook\"\n",
        },
    )
    toml = r.gateway_toml()
    assert toml["socket"]["id"] == 'users_socket:{user_id} "quoted" \\ back'
    assert "max_channels" not in toml["socket"]
    assert toml["routes"] == [{"topic": "room:*", "echo": ["a", "b"], "join": "allow"}]
    assert toml["webhooks"]["url"] == "http://backend/hook"


# --------------------------------------------------------------------------------------------
# Services, PDB, HPA, Ingress, monitoring
# --------------------------------------------------------------------------------------------


def test_services(renders):
    r = renders["default"]
    svc = r.one("Service", FULLNAME)
    assert svc["spec"]["type"] == "ClusterIP"
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]
    admin = r.one("Service", f"{FULLNAME}-admin")
    assert admin["spec"]["clusterIP"] == "None"
    assert admin["spec"]["publishNotReadyAddresses"] is True
    assert admin["spec"]["ports"][0]["name"] == "admin"
    assert admin["metadata"]["labels"]["app.kubernetes.io/component"] == "admin"
    assert not renders["minimal"].all("Service")[1:], "minimal: only the http Service"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_pdb(chart, renders, name):
    pdb = renders[name].one("PodDisruptionBudget", FULLNAME)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        renders[name].deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    if name == "production":
        assert pdb["spec"]["minAvailable"] == 2 and "maxUnavailable" not in pdb["spec"]
    else:
        assert pdb["spec"]["maxUnavailable"] == 1


def test_hpa(renders):
    r = renders["production"]
    hpa = r.one("HorizontalPodAutoscaler", FULLNAME)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 30)
    metrics = hpa["spec"]["metrics"]
    assert {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}} in metrics
    pods = [m for m in metrics if m["type"] == "Pods"]
    assert pods == [
        {"type": "Pods", "pods": {"metric": {"name": "phx_gateway_sockets"}, "target": {"type": "AverageValue", "averageValue": "20000"}}}
    ]
    assert not [m for m in metrics if m.get("resource", {}).get("name") == "memory"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 600
    assert "replicas" not in r.deployment["spec"], "the HPA owns the replica count"


def test_hpa_cpu_only(chart):
    r = render(chart, {"autoscaling": {"enabled": True}})
    metrics = r.one("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert [m["resource"]["name"] for m in metrics] == ["cpu"]


def test_ingress(renders):
    ing = renders["production"].one("Ingress", FULLNAME)
    a = ing["metadata"]["annotations"]
    assert a["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert a["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    assert a["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert a["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ing["spec"]["ingressClassName"] == "nginx"
    rule = ing["spec"]["rules"][0]
    assert rule["host"] == "realtime.example.com"
    path = rule["http"]["paths"][0]
    assert path["path"] == "/socket" and path["pathType"] == "Prefix"
    assert path["backend"] == {"service": {"name": FULLNAME, "port": {"name": "http"}}}
    assert ing["spec"]["tls"] == [{"secretName": "realtime-example-com-tls", "hosts": ["realtime.example.com"]}]
    assert "wss://realtime.example.com/socket" in renders["production"].notes


def test_ingress_annotations_can_be_overridden(chart):
    r = render(
        chart,
        {"ingress": {"enabled": True, "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "7200"}}},
    )
    a = r.one("Ingress")["metadata"]["annotations"]
    assert a["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200"
    r = render(chart, {"ingress": {"enabled": True, "nginxWebsocketAnnotations": False, "className": "traefik"}})
    assert "annotations" not in r.one("Ingress")["metadata"]


def test_service_monitor(renders):
    r = renders["production"]
    sm = r.one("ServiceMonitor", FULLNAME)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics" and endpoint["interval"] == "15s"
    admin = r.one("Service", f"{FULLNAME}-admin")
    assert sm["spec"]["selector"]["matchLabels"].items() <= admin["metadata"]["labels"].items()
    http = r.one("Service", FULLNAME)
    assert not sm["spec"]["selector"]["matchLabels"].items() <= http["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_service_monitor_forces_admin_service(chart):
    r = render(chart, {"adminService": {"enabled": False}, "serviceMonitor": {"enabled": True}})
    r.one("Service", f"{FULLNAME}-admin")


def test_prometheus_rule(renders):
    rule = renders["production"].one("PrometheusRule", FULLNAME)
    (group,) = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert {
        "PhxGatewayDown",
        "PhxGatewayRedisDown",
        "PhxGatewayBroadcastLagHigh",
        "PhxGatewaySlowConsumersRising",
        "PhxGatewayPresenceHeartbeatFailing",
        "PhxGatewayReaperFailing",
        "PhxGatewayPublishDropped",
    } <= set(alerts)
    for name, a in alerts.items():
        assert_known_metrics(a["expr"], name)
        assert f'job="{FULLNAME}-admin", namespace="{NAMESPACE}"' in a["expr"], name
        assert a["labels"]["severity"] in {"critical", "warning", "info"}
        assert "{{ $labels" in a["annotations"]["summary"] or "{{ $value" in a["annotations"]["summary"] or name == "PhxGatewayDown"
    assert "histogram_quantile(0.99" in alerts["PhxGatewayBroadcastLagHigh"]["expr"]
    assert alerts["PhxGatewayBroadcastLagHigh"]["expr"].rstrip().endswith("> 0.5")


def test_prometheus_rule_without_redis(chart):
    r = render(chart, {"prometheusRule": {"enabled": True, "selector": 'job="gw"'}})
    alerts = {a["alert"]: a for a in r.one("PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert "PhxGatewayRedisDown" not in alerts, "single-node pods have no Redis to alert on"
    assert 'job="gw"' in alerts["PhxGatewaySlowConsumersRising"]["expr"]


def test_dashboard_configmap(renders):
    cm = renders["production"].one("ConfigMap", f"{FULLNAME}-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["phx-gateway.json"]) == json.loads(DASHBOARD.read_text())


# --------------------------------------------------------------------------------------------
# Schema and template checks refuse bad values
# --------------------------------------------------------------------------------------------

BAD_VALUES = {
    "replicaCount as a word": {"replicaCount": "two"},
    "negative replicaCount": {"replicaCount": -1},
    "negative port": {"ports": {"http": -1}},
    "port out of range": {"ports": {"admin": 70000}},
    "drain seconds as a string": {"drain": {"seconds": "ten"}},
    "unknown preStop hook": {"drain": {"preStopHook": "magic"}},
    "unknown drain key": {"drain": {"mode": "fast"}},
    "typo in a top-level key": {"replicas": 3},
    "Redis URL in the ConfigMap": {"config": {"redis": {"url": "redis://x:6379"}}},
    "listener port in the ConfigMap": {"config": {"http": {"port": 4001}}},
    "secret in the ConfigMap": {"config": {"auth": {"jwt_secret": "x"}}},
    "Redis URL with a wrong scheme": {"secrets": {"redisUrl": {"value": "http://redis:6379"}}},
    "cluster URL list with an http:// entry": {
        "secrets": {"redisClusterUrls": {"value": "redis://10.0.0.1:7000,http://10.0.0.2:7000"}}
    },
    "cluster URL list not a URL": {"secrets": {"redisClusterUrls": {"value": "10.0.0.1:7000"}}},
    "cluster URL list with an empty entry": {"secrets": {"redisClusterUrls": {"value": "redis://a:7000,,redis://b:7000"}}},
    "Sentinel URL list with a wrong scheme": {"secrets": {"redisSentinelUrls": {"value": "sentinel://s:26379"}}},
    "Redis cluster URLs in the ConfigMap": {"config": {"redis": {"cluster_urls": ["redis://x:7000"]}}},
    "Redis Sentinel URLs in the ConfigMap": {"config": {"redis": {"sentinel_urls": ["redis://x:26379"]}}},
    "Redis password in the ConfigMap": {"config": {"redis": {"password": "x"}}},
    "empty Sentinel master name": {"config": {"redis": {"sentinel_master": ""}}},
    "Redis username not a string": {"config": {"redis": {"username": 7}}},
    "unknown field of a Redis secret entry": {"secrets": {"redisPassword": {"secret": "x"}}},
    "unknown secret entry field": {"secrets": {"apiKey": {"secretName": "x"}}},
    "unknown join policy": {"routes": [{"topic": "a", "join": "maybe"}]},
    "route without topic": {"routes": [{"join": "allow"}]},
    "unknown route key": {"routes": [{"topic": "a", "brodcast": ["x"]}]},
    "unknown log format": {"config": {"log": {"format": "xml"}}},
    "unknown anti-affinity preset": {"podAntiAffinity": "sometimes"},
    "unknown service type": {"service": {"type": "Magic"}},
    "bad scrape interval": {"serviceMonitor": {"interval": "often"}},
    "sockets target not a quantity": {"autoscaling": {"sockets": {"averageValue": "lots"}}},
    "bad image digest": {"image": {"digest": "latest"}},
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_schema_rejects(chart, case):
    values = BAD_VALUES[case]
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(copy.deepcopy(values))
    with pytest.raises(helm.HelmValuesError):
        chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("case", BAD_VALUES)
def test_schema_rejects_with_python_jsonschema(chart, case):
    # The same schema through an independent validator, on the merged values.
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    values = chart.merge_values(copy.deepcopy(BAD_VALUES[case]))
    assert list(jsonschema.Draft7Validator(schema).iter_errors(values))


@pytest.mark.parametrize("name", VALUE_SETS)
def test_schema_accepts_value_sets(chart, name):
    chart.validate_schema(copy.deepcopy(VALUE_SETS[name]) or None)
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(merged(chart, name), schema, cls=jsonschema.Draft7Validator)


BAD_COMBINATIONS = {
    "CA from a Secret and a ConfigMap": {"redis": {"tls": {"ca": {"secretName": "a", "configMapName": "b"}}}},
    "minReplicas above maxReplicas": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
    "HPA without a metric": {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}},
    "down_ms below 2 heartbeats": {"config": {"redis": {"heartbeat_ms": 5000, "down_ms": 8000}}},
    "PDB without a bound": {"podDisruptionBudget": {"maxUnavailable": None}},
    "Redis URL and cluster URLs": {
        "secrets": {"redisUrl": {"value": "redis://r:6379"}, "redisClusterUrls": {"value": "redis://c:7000"}}
    },
    "Redis URL and Sentinel URLs": {
        "secrets": {"redisUrl": {"existingSecret": "redis"}, "redisSentinelUrls": {"existingSecret": "sentinels"}},
        "config": {"redis": {"sentinel_master": "mymaster"}},
    },
    "cluster URLs and Sentinel URLs": {
        "secrets": {"redisClusterUrls": {"existingSecret": "c"}, "redisSentinelUrls": {"value": "redis://s:26379"}},
        "config": {"redis": {"sentinel_master": "mymaster"}},
    },
    "all three Redis modes": {
        "secrets": {
            "redisUrl": {"value": "redis://r:6379"},
            "redisClusterUrls": {"value": "redis://c:7000"},
            "redisSentinelUrls": {"value": "redis://s:26379"},
        },
        "config": {"redis": {"sentinel_master": "mymaster"}},
    },
    "Sentinel URLs without a master name": {"secrets": {"redisSentinelUrls": {"value": "redis://s:26379"}}},
    "Sentinel URLs from a Secret without a master name": {
        "secrets": {"redisSentinelUrls": {"existingSecret": "sentinels"}},
        "config": {"redis": {"username": "gateway"}},
    },
}


@pytest.mark.parametrize("case", BAD_COMBINATIONS)
def test_template_rejects(chart, case):
    with pytest.raises(helm.HelmRenderError):
        chart.render(copy.deepcopy(BAD_COMBINATIONS[case]), name=RELEASE, namespace=NAMESPACE)


# --------------------------------------------------------------------------------------------
# Documentation of the values
# --------------------------------------------------------------------------------------------


def value_paths(values, prefix=""):
    """Dotted paths of every documented value: leaves, and whole maps/lists that are free-form."""
    out = []
    for key, val in values.items():
        path = f"{prefix}{key}"
        if isinstance(val, dict) and val and path not in {"autoscaling.behavior", "updateStrategy", "resources", "podSecurityContext", "securityContext", "dashboards.labels"}:
            out += value_paths(val, path + ".")
        else:
            out.append(path)
    return out


def test_chart_readme_documents_every_value():
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [p for p in value_paths(values) if f"`{p}`" not in readme]
    assert not missing, f"values not documented in charts/phx-gateway/README.md: {missing}"
    for entry in ("redisUrl", "redisClusterUrls", "redisSentinelUrls", "redisPassword", "apiKey", "secretKeyBase", "jwtSecret"):
        for field in ("value", "existingSecret", "key"):
            assert f"`secrets.{entry}.{field}`" in readme


# --------------------------------------------------------------------------------------------
# Grafana dashboard and the alert example of docs/operations.md
# --------------------------------------------------------------------------------------------


def dashboard_panels(d):
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])


def test_dashboard():
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] == "phx-gateway" and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pod", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert_known_metrics(variables[name]["query"]["query"], f"variable {name}")
    exprs = 0
    ids = set()
    for p in dashboard_panels(d):
        assert p["id"] not in ids
        ids.add(p["id"])
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert_known_metrics(t["expr"], f"panel {p['title']!r}")
            assert 'pod=~"$pod"' in t["expr"] and 'instance=~"$instance"' in t["expr"], p["title"]
            exprs += 1
    assert exprs >= 30
    used = set()
    for p in dashboard_panels(d):
        for t in p.get("targets", []):
            used |= metric_names(t["expr"])
    not_shown = KNOWN_METRICS - used - {
        "process_virtual_memory_bytes",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
        "process_virtual_memory_max_bytes",
    }
    assert not not_shown, f"metrics without a panel: {sorted(not_shown)}"


def test_dashboard_layout_has_no_overlaps():
    d = json.loads(DASHBOARD.read_text())
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))


def test_operations_doc_alert_example():
    text = OPERATIONS.read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    rules = [b for b in blocks if "kind: PrometheusRule" in b]
    assert rules, "docs/operations.md has no PrometheusRule example"
    doc = yaml.safe_load(rules[0])
    alerts = [r for g in doc["spec"]["groups"] for r in g["rules"]]
    assert len(alerts) >= 5
    for a in alerts:
        assert_known_metrics(a["expr"], f"docs/operations.md {a['alert']}")


# --------------------------------------------------------------------------------------------
# Container image files
# --------------------------------------------------------------------------------------------


def dockerfile_instructions():
    text = DOCKERFILE.read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        word, _, rest = s.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(instructions):
    idx = max(i for i, (w, _) in enumerate(instructions) if w == "FROM")
    return instructions[idx:]


def test_hadolint():
    exe = shutil.which("hadolint")
    if not exe:
        pytest.skip("hadolint not installed (static checks below still run)")
    proc = subprocess.run([exe, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_static_checks():
    ins = dockerfile_instructions()
    words = [w for w, _ in ins]
    froms = [r for w, r in ins if w == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    assert re.match(r"rust:\S+ AS builder", froms[0], re.I)
    assert "ADD" not in words, "use COPY, not ADD"
    build = [r for w, r in ins if w == "RUN" and "cargo build" in r]
    assert len(build) == 2, "a dependency-caching build and the real build"
    assert all("--release --locked --bin phx-gateway" in r for r in build)
    final = final_stage(ins)
    users = [r for w, r in final if w == "USER"]
    assert users, "the runtime stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, "numeric non-root UID (runAsNonRoot can check it)"
    assert int(uid) == 10001
    exposed = " ".join(r for w, r in final if w == "EXPOSE").split()
    assert {"4000", "9568"} <= set(exposed)
    health = [r for w, r in final if w == "HEALTHCHECK"]
    assert health and "NONE" not in health[0].upper()
    entry = [r for w, r in final if w == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["/usr/local/bin/phx-gateway"]
    cmd = json.loads([r for w, r in final if w == "CMD"][-1])
    assert cmd[-1] == "serve" and cmd[cmd.index("--config") + 1] == "/etc/phx-gateway/gateway.toml"
    copies = [r for w, r in final if w == "COPY"]
    assert any(re.search(r"config/gateway\.toml\s+/etc/phx-gateway/gateway\.toml$", c) for c in copies)
    env = " ".join(r for w, r in final if w == "ENV")
    for setting in ("PHX_GATEWAY__HTTP__HOST=0.0.0.0", "PHX_GATEWAY__ADMIN__HOST=0.0.0.0", "PHX_GATEWAY__DEMO__ENABLED=false"):
        assert setting in env
    labels = " ".join(r for w, r in final if w == "LABEL")
    for label in ("title", "description", "licenses", "version", "revision"):
        assert f"org.opencontainers.image.{label}=" in labels
    runtime_from = final[0][1]
    assert re.match(r"(debian:\S*slim|gcr\.io/distroless/cc)", runtime_from.split()[0].replace("${DEBIAN_RELEASE}", "bookworm"))
    assert any(w == "RUN" and "ca-certificates" in r for w, r in final), "CA certificates for rediss://"


def test_dockerfile_bakes_in_no_secret():
    ins = dockerfile_instructions()
    for word, rest in ins:
        if word in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|API__KEY|REDIS__(\w+_)?URLS?)\w*=", rest, re.I), rest
        if word == "COPY":
            assert not re.search(r"\.env\b|\.pem\b|\.key\b|id_rsa", rest), rest
    ignore = DOCKERIGNORE.read_text().split()
    for pattern in (".git", "target", "node_modules", ".env", ".env.*"):
        assert pattern in ignore, f".dockerignore should exclude {pattern}"


def dockerignored(path: str) -> bool:
    top = path.split("/")[0]
    patterns = [p for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    return any(p.strip().rstrip("/") in (top, path) for p in patterns)


def without_test_modules(source: str) -> str:
    """Rust source without its `#[cfg(test)] mod name { ... }` blocks (braces counted, which is
    enough for the modules of this repository)."""
    out, pos = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", source):
        if m.start() < pos:
            continue
        out.append(source[pos : m.start()])
        depth, i = 1, m.end()
        while i < len(source) and depth:
            depth += {"{": 1, "}": -1}.get(source[i], 0)
            i += 1
        pos = i
    out.append(source[pos:])
    return "".join(out)


def test_without_test_modules():
    src = 'const A: &str = include_str!("a");\n#[cfg(test)]\nmod tests {\n    fn f() { include_str!("b"); }\n}\nfn g() {}\n'
    assert without_test_modules(src) == 'const A: &str = include_str!("a");\n\nfn g() {}\n'


def test_build_context_has_what_the_build_needs():
    ins = dockerfile_instructions()
    sources = set()
    for w, r in ins:
        if w == "COPY" and "--from" not in r:
            args = [a for a in r.split() if not a.startswith("--")]
            sources |= {a.rstrip("/") for a in args[:-1]}
    for src in sources:
        assert (ROOT / src).exists(), f"COPY source {src} is missing"
        assert not dockerignored(src), f"COPY source {src} is excluded by .dockerignore"
    # Files compiled into the binary (include_str!/include_bytes!) must be in a copied directory.
    # Unit-test modules (#[cfg(test)]) are not part of the release build: their fixtures need
    # not be in the image.
    for rs in (ROOT / "src").rglob("*.rs"):
        for inc in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', without_test_modules(rs.read_text())):
            target = (rs.parent / inc).resolve().relative_to(ROOT).as_posix()
            assert any(target == s or target.startswith(s + "/") for s in sources), (
                f"{rs.relative_to(ROOT)} includes {target}, which docker/Dockerfile does not copy"
            )
    # The dependency-caching stage stubs src/main.rs and src/lib.rs only: any other target the
    # manifest declares explicitly would make that stage fail.
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    for kind in ("bin", "example", "test", "bench"):
        for target in manifest.get(kind, []):
            path = target.get("path")
            assert path in (None, "src/main.rs"), (
                f"Cargo.toml declares [[{kind}]] {target.get('name')} at {path}: "
                "add a stub for it to the dependency stage of docker/Dockerfile"
            )
    if "lib" in manifest:
        assert manifest["lib"].get("path", "src/lib.rs") == "src/lib.rs"
    # A build script must be there before the first `cargo build` (the dependency stage), or
    # that stage builds without it and the gateway stage links differently.
    build_script = manifest["package"].get("build", "build.rs")
    if build_script and (ROOT / build_script).exists():
        first_build = next(i for i, (w, r) in enumerate(ins) if w == "RUN" and "cargo build" in r)
        copied_before = set()
        for w, r in ins[:first_build]:
            if w == "COPY" and "--from" not in r:
                args = [a for a in r.split() if not a.startswith("--")]
                copied_before |= {a.rstrip("/") for a in args[:-1]}
        assert build_script in copied_before, (
            f"docker/Dockerfile runs cargo build before it copies {build_script}"
        )


class _Admin(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        code = 200 if self.path == "/healthz" else 503
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_healthcheck_script():
    assert os.access(HEALTHCHECK, os.X_OK), "docker/healthcheck.sh must be executable"
    server = http.server.HTTPServer(("127.0.0.1", 0), _Admin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]

        def run(**env):
            return subprocess.run(
                ["bash", str(HEALTHCHECK)],
                env={**os.environ, "PHX_GATEWAY__ADMIN__PORT": str(port), **env},
                capture_output=True,
                text=True,
                timeout=20,
            ).returncode

        assert run() == 0
        assert run(HEALTHCHECK_PATH="/readyz") == 1
        assert run(PHX_GATEWAY__ADMIN__PORT=str(free_port())) == 1
    finally:
        server.shutdown()
        server.server_close()
