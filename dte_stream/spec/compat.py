"""Which spec changes the running twins and their saved state can take, and why not the others.

Two questions, one module, so that a restart, a live reload and ``dte-stream state migrate``
give the same reasons:

- :func:`layout_problems`: can the state of one twin type, saved under one spec, be loaded
  under another? Only when its layout (:meth:`~dte_stream.spec.twins.TwinTypeSpec.state_layout`:
  channels, models, learners, the anomaly scorer, the type's ``version``) is unchanged; noise
  levels, gates, quality limits, the anomaly level and alert rules are settings that may change.
- :func:`live_problems`: can a running daemon switch to a new spec without a restart? Its
  twin types must keep their layout and routing (``match``, aliases), and the parts the running
  graph was built from (sources, sinks, dead letters, engine, the twin view, the set of twin
  types) must be unchanged. Alert rules, notifiers, thresholds and noise settings may change.

Each problem is one line that names the twin type or section and what changed.

>>> from dte_stream.spec.twins import TwinTypeSpec
>>> old = TwinTypeSpec(name="pump", channels={"temp": {}})
>>> layout_problems(old, TwinTypeSpec(name="pump", channels={"temp": {"filter": {"process_noise": 1}}}))
[]
>>> layout_problems(old, TwinTypeSpec(name="pump", channels={"temp": {}, "flow": {}}))
["twin type 'pump': channels added: flow (the saved state has no place for them)"]
"""

from __future__ import annotations

from typing import Any

from dte_stream.spec.model import DataflowSpec
from dte_stream.spec.twins import TwinTypeSpec

__all__ = ["changed_sections", "layout_diff", "layout_problems", "live_problems"]

#: Top-level sections that may change live; every other one (name, sources, sinks, dead
#: letters, engine, view, ...) is what the running dataflow was built from: a restart applies it.
LIVE_SECTIONS = frozenset({"version", "description", "twin_types", "notifiers"})


def layout_diff(twin_type: str, saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """What differs between two :meth:`~TwinTypeSpec.state_layout` s, one line each."""
    where = f"twin type {twin_type!r}"
    problems: list[str] = []
    if saved.get("version") != wanted.get("version"):
        problems.append(
            f"{where}: version {saved.get('version')} -> {wanted.get('version')} "
            "(a new type version refuses the old state on purpose)"
        )
    old_channels: dict[str, str | None] = dict(saved.get("channels", []))
    new_channels: dict[str, str | None] = dict(wanted.get("channels", []))
    added = [c for c in new_channels if c not in old_channels]
    removed = [c for c in old_channels if c not in new_channels]
    if added:
        problems.append(
            f"{where}: channels added: {', '.join(added)} (the saved state has no place for them)"
        )
    if removed:
        problems.append(f"{where}: channels removed: {', '.join(removed)} (the saved state holds them)")
    refiltered = [
        f"{c} ({old_channels[c] or 'shared model'} -> {new_channels[c] or 'shared model'})"
        for c in new_channels
        if c in old_channels and old_channels[c] != new_channels[c]
    ]
    if refiltered:
        problems.append(f"{where}: another filter model for {', '.join(refiltered)}")
    if [c for c in old_channels if c in new_channels] != [c for c in new_channels if c in old_channels]:
        problems.append(f"{where}: the channels are in another order")
    old_models = {m[0]: m for m in saved.get("models", [])}
    new_models = {m[0]: m for m in wanted.get("models", [])}
    for name in sorted(old_models.keys() | new_models.keys()):
        if name not in old_models:
            problems.append(f"{where}: model {name!r} added")
        elif name not in new_models:
            problems.append(f"{where}: model {name!r} removed")
        elif old_models[name] != new_models[name]:
            problems.append(f"{where}: model {name!r} changed (its channels, controls or states)")
    for key, what in (
        ("adaptive_noise", "kalman.adaptive_noise"),
        ("anomaly", "the anomaly scorer (enabled, method or context_bins)"),
        ("learners", "the learners"),
    ):
        if saved.get(key) != wanted.get(key):
            problems.append(f"{where}: {what} changed")
    return problems


def layout_problems(saved: TwinTypeSpec, wanted: TwinTypeSpec) -> list[str]:
    """Why state saved under ``saved`` does not fit ``wanted`` (empty: it fits)."""
    return layout_diff(wanted.name, saved.state_layout(), wanted.state_layout())


def changed_sections(old: DataflowSpec, new: DataflowSpec) -> list[str]:
    """The parts of the spec that differ, as dotted names (``twin_types.pump.alerts``, ``notifiers``)."""
    out: list[str] = []
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    for key in a.keys() | b.keys():
        if key != "twin_types" and a.get(key) != b.get(key):
            out.append(key)
    old_types = {t.name: t.model_dump(mode="json") for t in old.twin_types}
    new_types = {t.name: t.model_dump(mode="json") for t in new.twin_types}
    for name in old_types.keys() | new_types.keys():
        ta, tb = old_types.get(name, {}), new_types.get(name, {})
        if not ta or not tb:
            out.append(f"twin_types.{name}")
            continue
        out += [f"twin_types.{name}.{k}" for k in sorted(ta.keys() | tb.keys()) if ta.get(k) != tb.get(k)]
    return sorted(out)


def live_problems(old: DataflowSpec, new: DataflowSpec, *, alert_path: bool = True) -> list[str]:
    """Why a daemon running ``old`` cannot switch to ``new`` without a restart (empty: it can).

    ``alert_path`` says whether the running dataflow has alert outputs (it has them when it
    started with alert rules or notifiers): without them, adding the first rule takes a restart.
    """
    problems: list[str] = []
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    for section in sorted(a.keys() | b.keys()):
        if section not in LIVE_SECTIONS and a.get(section) != b.get(section):
            problems.append(f"{section} changed (the running dataflow was built from them; restart to apply)")
    old_types = {t.name: t for t in old.twin_types}
    new_types = {t.name: t for t in new.twin_types}
    removed = [n for n in old_types if n not in new_types]
    added = [n for n in new_types if n not in old_types]
    if removed:
        problems.append(f"twin types removed: {', '.join(removed)} (the state holds their twins)")
    if added:
        problems.append(
            f"twin types added: {', '.join(added)} (routing is built at start; restart to add them)"
        )
    if [n for n in old_types if n in new_types] != [n for n in new_types if n in old_types]:
        problems.append("twin types are in another order (routing is built at start)")
    for name, t_old in old_types.items():
        t_new = new_types.get(name)
        if t_new is None:
            continue
        problems += layout_problems(t_old, t_new)
        realiased = [
            c
            for c, ch in t_new.channels.items()
            if c in t_old.channels and t_old.channels[c].aliases != ch.aliases
        ]
        if t_old.match != t_new.match or realiased:
            problems.append(
                f"twin type {name!r}: match or channel aliases changed (routing; restart to apply)"
            )
    has_alerts = any(t.alerts.rules for t in new.twin_types) or bool(new.notifiers)
    if has_alerts and not alert_path:
        problems.append(
            "alert rules or notifiers added to a dataflow started without any (it has no alert "
            "outputs; restart to add them)"
        )
    return problems
