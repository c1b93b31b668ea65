"""Bearer-token checks for the API: 401 without a valid token, 403 when its scope is too weak.

``Depends(require("operate"))`` on a route gives the handler the caller's
:class:`~dte_stream.api.tokens.TokenInfo` (its ``name`` is recorded with acknowledgements).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request

from dte_stream.api.state import ApiState
from dte_stream.api.tokens import Scope, TokenInfo

__all__ = ["require"]

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="dte-stream"'}


def require(scope: Scope) -> Callable[[Request], Awaitable[TokenInfo]]:
    """A FastAPI dependency: the caller's token, which must allow ``scope``."""

    async def check(request: Request) -> TokenInfo:  # no worker thread: a header and a cached lookup
        ctx: ApiState = request.app.state.dte
        header = request.headers.get("authorization", "")
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "send a token: 'Authorization: Bearer TOKEN' (dte-stream token create)",
                                headers=_CHALLENGE)  # fmt: skip
        info = ctx.tokens.check(token.strip())
        if info is None:
            raise HTTPException(401, "unknown or revoked token", headers=_CHALLENGE)
        if not info.allows(scope):
            raise HTTPException(403, f"token {info.name!r} has scope {info.scope!r}; this needs {scope!r}")
        return info

    return check
