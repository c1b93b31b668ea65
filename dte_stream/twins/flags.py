"""Per-reading flags: one bit each, combined in a ``uint16`` column of every output row.

Data-quality flags come from :mod:`dte_stream.twins.quality`, filter flags from the
state-space kernel, learner flags from :mod:`dte_stream.twins.learners`. Sinks write the
combined value as the integer field ``flags``; :func:`flag_names` spells it out.

>>> flag_names(STUCK | GATED)
['stuck', 'gated']
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "ANOMALY",
    "CLOCK_SKEW",
    "DRIFT",
    "FLAG_BITS",
    "GATED",
    "LATE",
    "OUT_OF_RANGE",
    "QUALITY_FLAGS",
    "RESET",
    "SPIKE",
    "STALE",
    "STUCK",
    "Flags",
    "flag_names",
]

Flags = npt.NDArray[np.uint16]

#: No reading for a multiple of the sensor's usual interval (raised by a timer).
STALE = 1 << 0
#: The value has not changed for many readings (flat line).
STUCK = 1 << 1
#: A jump far outside the sensor's usual reading-to-reading change.
SPIKE = 1 << 2
#: Outside the limits declared for the channel.
OUT_OF_RANGE = 1 << 3
#: The reading's event time is implausibly far ahead of the clock.
CLOCK_SKEW = 1 << 4
#: The filter did not apply the reading: its NIS was over the gate.
GATED = 1 << 5
#: Older than the twin's state, applied within the lateness bound.
LATE = 1 << 6
#: Applied after repeated gating, with the prior covariance added (a genuine change).
RESET = 1 << 7
#: A drift detector fired on this reading.
DRIFT = 1 << 8
#: The anomaly score reached the twin type's anomaly level.
ANOMALY = 1 << 9

#: Name of every bit, in bit order.
FLAG_BITS: dict[str, int] = {
    "stale": STALE,
    "stuck": STUCK,
    "spike": SPIKE,
    "out_of_range": OUT_OF_RANGE,
    "clock_skew": CLOCK_SKEW,
    "gated": GATED,
    "late": LATE,
    "reset": RESET,
    "drift": DRIFT,
    "anomaly": ANOMALY,
}

#: The data-quality flags (they lower the trust the filter gives a sensor).
QUALITY_FLAGS = STALE | STUCK | SPIKE | OUT_OF_RANGE | CLOCK_SKEW


def flag_names(flags: int) -> list[str]:
    """The names of the bits set in ``flags``, in bit order."""
    return [name for name, bit in FLAG_BITS.items() if flags & bit]
