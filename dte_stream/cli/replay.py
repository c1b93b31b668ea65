"""``dte-stream replay SPEC --input FILE.csv|FOLDER ... --output OUT.csv``: history through a spec's twins."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dte_stream.cli.progress import Progress
from dte_stream.metrics import METRICS
from dte_stream.spec import load_spec
from dte_stream.twins.flags import ANOMALY

__all__ = ["add_parser"]


def _run(args: argparse.Namespace) -> int:
    from dte_stream.replay import dead_letters_path, replay

    spec = load_spec(args.spec)
    METRICS.reset()
    options = {"twin_type": args.twin_type, "twin_id": args.twin, "channel": args.channel}
    if args.quiet:
        result = replay(spec, args.input, args.output, **options)
    else:
        with Progress():
            result = replay(spec, args.input, args.output, **options)
    frame = result.frame
    flagged = int(((frame["flags"] & ANOMALY) > 0).sum()) if frame.height else 0
    rate = result.readings / max(result.seconds, 1e-9)
    print(
        f"dte-stream: replayed {result.readings:,} readings of {result.twins:,} twins "
        f"in {result.seconds:.2f} s "
        f"({rate:,.0f} readings/s); {flagged:,} at or above the anomaly level; "
        f"{result.stale_events:,} stale-sensor events; "
        f"{len(result.dead_letters):,} dead letters",
        file=sys.stderr,
    )
    print(f"dte-stream: output in {args.output}", file=sys.stderr)
    if result.dead_letters:
        print(f"dte-stream: dead letters in {dead_letters_path(args.output)}", file=sys.stderr)
    if args.plot is not None:
        from dte_stream.plots import plot_replay

        names = ", ".join(p.name for p in args.input)
        plot_replay(frame, args.plot, title=f"{names} through {spec.name}")
        print(f"dte-stream: plot in {args.plot}", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="replay CSVs of readings (files or folders) through a spec's twins, in event time",
        description=(
            "Replay CSVs (timestamp,value rows of one sensor each, or readings with twin_id and "
            "channel columns; files or folders of them) through the twin shards of SPEC as fast as "
            "possible, in event time; many series replay together as many twins. Writes one row per "
            "reading with estimate, std, innovation, NIS, anomaly_score, flags and every optional "
            "output of the twin type."
        ),
    )
    p.add_argument("spec", help="path of the YAML spec (its sources and sinks are not used)")
    p.add_argument(
        "--input",
        required=True,
        type=Path,
        nargs="+",
        help="CSV files of readings, or folders of them (each one-sensor file is one twin)",
    )
    p.add_argument("--output", required=True, type=Path, help="CSV to write")
    p.add_argument("--twin-type", help="twin type of the readings (default: the spec's first)")
    p.add_argument("--twin", help="twin id for one one-sensor CSV (default: the input file's name)")
    p.add_argument("--channel", help="channel for a one-sensor CSV (default: the twin type's first)")
    p.add_argument("--plot", type=Path, help="also draw readings, estimate band and anomalies to this PNG")
    p.add_argument("--quiet", action="store_true", help="no progress, only the summary")
    p.set_defaults(handler=_run)
