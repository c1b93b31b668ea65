"""``dte-stream query``: formats, filters, limits, and clear messages for bad arguments.

The subcommand is driven through its own ``add_parser``/``run`` with a parser shaped like the
``dte-stream`` entry point, so these tests do not depend on its registration.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dte_stream.cli import query as query_cli
from dte_stream.errors import DteStreamError
from dte_stream.store import LocalStore
from dte_stream.times import format_time_ns, now_ns

DAY0 = 1_767_312_000_000_000_000  # 2026-01-02T00:00:00Z
NS_PER_S = 1_000_000_000


def dte_stream(argv: Sequence[str]) -> int:
    """Parse and run like ``dte_stream.cli.main.main``: DteStreamError -> message and 2."""
    parser = argparse.ArgumentParser(prog="dte-stream")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    query_cli.add_parser(sub)
    args = parser.parse_args(["query", *argv])
    try:
        code: int = args.handler(args)
    except DteStreamError as exc:
        print(f"dte-stream: error: {exc}", file=sys.stderr)
        return 2
    return code


def readings(n: int, start_ns: int = DAY0, step_ns: int = NS_PER_S) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "time": start_ns + np.arange(n, dtype=np.int64) * step_ns,
            "twin_id": [f"pump-{i % 2 + 1}" for i in range(n)],
            "twin_type": ["pump"] * n,
            "channel": ["temp"] * n,
            "value": [20.0 + i / 8 for i in range(n)],
            "unit": ["degC"] * n,
            "estimate": [20.123456789 + i for i in range(n)],
            "std": [math.nan] + [0.5] * (n - 1),
            "innovation": [None] * n,
            "nis": [1e-7] * n,
        },
        schema_overrides={"innovation": pl.Float64},
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    LocalStore(path, fsync=False).append("readings", readings(30))
    return path


def test_table_prints_newest_20_rows_aligned(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dte_stream(["--data-dir", str(data_dir)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == [
        "time", "twin_id", "twin_type", "channel", "value", "unit",
        "estimate", "std", "innovation", "nis", "flags", "anomaly_score",
    ]  # fmt: skip
    assert set(lines[1]) <= {"-", " "}
    assert len(lines) == 2 + 20
    assert lines[2].startswith(format_time_ns(DAY0 + 10 * NS_PER_S) + "  pump-1")
    assert lines[-1].startswith(format_time_ns(DAY0 + 29 * NS_PER_S))
    assert "23.625" in lines[-1]
    assert "49.1235" in lines[-1]
    assert "1e-07" in lines[-1]
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule line up
    assert "newest 20 rows" in err


def test_filters_and_limit(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    since = format_time_ns(DAY0 + 4 * NS_PER_S)
    until = str((DAY0 + 10 * NS_PER_S) // NS_PER_S)  # epoch seconds
    argv = ["--data-dir", str(data_dir), "--twin", "pump-1", "--channel", "temp"]
    assert dte_stream([*argv, "--since", since, "--until", until, "--limit", "0"]) == 0
    out, err = capsys.readouterr()
    rows = out.splitlines()[2:]
    assert [r.split()[0] for r in rows] == [format_time_ns(DAY0 + k * NS_PER_S) for k in (4, 6, 8)]
    assert err == ""
    assert dte_stream([*argv, "--limit", "2", "--format", "csv"]) == 0
    out, _ = capsys.readouterr()
    assert [r["time_ns"] for r in csv.DictReader(io.StringIO(out))] == [
        str(DAY0 + 26 * NS_PER_S),
        str(DAY0 + 28 * NS_PER_S),
    ]


def test_csv_has_header_and_full_precision(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dte_stream(["--data-dir", str(data_dir), "--format", "csv", "--limit", "0"]) == 0
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 30
    assert err == ""
    assert list(rows[0]) == [
        "time", "time_ns", "twin_id", "twin_type", "channel", "value", "unit",
        "estimate", "std", "innovation", "nis", "flags", "anomaly_score",
    ]  # fmt: skip
    assert rows[0]["time"] == format_time_ns(DAY0)
    assert rows[0]["time_ns"] == str(DAY0)
    assert float(rows[0]["estimate"]) == 20.123456789
    assert rows[0]["std"] == "NaN"
    assert rows[0]["innovation"] == ""


def test_json_lines(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dte_stream(["--data-dir", str(data_dir), "--format", "json", "--limit", "3"]) == 0
    out, _ = capsys.readouterr()
    objects = [json.loads(line) for line in out.splitlines()]
    assert [o["time_ns"] for o in objects] == [DAY0 + k * NS_PER_S for k in (27, 28, 29)]
    for o in objects:
        assert o["time"] == format_time_ns(o["time_ns"])
        assert o["innovation"] is None
    assert objects[0]["twin_id"] == "pump-2"
    assert objects[0]["value"] == 23.375


def test_json_turns_nan_into_null(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--data-dir", str(data_dir), "--format", "json", "--until", format_time_ns(DAY0 + 1)]
    assert dte_stream(argv) == 0
    out, _ = capsys.readouterr()
    (line,) = out.splitlines()
    assert json.loads(line)["std"] is None  # NaN is not JSON


def test_relative_since(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = now_ns()
    LocalStore(tmp_path, fsync=False).append(
        "readings", readings(4, start_ns=now - 3 * 3600 * NS_PER_S, step_ns=3600 * NS_PER_S)
    )  # 3 h, 2 h, 1 h and 0 h ago
    assert dte_stream(["--data-dir", str(tmp_path), "--since", "90m", "--format", "csv"]) == 0
    out, _ = capsys.readouterr()
    assert len(out.splitlines()) == 1 + 2


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_no_rows_match(data_dir: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    assert dte_stream(["--data-dir", str(data_dir), "--twin", "nobody", "--format", fmt]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("no rows match in table readings of")
    assert "twin 'nobody'" in err


def test_time_format_is_format_time_ns() -> None:
    times = [0, 1, DAY0, DAY0 + 123_456_789, 9_214_646_399_999_999_999]
    frame = pl.DataFrame({"time": times}).with_columns(pl.col("time").cast(pl.Datetime("ns", "UTC")))
    text = frame.select(pl.col("time").dt.strftime(query_cli._TIME_FORMAT))["time"].to_list()
    assert text == [format_time_ns(t) for t in times]


# ---------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--limit", "-1"], "argument --limit: must be >= 0"),
        (["--limit", "ten"], "argument --limit: 'ten' is not a whole number"),
        (["--since", "yesterday"], "argument --since: 'yesterday' is not a time: use an ISO 8601"),
        (
            ["--until", "2026-01-02T03:04:05"],
            "argument --until: '2026-01-02T03:04:05' is not a time",
        ),
        (["--format", "xml"], "argument --format: invalid choice: 'xml'"),
        (["--table", "../etc"], "argument --table: invalid table name '../etc'"),
    ],
)
def test_bad_arguments_give_one_clear_message(
    data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        dte_stream(["--data-dir", str(data_dir), *argv])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err
    assert "Traceback" not in err


def test_missing_data_dir_says_how_to_get_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nothing-here"
    assert dte_stream(["--data-dir", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"dte-stream: error: no data in {missing}: run `dte-stream demo --data-dir {missing}` "
        "first, or point --data-dir at the directory a dataflow writes to\n"
    )


def test_since_after_until_is_refused(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--data-dir", str(data_dir), "--since", "1h", "--until", "2h"]
    assert dte_stream(argv) == 2
    _, err = capsys.readouterr()
    assert err.startswith("dte-stream: error: --since (")
    assert "must be before --until" in err


def test_unknown_table_and_corrupt_file(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dte_stream(["--data-dir", str(data_dir), "--table", "alerts"]) == 2
    _, err = capsys.readouterr()
    assert "no table 'alerts'" in err
    assert "tables there: readings" in err
    bad = next(data_dir.glob("readings/date=*/part-*.parquet"))
    bad.write_bytes(b"not parquet")
    assert dte_stream(["--data-dir", str(data_dir)]) == 2
    _, err = capsys.readouterr()
    assert err.startswith(f"dte-stream: error: corrupt Parquet file {bad}")


def test_default_data_dir_is_the_demos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    LocalStore(Path("dte-data"), fsync=False).append("readings", readings(2))
    assert dte_stream(["--format", "csv"]) == 0
    out, _ = capsys.readouterr()
    assert len(out.splitlines()) == 3


def test_format_table_handles_nulls_and_alignment() -> None:
    frame = pl.DataFrame({"name": ["a", None], "x": [1.0, None], "n": [10, 2]})
    assert query_cli.format_table(frame).splitlines() == [
        "name  x   n",
        "----  -  --",
        "a     1  10",
        "          2",
    ]
