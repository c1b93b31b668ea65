#!/usr/bin/env python3
"""Start, check and stop the real services that dte-stream's integration tests use.

Every service runs as a child process on free loopback ports, with a generated configuration
in its own state directory, and is waited for until it answers at the protocol level:

=================  =============================================================================
mosquitto          one broker, three listeners: plain (anonymous), TLS (client certificate
                   required; CA and certs made with openssl) and password auth (mosquitto_passwd);
                   MQTT 5, persistence on.
kafka              one Apache Kafka broker in KRaft combined mode (broker + controller), from the
                   jars that deploy/services/install.sh resolves from Maven Central.
influxdb           InfluxDB 1.x (`influxd`), HTTP API with /write and InfluxQL /query.
victoriametrics    VictoriaMetrics, which takes influx line protocol on /write and /api/v2/write.
alertmanager       Prometheus Alertmanager with a single default receiver, clustering off.
prometheus         Prometheus scraping the targets listed in <state>/targets.json (file service
                   discovery, re-read on change: `prometheus_targets()`), every second.
=================  =============================================================================

Standard library only. Two ways to use it:

* imported by tests/integration/conftest.py: ``start(name, state_dir)`` returns a `Service`
  (dataclass) with the addresses, paths and pid; ``stop(service)`` ends it.
* from a shell::

      python deploy/services/devservices.py start mosquitto kafka   # prints `export DTE_TEST_...`
      python deploy/services/devservices.py status
      python deploy/services/devservices.py stop all

  Services started from the shell keep running in the background; their state, logs and
  description live in ``${DTE_CACHE_DIR:-<repo>/.cache}/devservices/<name>/``.
  ``eval "$(python deploy/services/devservices.py start all)"`` points the tests at them.

Install the binaries first with ``deploy/services/install.sh``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
INSTALL_HINT = "run deploy/services/install.sh to install the test services"
LOOPBACK = "127.0.0.1"

SERVICE_NAMES = ("mosquitto", "kafka", "influxdb", "victoriametrics", "alertmanager", "prometheus")

# Environment variables that point the tests at already running servers (see docs/testing.md).
ENV_VARS = {
    "mosquitto": "DTE_TEST_MQTT_URL",
    "kafka": "DTE_TEST_KAFKA_BOOTSTRAP",
    "influxdb": "DTE_TEST_INFLUXDB_URL",
    "victoriametrics": "DTE_TEST_VICTORIAMETRICS_URL",
    "alertmanager": "DTE_TEST_ALERTMANAGER_URL",
    "prometheus": "DTE_TEST_PROMETHEUS_URL",
}
# Optional extras for the TLS and password listeners of an external MQTT broker.
MQTT_TLS_ENV = "DTE_TEST_MQTT_TLS_URL"  # mqtts://host:port
MQTT_CA_ENV = "DTE_TEST_MQTT_CA_FILE"
MQTT_CERT_ENV = "DTE_TEST_MQTT_CERT_FILE"
MQTT_KEY_ENV = "DTE_TEST_MQTT_KEY_FILE"
MQTT_AUTH_ENV = "DTE_TEST_MQTT_AUTH_URL"  # mqtt://user:password@host:port

DEFAULT_TIMEOUTS = {
    "mosquitto": 15.0,
    "kafka": 120.0,
    "influxdb": 30.0,
    "victoriametrics": 30.0,
    "alertmanager": 30.0,
    "prometheus": 30.0,
}


class DevServiceError(RuntimeError):
    """A service could not be started or checked."""


class ServiceUnavailable(DevServiceError):  # noqa: N818 - reads better at the call sites
    """A service's binary (or the Kafka jars) is not installed."""


# --------------------------------------------------------------------------------------------
# Descriptions handed to the tests
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Service:
    """One running service. ``url`` is its main address (for Kafka: the bootstrap servers)."""

    name: str
    url: str
    host: str = LOOPBACK
    port: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    state_dir: Path | None = None
    log_file: Path | None = None
    pid: int | None = None
    #: True when the service was given by an environment variable and not started here.
    external: bool = False
    #: seconds from launch until the service answered
    startup_seconds: float | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    #: the command that runs the service (without the setpriv wrapper): `restart` runs it again
    command: list[str] | None = field(default=None, repr=False, compare=False)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_file, lines)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": type(self).__name__}
        for f in dataclasses.fields(self):
            if f.name == "process":
                continue
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out

    def env(self) -> dict[str, str]:
        """Environment variables that point the tests at this service."""
        return {ENV_VARS[self.name]: self.url}


