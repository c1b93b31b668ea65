"""The whole dataflow on a file source: good readings stored, every bad input dead-lettered."""

from __future__ import annotations

from pathlib import Path

import orjson
import polars as pl
from bytewax.testing import run_main

from dte_stream.dataflow import build_flow
from dte_stream.spec import parse_spec
from dte_stream.store import LocalStore
from dte_stream.store.dead_letters import DeadLetterLog

GOOD = [
    {"twin_id": "pump-1", "channel": "temperature", "time": "2026-01-01T00:00:00Z", "value": 20.0},
    {"twin_id": "pump-1", "channel": "temp", "time": "2026-01-01T00:00:01Z", "value": 21.0},  # alias
    {"twin_id": 'pump 2, "east"=ü', "channel": "pressure", "time_ns": 1767225600 * 10**9, "value": 4.0},
]
BAD_LINES = [
    (b'{"twin_id": "pump-1", "channel": "temperature", "value": "hot"}', "value"),
    (b"not json at all", "invalid JSON"),
    (b'{"twin_id": "valve-1", "channel": "temperature", "time_ns": 1, "value": 1}', "matches no twin type"),
    (b'{"twin_id": "pump-1", "channel": "speed", "time_ns": 1, "value": 1}', "has no channel 'speed'"),
    (b'{"twin_id": "pump-1\\nx", "channel": "temperature", "time_ns": 1, "value": 1}', "control character"),
    (b'{"twin_id": "pump-1", "channel": "temperature", "time_ns": 1, "value": NaN}', "invalid JSON"),
]


def _spec(tmp: Path, path: Path, codec: str = "json") -> object:
    return parse_spec(
        {
            "name": "file_test",
            "sources": [{"kind": "file", "path": str(path), "codec": codec, "batch_lines": 2}],
            "twin_types": [
                {
                    "name": "pump",
                    "match": "pump.*",
                    "channels": {"temperature": {"aliases": ["temp"]}, "pressure": {}},
                }
            ],
            "sinks": [{"kind": "local_store", "data_dir": str(tmp / "data"), "flush_seconds": 60}],
        },
        env={},
    )


def test_good_readings_are_stored_and_each_bad_line_is_dead_lettered(tmp_path: Path) -> None:
    source = tmp_path / "readings.jsonl"
    lines = [orjson.dumps(r) for r in GOOD[:2]] + [b for b, _ in BAD_LINES] + [orjson.dumps(GOOD[2])]
    source.write_bytes(b"\n".join(lines) + b"\n")
    spec = _spec(tmp_path, source)
    run_main(build_flow(spec))  # type: ignore[arg-type]

    rows = LocalStore(tmp_path / "data").query("readings")
    assert rows.height == len(GOOD)
    assert sorted(rows["twin_id"].to_list()) == sorted(r["twin_id"] for r in GOOD)
    assert rows.filter(pl.col("channel") == "temperature").height == 2  # the alias mapped
    letters = DeadLetterLog(tmp_path / "data" / "dead_letters.jsonl").read()
    assert len(letters) == len(BAD_LINES)
    reasons = [letter.reason for letter in letters]
    for _, expected in BAD_LINES:
        assert any(expected in r for r in reasons), (expected, reasons)
    assert all(letter.source.startswith(("file:", "file")) for letter in letters)
