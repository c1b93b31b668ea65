"""The Kubernetes manifests in deploy/kubernetes, checked against the CLI's own parser and the
HTTP server's routes: what the StatefulSet runs parses, probes hit served paths, ports match."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dte_stream.api.app import ApiContext, create_app
from dte_stream.cli.cluster import parse_addresses
from dte_stream.cli.main import build_parser
from dte_stream.spec import parse_spec

KUBE = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for name in yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"]:
        for doc in yaml.safe_load_all((KUBE / name).read_text()):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return manifests()


def container(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    pod = objects[("StatefulSet", "dte-stream")]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    return dict(c)


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container arguments."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def test_the_statefulset_runs_a_cluster_whose_processes_parse_with_the_cli(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    sts = objects[("StatefulSet", "dte-stream")]
    replicas = sts["spec"]["replicas"]
    c = container(objects)
    env_names = {e["name"] for e in c["env"]}
    assert "POD_INDEX" in env_names
    pod_index = next(e for e in c["env"] if e["name"] == "POD_INDEX")
    assert "pod-index" in pod_index["valueFrom"]["fieldRef"]["fieldPath"]
    headless = sts["spec"]["serviceName"]
    cluster_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "cluster")
    for ordinal in range(replicas):
        args = build_parser().parse_args(expand(c["args"], {"POD_INDEX": str(ordinal)}))
        assert args.command == "run"
        assert args.process_id == ordinal
        addresses = parse_addresses(args.addresses)
        assert addresses == [f"dte-stream-{i}.{headless}:{cluster_port}" for i in range(replicas)]
        host, port = args.http
        assert host == "0.0.0.0"
        assert port == next(p["containerPort"] for p in c["ports"] if p["name"] == "http")
        assert args.log_format == "json"


def test_probes_hit_paths_the_http_server_serves(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    c = container(objects)
    served = set(create_app(ApiContext(), extensions=[]).openapi()["paths"])
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] in served
        assert c[probe]["httpGet"]["port"] == "http"


def test_the_spec_comes_from_the_configmap_and_the_recovery_dir_from_a_volume_per_pod(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    sts = objects[("StatefulSet", "dte-stream")]
    c = container(objects)
    args = build_parser().parse_args(expand(c["args"], {"POD_INDEX": "0"}))
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    spec_dir = str(Path(args.spec).parent)
    assert mounts[spec_dir] == "spec"
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    config_map = objects[("ConfigMap", volumes["spec"]["configMap"]["name"])]
    spec_text = config_map["data"][Path(args.spec).name]
    env = {
        "DTE_KAFKA_BOOTSTRAP": "kafka:9092",
        "DTE_INFLUXDB_URL": "http://influxdb:8086",
        "DTE_INFLUXDB_TOKEN": "t",
    }
    for key, value in env.items():
        spec_text = spec_text.replace("${" + key + "}", value)
    spec = parse_spec(yaml.safe_load(spec_text))
    assert spec.name == "plant"
    state = next(path for path, name in mounts.items() if str(args.recovery_dir).startswith(path + "/"))
    claims = [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]]
    assert mounts[state] in claims
    secret_refs = [e["secretRef"]["name"] for e in c["envFrom"]]
    assert secret_refs == ["dte-stream-secrets"]


def test_services_expose_the_api_and_the_cluster_port(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    c = container(objects)
    api = objects[("Service", "dte-stream")]
    assert api["spec"]["ports"][0]["targetPort"] == "http"
    assert api["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    headless = objects[("Service", "dte-stream-cluster")]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["ports"][0]["targetPort"] == "cluster"
    labels = objects[("StatefulSet", "dte-stream")]["spec"]["template"]["metadata"]["labels"]
    for service in (api, headless):
        assert service["spec"]["selector"].items() <= labels.items()
    assert {p["name"] for p in c["ports"]} == {"http", "cluster"}


def test_pods_run_unprivileged_with_a_read_only_root(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    pod = objects[("StatefulSet", "dte-stream")]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = container(objects)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["terminationGracePeriodSeconds"] >= 60
