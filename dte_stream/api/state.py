"""What the API routes share at run time (``app.state.dte``): data dir, twin view, tokens, limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dte_stream.api.tokens import TokenFile, default_tokens_path
from dte_stream.spec.influxdb import InfluxDBSinkSpec
from dte_stream.view.store import TwinView

__all__ = ["ApiState"]


class AckSender(Protocol):
    """Where acknowledgements go on a host without the alert log (a Kafka view's acks topic)."""

    def send(self, alert_id: str, by: str, time_ns: int) -> None: ...


@dataclass
class ApiState:
    """The API's view of one data directory.

    ``poll_s`` is how often live streams look at the view for changes (one indexed integer
    read); ``max_body`` bounds request bodies (413 beyond); ``cors_origins`` lists the web
    origins allowed to call the API from a browser (none by default). ``remote_view``: the view
    is a copy of a Kafka view topic, so alerts are listed from it (this host has no alert log)
    and acknowledgements go to ``acks``.
    """

    data_dir: Path
    tokens: TokenFile
    view: TwinView
    poll_s: float = 0.1
    max_body: int = 64 * 1024
    heartbeat_s: float = 15.0
    cors_origins: list[str] = field(default_factory=list)
    influxdb: InfluxDBSinkSpec | None = None  # where history comes from without a local store
    remote_view: bool = False
    acks: AckSender | None = None

    @classmethod
    def open(
        cls, data_dir: Path, tokens_path: Path | None = None, view: TwinView | None = None, **options: object
    ) -> ApiState:
        """The context of ``data_dir``; its view (created if missing) unless ``view`` is given."""
        tokens = TokenFile(tokens_path if tokens_path is not None else default_tokens_path(data_dir))
        view = view if view is not None else TwinView.open(data_dir)
        return cls(data_dir, tokens, view, **options)  # type: ignore[arg-type]
