"""Data-quality settings of one sensor channel: limits, staleness, flat lines, spikes, clock skew.

The settings become per-channel parameter arrays of :class:`~dte_stream.twins.quality.QualityBank`,
which flags each reading (bits in :mod:`dte_stream.twins.flags`) and tells the filter how much
less to trust a suspect one (``distrust``). Every field has a default, so ``quality: {}`` works.

>>> q = QualitySpec(min=-40, max=125, stale_min="30s")
>>> q.min, q.max, q.stale_min, q.max_clock_skew
(-40.0, 125.0, 30.0, 300.0)
"""

from __future__ import annotations

from pydantic import Field, model_validator

from dte_stream.spec.base import Seconds, SpecModel

__all__ = ["QualitySpec"]


class QualitySpec(SpecModel):
    """How the readings of one channel are checked before the filter uses them.

    >>> QualitySpec(stuck_after=0, spike_sigma=0).distrust
    100.0
    """

    min: float | None = Field(
        None, allow_inf_nan=False, description="lowest plausible value; a reading below is out_of_range"
    )
    max: float | None = Field(
        None, allow_inf_nan=False, description="highest plausible value; a reading above is out_of_range"
    )
    stale_after: float = Field(
        5.0,
        gt=1,
        allow_inf_nan=False,
        description="stale when no reading arrives for this multiple of the sensor's usual interval",
    )
    stale_min: Seconds | None = Field(
        None, description="never stale sooner than this many seconds after the last reading"
    )
    stuck_after: int = Field(
        30,
        ge=0,
        description="flag stuck the Nth reading in a row within stuck_tolerance of the value that "
        "started the flat run (0 disables)",
    )
    stuck_tolerance: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="changes up to this size count as no change"
    )
    spike_sigma: float = Field(
        8.0,
        ge=0,
        allow_inf_nan=False,
        description="flag spike a jump larger than this many robust standard deviations of the usual "
        "reading-to-reading change (0 disables)",
    )
    max_clock_skew: Seconds | None = Field(
        300.0, description="flag clock_skew a reading whose event time is this far ahead of the engine clock"
    )
    distrust: float = Field(
        100.0,
        ge=1,
        allow_inf_nan=False,
        description="factor on the measurement variance for a reading flagged stuck, spike, "
        "out_of_range or clock_skew",
    )

    @model_validator(mode="after")
    def _limits_ordered(self) -> QualitySpec:
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ValueError(f"quality limits: min ({self.min}) must be below max ({self.max})")
        return self
