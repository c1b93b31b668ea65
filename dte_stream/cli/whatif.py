"""``dte-stream whatif``: simulate a twin forward from its current state in the view.

Examples::

    dte-stream whatif pump-0007 --data-dir ./data --horizon 1h --step 1m
    dte-stream whatif room-1 --control heater=35 --horizon 2h --plot room-1.png
    dte-stream whatif room-1 --control heater=0@600 --hold humidity=60 --silent temp@1800 --format json

``--control NAME=VALUE[@SECONDS]`` sets a control input from that time on (repeatable: a
schedule); ``--hold NAME=VALUE`` reads an observed channel at a fixed value every step;
``--silent NAME[@SECONDS]`` stops a sensor. See docs/whatif.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from dte_stream.cli.query import add_data_dir_argument
from dte_stream.errors import ConfigError
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.times import format_time_ns, parse_duration_ns
from dte_stream.view.store import TwinView
from dte_stream.whatif import Scenario, WhatIf, simulate

__all__ = ["add_parser", "parse_scenario", "plot_whatif"]


def _seconds(text: str) -> float:
    try:
        return parse_duration_ns(text) / 1e9
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``whatif`` subcommand."""
    parser = subparsers.add_parser(
        "whatif",
        help="simulate a twin forward from its state in the view",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("twin", help="the twin id")
    add_data_dir_argument(parser, "the data directory with the twin view")
    parser.add_argument(
        "--horizon", type=_seconds, default=3600.0, help="how far ahead (e.g. 30m, 2h; default 1h)"
    )
    parser.add_argument("--step", type=_seconds, default=60.0, help="time between points (default 1m)")
    parser.add_argument("--samples", type=int, default=500, help="sampled trajectories (default 500)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (repeatable runs)")
    parser.add_argument(
        "--control", action="append", default=[], metavar="NAME=VALUE[@S]", help="control input"
    )
    parser.add_argument(
        "--hold", action="append", default=[], metavar="NAME=VALUE", help="channel read at a value"
    )
    parser.add_argument("--silent", action="append", default=[], metavar="NAME[@S]", help="sensor that stops")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG", help="draw the bands to this file")
    parser.set_defaults(handler=_run)


def parse_scenario(controls: list[str], holds: list[str], silents: list[str]) -> Scenario:
    """The scenario of the command-line flags; ConfigError naming a malformed one."""
    schedule: dict[str, list[tuple[float, float]]] = {}
    for item in controls:
        name, sep, rest = item.partition("=")
        value, _, at = rest.partition("@")
        try:
            schedule.setdefault(name, []).append((_at(at), float(value)))
        except ValueError:
            sep = ""
        if not sep or not name:
            raise ConfigError(
                f"--control {item!r}: write NAME=VALUE or NAME=VALUE@SECONDS, e.g. heater=35@600"
            )
    hold: dict[str, float] = {}
    for item in holds:
        name, sep, value = item.partition("=")
        try:
            hold[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise ConfigError(f"--hold {item!r}: write NAME=VALUE, e.g. temperature=80")
    silent: dict[str, float] = {}
    for item in silents:
        name, _, at = item.partition("@")
        try:
            silent[name] = _at(at)
        except ValueError:
            raise ConfigError(
                f"--silent {item!r}: write NAME or NAME@SECONDS, e.g. temperature@600"
            ) from None
    return Scenario(schedule, hold, silent)


def _at(text: str) -> float:
    return parse_duration_ns(text) / 1e9 if text else 0.0


def _run(args: argparse.Namespace) -> int:
    if not args.data_dir.is_dir():
        raise ConfigError(
            f"no data directory {args.data_dir}: point --data-dir at the directory a dataflow writes"
        )
    view = TwinView.open(args.data_dir)
    record = view.get_twin(args.twin)
    if record is None:
        raise ConfigError(f"no twin {args.twin!r} in the view of {args.data_dir} (is its dataflow running?)")
    spec_json = view.types().get(record["twin_type"])
    if spec_json is None:
        raise ConfigError(f"twin type {record['twin_type']!r} is not in the view; run its dataflow once")
    spec = TwinTypeSpec.model_validate(spec_json)
    scenario = parse_scenario(args.control, args.hold, args.silent)
    result = simulate(
        spec, record, horizon_s=args.horizon, step_s=args.step, samples=args.samples, seed=args.seed,
        scenario=scenario,
    )  # fmt: skip
    if args.format == "json":
        sys.stdout.buffer.write(orjson.dumps(result.to_json_dict()) + b"\n")
    else:
        _print_table(result)
    if args.plot is not None:
        plot_whatif(result, spec, args.plot)
        print(f"dte-stream: plot written to {args.plot}", file=sys.stderr)
    return 0


def _print_table(result: WhatIf) -> None:
    times = result.times_s
    picks = sorted({0, len(times) // 4, len(times) // 2, 3 * len(times) // 4, len(times) - 1})
    print(f"twin {result.twin_id} from {format_time_ns(result.start_ns)}, {result.samples} samples")
    print(f"{'channel':<16} {'after':>9}  {'mean':>10} {'std':>9}  {'5 %':>10} {'95 %':>10}")
    for name, s in result.channels.items():
        for i in picks:
            print(
                f"{name:<16} {times[i]:>8g}s  {s['mean'][i]:>10.4g} {s['std'][i]:>9.3g}  "
                f"{s['low'][i]:>10.4g} {s['high'][i]:>10.4g}"
            )
    if result.rules:
        print(f"\n{'rule':<20} {'channel':<16} {'fires':>7} {'median':>9} {'90 %':>9}")
        for r in result.rules:
            median = "-" if r["median_s"] is None else f"{r['median_s']:g}s"
            p90 = "-" if r["p90_s"] is None else f"{r['p90_s']:g}s"
            print(f"{r['rule']:<20} {r['channel']:<16} {100 * r['probability']:>6.1f}% {median:>9} {p90:>9}")


def plot_whatif(result: WhatIf, spec: TwinTypeSpec, path: Path) -> Path:
    """One panel per channel: the mean, the 5-95 % sample band, ±2 std, and threshold levels."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'dte-stream[plots]'") from None
    names = list(result.channels)
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.6 * len(names)), sharex=True, squeeze=False)
    t = [x / 60 for x in result.times_s]
    levels: dict[str, list[dict[str, Any]]] = {}
    for r in result.rules:
        levels.setdefault(r["channel"], []).append(r)
    for ax, name in zip(axes[:, 0], names, strict=True):
        s = result.channels[name]
        ax.fill_between(t, s["low"], s["high"], color="#6a1b9a", alpha=0.18, label="5-95 % of samples")
        lo = [m - 2 * d for m, d in zip(s["mean"], s["std"], strict=True)]
        hi = [m + 2 * d for m, d in zip(s["mean"], s["std"], strict=True)]
        ax.plot(t, lo, color="#6a1b9a", lw=0.6, ls=":")
        ax.plot(t, hi, color="#6a1b9a", lw=0.6, ls=":", label="mean ± 2 std")
        ax.plot(t, s["mean"], color="#6a1b9a", lw=1.8, label="mean")
        for r in levels.get(name, []):
            ax.axhline(r["level"], color="#c62828", lw=1, ls="--")
            ax.text(
                t[0],
                r["level"],
                f" {r['rule']}: {100 * r['probability']:.0f} %",
                color="#c62828",
                va="bottom",
                fontsize=8,
            )
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("minutes from " + format_time_ns(result.start_ns)[:19])
    fig.suptitle(f"what-if: {result.twin_id} ({spec.name})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
