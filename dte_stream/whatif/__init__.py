"""What-if simulation from a twin's state in the view (engine-free): see :func:`simulate`."""

from dte_stream.whatif.simulate import Scenario, WhatIf, simulate

__all__ = ["Scenario", "WhatIf", "simulate"]