@dataclass(kw_only=True)
class MosquittoService(Service):
    """Mosquitto with a plain (``port``), a TLS (``tls_port``) and a password (``auth_port``)
    listener. The TLS listener requires a client certificate (``cert_file``/``key_file``, signed
    by ``ca_file``); the password listener refuses anonymous clients."""

    tls_port: int | None = None
    auth_port: int | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def tls_url(self) -> str | None:
        return None if self.tls_port is None else f"mqtts://{self.host}:{self.tls_port}"

    @property
    def auth_url(self) -> str | None:
        if self.auth_port is None or self.username is None or self.password is None:
            return None
        user, pw = quote(self.username, safe=""), quote(self.password, safe="")
        return f"mqtt://{user}:{pw}@{self.host}:{self.auth_port}"

    def env(self) -> dict[str, str]:
        out = super().env()
        if self.tls_url and self.ca_file and self.cert_file and self.key_file:
            out[MQTT_TLS_ENV] = self.tls_url
            out[MQTT_CA_ENV] = str(self.ca_file)
            out[MQTT_CERT_ENV] = str(self.cert_file)
            out[MQTT_KEY_ENV] = str(self.key_file)
        if self.auth_url:
            out[MQTT_AUTH_ENV] = self.auth_url
        return out


@dataclass(kw_only=True)
class KafkaService(Service):
    """A single KRaft broker+controller. ``url`` is the bootstrap servers string (PLAINTEXT).

    Two more listeners take SCRAM-SHA-512 logins of ``username``/``password``: ``sasl_port``
    (SASL_PLAINTEXT) and ``sasl_ssl_port`` (SASL_SSL, server certificate signed by
    ``ca_file``, made with openssl; SAN 127.0.0.1 and localhost)."""

    controller_port: int | None = None
    cluster_id: str | None = None
    version: str | None = None
    sasl_port: int | None = None
    sasl_ssl_port: int | None = None
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return self.url


_KINDS: dict[str, type[Service]] = {c.__name__: c for c in (Service, MosquittoService, KafkaService)}


def service_from_json(data: dict[str, Any]) -> Service:
    data = dict(data)
    cls = _KINDS[data.pop("kind", "Service")]
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in names}
    for f in dataclasses.fields(cls):
        if f.name in kwargs and kwargs[f.name] is not None and "Path" in str(f.type):
            kwargs[f.name] = Path(kwargs[f.name])
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("DTE_CACHE_DIR") or REPO / ".cache")


def kafka_libs_dir() -> Path:
    return cache_dir() / "kafka" / "libs"


