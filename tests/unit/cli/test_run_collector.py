"""``dte-stream run`` tunes the cyclic collector before the dataflow starts (``cli/run.py``)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_dataflow_process_freezes_start_up_and_collects_the_young_less_often() -> None:
    # In a fresh interpreter: the freeze and the thresholds belong to the whole process.
    code = (
        "import gc, json\n"
        "from dte_stream.cli.run import YOUNG_THRESHOLD, _freeze_heap\n"
        "before = gc.get_threshold()\n"
        "_freeze_heap()\n"
        "print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count(), YOUNG_THRESHOLD]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after, frozen, young = json.loads(out)
    assert young == 10_000
    assert after == [young, *before[1:]]  # the older generations keep Python's thresholds
    assert frozen > 10_000  # the objects of start-up (modules, classes) are out of the collector
