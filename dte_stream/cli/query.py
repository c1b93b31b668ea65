"""``dte-stream query``: print rows of the local store as a table, CSV or JSON lines.

Examples::

    dte-stream query --data-dir ./data --twin pump-1 --since 15m
    dte-stream query --data-dir ./data --channel temp --since 2026-01-02T00:00:00Z \
        --limit 0 --format csv
    dte-stream query --data-dir ./data --table alerts --format json

Without ``--limit`` the newest 20 matching rows are printed (oldest first); ``--limit 0``
prints all of them. Times are printed as RFC 3339 UTC with nanoseconds.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TextIO

import polars as pl

from dte_stream.errors import ConfigError, StoreError
from dte_stream.store.local import LocalStore
from dte_stream.store.schema import check_table_name
from dte_stream.times import format_time_ns, parse_time_or_relative

__all__ = ["FORMATS", "add_parser", "format_table", "run", "write_rows"]

#: Output formats of ``--format``.
FORMATS = ("table", "csv", "json")
DEFAULT_LIMIT = 20
#: Where `dte-stream demo` and the local_store sink write by default.
DEFAULT_DATA_DIR = "dte-data"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.9fZ"  # the same text as dte_stream.times.format_time_ns


def _time_argument(text: str) -> int:
    try:
        return parse_time_or_relative(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_data_dir_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--data-dir DIR`` (a Path, default ``./dte-data``); ``what`` says what the command finds there."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(DEFAULT_DATA_DIR),
        metavar="DIR",
        help=f"{what} (default: ./{DEFAULT_DATA_DIR})",
    )


def _limit_argument(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (0 prints all rows)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 prints all rows), got {value}")
    return value


def _table_argument(text: str) -> str:
    try:
        return check_table_name(text)
    except StoreError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``query`` subcommand to the ``dte-stream`` parser (handler: :func:`run`)."""
    parser = subparsers.add_parser(
        "query",
        help="print stored readings (or another table) from the local store",
        description=(
            "Print rows of a table of the local store, oldest first. Without --limit the "
            f"newest {DEFAULT_LIMIT} matching rows are printed; --limit 0 prints all."
        ),
        epilog=(
            "Times (--since, --until) are ISO 8601 with a timezone (2026-01-02T03:04:05Z), "
            "epoch seconds, or a duration ago (30s, 15m, 2h, 7d). --since is inclusive, "
            "--until exclusive."
        ),
    )
    add_data_dir_argument(
        parser, "directory of the local store, the --data-dir the dataflow or demo wrote to"
    )
    parser.add_argument(
        "--table",
        type=_table_argument,
        default="readings",
        help="table to read (default: readings)",
    )
    parser.add_argument("--twin", metavar="ID", help="only rows of this twin id")
    parser.add_argument("--channel", metavar="C", help="only rows of this channel")
    parser.add_argument("--since", type=_time_argument, metavar="T", help="rows at or after T")
    parser.add_argument("--until", type=_time_argument, metavar="T", help="rows before T")
    parser.add_argument(
        "--limit",
        type=_limit_argument,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"print the newest N matching rows (default: {DEFAULT_LIMIT}; 0: all)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table (aligned text), csv (with header) or json (one object per line)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run ``dte-stream query``; raises :class:`~dte_stream.errors.DteStreamError` on bad input."""
    if args.format not in FORMATS:
        raise ConfigError(f"unknown format {args.format!r}; use one of {', '.join(FORMATS)}")
    limit: int = args.limit
    if limit < 0:
        raise ConfigError(f"--limit must be >= 0 (0 prints all rows), got {limit}")
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise ConfigError(
            f"--since ({format_time_ns(args.since)}) must be before --until ({format_time_ns(args.until)})"
        )
    store = LocalStore(args.data_dir)
    frame = store.query(
        args.table,
        twin_id=args.twin,
        channel=args.channel,
        since_ns=args.since,
        until_ns=args.until,
        limit=limit or None,
    )
    if frame.height == 0:
        print(f"no rows match {_describe(args)}", file=sys.stderr)
        return 0
    try:
        write_rows(frame, args.format, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining
        # again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    if args.format == "table" and limit and frame.height == limit:
        print(f"(newest {limit} rows; --limit 0 prints all)", file=sys.stderr)
    return 0


def _describe(args: argparse.Namespace) -> str:
    """The filters of a query in words, for the "no rows match" message."""
    parts = [f"in table {args.table} of {args.data_dir}"]
    if args.twin is not None:
        parts.append(f"twin {args.twin!r}")
    if args.channel is not None:
        parts.append(f"channel {args.channel!r}")
    if args.since is not None:
        parts.append(f"since {format_time_ns(args.since)}")
    if args.until is not None:
        parts.append(f"until {format_time_ns(args.until)}")
    return parts[0] + (" with " + ", ".join(parts[1:]) if len(parts) > 1 else "")


def _with_text_times(frame: pl.DataFrame, *, with_ns: bool) -> pl.DataFrame:
    """``frame`` with ``time`` as RFC 3339 text (and ``time_ns`` after it when asked)."""
    exprs = [pl.col("time").dt.strftime(_TIME_FORMAT).alias("time")]
    if with_ns:
        exprs.append(pl.col("time").dt.epoch("ns").alias("time_ns"))
    rest = [c for c in frame.columns if c != "time"]
    return frame.select([*exprs, *rest])


def write_rows(frame: pl.DataFrame, fmt: str, out: TextIO) -> None:
    """Write ``frame`` (with a ``Datetime`` ``time`` column) to ``out`` in format ``fmt``.

    ``csv`` and ``json`` carry ``time`` as RFC 3339 text and ``time_ns`` as int64
    nanoseconds; floats keep full precision, NaN is ``NaN`` in CSV and ``null`` in JSON.
    """
    if fmt == "table":
        out.write(format_table(_with_text_times(frame, with_ns=False)))
    elif fmt == "csv":
        out.write(_with_text_times(frame, with_ns=True).write_csv())
    elif fmt == "json":
        out.write(_with_text_times(frame, with_ns=True).write_ndjson())
    else:
        raise ConfigError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_table(frame: pl.DataFrame) -> str:
    """An aligned text table of ``frame``: a header, a rule, one line per row.

    Numbers are right-aligned and printed with 6 significant digits, text left-aligned,
    nulls left blank. Every row is printed (no truncation).

    >>> print(format_table(pl.DataFrame({"twin_id": ["a", "pump-2"], "value": [1.5, 1013.25]})),
    ...       end="")
    twin_id    value
    -------  -------
    a            1.5
    pump-2   1013.25
    """
    columns: list[list[str]] = []
    right: list[bool] = []
    for name, series in frame.to_dict().items():
        columns.append([name, *(_cell(v) for v in series.to_list())])
        right.append(series.dtype.is_numeric())
    widths = [max(len(cell) for cell in col) for col in columns]
    lines = []
    for row in range(frame.height + 1):
        cells = [
            col[row].rjust(width) if is_right else col[row].ljust(width)
            for col, width, is_right in zip(columns, widths, right, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if row == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines) + "\n"