def find_binary(name: str) -> str:
    """Path of an executable, also looking in the sbin folders (mosquitto lives in /usr/sbin)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ServiceUnavailable(f"'{name}' is not installed: {INSTALL_HINT}")


def java_binary() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    try:
        return find_binary("java")
    except ServiceUnavailable:
        raise ServiceUnavailable("'java' (17 or newer) is not installed; Kafka needs it") from None


def kafka_jars() -> tuple[Path, str]:
    """The folder of Kafka broker jars and the Kafka version they are."""
    libs = kafka_libs_dir()
    jars = sorted(glob.glob(str(libs / "kafka_2.13-*.jar")))
    if not jars:
        raise ServiceUnavailable(f"the Kafka broker jars are not in {libs}: {INSTALL_HINT}")
    version = Path(jars[-1]).name.removeprefix("kafka_2.13-").removesuffix(".jar")
    return libs, version


def check_installed(name: str) -> None:
    """Raise ServiceUnavailable (with the install hint) if `name` cannot be started here."""
    if name == "mosquitto":
        find_binary("mosquitto")
        find_binary("mosquitto_passwd")
        find_binary("openssl")
    elif name == "kafka":
        java_binary()
        kafka_jars()
    elif name == "influxdb":
        find_binary("influxd")
    elif name == "victoriametrics":
        find_binary("victoria-metrics")
    elif name == "alertmanager":
        find_binary("prometheus-alertmanager")
    elif name == "prometheus":
        find_binary("prometheus")
    else:
        raise DevServiceError(f"unknown service {name!r}; known: {', '.join(SERVICE_NAMES)}")


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on the loopback address (bound to port 0, then released)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def log_tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return "(no log)"
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        text = fh.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return "root"


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _run(cmd: list[str], log: Path, cwd: Path | None = None, secret: str | None = None) -> None:
    shown = " ".join(a.replace(secret, "***") if secret else a for a in cmd)
    with log.open("ab") as out:
        out.write(("$ " + shown + "\n").encode())
        out.flush()
        result = subprocess.run(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            check=False,
        )
    if result.returncode != 0:
        raise DevServiceError(
            f"command failed ({result.returncode}): {shown}\n--- {log} ---\n" + log_tail(log)
        )


# --------------------------------------------------------------------------------------------
# Protocol-level readiness checks (also used for services given by environment variables)
# --------------------------------------------------------------------------------------------


def _mqtt_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _mqtt_remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        buf += chunk
    return buf


def mqtt_connack(
    host: str,
    port: int,
    *,
    username: str | None = None,
    password: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 2.0,
) -> int:
    """Send an MQTT 3.1.1 CONNECT and return the CONNACK return code (0 = accepted)."""
    flags = 0x02  # clean session
    payload = _mqtt_str(f"dte-ready-{os.getpid()}-{time.monotonic_ns() % 10**9}")
    if username is not None:
        flags |= 0x80
        payload += _mqtt_str(username)
        if password is not None:
            flags |= 0x40
            payload += _mqtt_str(password)
    body = _mqtt_str("MQTT") + bytes([4, flags]) + struct.pack("!H", 10) + payload
    packet = b"\x10" + _mqtt_remaining_length(len(body)) + body
    raw = socket.create_connection((host, port), timeout=timeout)
    sock: socket.socket = raw
    try:
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(raw, server_hostname=host)
        sock.sendall(packet)
        head = _recv_exact(sock, 4)
        if head[0] != 0x20 or head[1] != 2:
            raise DevServiceError(f"unexpected MQTT reply {head!r}")
        if head[3] == 0:
            sock.sendall(b"\xe0\x00")  # DISCONNECT
        return head[3]
    finally:
        sock.close()
        if sock is not raw:
            raw.close()


def mqtt_tls_context(
    ca_file: Path | str, cert_file: Path | str | None, key_file: Path | str | None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if cert_file:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx


def http_status(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"User-Agent": "dte-devservices"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()


def _kafka_request(sock: socket.socket, api_key: int, version: int, correlation: int, body: bytes) -> bytes:
    client_id = b"dte-devservices"
    header = struct.pack("!hhiH", api_key, version, correlation, len(client_id)) + client_id
    msg = header + body
    sock.sendall(struct.pack("!i", len(msg)) + msg)
    (size,) = struct.unpack("!i", _recv_exact(sock, 4))
    resp = _recv_exact(sock, size)
    (corr,) = struct.unpack("!i", resp[:4])
    if corr != correlation:
        raise DevServiceError("Kafka answered with a wrong correlation id")
    return resp[4:]


def kafka_brokers(host: str, port: int, timeout: float = 3.0) -> list[tuple[int, str, int]]:
    """A real Kafka metadata exchange: ApiVersions, then Metadata v4 for no topics.

    Returns the brokers (node id, host, port) that the cluster advertises."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        resp = _kafka_request(sock, 18, 0, 1, b"")  # ApiVersions v0
        (error,) = struct.unpack("!h", resp[:2])
        if error:
            raise DevServiceError(f"Kafka ApiVersions error code {error}")
        (count,) = struct.unpack("!i", resp[2:6])
        versions = {}
        for i in range(count):
            key, lo, hi = struct.unpack("!hhh", resp[6 + 6 * i : 12 + 6 * i])
            versions[key] = (lo, hi)
        lo, hi = versions.get(3, (-1, -1))
        if not lo <= 4 <= hi:
            raise DevServiceError(f"Kafka does not speak Metadata v4 (supports {lo}..{hi})")
        resp = _kafka_request(sock, 3, 4, 2, struct.pack("!ib", 0, 0))  # no topics, no create
        pos = 4  # throttle_time_ms
        (n,) = struct.unpack("!i", resp[pos : pos + 4])
        pos += 4
        brokers = []
        for _ in range(n):
            node, hlen = struct.unpack("!ih", resp[pos : pos + 6])
            pos += 6
            bhost = resp[pos : pos + hlen].decode()
            pos += hlen
            bport, rlen = struct.unpack("!ih", resp[pos : pos + 6])
            pos += 6 + max(rlen, 0)
            brokers.append((node, bhost, bport))
        return brokers


