"""``dte-stream validate SPEC``: check a dataflow spec and summarise it in one line."""

from __future__ import annotations

import argparse

from dte_stream.spec import DataflowSpec, load_spec

__all__ = ["add_parser", "run", "summary"]


def _count(n: int, noun: str) -> str:
    """``1 channel``, ``3 channels``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def summary(spec: DataflowSpec) -> str:
    """One line: the spec's name, version, sources, twin types, sinks and engine."""
    sources = ", ".join(f"{s.name} ({s.kind})" for s in spec.sources)
    types = ", ".join(f"{t.name} ({_count(len(t.channels), 'channel')})" for t in spec.twin_types)
    sinks = ", ".join(s.kind for s in spec.sinks)
    return (
        f"{spec.name}: valid spec v{spec.version}; sources: {sources}; twin types: {types}; "
        f"sinks: {sinks}; {_count(spec.engine.shards, 'shard')}, {_count(spec.engine.workers, 'worker')}"
    )


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    print(f"{args.spec}: {summary(spec)}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("validate", help="check a dataflow spec", description="Check a dataflow spec.")
    p.add_argument("spec", help="path of the YAML spec")
    p.set_defaults(handler=run)
