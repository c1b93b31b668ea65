"""bench_e2e's peak RSS per process: each of a variant's processes is named and measured."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


def _bench() -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("bench_e2e")


def test_each_process_of_a_tree_is_named_with_its_peak(tmp_path: Path) -> None:
    bench = _bench()
    script = tmp_path / "e2e_pipes.py"
    script.write_text("import sys, time\nsys.stdout.write('up\\n'); sys.stdout.flush(); time.sleep(60)\n")
    writer = "import sys, time; print('up', flush=True); time.sleep(60)"
    procs = [
        subprocess.Popen([sys.executable, str(script), "bare", "--topic", "t"], stdout=subprocess.PIPE),
        # named as the view's writer is started (python -m dte_stream.view.process), not run as it
        subprocess.Popen(
            [sys.executable, "-c", writer, "-m", "dte_stream.view.process"], stdout=subprocess.PIPE
        ),
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline() == b"up\n"
        found = bench.process_hwm_kb([p.pid for p in procs])
        assert {pid: label for pid, (label, _) in found.items()} == {
            procs[0].pid: "e2e_pipes.py bare",
            procs[1].pid: "view writer",
        }
        assert all(kb > 1000 for _, kb in found.values())  # an interpreter is some MB
        assert bench.tree_hwm_kb([p.pid for p in procs]) == sum(kb for _, kb in found.values())
    finally:
        for p in procs:
            p.kill()
            p.wait()
            assert p.stdout is not None
            p.stdout.close()
