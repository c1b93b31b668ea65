"""``dte-stream state inspect|migrate RECOVERY_DIR``: what saved state holds, and moving it to a new spec.

``inspect`` reads the snapshots a restart would load (:mod:`dte_stream.state_dir`): the spec
name and version that wrote them, the committed epoch, per twin type its twins, shards, layout
(fingerprint, channels, models, learners) and size, and the other steps' state (source
positions). With ``--spec`` it also says whether that spec can resume the state as it is, after
a migration, or not at all. ``migrate`` applies the migrations that exist
(:mod:`dte_stream.twins.migrate`) or refuses with the reasons and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path
from typing import Any

from dte_stream.errors import ConfigError
from dte_stream.spec import DataflowSpec, load_spec
from dte_stream.state_dir import RecoveryState, SnapRow, read_recovery, rewrite_shards
from dte_stream.twins.migrate import MigrationError, migrate_shard

__all__ = ["add_parser", "describe"]


def describe(state: RecoveryState) -> dict[str, Any]:
    """What ``state`` holds, JSON-ready (the ``--json`` output of ``inspect``)."""
    specs: set[tuple[str, int]] = set()
    types: dict[str, dict[str, Any]] = {}
    shards = state.shard_rows()
    for row in shards:
        snap = row.value()
        saved_spec = snap.get("spec") or {}
        if saved_spec:
            specs.add((str(saved_spec.get("name")), int(saved_spec.get("version", 0))))
        for name, bank in snap.get("banks", {}).items():
            t = types.setdefault(
                name,
                {"twins": 0, "shards": 0, "bytes": 0, "type_version": bank.get("version"), "layouts": set()},
            )
            t["twins"] += len(bank.get("twin_ids", []))
            t["shards"] += 1
            t["layouts"].add(str(bank.get("fingerprint")))
            layout = bank.get("layout") or {}
            t["channels"] = list(bank.get("channels", []))
            t["models"] = [m[0] for m in layout.get("models", [])]
            t["learners"] = [learner.get("name") for learner in layout.get("learners", [])]
            t["state_floats_per_twin"] = _floats_per_twin(bank)
            t["bytes"] += len(pickle.dumps(bank, protocol=pickle.HIGHEST_PROTOCOL))
    for t in types.values():
        t["layouts"] = sorted(t["layouts"])
    others: dict[str, dict[str, int]] = {}
    for row in state.other_rows():
        o = others.setdefault(row.step_id, {"keys": 0, "bytes": 0})
        o["keys"] += 1
        o["bytes"] += len(row.blob)
    return {
        "directory": str(state.directory),
        "partitions": len(state.parts),
        "epoch": state.epoch,
        "dataflow": state.flow(),
        "spec": [{"name": n, "version": v} for n, v in sorted(specs)],
        "shards": len(shards),
        "shard_bytes": sum(len(r.blob) for r in shards),
        "twin_types": dict(sorted(types.items())),
        "other_state": dict(sorted(others.items())),
    }


def _floats_per_twin(bank: dict[str, Any]) -> int:
    """Numbers the filters keep per twin (the size of the model state), from the first group arrays."""
    n = max(1, len(bank.get("twin_ids", [])))
    total = 0
    for arrays in bank.get("groups", {}).values():
        total += sum(int(getattr(a, "size", 0)) for a in arrays.values())
    return total // n if bank.get("twin_ids") else 0


def fit(state: RecoveryState, spec: DataflowSpec) -> tuple[list[str], list[str]]:
    """Whether ``spec`` can take ``state``: (problems, migration notes); both empty: it fits as is."""
    flow = state.flow()
    if flow is not None and flow != spec.name:
        return [
            f"the state is of dataflow {flow!r}, the spec is {spec.name!r} (the name is the recovery key)"
        ], []
    problems: list[str] = []
    notes: list[str] = []
    for row in state.shard_rows():
        try:
            _, row_notes = migrate_shard(row.value(), spec)
        except MigrationError as exc:
            problems += [p for p in exc.problems if p not in problems]
            continue
        notes += [n for n in row_notes if n not in notes]
    return problems, notes


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _print_text(info: dict[str, Any]) -> None:
    specs = ", ".join(f"{s['name']} version {s['version']}" for s in info["spec"]) or "not recorded"
    print(
        f"recovery dir {info['directory']}: {info['partitions']} partition(s), "
        f"committed epoch {info['epoch']}"
    )
    print(f"dataflow: {info['dataflow'] or '-'}; written by spec {specs}")
    print(f"twin state: {info['shards']} shard(s), {_size(info['shard_bytes'])}")
    for name, t in info["twin_types"].items():
        print(
            f"  {name}: {t['twins']:,} twins in {t['shards']} shard(s), {_size(t['bytes'])}; "
            f"type version {t['type_version']}, layout {', '.join(t['layouts'])}"
        )
        print(
            f"    channels: {', '.join(t['channels'])}; models: {', '.join(t['models']) or '-'}; "
            f"learners: {', '.join(t['learners']) or '-'}; "
            f"model state {t['state_floats_per_twin']} numbers per twin"
        )
    for step, o in info["other_state"].items():
        print(f"other state: {step}: {o['keys']} key(s), {_size(o['bytes'])}")


def _inspect(args: argparse.Namespace) -> int:
    state = read_recovery(args.recovery_dir)
    info = describe(state)
    if args.spec is not None:
        spec = load_spec(args.spec)
        problems, notes = fit(state, spec)
        info["fits"] = {
            "spec": {"name": spec.name, "version": spec.version},
            "as_is": not problems and not notes,
            "migration": notes,
            "problems": problems,
        }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    _print_text(info)
    if args.spec is not None:
        f = info["fits"]
        where = f"spec {f['spec']['name']} version {f['spec']['version']}"
        if f["problems"]:
            print(f"{where}: does not fit: " + "; ".join(f["problems"]))
        elif f["migration"]:
            print(f"{where}: fits after `dte-stream state migrate`: " + "; ".join(f["migration"]))
        else:
            print(f"{where}: fits as it is")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    state = read_recovery(args.recovery_dir)
    spec = load_spec(args.spec)
    problems, notes = fit(state, spec)
    if problems:
        raise ConfigError(
            f"no migration of {args.recovery_dir} to spec {spec.name} version {spec.version}: "
            + "; ".join(problems)
            + " (nothing was changed)"
        )
    if args.dry_run:
        print(
            f"would migrate {len(state.shard_rows())} shard snapshot(s) to {spec.name} version {spec.version}"
        )
        for note in notes:
            print(f"  {note}")
        return 0

    def change(row: SnapRow) -> dict[str, Any]:
        return migrate_shard(row.value(), spec)[0]

    n = rewrite_shards(state, change)
    print(f"migrated {n} shard snapshot(s) in {args.recovery_dir} to {spec.name} version {spec.version}")
    for note in notes or ["layouts unchanged: the spec's name and version are recorded"]:
        print(f"  {note}")
    print("  the partitions as they were are kept as part-N.sqlite3.before-migrate")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "state",
        help="inspect or migrate a recovery directory",
        description="Show what a --recovery-dir holds, or migrate it to a new spec.",
    )
    cmds = p.add_subparsers(dest="state_command", metavar="COMMAND")
    cmds.required = True
    i = cmds.add_parser(
        "inspect",
        help="what the saved state holds",
        description="Spec name and version, epoch, twin types with their twins, layouts and sizes.",
    )
    i.add_argument("recovery_dir", type=Path, metavar="RECOVERY_DIR")
    i.add_argument("--spec", type=Path, help="also say whether this spec can resume the state")
    i.add_argument("--json", action="store_true", help="one JSON document")
    i.set_defaults(handler=_inspect)
    m = cmds.add_parser(
        "migrate",
        help="migrate saved state to a new spec (stop the dataflow first)",
        description=(
            "Migrate the saved state to SPEC when a migration exists (same layouts, new twin types, "
            "channels added); refuse with the reasons otherwise. Partitions are rewritten into copies "
            "that replace them only when complete; the old ones are kept as *.before-migrate."
        ),
    )
    m.add_argument("recovery_dir", type=Path, metavar="RECOVERY_DIR")
    m.add_argument("--spec", type=Path, required=True, help="the spec the state is to fit")
    m.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    m.set_defaults(handler=_migrate)
