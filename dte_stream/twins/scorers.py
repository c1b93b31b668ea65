"""The anomaly scorer a twin type asks for (``anomaly.method``), built from its spec.

Both scorers share one call (:meth:`score` on a round of readings) and the same row
management (``grow``, ``take``, ``reset_rows``, ``snapshot``, ``restore``), so the twin bank
holds either without knowing which.

>>> from dte_stream.spec.twins import AnomalySpec
>>> type(build_scorer(AnomalySpec(), channels=2, capacity=8)).__name__
'ContextualScorer'
>>> type(build_scorer(AnomalySpec(method="innovation"), channels=2, capacity=8)).__name__
'AnomalyScorer'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dte_stream.twins.anomaly import AnomalyScorer
from dte_stream.twins.contextual import ContextualScorer

if TYPE_CHECKING:
    from dte_stream.spec.twins import AnomalySpec

__all__ = ["Scorer", "build_scorer"]

#: Either built-in anomaly scorer.
Scorer = AnomalyScorer | ContextualScorer


def build_scorer(spec: AnomalySpec, channels: int, capacity: int) -> Scorer:
    """The scorer of ``spec.method`` for ``channels`` channels and ``capacity`` twin rows."""
    if spec.method == "innovation":
        return AnomalyScorer(channels, capacity, level=spec.level)
    return ContextualScorer(
        channels,
        capacity,
        level=spec.level,
        quiet=spec.quiet,
        context_bins=spec.context_bins,
        context_halflife=spec.context_halflife,
        context_after=spec.context_after,
        likelihood=spec.likelihood,
    )
