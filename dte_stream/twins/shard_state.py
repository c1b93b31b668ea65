"""A twin shard's snapshot: its layout version, its header, and its banks restored against a spec.

A snapshot (:meth:`~dte_stream.twins.shard.TwinShard.snapshot`) is one dict per shard: the
header below (layout version, the spec's name and version, the shard key, the watermark, each
alert engine's state) and ``banks``, each twin type's compact arrays
(:mod:`dte_stream.twins.checkpoint`). Incremental snapshots (:mod:`dte_stream.twins.snapshot_log`)
write the same header beside files of changed twins.

>>> shard_header(type("Spec", (), {"name": "f", "version": 2})(), "shard-0001", 5, {})["spec"]
{'name': 'f', 'version': 2}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dte_stream.errors import SpecError
from dte_stream.twins.bank import TwinBank

if TYPE_CHECKING:
    from collections.abc import Mapping

    from dte_stream.alerts.rules import AlertEngine
    from dte_stream.spec.model import DataflowSpec
    from dte_stream.spec.twins import TwinTypeSpec

__all__ = ["SHARD_FORMAT", "restored_banks", "shard_header"]

#: Version of the shard snapshot layout (one state per shard, every twin type inside).
SHARD_FORMAT = 1


def shard_header(spec: Any, key: str, watermark: int, engines: Mapping[str, AlertEngine]) -> dict[str, Any]:
    """Everything of a shard's snapshot but its banks."""
    return {
        "format": SHARD_FORMAT,
        "spec": {"name": spec.name, "version": spec.version},
        "key": key,
        "watermark": watermark,
        "alerts": {name: engine.snapshot() for name, engine in engines.items()},
    }


def restored_banks(
    spec: DataflowSpec, key: str, snap: dict[str, Any]
) -> dict[str, tuple[TwinTypeSpec, TwinBank]]:
    """Each twin type's spec and bank from ``snap``.

    Raises :class:`~dte_stream.errors.SpecError` (naming the fix) when the state does not fit
    ``spec``: a twin type it no longer declares, a changed state layout, or the state layout of
    an older dte-stream (one state per twin type and shard).
    """
    if snap.get("format") != SHARD_FORMAT:
        raise SpecError(
            spec.name,
            [
                f"the recovery state of {key or 'a shard'!r} was written by an older "
                "dte-stream (one state per twin type and shard); use a fresh --recovery-dir"
            ],
        )
    out = {}
    for name, saved in snap["banks"].items():
        type_spec = _declared(spec, name)
        try:
            out[name] = (type_spec, TwinBank.restore(type_spec, saved))
        except (KeyError, ValueError) as exc:
            raise SpecError(
                spec.name,
                [
                    f"the recovery state does not fit this spec: {exc}; use the old spec, "
                    "`dte-stream state migrate` when a migration exists, or a fresh --recovery-dir"
                ],
            ) from None
    return out


def _declared(spec: DataflowSpec, twin_type: str) -> TwinTypeSpec:
    try:
        return spec.twin_type(twin_type)
    except KeyError:
        raise SpecError(
            spec.name,
            [
                f"the recovery state holds twin type {twin_type!r}, which this spec does not "
                "declare; restore it in the spec or use a fresh --recovery-dir"
            ],
        ) from None
