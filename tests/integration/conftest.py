"""Fixtures for the integration tests: real services, never mocks (see docs/testing.md).

Each fixture (`mosquitto`, `kafka`, `influxdb`, `victoriametrics`, `alertmanager`) starts its
service once per test session, on free loopback ports, through deploy/services/devservices.py,
and stops it when the session ends. A service is started only when a test asks for it.

An environment variable points a fixture at a server that already runs instead:
DTE_TEST_MQTT_URL, DTE_TEST_KAFKA_BOOTSTRAP, DTE_TEST_INFLUXDB_URL, DTE_TEST_VICTORIAMETRICS_URL,
DTE_TEST_ALERTMANAGER_URL (and, for MQTT over TLS / with a password, DTE_TEST_MQTT_TLS_URL with
DTE_TEST_MQTT_CA_FILE, DTE_TEST_MQTT_CERT_FILE, DTE_TEST_MQTT_KEY_FILE, and DTE_TEST_MQTT_AUTH_URL).

A service that is not installed makes its tests skip, or fail when CI is set, with the hint to
run deploy/services/install.sh.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import sys
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEVSERVICES_PATH = REPO / "deploy" / "services" / "devservices.py"


def _load_devservices() -> ModuleType:
    """Import deploy/services/devservices.py by path (deploy/ is not a package)."""
    name = "dte_devservices"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DEVSERVICES_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


devservices = _load_devservices()

_started: list[Any] = []


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _started:
        return
    terminalreporter.section("devservices")
    for svc in _started:
        extra = f" (Kafka {svc.version})" if getattr(svc, "version", None) else ""
        terminalreporter.write_line(f"{svc.name}{extra}: ready in {svc.startup_seconds} s at {svc.url}")


def _service(name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    env_var = devservices.ENV_VARS[name]
    address = os.environ.get(env_var, "").strip()
    if address:
        svc = devservices.external(name, address)
        try:
            devservices.wait_ready(svc, timeout=15.0)
        except devservices.DevServiceError as e:
            pytest.fail(f"{env_var}={address} is set, but that server does not answer: {e}", pytrace=False)
        yield svc
        return
    try:
        devservices.check_installed(name)
    except devservices.ServiceUnavailable as e:
        message = f"{e} (or set {env_var} to use a running server)"
        if _in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    svc = devservices.start(name, tmp_path_factory.mktemp(name))
    _started.append(svc)
    try:
        yield svc
    finally:
        devservices.stop(svc)


@pytest.fixture(scope="session")
def devservices_api() -> ModuleType:
    """The deploy/services/devservices.py module (protocol helpers, service classes)."""
    return devservices


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """devservices.MosquittoService: `host`, `port` (plain, anonymous), `tls_port` (client cert
    required: `ca_file`, `cert_file`, `key_file`), `auth_port` (`username`, `password`)."""
    yield from _service("mosquitto", tmp_path_factory)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """devservices.KafkaService: `bootstrap_servers` of a single KRaft broker."""
    yield from _service("kafka", tmp_path_factory)


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """devservices.Service for InfluxDB 1.x: `url` (http://127.0.0.1:PORT), no auth."""
    yield from _service("influxdb", tmp_path_factory)


@pytest.fixture(scope="session")
def victoriametrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """devservices.Service for VictoriaMetrics: `url`; takes /write and /api/v2/write."""
    yield from _service("victoriametrics", tmp_path_factory)


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """devservices.Service for Prometheus Alertmanager: `url`, API under /api/v2."""
    yield from _service("alertmanager", tmp_path_factory)


@pytest.fixture
def database(influxdb: Any) -> Iterator[str]:
    """A fresh InfluxDB database on the session's InfluxDB, dropped after the test."""
    from influxql import influxql

    name = f"dte_test_{uuid.uuid4().hex[:10]}"
    influxql(influxdb.url, f'CREATE DATABASE "{name}"')
    yield name
    influxql(influxdb.url, f'DROP DATABASE "{name}"')


def _influxql(url: str, query: str, auth: tuple[str, str] | None = None) -> int:
    """POST one InfluxQL statement; the HTTP status."""
    request = urllib.request.Request(f"{url}/query", data=urllib.parse.urlencode({"q": query}).encode())
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


@pytest.fixture
def influxdb_with_auth(devservices_api: Any, tmp_path: Path) -> Any:
    """A private InfluxDB restarted with auth on, and an admin user ``admin`` / ``right-password``."""
    try:
        devservices_api.check_installed("influxdb")
    except devservices_api.ServiceUnavailable as e:
        if _in_ci():
            pytest.fail(str(e), pytrace=False)
        pytest.skip(str(e))
    svc = devservices_api.start("influxdb", tmp_path / "influxdb-auth")
    try:
        conf = svc.state_dir / "influxdb.conf"
        conf.write_text(conf.read_text().replace("auth-enabled = false", "auth-enabled = true"))
        devservices_api.restart(svc)
        # With no user yet, InfluxDB takes this one statement without credentials.
        create = "CREATE USER admin WITH PASSWORD 'right-password' WITH ALL PRIVILEGES"
        assert _influxql(svc.url, create) == 200
        assert _influxql(svc.url, "CREATE DATABASE dte", auth=("admin", "right-password")) == 200
        yield svc
    finally:
        devservices_api.stop(svc)
