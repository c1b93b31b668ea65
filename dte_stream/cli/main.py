"""Entry point of the ``dte-stream`` command: one subcommand per module.

A command that fails says why in one line on stderr (``dte-stream: error: ...``, the cause
and the fix) and exits non-zero: 2 for dte-stream's own errors (a bad spec or setting, a
service that cannot be reached or refuses the credentials), 1 for anything unexpected. No
traceback and no engine panic is printed unless ``--debug`` is given
(:mod:`dte_stream.cli.failures`).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from dte_stream import __version__, allocator
from dte_stream.cli.failures import exit_code, one_line, quiet_engine_panics

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dte-stream",
        description="Stream-processing core of a Digital Twin Engine.",
    )
    parser.add_argument("--version", action="version", version=f"dte-stream {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="on failure, show the traceback and the engine's own report"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from dte_stream.cli import (
        alerts,
        deadletters,
        deploy,
        query,
        replay,
        run,
        serve,
        simulate,
        state,
        token,
        validate,
        whatif,
    )

    run.add_parsers(sub)
    validate.add_parser(sub)
    query.add_parser(sub)
    simulate.add_parser(sub)
    replay.add_parser(sub)
    alerts.add_parser(sub)
    deploy.add_parser(sub)
    deadletters.add_parser(sub)
    token.add_parser(sub)
    serve.add_parser(sub)
    whatif.add_parser(sub)
    state.add_parser(sub)
    return parser


def tune_allocator() -> None:
    """Freed memory back to the system (:mod:`dte_stream.allocator`), unless the environment tunes malloc."""
    allocator.tune()


def main(argv: Sequence[str] | None = None) -> int:
    tune_allocator()
    quick = _start_cluster(list(argv) if argv is not None else sys.argv[1:])
    if quick is not None:
        return quick
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # a cluster starts its children with it
    debug = bool(getattr(args, "debug", False))
    try:
        with quiet_engine_panics(enabled=not debug):
            code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"dte-stream: error: {one_line(exc)}", file=sys.stderr)
        return exit_code(exc)
    return code


def _start_cluster(argv: list[str]) -> int | None:
    """``run SPEC --processes N``: check the spec and the folder, start the children (None: not that).

    The checks are those of ``run`` (:func:`dte_stream.cli.run._launch`); the children parse
    the whole command line and run the dataflow (:mod:`dte_stream.cli.cluster`). The spec is
    checked once the children are started (they are stopped if it is refused): loading the
    spec models first delayed every child by their import, about a second on a busy host.
    """
    from dte_stream.cli.cluster import check_recovery_layout, quick_cluster, run_cluster

    quick = quick_cluster(argv)
    if quick is None:
        return None
    processes, spec_path, recovery_dir = quick

    def check_spec() -> None:  # while the children start: their imports take longer than this
        from dte_stream.spec import load_spec

        load_spec(spec_path)

    try:
        if recovery_dir is not None:
            check_recovery_layout(recovery_dir, processes)
        return run_cluster(argv, processes, check=check_spec)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if "--debug" in argv[: argv.index("run")]:
            traceback.print_exc()
        print(f"dte-stream: error: {one_line(exc)}", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
