"""The view's writer process stays small: writing a SQLite view imports no dataframe library, no
engine and no driver.

Every dataflow process starts a writer, so what it imports is resident once more per process:
polars alone is about 30 MB there (the writer peaked at 66 MB instead of 35 MB when an import
chain, view.records -> twins.state_view -> batches, pulled polars in; docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from dte_stream.alerts.rules import AlertEngine
from dte_stream.readings import ReadingBatch
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.twins.bank import TwinBank
from dte_stream.twins.routing import TypedBatch
from dte_stream.view import TwinView
from dte_stream.view.process_child import write_frame
from dte_stream.view.records import gather

#: Modules the writer process needs none of: each is tens of MB resident, or more.
HEAVY = ("polars", "pyarrow", "pandas", "bytewax", "pydantic", "confluent_kafka", "river", "fastapi")

#: The writer process as ``python -m dte_stream.view.process`` runs it, its frames from a file:
#: what it imported once it has written them.
CHILD = """
import io, sys
import dte_stream.view.process  # the module `python -m` runs, with its package
from dte_stream.view.process_child import run_child

with open(sys.argv[1], "rb") as frames:
    code = run_child(frames, io.BytesIO())
print(code, " ".join(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_the_view_writer_process_imports_no_heavy_library(tmp_path: Path) -> None:
    spec = TwinTypeSpec.model_validate({"name": "room", "channels": {"temp": {"unit": "degC"}}})
    bank, engine = TwinBank(spec), AlertEngine("room", ["temp"], spec.alerts)
    rb = ReadingBatch.from_columns(["r1", "r2"], ["temp", "temp"], [10**9] * 2, [21.0, 22.0])
    bank.update(TypedBatch("room", rb, np.zeros(2, dtype=np.intp)), now_ns=10**9)
    frames = tmp_path / "frames"
    with frames.open("wb") as out:
        write_frame(out, {"data_dir": str(tmp_path), "kafka": None})
        write_frame(out, ("columns", 1, 10**9, [gather(bank, np.arange(2), engine)], []))

    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(frames)], capture_output=True, text=True, check=True
    )
    code, names = done.stdout.split(" ", 1)
    assert code == "0", done.stderr
    modules = set(names.split())
    assert {"sqlite3", "numpy"} <= modules
    assert [name for name in HEAVY if name in modules] == []
    view = TwinView.open(tmp_path)  # the frames were written: the imports above did the work
    record = view.get_twin("r2")
    assert record is not None
    assert record["channels"]["temp"]["value"] == 22.0
    view.close()
