"""Plots of replay outputs: readings, the twin's estimate band, anomalies and quality flags.

matplotlib is optional (the ``plots`` extra, also in ``dev``): a missing one is a
:class:`~dte_stream.errors.ConfigError` naming the install command.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from dte_stream.errors import ConfigError
from dte_stream.twins.flags import ANOMALY, QUALITY_FLAGS

__all__ = ["plot_replay"]


def plot_replay(frame: pl.DataFrame, path: Path, *, title: str = "", max_panels: int = 6) -> Path:
    """Draw each (twin, channel) of a replay output: value, estimate +- 2 std, anomalies; score below.

    One pair of panels per series (at most ``max_panels`` series); returns ``path``.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'dte-stream[plots]'") from None
    series = frame.select("twin_id", "channel").unique(maintain_order=True).head(max_panels).rows()
    if not series:
        raise ConfigError("nothing to plot: the replay produced no rows")
    fig, axes = plt.subplots(
        2 * len(series), 1, figsize=(12, 3.6 * len(series)), sharex=False,
        gridspec_kw={"height_ratios": [3, 1] * len(series)}, squeeze=False,
    )  # fmt: skip
    for k, (twin_id, channel) in enumerate(series):
        part = frame.filter((pl.col("twin_id") == twin_id) & (pl.col("channel") == channel))
        t = part["time_ns"].to_numpy().astype("datetime64[ns]")
        value = part["value"].to_numpy()
        est = part["estimate"].to_numpy()
        std = part["std"].to_numpy()
        flags = part["flags"].to_numpy()
        score = np.nan_to_num(part["anomaly_score"].to_numpy())
        top, bottom = axes[2 * k, 0], axes[2 * k + 1, 0]
        top.plot(t, value, lw=0.6, color="0.35", label="reading")
        top.plot(t, est, lw=0.9, color="tab:blue", label="estimate")
        top.fill_between(
            t, est - 2 * std, est + 2 * std, color="tab:blue", alpha=0.2, lw=0, label="estimate ± 2 std"
        )
        anomalous = (flags & ANOMALY) > 0
        suspect = ((flags & QUALITY_FLAGS) > 0) & ~anomalous
        top.plot(t[anomalous], value[anomalous], "o", ms=4, mfc="none", color="tab:red", label="anomaly")
        top.plot(t[suspect], value[suspect], "x", ms=3, color="tab:orange", label="quality flag")
        top.set_title(f"{twin_id} / {channel}", fontsize=9, loc="left")
        top.legend(fontsize=7, loc="upper left", ncols=5)
        bottom.plot(t, score, lw=0.6, color="tab:red")
        bottom.set_ylim(0, 1.05)
        bottom.set_ylabel("anomaly score", fontsize=7)
        for ax in (top, bottom):
            ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
