"""What every route under ``/api/v1/`` depends on: the caller's scope, the app's state, the 503.

``Reader``, ``Operator`` and ``Admin`` annotate a handler's token parameter with the scope it
needs (:func:`~dte_stream.api.auth.require`); :func:`api_state` is the
:class:`~dte_stream.api.state.ApiState` the app carries; :func:`store_unavailable` is the answer
when the data directory cannot be read. Shared by :mod:`dte_stream.api.routes` and
:mod:`dte_stream.api.alert_routes`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from dte_stream.api.auth import require
from dte_stream.api.state import ApiState
from dte_stream.api.tokens import TokenInfo
from dte_stream.errors import StoreError

__all__ = ["Admin", "Operator", "Reader", "api_state", "store_unavailable"]

Reader = Annotated[TokenInfo, Depends(require("read"))]
Operator = Annotated[TokenInfo, Depends(require("operate"))]
Admin = Annotated[TokenInfo, Depends(require("admin"))]


def api_state(request: Request) -> ApiState:
    """The API's state of the app that serves ``request``."""
    ctx: ApiState = request.app.state.dte
    return ctx


def store_unavailable(exc: StoreError) -> HTTPException:
    """503 naming why the data directory cannot be read."""
    return HTTPException(503, f"the data directory cannot be read: {exc}")