def check_ready(service: Service) -> None:
    """One protocol-level check; raises (OSError, DevServiceError, ...) when not ready."""
    if isinstance(service, MosquittoService):
        rc = mqtt_connack(service.host, service.port)
        if rc != 0:
            raise DevServiceError(f"MQTT CONNECT refused with return code {rc}")
        if service.tls_port and service.ca_file:
            ctx = mqtt_tls_context(service.ca_file, service.cert_file, service.key_file)
            rc = mqtt_connack(service.host, service.tls_port, ssl_context=ctx)
            if rc != 0:
                raise DevServiceError(f"MQTT CONNECT over TLS refused with return code {rc}")
        if service.auth_port and service.username:
            rc = mqtt_connack(
                service.host,
                service.auth_port,
                username=service.username,
                password=service.password,
            )
            if rc != 0:
                raise DevServiceError(f"MQTT CONNECT with password refused with return code {rc}")
    elif isinstance(service, KafkaService):
        first = service.url.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        brokers = kafka_brokers(host.strip("[]"), int(port))
        if not brokers:
            raise DevServiceError("Kafka metadata lists no broker yet")
    elif service.name == "influxdb":
        status, _ = http_status(service.url + "/ping")
        if status != 204:
            raise DevServiceError(f"GET /ping answered {status}")
    elif service.name == "victoriametrics":
        status, body = http_status(service.url + "/health")
        if status != 200 or body.strip() != b"OK":
            raise DevServiceError(f"GET /health answered {status} {body[:100]!r}")
    elif service.name in ("alertmanager", "prometheus"):
        status, _ = http_status(service.url + "/-/ready")
        if status != 200:
            raise DevServiceError(f"GET /-/ready answered {status}")
    else:
        raise DevServiceError(f"unknown service {service.name!r}")


def wait_ready(service: Service, timeout: float) -> None:
    """Wait until `service` answers; fail early if its process exits. Errors include the log."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    delay = 0.05
    while True:
        proc = service.process
        if proc is not None and proc.poll() is not None:
            raise DevServiceError(
                f"{service.name} exited with code {proc.returncode} while starting"
                f"\n--- last lines of {service.log_file} ---\n{service.log_tail()}"
            )
        if service.port and not tcp_open(service.host, service.port):
            last = ConnectionRefusedError(f"nothing listens on {service.host}:{service.port} yet")
        else:
            try:
                check_ready(service)
                return
            except (OSError, DevServiceError, ValueError, struct.error, ssl.SSLError) as e:
                last = e
        if time.monotonic() >= deadline:
            message = f"{service.name} was not ready after {timeout:.0f} s (last check: {last})"
            if service.log_file is not None:
                message += f"\n--- last lines of {service.log_file} ---\n{service.log_tail()}"
            raise DevServiceError(message)
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


# --------------------------------------------------------------------------------------------
# Process handling
# --------------------------------------------------------------------------------------------


def _launch(
    cmd: list[str], log_file: Path, cwd: Path, *, detach: bool, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `cmd` with stdout+stderr appended to `log_file`.

    Attached children (the test fixtures) get SIGTERM when the process that started them dies,
    so a killed pytest leaves no broker behind. Detached ones (the CLI) run on their own."""
    if not detach and sys.platform.startswith("linux"):
        setpriv = shutil.which("setpriv")
        if setpriv:
            cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
    with log_file.open("ab") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=detach,
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _pid_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stop(service: Service, timeout: float = 20.0) -> None:
    """Stop a service started by `start`: SIGTERM, then SIGKILL after `timeout` seconds."""
    if service.external:
        return
    proc = service.process
    if proc is not None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(10)
        service.process = None
        return
    # started by another process (the CLI): only signal it if it is still the same program
    pid = service.pid
    if pid is None or not _pid_alive(pid):
        return
    if str(service.state_dir) not in _pid_cmdline(pid):
        return  # the pid was reused by something else
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def restart(service: Service, down_seconds: float = 0.0, timeout: float | None = None) -> None:
    """Stop a service started by `start` (if it still runs) and start it again: same command,
    ports and data.

    The chaos tests use it for an outage of ``down_seconds`` (a broker restart, a database
    that is down for a while); ``service.process`` and ``service.pid`` are the new process."""
    if service.external or service.command is None or service.state_dir is None:
        raise DevServiceError(f"{service.name}: only a service started by this process can restart")
    stop(service)
    time.sleep(down_seconds)
    assert service.log_file is not None
    service.process = _launch(service.command, service.log_file, service.state_dir, detach=False)
    service.pid = service.process.pid
    wait_ready(service, DEFAULT_TIMEOUTS[service.name] if timeout is None else timeout)


def _unwrapped(args: Any) -> list[str]:
    """A child's command without the setpriv wrapper that `_launch` adds."""
    cmd = [str(a) for a in args]
    return cmd[cmd.index("--") + 1 :] if "--pdeathsig" in cmd else cmd


# --------------------------------------------------------------------------------------------
# Starting each service
# --------------------------------------------------------------------------------------------


