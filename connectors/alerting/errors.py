"""The alert integrations' delivery error and logger, shared by the dispatcher and every notifier.

Kept apart from :mod:`~dte_stream.connectors.alerting.dispatcher` so that notifiers (which
raise :class:`DeliveryError`) and the dispatcher (which builds notifiers) do not import each
other.
"""

from __future__ import annotations

import logging

from dte_stream.errors import ConnectorError

__all__ = ["LOG", "DeliveryError"]

#: The logger of the alert integrations.
LOG = logging.getLogger("dte_stream.connectors.alerting")


class DeliveryError(ConnectorError):
    """One delivery attempt failed; ``retryable`` says whether trying again can help.

    ``retry_after`` (seconds) is the receiver's own wish (HTTP ``Retry-After``), when it said.
    """

    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
