"""A failing command says why in one line: no traceback, no engine panic, no password."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

PUMP = {"name": "pump", "channels": {"temperature": {"unit": "degC"}}}


def _dte(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dte_stream", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "RUST_BACKTRACE": "1"},
        check=False,
    )


def _spec(tmp_path: Path, source: dict[str, object]) -> Path:
    path = tmp_path / "flow.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "failing",
                "sources": [source],
                "twin_types": [PUMP],
                "sinks": [{"kind": "local_store", "data_dir": str(tmp_path / "data")}],
            }
        )
    )
    return path


def _unreachable_mqtt() -> dict[str, object]:
    """An MQTT source whose broker is not there: its client fails inside the engine's build."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {
        "kind": "mqtt",
        "name": "plant",
        "url": f"mqtt://127.0.0.1:{port}",
        "subscriptions": [{"topic": "plant/#"}],
        "twin_type": "pump",
        "connect_timeout": "2s",
    }


def test_an_error_inside_the_engine_is_one_line_without_the_panic(tmp_path: Path) -> None:
    result = _dte("run", "--quiet", str(_spec(tmp_path, _unreachable_mqtt())), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dte-stream: error: ")
    assert "127.0.0.1" in lines[0]


def test_debug_shows_the_engine_report_and_the_traceback(tmp_path: Path) -> None:
    result = _dte("--debug", "run", "--quiet", str(_spec(tmp_path, _unreachable_mqtt())), cwd=tmp_path)
    assert result.returncode == 2
    assert "panicked" in result.stderr
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("dte-stream: error: ")


def test_a_missing_input_file_is_one_line(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"kind": "file", "path": str(tmp_path / "absent.jsonl"), "twin_type": "pump"})
    result = _dte("run", "--quiet", str(spec), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"dte-stream: error: source file: {tmp_path / 'absent.jsonl'} is not a file"
    ]


def test_validate_never_prints_the_password_of_a_url(tmp_path: Path) -> None:
    source = {
        "kind": "mqtt",
        "url": "mqtx://dte:s3cret-4711@broker.example:1883",
        "subscriptions": [{"topic": "plant/#"}],
        "twin_type": "pump",
    }
    result = _dte("validate", str(_spec(tmp_path, source)), cwd=tmp_path)
    assert result.returncode == 2
    assert "is not an MQTT url" in result.stderr
    assert "mqtx://dte:****@broker.example:1883" in result.stderr
    assert "s3cret-4711" not in result.stderr + result.stdout
