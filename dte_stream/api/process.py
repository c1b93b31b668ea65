"""``run --http`` and ``demo --http``: the API in a process of its own, beside the dataflow.

Serving a request is Python work (routing, pydantic, JSON, SQLite reads); in the dataflow's
process it holds the GIL the shards need, so 20 requests a second cost the dataflow several per
cent of its throughput (docs/benchmarks.md). :class:`ApiProcess` therefore binds the port in the
dataflow's process (a port in use is one clear error before the dataflow starts) and hands the
socket to a child (``python -m dte_stream.api.process``) that serves the whole app there: the
API reads the twin view, the local store and the tokens from files, which any process can.

Only ``/readyz`` and ``/metrics`` describe the dataflow's process itself. The dataflow's process
answers them on a small private server on the loopback interface (an ephemeral port; standard
library, a thread that runs only when asked), and the child's routes pass them on
(:func:`dte_stream.api.health`, ``ApiContext.ops_url``). ``/healthz`` is the child's own.

The child runs in its own session (Ctrl-C at a terminal reaches the dataflow, which stops it when
it has drained), ends on SIGTERM, and ends by itself when the dataflow's process goes away (its
stdin closes).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from dte_stream.errors import ConfigError
from dte_stream.readiness import READINESS, Readiness

__all__ = ["ApiProcess", "OpsServer"]

log = logging.getLogger(__name__)

#: How long :meth:`ApiProcess.start` waits for the child to build its app.
START_TIMEOUT_S = 60.0


class _OpsHandler(BaseHTTPRequestHandler):
    server: OpsServer

    def do_GET(self) -> None:  # the standard library's name
        from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

        from dte_stream.api.health import ready_out
        from dte_stream.metrics import exposition

        if self.path == "/metrics":
            status, kind, body = 200, CONTENT_TYPE_PLAIN_0_0_4, bytes(exposition())
        elif self.path == "/readyz":
            ready = self.server.readiness.status()
            status, kind = (200 if ready.ready else 503), "application/json"
            body = json.dumps(ready_out(ready).model_dump()).encode()
        else:
            status, kind, body = 404, "text/plain", b"not found"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the standard library's name
        pass


class OpsServer(ThreadingHTTPServer):
    """``/readyz`` and ``/metrics`` of this process on ``127.0.0.1`` (an ephemeral port) for the API."""

    daemon_threads = True

    def __init__(self, readiness: Readiness = READINESS) -> None:
        super().__init__(("127.0.0.1", 0), _OpsHandler)
        self.readiness = readiness
        self._thread = threading.Thread(target=self.serve_forever, name="dte-ops", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class ApiProcess:
    """The app served by a child process on ``host:port``; ``with ApiProcess(...):`` serves meanwhile.

    ``config`` is what the child builds its :class:`~dte_stream.api.app.ApiContext` from:
    ``spec`` (the dataflow's :class:`~dte_stream.spec.DataflowSpec`, pickled with its secrets,
    or None), ``data_dir`` and ``tokens_file``.
    """

    def __init__(self, config: dict[str, Any], host: str, port: int) -> None:
        from dte_stream.api.server import bind

        self.host = host
        self.config = config
        self._socket = bind(host, port)
        self.port: int = self._socket.getsockname()[1]
        self._ops: OpsServer | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_S) -> ApiProcess:
        """Start the child; returns once its app is built (it then accepts on the bound socket)."""
        from dte_stream.logs import json_logs

        self._ops = OpsServer().start()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the dte_stream this process runs
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        config = {
            **self.config,
            "fd": self._socket.fileno(),
            "ops_url": self._ops.url,
            "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower(),
            "log_format": "json" if json_logs() else "text",
        }
        self._proc = proc = subprocess.Popen(
            [sys.executable, "-m", "dte_stream.api.process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            pass_fds=(self._socket.fileno(),),
            start_new_session=True,
        )
        if proc.stdin is None or proc.stdout is None:
            raise ConfigError("the HTTP API's process has no pipes")
        proc.stdin.write(base64.b64encode(pickle.dumps(config)) + b"\n")
        proc.stdin.flush()
        answer: list[bytes] = []
        reader = threading.Thread(target=lambda: answer.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        line = answer[0].decode(errors="replace").strip() if answer else ""
        if line != "ready":
            self.stop()
            raise ConfigError(f"the HTTP API at {self.url} did not start: {line or 'no answer'}")
        log.info("serving HTTP at %s (/healthz, /readyz, /metrics, /api/v1/docs)", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the child (SIGTERM: it finishes the requests in flight), the ops server, the socket."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for stream in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):
                    if stream is not None:
                        stream.close()
        if self._ops is not None:
            self._ops.stop()
            self._ops = None
        with contextlib.suppress(OSError):
            self._socket.close()

    def __enter__(self) -> ApiProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _child() -> int:
    from dte_stream.api.app import ApiContext, create_app
    from dte_stream.api.server import uvicorn_server
    from dte_stream.errors import DteStreamError
    from dte_stream.logs import configure

    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed goes to stderr
    config = pickle.loads(base64.b64decode(sys.stdin.buffer.readline()))  # from our own parent
    configure(config.get("log_level", "warning"), config.get("log_format", "text"))
    sock = socket.socket(fileno=config["fd"])
    try:
        context = ApiContext(
            spec=config.get("spec"),
            data_dir=Path(config["data_dir"]) if config.get("data_dir") else None,
            tokens_file=Path(config["tokens_file"]) if config.get("tokens_file") else None,
            ops_url=config["ops_url"],
        )
        app = create_app(context)
    except DteStreamError as exc:
        out.write(f"{exc}\n")
        out.flush()
        return 1
    server = uvicorn_server(app, "warning")

    def parent_gone() -> None:
        sys.stdin.buffer.read()  # returns when the parent closes the pipe or ends
        server.should_exit = True

    threading.Thread(target=parent_gone, daemon=True).start()
    out.write("ready\n")
    out.flush()
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(_child())