def _make_certs(certs: Path, log: Path) -> tuple[Path, Path, Path]:
    """CA, server cert (SAN 127.0.0.1 + localhost) and client cert, made with openssl.

    Returns (ca_file, client_cert, client_key); the server files are server.crt/server.key."""
    openssl = find_binary("openssl")
    certs.mkdir(parents=True, exist_ok=True)
    ext = _write(
        certs / "ext.cnf",
        "[server]\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost\n"
        "[client]\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = clientAuth\n",
    )
    days = "3650"
    key_type = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]  # fast, no noise
    _run(
        [
            openssl,
            "req",
            "-x509",
            *key_type,
            "-nodes",
            "-sha256",
            "-days",
            days,
            "-subj",
            "/CN=dte-stream test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        log,
        certs,
    )
    for who, cn in (("server", "localhost"), ("client", "dte-test-client")):
        _run(
            [
                openssl,
                "req",
                *key_type,
                "-nodes",
                "-sha256",
                "-subj",
                f"/CN={cn}",
                "-keyout",
                f"{who}.key",
                "-out",
                f"{who}.csr",
            ],
            log,
            certs,
        )
        _run(
            [
                openssl,
                "x509",
                "-req",
                "-in",
                f"{who}.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                days,
                "-sha256",
                "-extfile",
                str(ext),
                "-extensions",
                who,
                "-out",
                f"{who}.crt",
            ],
            log,
            certs,
        )
    for key in certs.glob("*.key"):
        key.chmod(0o600)
    return certs / "ca.crt", certs / "client.crt", certs / "client.key"


def _start_mosquitto(state: Path, log: Path, detach: bool) -> Service:
    mosquitto = find_binary("mosquitto")
    passwd = find_binary("mosquitto_passwd")
    ca, cert, key = _make_certs(state / "certs", log)
    username, password = "dte", base64.urlsafe_b64encode(os.urandom(12)).decode()
    pwfile = state / "passwd"
    _run([passwd, "-c", "-b", str(pwfile), username, password], log, secret=password)
    pwfile.chmod(0o600)
    (state / "data").mkdir(exist_ok=True)
    plain, tls, auth = free_ports(3)
    conf = _write(
        state / "mosquitto.conf",
        f"""# generated by deploy/services/devservices.py
per_listener_settings true
user {_current_user()}
persistence true
persistence_location {state / "data"}/
autosave_interval 60
log_dest stdout
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
log_timestamp true
max_queued_messages 100000

# plain, anonymous
listener {plain} {LOOPBACK}
allow_anonymous true

# TLS, client certificate required
listener {tls} {LOOPBACK}
allow_anonymous true
cafile {ca}
certfile {state / "certs" / "server.crt"}
keyfile {state / "certs" / "server.key"}
require_certificate true
tls_version tlsv1.2

# user name and password, no anonymous clients
listener {auth} {LOOPBACK}
allow_anonymous false
password_file {pwfile}
""",
    )
    proc = _launch([mosquitto, "-c", str(conf)], log, state, detach=detach)
    return MosquittoService(
        name="mosquitto",
        url=f"mqtt://{LOOPBACK}:{plain}",
        port=plain,
        ports={"mqtt": plain, "mqtts": tls, "mqtt_auth": auth},
        tls_port=tls,
        auth_port=auth,
        ca_file=ca,
        cert_file=cert,
        key_file=key,
        username=username,
        password=password,
        process=proc,
        pid=proc.pid,
    )


def _http_service(
    name: str, http: int, proc: subprocess.Popen[bytes], ports: dict[str, int] | None = None
) -> Service:
    """A started service whose main port serves HTTP on the loopback address."""
    return Service(
        name=name,
        url=f"http://{LOOPBACK}:{http}",
        port=http,
        ports=ports or {"http": http},
        process=proc,
        pid=proc.pid,
    )


def _start_influxdb(state: Path, log: Path, detach: bool) -> Service:
    influxd = find_binary("influxd")
    http, rpc = free_ports(2)
    conf = _write(
        state / "influxdb.conf",
        f"""# generated by deploy/services/devservices.py
reporting-disabled = true
bind-address = "{LOOPBACK}:{rpc}"

[meta]
  dir = "{state / "meta"}"

[data]
  dir = "{state / "data"}"
  wal-dir = "{state / "wal"}"
  query-log-enabled = false
  wal-fsync-delay = "0s"

[coordinator]
  log-queries-after = "0s"

[retention]
  enabled = true

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "{LOOPBACK}:{http}"
  auth-enabled = false
  log-enabled = false
  max-body-size = 0

[continuous_queries]
  enabled = false
""",
    )
    proc = _launch([influxd, "-config", str(conf)], log, state, detach=detach)
    return _http_service("influxdb", http, proc, ports={"http": http, "rpc": rpc})


def _start_victoriametrics(state: Path, log: Path, detach: bool) -> Service:
    vm = find_binary("victoria-metrics")
    (http,) = free_ports(1)
    cmd = [
        vm,
        f"-httpListenAddr={LOOPBACK}:{http}",
        f"-storageDataPath={state / 'data'}",
        "-retentionPeriod=100y",
        "-memory.allowedPercent=10",
        "-search.latencyOffset=0s",
        "-search.disableCache",
        "-loggerLevel=INFO",
    ]
    proc = _launch(cmd, log, state, detach=detach)
    return _http_service("victoriametrics", http, proc)


def _start_alertmanager(state: Path, log: Path, detach: bool) -> Service:
    am = find_binary("prometheus-alertmanager")
    (http,) = free_ports(1)
    conf = _write(
        state / "alertmanager.yml",
        """# generated by deploy/services/devservices.py
route:
  receiver: default
  group_by: ['alertname']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: default
""",
    )
    cmd = [
        am,
        f"--config.file={conf}",
        f"--storage.path={state / 'data'}",
        f"--web.listen-address={LOOPBACK}:{http}",
        "--cluster.listen-address=",
        "--log.level=info",
    ]
    proc = _launch(cmd, log, state, detach=detach)
    return _http_service("alertmanager", http, proc)


def _start_prometheus(state: Path, log: Path, detach: bool) -> Service:
    prometheus = find_binary("prometheus")
    (http,) = free_ports(1)
    targets = state / "targets.json"
    _write(targets, "[]\n")
    conf = _write(
        state / "prometheus.yml",
        f"""# generated by deploy/services/devservices.py
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: dte-stream
    file_sd_configs:
      - files: ["{targets}"]
        refresh_interval: 1s
""",
    )
    cmd = [
        prometheus,
        f"--config.file={conf}",
        f"--storage.tsdb.path={state / 'data'}",
        f"--web.listen-address={LOOPBACK}:{http}",
        "--web.enable-lifecycle",
        "--log.level=info",
    ]
    proc = _launch(cmd, log, state, detach=detach)
    return _http_service("prometheus", http, proc)


def prometheus_targets(service: Service, targets: list[str], labels: dict[str, str] | None = None) -> None:
    """Point a Prometheus started here at ``targets`` (``host:port``); it re-reads the file at once."""
    if service.state_dir is None:
        raise DevServiceError("prometheus_targets() needs a Prometheus started by devservices")
    entry = {"targets": targets, "labels": labels or {}}
    path = service.state_dir / "targets.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([entry]))
    tmp.replace(path)


KAFKA_LOG4J2 = """# generated by deploy/services/devservices.py
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""

# small heap, one GC thread set; enough for tests on a 2-core shared machine
KAFKA_JVM_OPTS = [
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]


def _kafka_cluster_id() -> str:
    """A random KRaft cluster id (16 bytes, URL-safe base64), never starting with ``-``: the
    storage tool would read such an id as an option and refuse to format (1 start in 64 failed).

    >>> all(not _kafka_cluster_id().startswith("-") for _ in range(500))
    True
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _start_kafka(state: Path, log: Path, detach: bool) -> Service:
    java = java_binary()
    libs, version = kafka_jars()
    classpath = str(libs / "*")
    plain, controller, sasl, sasl_ssl = free_ports(4)
    ca, _, _ = _make_certs(state / "certs", log)
    # Kafka reads a PEM key store: the server's (PKCS#8) key followed by its certificate.
    keystore = _write(
        state / "certs" / "server-keystore.pem",
        (state / "certs" / "server.key").read_text() + (state / "certs" / "server.crt").read_text(),
        0o600,
    )
    username, password = "dte", base64.urlsafe_b64encode(os.urandom(12)).decode()
    scram_login = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    cluster_id = _kafka_cluster_id()
    log4j = _write(state / "log4j2.properties", KAFKA_LOG4J2)
    props = _write(
        state / "server.properties",
        f"""# generated by deploy/services/devservices.py (Kafka {version}, KRaft combined mode)
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{LOOPBACK}:{controller}
listeners=PLAINTEXT://{LOOPBACK}:{plain},CONTROLLER://{LOOPBACK}:{controller},\
SASL_PLAINTEXT://{LOOPBACK}:{sasl},SASL_SSL://{LOOPBACK}:{sasl_ssl}
advertised.listeners=PLAINTEXT://{LOOPBACK}:{plain},SASL_PLAINTEXT://{LOOPBACK}:{sasl},\
SASL_SSL://{LOOPBACK}:{sasl_ssl}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,\
SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={scram_login}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram_login}
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location={keystore}
log.dirs={state / "kraft-logs"}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
background.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.dedupe.buffer.size=8388608
log.retention.hours=168
""",
    )
    jvm = [java, *KAFKA_JVM_OPTS, f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath]
    # formatting is a short JVM run: C1 only starts faster
    _run(
        [
            *jvm,
            "-XX:TieredStopAtLevel=1",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(props),
            # the SCRAM user, created with Kafka's own tool as the storage is formatted
            "--add-scram",
            f"SCRAM-SHA-512=[name={username},password={password}]",
        ],
        log,
        state,
        secret=password,
    )
    proc = _launch([*jvm, "kafka.Kafka", str(props)], log, state, detach=detach)
    return KafkaService(
        name="kafka",
        url=f"{LOOPBACK}:{plain}",
        port=plain,
        ports={"plaintext": plain, "controller": controller, "sasl_plaintext": sasl, "sasl_ssl": sasl_ssl},
        controller_port=controller,
        cluster_id=cluster_id,
        version=version,
        sasl_port=sasl,
        sasl_ssl_port=sasl_ssl,
        ca_file=ca,
        username=username,
        password=password,
        process=proc,
        pid=proc.pid,
    )


_STARTERS = {
    "mosquitto": _start_mosquitto,
    "kafka": _start_kafka,
    "influxdb": _start_influxdb,
    "victoriametrics": _start_victoriametrics,
    "alertmanager": _start_alertmanager,
    "prometheus": _start_prometheus,
}


def start(
    name: str,
    state_dir: Path | str | None = None,
    *,
    timeout: float | None = None,
    detach: bool = False,
    attempts: int = 3,
) -> Service:
    """Start service `name` with its state in `state_dir` (wiped first) and wait until ready.

    Raises ServiceUnavailable if it is not installed, DevServiceError (with the tail of its log)
    if it does not come up. A port taken between choosing and binding it is retried."""
    check_installed(name)
    timeout = DEFAULT_TIMEOUTS[name] if timeout is None else timeout
    if state_dir is None:
        state_dir = tempfile.mkdtemp(prefix=f"dte-{name}-")
    state = Path(state_dir).resolve()
    for attempt in range(1, attempts + 1):
        if state.exists():
            shutil.rmtree(state)
        state.mkdir(parents=True)
        log = state / f"{name}.log"
        t0 = time.monotonic()
        service = _STARTERS[name](state, log, detach)
        service.state_dir, service.log_file = state, log
        if service.process is not None:
            service.command = _unwrapped(service.process.args)
        try:
            wait_ready(service, timeout)
        except DevServiceError as e:
            stop(service, timeout=5.0)
            text = log_tail(log, 200).lower()
            port_clash = "address already in use" in text or "address in use" in text
            if port_clash and attempt < attempts:
                continue
            raise e from None
        except BaseException:
            stop(service, timeout=5.0)
            raise
        service.startup_seconds = round(time.monotonic() - t0, 2)
        return service
    raise AssertionError("unreachable")


def external(name: str, address: str) -> Service:
    """Describe a server that runs elsewhere (from a DTE_TEST_* environment variable)."""
    address = address.strip()
    if name == "kafka":
        first = address.split(",")[0]
        host, _, port = first.rpartition(":")
        return KafkaService(
            name=name,
            url=address,
            host=host.strip("[]") or LOOPBACK,
            port=int(port or 9092),
            external=True,
        )
    url = address.rstrip("/")
    parts = urlsplit(url)
    if name == "mosquitto":
        if parts.scheme not in ("mqtt", "tcp", ""):
            raise DevServiceError(f"{ENV_VARS[name]} must be mqtt://host:port, not {address!r}")
        host = parts.hostname or LOOPBACK
        svc = MosquittoService(
            name=name,
            url=f"mqtt://{host}:{parts.port or 1883}",
            host=host,
            port=parts.port or 1883,
            external=True,
        )
        tls = os.environ.get(MQTT_TLS_ENV)
        if tls:
            tparts = urlsplit(tls)
            svc.tls_port = tparts.port or 8883
            svc.ca_file = Path(os.environ[MQTT_CA_ENV]) if os.environ.get(MQTT_CA_ENV) else None
            svc.cert_file = Path(os.environ[MQTT_CERT_ENV]) if os.environ.get(MQTT_CERT_ENV) else None
            svc.key_file = Path(os.environ[MQTT_KEY_ENV]) if os.environ.get(MQTT_KEY_ENV) else None
        auth = os.environ.get(MQTT_AUTH_ENV)
        if auth:
            aparts = urlsplit(auth)
            svc.auth_port = aparts.port or 1883
            svc.username = unquote(aparts.username) if aparts.username else None
            svc.password = unquote(aparts.password) if aparts.password else None
        return svc
    if name not in SERVICE_NAMES:
        raise DevServiceError(f"unknown service {name!r}")
    default_port = 443 if parts.scheme == "https" else 80
    return Service(
        name=name,
        url=url,
        host=parts.hostname or LOOPBACK,
        port=parts.port or default_port,
        external=True,
    )


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _cli_root() -> Path:
    return Path(os.environ.get("DTE_DEVSERVICES_DIR") or cache_dir() / "devservices")


def _cli_load(name: str) -> Service | None:
    desc = _cli_root() / name / "service.json"
    if not desc.exists():
        return None
    return service_from_json(json.loads(desc.read_text()))


def _cli_running(service: Service | None) -> bool:
    return (
        service is not None
        and service.pid is not None
        and _pid_alive(service.pid)
        and str(service.state_dir) in _pid_cmdline(service.pid)
    )


def _names(args: list[str], default_all: bool) -> list[str]:
    if not args or "all" in args:
        if not args and not default_all:
            raise SystemExit("name at least one service (or 'all'): " + " ".join(SERVICE_NAMES))
        return list(SERVICE_NAMES)
    unknown = [a for a in args if a not in SERVICE_NAMES]
    if unknown:
        raise SystemExit(f"unknown service(s) {unknown}; known: {' '.join(SERVICE_NAMES)} all")
    return args


def dataflow_env(service: Service) -> dict[str, str]:
    """What the ready dataflows (``dataflows/*.yaml``) read to find this server.

    Printed beside the tests' ``DTE_TEST_*`` variables, so that one
    ``eval "$(devservices.py start ...)"`` points both the tests and ``dte-stream run`` at it.
    """
    if service.name == "mosquitto":
        return {"DTE_MQTT_URL": service.url}
    if service.name == "kafka":
        return {"DTE_KAFKA_BOOTSTRAP": service.url}
    if service.name == "influxdb":
        return {"DTE_INFLUXDB_URL": service.url, "DTE_INFLUXDB_DATABASE": "dte"}
    return {}


def _print_env(service: Service) -> None:
    for key, value in {**service.env(), **dataflow_env(service)}.items():
        print(f"export {key}={value}")


def _masked(url: str | None) -> str | None:
    """``url`` with its password replaced by stars: status lines never show a secret."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":****@", 1)
    return parts._replace(netloc=netloc).geturl()


def _describe(service: Service) -> str:
    lines = [f"{service.name}: {service.url} (pid {service.pid})"]
    if isinstance(service, MosquittoService):
        lines.append(f"  tls  {service.tls_url}  ca={service.ca_file}")
        lines.append(f"       cert={service.cert_file} key={service.key_file}")
        lines.append(f"  auth {_masked(service.auth_url)}  (password: see `env`)")
    if isinstance(service, KafkaService):
        lines.append(f"  Kafka {service.version}, controller port {service.controller_port}")
        if service.sasl_port:
            lines.append(
                f"  SCRAM-SHA-512 user {service.username} (password: ****): SASL_PLAINTEXT port "
                f"{service.sasl_port}, SASL_SSL port {service.sasl_ssl_port} (ca {service.ca_file})"
            )
    lines.append(f"  log  {service.log_file}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Start/stop the real services for dte-stream's integration tests.",
        epilog="start prints `export DTE_TEST_...=...` lines: "
        'eval "$(python deploy/services/devservices.py start all)"',
    )
    parser.add_argument("command", choices=("start", "stop", "status", "env"))
    parser.add_argument("services", nargs="*", help=f"{' '.join(SERVICE_NAMES)} or all")
    parser.add_argument("--timeout", type=float, default=None, help="readiness timeout (s)")
    args = parser.parse_args(argv)
    rc = 0
    if args.command == "start":
        for name in _names(args.services, default_all=False):
            old = _cli_load(name)
            if _cli_running(old):
                assert old is not None
                print(f"{name} already running\n{_describe(old)}", file=sys.stderr)
                _print_env(old)
                continue
            try:
                svc = start(name, _cli_root() / name, timeout=args.timeout, detach=True)
            except DevServiceError as e:
                print(f"{name}: {e}", file=sys.stderr)
                rc = 1
                continue
            (_cli_root() / name / "service.json").write_text(json.dumps(svc.to_json(), indent=2))
            print(f"started in {svc.startup_seconds} s\n{_describe(svc)}", file=sys.stderr)
            _print_env(svc)
    elif args.command == "stop":
        for name in _names(args.services, default_all=True):
            svc = _cli_load(name)
            if svc is None:
                continue
            if _cli_running(svc):
                stop(svc)
                print(f"{name} stopped", file=sys.stderr)
            (_cli_root() / name / "service.json").unlink(missing_ok=True)
    else:
        for name in _names(args.services, default_all=True):
            svc = _cli_load(name)
            running = _cli_running(svc)
            if args.command == "env":
                if running and svc is not None:
                    _print_env(svc)
                continue
            if not running or svc is None:
                print(f"{name}: not running")
                continue
            try:
                check_ready(svc)
                health = "ready"
            except (OSError, DevServiceError, ValueError, struct.error) as e:
                health = f"NOT READY ({e})"
                rc = 1
            print(f"{_describe(svc)}\n  {health}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
