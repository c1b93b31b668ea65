"""The demo's dataflow spec: the same graph as ``dataflows/demo.yaml``, built with overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dte_stream.spec import DataflowSpec, parse_spec

__all__ = ["demo_document", "demo_spec"]


def demo_document(
    *,
    twins: int = 100,
    rate: float | None = None,
    duration: float | None = None,
    data_dir: Path = Path("dte-data"),
    seed: int = 42,
    workers: int = 1,
) -> dict[str, Any]:
    """The demo spec as a plain document (what ``dataflows/demo.yaml`` holds, with overrides)."""
    source: dict[str, Any] = {
        "kind": "simulator",
        "name": "pumps",
        "twin_type": "pump",
        "twins": twins,
        "interval": "1s",
        "seed": seed,
        "faults_per_twin_hour": 2,
        "ground_truth": str(data_dir / "ground_truth.jsonl"),
    }
    if rate is not None:
        source["rate"] = rate
    if duration is not None:
        source["duration"] = duration
    return {
        "version": 1,
        "name": "demo",
        "description": "Simulated pumps with injected faults, estimated by a Kalman filter per channel.",
        "sources": [source],
        "twin_types": [
            {
                "name": "pump",
                "description": "A centrifugal pump with a temperature, pressure and flow sensor.",
                "match": "pump-.*",
                "ttl": "7d",
                "alerts": {
                    "rules": [
                        {"kind": "anomaly_score", "name": "anomaly", "level": 0.7, "clear": 0.3},
                        {"kind": "nis", "name": "model_mismatch", "level": 10.83, "readings": 3},
                        {"kind": "quality", "name": "sensor_fault", "flags": ["stuck", "out_of_range"]},
                        {"kind": "stale", "name": "sensor_stale"},
                        {"kind": "silent_twin", "name": "pump_silent", "after": "1m", "severity": "critical"},
                        {
                            "kind": "threshold",
                            "name": "overheating",
                            "channels": ["temperature"],
                            "signal": "estimate",
                            "above": 90,
                            "clear": 85,
                            "severity": "critical",
                            "message": "{twin_id} runs hot: {value:.1f} degC (limit {level:g})",
                        },
                    ]
                },
                "channels": {
                    "temperature": {
                        "unit": "degC",
                        "aliases": ["temp"],
                        "filter": {"process_noise": 0.001, "measurement_noise": 0.25},
                        "quality": {"min": -20, "max": 120, "stuck_after": 10},
                    },
                    "pressure": {
                        "unit": "bar",
                        "filter": {"process_noise": 0.00001, "measurement_noise": 0.0025},
                        "quality": {"min": 0, "max": 16, "stuck_after": 10},
                    },
                    "flow": {
                        "unit": "m3/h",
                        "filter": {"process_noise": 0.05, "measurement_noise": 4.0},
                        "quality": {"min": 0, "max": 400, "stuck_after": 10},
                    },
                },
            }
        ],
        "sinks": [{"kind": "local_store", "data_dir": str(data_dir)}],
        # Faster than real time, the simulator's clock runs ahead of the wall clock: judge stale
        # sensors and clock skew by event time then.
        "engine": {"shards": 4, "workers": workers, "clock": "wall" if rate is None else "event"},
    }


def demo_spec(**overrides: Any) -> DataflowSpec:
    """The validated demo spec; see :func:`demo_document` for the overrides."""
    return parse_spec(demo_document(**overrides), source="demo")
