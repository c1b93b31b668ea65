"""The deployment files in deploy/ (Dockerfile, compose file, Grafana provisioning) fit the CLI
and the specs: every command line they hold is parsed by dte-stream's own parser, every spec they
mount loads, every path they mount exists. (No Docker on this machine: images are not built here.)"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from dte_stream.cli.main import build_parser
from dte_stream.cli.run import _run
from dte_stream.spec import load_spec

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"


def parse_cli(args: list[str]) -> Any:
    """dte-stream's parser on ``args``; argparse errors (SystemExit) fail the test."""
    return build_parser().parse_args(args)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_dockerfile_is_multi_stage_non_root_and_runs_a_mounted_spec() -> None:
    steps = dockerfile_instructions(DEPLOY / "docker" / "Dockerfile")
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) == 2
    assert froms[0].endswith("AS build")
    runtime = steps[[i for i, (w, _) in enumerate(steps) if w == "FROM"][1] :]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users
    assert not users[-1].startswith(("0", "root"))
    assert ("COPY", "--from=build /opt/dte-stream /opt/dte-stream") in runtime
    entry = json.loads(next(rest for word, rest in runtime if word == "ENTRYPOINT"))
    cmd = json.loads(next(rest for word, rest in runtime if word == "CMD"))
    assert entry == ["dte-stream"]
    args = parse_cli(cmd)
    assert args.handler is _run
    assert args.spec == "/etc/dte-stream/spec.yaml"
    assert str(args.recovery_dir).startswith("/var/lib/dte-stream")
    assert args.http == ("0.0.0.0", 8080)
    assert ("EXPOSE", "8080") in runtime
    assert ("VOLUME", '["/var/lib/dte-stream"]') in runtime
    health = next(rest for word, rest in runtime if word == "HEALTHCHECK")
    assert "/healthz" in health


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    return data


def test_the_compose_file_has_the_services_and_kafka_runs_in_kraft_mode() -> None:
    services = compose()["services"]
    assert {"mosquitto", "kafka", "influxdb", "grafana", "dte-stream"} <= set(services)
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "zookeeper" not in json.dumps(services).lower()
    assert services["influxdb"]["image"].startswith("influxdb:2")


def test_the_compose_dataflow_command_parses_and_its_spec_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    service = compose()["services"]["dte-stream"]
    args = parse_cli(service["command"])
    assert args.handler is _run
    assert args.http == ("0.0.0.0", 8080)
    mounts = dict(v.split(":")[:2][::-1] for v in service["volumes"] if v.startswith("./"))
    spec_file = DEPLOY / "compose" / mounts[args.spec]
    monkeypatch.setenv("DTE_INFLUXDB_TOKEN", "a-token-for-the-test")
    spec = load_spec(spec_file)
    kinds = sorted({s.kind for s in spec.sources})
    assert kinds == ["kafka", "mqtt"]
    influx = next(s for s in spec.sinks if s.kind == "influxdb")
    assert influx.bucket == "dte/autogen"
    assert influx.token is not None
    assert influx.token.get_secret_value() == "a-token-for-the-test"
    build = service["build"]
    assert (DEPLOY / "compose" / build["context"] / build["dockerfile"]).is_file()


def test_no_secret_is_written_into_the_compose_file() -> None:
    text = (DEPLOY / "compose" / "compose.yaml").read_text()
    for name in (
        "DOCKER_INFLUXDB_INIT_PASSWORD",
        "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN",
        "GF_SECURITY_ADMIN_PASSWORD",
    ):
        value = re.search(rf"{name}: (.*)", text)
        assert value is not None, name
        assert value.group(1).startswith("${"), name
    example = dict(
        line.split("=", 1)
        for line in (DEPLOY / "compose" / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert all("change-me" in v for k, v in example.items() if k != "KAFKA_CLUSTER_ID")


def test_grafana_is_provisioned_with_the_dashboards_the_compose_file_mounts() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = {
        v.split(":")[1]: (DEPLOY / "compose" / v.split(":")[0]).resolve()
        for v in grafana["volumes"]
        if v.startswith("..")
    }
    provisioning = mounts["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards" / "dte-stream.yaml").read_text())["providers"]
    dashboards_in_container = providers[0]["options"]["path"]
    assert mounts[dashboards_in_container] == (DEPLOY / "grafana" / "dashboards").resolve()
    sources = yaml.safe_load((provisioning / "datasources" / "dte-influxdb.yaml").read_text())["datasources"]
    uids = {s["uid"] for s in sources}
    for path in mounts[dashboards_in_container].glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] in uids, (path.name, panel["title"])
    for variable in ("DTE_INFLUXDB_URL", "DTE_INFLUXDB_DATABASE", "DTE_INFLUXDB_TOKEN"):
        assert variable in grafana["environment"]


def test_the_shell_lines_in_the_compose_file_quote_cleanly() -> None:
    init = compose()["services"]["kafka-init"]["command"]
    assert shlex.split(init[2])[0] == "until"
