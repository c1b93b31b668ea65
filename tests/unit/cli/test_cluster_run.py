"""``dte-stream run --processes N``: a Bytewax cluster on this host, its recovery layout, its errors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from dte_stream.connectors.simulator.source import twin_ids
from dte_stream.twins.routing import shard_of

SPEC = (
    "name: cluster\n"
    "sources: [{kind: simulator, twin_type: gauge, twins: 40, ticks: 25, rate: 0,"
    " start: '2026-01-01T00:00:00Z'}]\n"
    "twin_types: [{name: gauge, channels: {level: {}, humidity: {}}}]\n"
    "sinks: [{kind: local_store, data_dir: DATA}]\n"
    "engine: {epoch_seconds: 0.2}\n"
)


def _dte(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dte_stream", *args], capture_output=True, text=True, timeout=180, check=False
    )


def test_two_processes_store_every_reading_once_and_keep_one_recovery_partition_each(tmp_path: Path) -> None:
    spec = tmp_path / "flow.yaml"
    spec.write_text(SPEC.replace("DATA", str(tmp_path / "data")))
    recovery = tmp_path / "recovery"
    run = _dte("run", str(spec), "--processes", "2", "--recovery-dir", str(recovery))
    assert run.returncode == 0, run.stderr
    assert "starting 2 processes" in run.stderr
    summaries = re.findall(r"\[process (\d) of 2\]: finished after [\d.]+ s: ([\d,]+) readings", run.stderr)
    assert sorted(i for i, _ in summaries) == ["0", "1"], run.stderr
    processed = [int(n.replace(",", "")) for _, n in summaries]
    assert sum(processed) == 40 * 25 * 2  # each reading went through one shard of one process
    # The 8 shards are spread evenly: process P (its one worker) holds shards P, P + 2, ...
    held = dict(re.findall(r"\[process (\d) of 2\]: finished after .*?, ([\d,]+) twins", run.stderr))
    ids = twin_ids("gauge", 40)
    for process in (0, 1):
        assert int(held[str(process)]) == sum(shard_of(t, 8) % 2 == process for t in ids), run.stderr
    rows = pl.read_parquet(tmp_path / "data" / "readings" / "**" / "*.parquet")
    assert rows.height == 40 * 25 * 2
    assert rows.select("twin_id", "channel", "time").n_unique() == rows.height
    parts = sorted(p.relative_to(recovery).as_posix() for p in recovery.rglob("part-*.sqlite3"))
    assert parts == ["process-0/part-0.sqlite3", "process-1/part-1.sqlite3"]
    # Another cluster size, or one process, cannot take this state over.
    for args, message in (
        (["--processes", "3"], "was made for 2 processes, not 3"),
        ([], "holds the state of a cluster of processes"),
    ):
        refused = _dte("run", str(spec), "--recovery-dir", str(recovery), *args)
        assert refused.returncode == 2
        assert message in refused.stderr
        assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--addresses", "127.0.0.1:7000,127.0.0.1:7001"], "--addresses and --process-id go together"),
        (["--addresses", "127.0.0.1:7000", "--process-id", "1"], "--process-id must be 0..0"),
        (["--addresses", "nohost", "--process-id", "0"], "'nohost' is not host:port"),
        (["--processes", "2", "--addresses", "a:1,b:2", "--process-id", "0"], "not both"),
    ],
)
def test_bad_cluster_arguments_give_a_clear_message(tmp_path: Path, args: list[str], message: str) -> None:
    spec = tmp_path / "flow.yaml"
    spec.write_text(SPEC.replace("DATA", str(tmp_path / "data")))
    res = _dte("run", str(spec), *args)
    assert res.returncode == 2
    assert message in res.stderr


def test_a_cluster_folder_from_before_the_shard_placement_is_refused(tmp_path: Path) -> None:
    from dte_stream.cli.cluster import check_recovery_layout
    from dte_stream.errors import ConfigError

    (tmp_path / "cluster.txt").write_text("processes 2\n")  # what older versions wrote
    with pytest.raises(ConfigError, match="older dte-stream that named a cluster's shards differently"):
        check_recovery_layout(tmp_path, 2)


def test_sigterm_to_the_whole_process_group_drains_each_process_once(tmp_path: Path) -> None:
    """Ctrl-C in a terminal or ``kill -TERM -PGID`` signals the launcher's whole group; each child
    must see one stop request (drain), not two (stop at once, which aborted a child before)."""
    spec = tmp_path / "flow.yaml"
    endless = SPEC.replace("ticks: 25, rate: 0", "ticks: 1000000, rate: 20")
    spec.write_text(endless.replace("DATA", str(tmp_path / "data")))
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "dte_stream", "run", str(spec), "--processes", "2",
             "--recovery-dir", str(tmp_path / "recovery")],
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not list((tmp_path / "data").glob("readings/**/*.parquet")):
                assert launcher.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            os.killpg(launcher.pid, signal.SIGTERM)
            code = launcher.wait(timeout=120)
        finally:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
    text = log.read_text()
    assert code == 0, text
    assert text.count("SIGTERM received: draining") == 2, text  # one per child, none twice
    assert "received again" not in text, text
    summaries = re.findall(r"\[process (\d) of 2\]: stopped after", text)
    assert sorted(summaries) == ["0", "1"], text
    rows = pl.read_parquet(tmp_path / "data" / "readings" / "**" / "*.parquet")
    assert rows.height > 0
    assert rows.select("twin_id", "channel", "time").n_unique() == rows.height


def test_every_failed_process_is_reported_and_a_killed_one_is_named_the_cause(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Process 1 is killed; process 0 fails later. When both exits fall between two polls of the
    launcher (here every pause of its loop lasts until both children have ended), the killed one
    is still the cause it reports, though process 0 comes first in its loop."""
    from dte_stream.cli import cluster

    scripts = [
        "import time; time.sleep(2); raise SystemExit(1)",  # a peer failing after the kill
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
    ]
    monkeypatch.setattr(cluster, "child_argv", lambda argv, addresses, i: [sys.executable, "-c", scripts[i]])
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(cluster.subprocess, "Popen", popen)
    monkeypatch.setattr(cluster.time, "sleep", lambda _s: [p.wait() for p in started])
    code = cluster.run_cluster(["run", "flow.yaml"], 2)
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGKILL
    assert err.index("process 1 exited with -9") < err.index("process 0 exited with"), err


def test_failures_found_in_one_poll_put_a_killed_process_first() -> None:
    from dte_stream.cli.cluster import _new_failures

    class Child:
        def __init__(self, rc: int | None) -> None:
            self.rc = rc

        def poll(self) -> int | None:
            return self.rc

    children: list[Any] = [Child(1), Child(None), Child(-9), Child(0), Child(-15)]
    reported: set[int] = set()
    assert _new_failures(children, reported) == [(2, -9), (4, -15), (0, 1)]
    assert _new_failures(children, reported) == []  # each failure once
    children[1].rc = 3
    assert _new_failures(children, reported) == [(1, 3)]
