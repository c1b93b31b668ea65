"""Server-Sent Events from the twin view: poll one integer, send what changed.

The view's change counter (``seq``) grows with every write of any dataflow process. A stream
reads it every ``poll_s`` (0.1 s; one indexed SQLite read) and sends only when it moved, so
a twin's update reaches the client within the shard's publishing interval plus ``poll_s``.
A comment line every ``heartbeat_s`` keeps proxies from closing an idle stream. Events carry
``id: SEQ`` so a client that reconnects with ``Last-Event-ID`` misses no alert change.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import StreamingResponse

from dte_stream.api.state import ApiState
from dte_stream.errors import StoreError
from dte_stream.times import now_ns

__all__ = ["alert_updates", "format_event", "stream", "twin_updates"]

Update = tuple[str, int, dict[str, Any]] | None  # (event, id, data), or None: nothing new


def format_event(event: str, event_id: int, data: dict[str, Any]) -> bytes:
    """One SSE message."""
    return b"event: " + event.encode() + b"\nid: %d\ndata: " % event_id + orjson.dumps(data) + b"\n\n"


def stream(request: Request, updates: AsyncIterator[Update]) -> StreamingResponse:
    """A ``text/event-stream`` response sending ``updates`` until the client goes away."""
    ctx: ApiState = request.app.state.dte

    async def body() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        quiet = 0.0
        async for update in updates:
            if await request.is_disconnected():
                return
            if update is None:
                quiet += ctx.poll_s
                if quiet >= ctx.heartbeat_s:
                    quiet = 0.0
                    yield b": keep-alive\n\n"
                continue
            quiet = 0.0
            yield format_event(*update)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


async def twin_updates(
    ctx: ApiState, twin_id: str, decorate: Callable[[dict[str, Any], int], dict[str, Any]]
) -> AsyncIterator[Update]:
    """The twin's record now, then each time its row in the view changes (None between)."""
    last = -1
    while True:
        try:
            seq = ctx.view.twin_seq(twin_id)
            record = ctx.view.get_twin(twin_id) if seq is not None and seq != last else None
        except StoreError:
            record, seq = None, last
        if record is not None and seq is not None:
            last = seq
            yield "twin", seq, decorate(record, now_ns())
        else:
            yield None
        await asyncio.sleep(ctx.poll_s)


async def alert_updates(ctx: ApiState, after: int | None) -> AsyncIterator[Update]:
    """Each alert row written to the view after ``after`` (default: from now on)."""
    last = ctx.view.seq() if after is None else after
    while True:
        try:
            seq = ctx.view.seq()
            rows = ctx.view.changed_alerts(last) if seq != last else []
        except StoreError:
            seq, rows = last, []
        if rows:
            for row in rows:
                yield "alert", int(row["seq"]), row
        else:
            yield None
        last = seq
        await asyncio.sleep(ctx.poll_s)
