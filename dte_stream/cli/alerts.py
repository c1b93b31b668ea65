"""``dte-stream alerts``: list the alerts recorded in the local store, acknowledge one.

Examples::

    dte-stream alerts list --data-dir ./data                       # firing first, newest first
    dte-stream alerts list --data-dir ./data --state firing --format json
    dte-stream alerts list --data-dir ./data --twin pump-1
    dte-stream alerts ack --data-dir ./data pump-1/overheat --by ana
    dte-stream alerts ack --data-dir ./data --firing --twin pump-1 --by ana   # all it has firing

``ack`` records the acknowledgement in the ``alerts`` table and tells a running dataflow
(``DATA_DIR/alert_acks.jsonl``), so it stops re-notifying.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

import polars as pl

from dte_stream.alerts.store import AlertStateFilter, acknowledge, alert_table
from dte_stream.cli.query import add_data_dir_argument, format_table
from dte_stream.errors import ConfigError
from dte_stream.times import format_time_ns

__all__ = ["FORMATS", "STATES", "add_parser", "default_ack_by", "run_ack", "run_list", "write_alerts"]

#: Output formats of ``alerts list --format``.
FORMATS = ("table", "json")
#: Values of ``alerts list --state``.
STATES = ("firing", "resolved", "all")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.9fZ"  # the same text as dte_stream.times.format_time_ns
_TIME_COLUMNS = ("since", "ended", "acked_at", "last_event")
_TABLE_COLUMNS = ("alert_id", "state", "severity", "since", "acked_by", "events", "value", "message")


def default_ack_by() -> str:
    """Who acknowledges when ``--by`` is not given: ``$USER``, else ``cli``."""
    return os.environ.get("USER") or "cli"


def _data_dir_argument(parser: argparse.ArgumentParser) -> None:
    add_data_dir_argument(parser, "directory of the local store the dataflow writes to")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``alerts`` subcommand (``list``, ``ack``) to the ``dte-stream`` parser."""
    parser = subparsers.add_parser(
        "alerts",
        help="list recorded alerts, acknowledge one",
        description="The alerts recorded in the local store's alerts table.",
    )
    actions = parser.add_subparsers(dest="alerts_command", metavar="ACTION")
    actions.required = True

    listing = actions.add_parser(
        "list",
        help="the current state of every alert",
        description=(
            "One line per alert: its latest state (an acknowledged alert is firing with acked_by "
            "set). Firing alerts first, then the newest first."
        ),
    )
    _data_dir_argument(listing)
    listing.add_argument("--state", choices=STATES, default="all", help="only alerts in this state")
    listing.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table (aligned text) or json (one object per line)",
    )
    listing.add_argument("--twin", metavar="ID", help="only alerts of this twin id")
    listing.set_defaults(handler=run_list)

    ack = actions.add_parser(
        "ack",
        help="acknowledge a firing alert (or every one with --firing)",
        description=(
            "Record that someone took a firing alert: an acknowledged event in the alerts table, "
            "and a line a running dataflow reads so that it stops re-notifying."
        ),
    )
    _data_dir_argument(ack)
    ack.add_argument(
        "alert_id",
        metavar="ID",
        nargs="?",
        help="the alert id, TWIN_ID/RULE (see `dte-stream alerts list`); or --firing",
    )
    ack.add_argument(
        "--firing",
        action="store_true",
        help="every firing alert that nobody has acknowledged yet (with --twin: of that twin)",
    )
    ack.add_argument("--twin", metavar="ID", help="with --firing: only the alerts of this twin id")
    ack.add_argument("--by", metavar="NAME", help="who takes the alert (default: $USER, else 'cli')")
    ack.set_defaults(handler=run_ack)


def write_alerts(table: pl.DataFrame, fmt: str, out: TextIO) -> None:
    """Write an :func:`~dte_stream.alerts.store.alert_table` frame to ``out`` as ``table`` or ``json``.

    ``table`` shows the main columns aligned, times as RFC 3339 UTC, with control characters
    of stored text replaced (a message cannot move the terminal cursor). ``json`` is one
    object per alert with every column; times as RFC 3339 text and ``<name>_ns`` nanoseconds.
    """
    if fmt == "table":
        text = [c for c, dtype in table.schema.items() if dtype == pl.String]
        shown = table.with_columns(
            pl.col(text).str.replace_all(r"[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]", "\ufffd"),
            pl.col(_TIME_COLUMNS).dt.strftime(_TIME_FORMAT),
        ).select(_TABLE_COLUMNS)
        out.write(format_table(shown))
    elif fmt == "json":
        nanos = [pl.col(c).dt.epoch("ns").alias(f"{c}_ns") for c in _TIME_COLUMNS]
        out.write(table.with_columns(*nanos, pl.col(_TIME_COLUMNS).dt.strftime(_TIME_FORMAT)).write_ndjson())
    else:
        raise ConfigError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def run_list(args: argparse.Namespace) -> int:
    """Run ``dte-stream alerts list``; raises :class:`~dte_stream.errors.DteStreamError` on bad input."""
    if args.format not in FORMATS:
        raise ConfigError(f"unknown format {args.format!r}; use one of {', '.join(FORMATS)}")
    state: AlertStateFilter = args.state
    table = alert_table(args.data_dir, state, twin_id=args.twin)
    if table.height == 0:
        print(_nothing(args), file=sys.stderr)
        return 0
    try:
        write_alerts(table, args.format, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


def _nothing(args: argparse.Namespace) -> str:
    """The message when the listing is empty: nothing recorded, or nothing matches the filters."""
    filters = []
    if args.state != "all":
        filters.append(f"state {args.state}")
    if args.twin is not None:
        filters.append(f"twin {args.twin!r}")
    if not filters:
        return f"no alerts recorded in {args.data_dir}"
    return f"no alerts with {', '.join(filters)} in {args.data_dir}"


def run_ack(args: argparse.Namespace) -> int:
    """Run ``dte-stream alerts ack``; raises :class:`~dte_stream.errors.DteStreamError` when refused."""
    by = args.by if args.by is not None else default_ack_by()
    if args.firing == (args.alert_id is not None):
        raise ConfigError("name one alert id, or --firing for every unacknowledged firing alert")
    if args.twin is not None and not args.firing:
        raise ConfigError("--twin goes with --firing; an alert id already names its twin")
    if args.alert_id is not None:
        ids = [args.alert_id]
    else:
        firing = alert_table(args.data_dir, "firing", twin_id=args.twin).filter(pl.col("acked_by").is_null())
        ids = firing["alert_id"].to_list()
        if not ids:
            print(_nothing_to_ack(args), file=sys.stderr)
            return 0
    for alert_id in ids:
        event = acknowledge(args.data_dir, alert_id, by)
        print(f"acknowledged {event.alert_id} by {event.acked_by} at {format_time_ns(event.time_ns)}")
    return 0


def _nothing_to_ack(args: argparse.Namespace) -> str:
    of_twin = f" of twin {args.twin!r}" if args.twin is not None else ""
    return f"no unacknowledged firing alerts{of_twin} in {args.data_dir}: nothing to acknowledge"
