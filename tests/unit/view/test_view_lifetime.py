"""The view's writer process ends with the dataflow that started it, after writing what it was sent:
when the dataflow's process is killed (even while another process holds the pipe open), and when
a dataflow run in-process (``run_main``) reaches the end of its input."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.testing import run_main

from dte_stream.dataflow import build_flow
from dte_stream.spec import DataflowSpec, parse_spec
from dte_stream.view import TwinView

#: A dataflow's process in miniature: it starts a writer, sends two epochs of two twins, says so,
#: and waits to be killed. With ``hold``, a grandchild keeps the writer's stdin pipe open, so the
#: writer sees no end of file and must notice that its parent is gone.
PARENT = """
import subprocess, sys, time
import numpy as np
from dte_stream.alerts.rules import AlertEngine
from dte_stream.readings import ReadingBatch
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.twins.bank import TwinBank
from dte_stream.twins.routing import TypedBatch
from dte_stream.view.process import ViewProcess, _write_frame
from dte_stream.view.records import gather

spec = TwinTypeSpec.model_validate({"name": "room", "channels": {"temp": {"unit": "degC"}}})
bank, engine = TwinBank(spec), AlertEngine("room", ["temp"], spec.alerts)
view = ViewProcess.start({"data_dir": sys.argv[1], "kafka": None})
stdin = view._proc.stdin
for epoch in (1, 2):
    rb = ReadingBatch.from_columns(["r1", "r2"], ["temp", "temp"], [epoch * 10**9] * 2, [20.0 + epoch] * 2)
    bank.update(TypedBatch("room", rb, np.zeros(2, dtype=np.intp)), now_ns=epoch * 10**9)
    _write_frame(stdin, ("columns", 1, epoch * 10**9, [gather(bank, np.arange(2), engine)], []))
holder = None
if sys.argv[2] == "hold":
    holder = subprocess.Popen(["sleep", "600"], pass_fds=(stdin.fileno(),))
print(view._proc.pid, holder.pid if holder else 0, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie of a dead parent is reaped by init soon)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def _wait_gone(pid: int, limit_s: float = 120.0) -> bool:
    deadline = time.monotonic() + limit_s  # a liveness bound for a loaded machine, not a timing check
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("hold", ["hold", "plain"])
def test_a_writer_whose_dataflow_process_is_killed_writes_what_it_was_sent_and_ends(
    tmp_path: Path, hold: str
) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path), hold], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    writer_pid, holder_pid = map(int, parent.stdout.readline().split())
    try:
        assert not _gone(writer_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait_gone(writer_pid), "the writer outlived its dataflow's process"
    finally:
        for pid in (writer_pid, holder_pid):
            if pid and not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        parent.stdout.close()
    view = TwinView.open(tmp_path)
    for twin in ("r1", "r2"):
        record = view.get_twin(twin)
        assert record is not None, twin
        assert record["channels"]["temp"]["value"] == 22.0  # the last epoch sent
        assert record["updated_ns"] == 2 * 10**9
    view.close()


def _writers() -> set[int]:
    """This process's children that run the view's writer."""
    me = str(os.getpid())
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if stat[1] == me and b"dte_stream.view.process" in cmdline:
            found.add(int(proc.name))
    return found


def _spec(tmp_path: Path) -> DataflowSpec:
    source = tmp_path / "readings.jsonl"
    rows = [
        {"twin_id": f"pump-{i}", "channel": "temperature", "time_ns": (k + 1) * 10**9, "value": 20.0 + k}
        for k in range(3)
        for i in range(5)
    ]
    source.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    return parse_spec(
        {
            "name": "view_lifetime",
            "sources": [{"kind": "file", "path": str(source), "batch_lines": 5}],
            "twin_types": [{"name": "pump", "match": "pump.*", "channels": {"temperature": {}}}],
            "sinks": [{"kind": "local_store", "data_dir": str(tmp_path / "data")}],
        },
        env={},
    )


def test_an_in_process_dataflow_run_to_its_end_leaves_no_writer_process(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    before = _writers()
    run_main(build_flow(spec))
    started = _writers() - before
    assert all(_wait_gone(pid) for pid in started)  # it wrote the last changes and ended with it
    view = TwinView.open(tmp_path / "data")
    assert view.counts()["total"] == 5  # a writer process did write the view
    record = view.get_twin("pump-3")
    assert record is not None
    assert record["channels"]["temperature"]["value"] == 22.0
    view.close()


def test_an_in_process_dataflow_that_raises_leaves_no_writer_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dte_stream.twins.shard import TwinShard

    spec = _spec(tmp_path)
    calls = []
    on_batch = TwinShard.on_batch

    def failing(self: TwinShard, values: list[Any]) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a bug in a shard")
        return on_batch(self, values)

    monkeypatch.setattr(TwinShard, "on_batch", failing)
    before = _writers()
    with pytest.raises(RuntimeError, match=r"StatefulBatchLogic\.on_batch") as raised:
        run_main(build_flow(spec))
    del raised  # its traceback holds the shard's logic
    gc.collect()
    started = _writers() - before
    assert all(_wait_gone(pid) for pid in started), "the writer outlived the dataflow that raised"
    view = TwinView.open(tmp_path / "data")
    assert view.counts()["total"] >= 1  # what the first batch changed was sent, and written
    view.close()
