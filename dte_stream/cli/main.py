"""Entry point of the ``dte-stream`` command: one subcommand per module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dte_stream import __version__
from dte_stream.errors import DteStreamError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dte-stream",
        description="Stream-processing core of a Digital Twin Engine.",
    )
    parser.add_argument("--version", action="version", version=f"dte-stream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from dte_stream.cli import alerts, query, replay, run, simulate, token, validate, whatif

    run.add_parsers(sub)
    validate.add_parser(sub)
    query.add_parser(sub)
    simulate.add_parser(sub)
    replay.add_parser(sub)
    alerts.add_parser(sub)
    token.add_parser(sub)
    whatif.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # a cluster starts its children with it
    try:
        code: int = args.handler(args)
    except DteStreamError as exc:
        print(f"dte-stream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
