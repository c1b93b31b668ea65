r"""Spec model of the InfluxDB sink: where the time series go, and how they are batched.

Two write APIs, chosen by ``api`` or inferred from the settings given (v2 when ``org``,
``bucket`` or ``token`` is, else v1, by default into the database ``dte``):

* ``v1``: InfluxDB 1.x ``POST /write`` with ``database``, ``retention_policy`` and optional
  ``username``/``password`` (HTTP basic auth);
* ``v2``: the InfluxDB 2.x ``POST /api/v2/write`` through influxdb-client, with ``org``,
  ``bucket`` and ``token`` (also InfluxDB 1.8's compatibility API and VictoriaMetrics).

``password`` and ``token`` are ``SecretStr``: they print as ``**********`` in reprs, logs and
validation errors. Put them in a spec as ``${DTE_INFLUXDB_TOKEN}`` references so they never sit
in a file; credentials inside the ``url`` are refused.

>>> spec = InfluxDBSinkSpec(kind="influxdb", url="http://127.0.0.1:8086", database="plant",
...                         password="hunter2", username="writer")
>>> spec.api, spec.password
('v1', SecretStr('**********'))
>>> InfluxDBSinkSpec(kind="influxdb", org="acme", bucket="plant", token="t0k3n").api
'v2'
>>> spec = InfluxDBSinkSpec(kind="influxdb", database="", org="")  # e.g. unset ${VARS:-}
>>> spec.api, spec.database
('v1', 'dte')
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from dte_stream.spec.base import Identifier, PositiveSeconds, Seconds, SpecModel

__all__ = ["InfluxDBRetrySpec", "InfluxDBSinkSpec"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A backslash that some line-protocol parsers read as an escape and InfluxDB's own does not.
_AMBIGUOUS_BACKSLASH = re.compile(r"\\(?=[,= \\]|\Z)")


class InfluxDBRetrySpec(SpecModel):
    """How a batch is retried after a network error, a 429 or a 5xx answer.

    The wait before attempt *n* + 1 is ``initial_backoff * 2**(n-1)`` capped at ``max_backoff``,
    with random jitter (50-100 % of it); a ``Retry-After`` header the server sends replaces it.
    ``max_attempts`` unset retries until the server answers: then only ``max_block`` (see
    :class:`InfluxDBSinkSpec`) decides whether readings are ever dropped.
    """

    max_attempts: int | None = Field(
        None, ge=1, description="attempts per batch before it is dropped; unset = until the server answers"
    )
    initial_backoff: PositiveSeconds = Field(0.5, description="wait after the first failed attempt")
    max_backoff: PositiveSeconds = Field(30.0, description="longest wait between two attempts")

    @model_validator(mode="after")
    def _check_backoff(self) -> InfluxDBRetrySpec:
        if self.max_backoff < self.initial_backoff:
            raise ValueError(
                f"max_backoff ({self.max_backoff} s) must be at least initial_backoff "
                f"({self.initial_backoff} s)"
            )
        return self


class InfluxDBSinkSpec(SpecModel):
    """Every time series of the dataflow to InfluxDB: one point per reading with its estimate.

    Points go to ``measurement`` with the tags ``twin_id``, ``twin_type``, ``channel`` (and
    ``unit``, see ``unit``) and the float fields ``value``, ``estimate``, ``std``,
    ``innovation`` and ``nis``, at the reading's time in nanoseconds: writing a reading twice
    leaves one point. Lines are sent in batches of ``batch_size`` or after ``flush_interval``;
    at most ``max_buffer_lines`` wait per worker, and a full buffer blocks the dataflow (see
    ``docs/connectors/influxdb.md`` for the whole delivery policy).
    """

    # Validation errors must not echo the input: it may hold a password or a token.
    model_config = ConfigDict(hide_input_in_errors=True)

    V1_FIELDS: ClassVar[tuple[str, ...]] = ("database", "retention_policy", "username", "password")
    V2_FIELDS: ClassVar[tuple[str, ...]] = ("org", "bucket", "token")
    #: The database written to when nothing says where (api v1).
    DEFAULT_DATABASE: ClassVar[str] = "dte"

    kind: Literal["influxdb"]
    name: Identifier = Field("influxdb", description="names the sink in step ids, logs and dead letters")
    url: str = Field("http://127.0.0.1:8086", description="http(s)://host:port[/path] of the server")
    api: Literal["v1", "v2"] | None = Field(
        None, description="write API; unset = v2 when org, bucket or token is given, else v1"
    )
    # InfluxDB 1.x
    database: str | None = Field(None, min_length=1, description="v1: database to write to; default dte")
    retention_policy: str | None = Field(None, min_length=1, description="v1: unset = the default one")
    username: str | None = Field(None, min_length=1, description="v1: user for HTTP basic auth")
    password: SecretStr | None = Field(None, description="v1: that user's password")
    create_database: bool = Field(
        False, description="v1: CREATE DATABASE at start (needs admin rights); no effect with v2"
    )
    # InfluxDB 2.x
    org: str | None = Field(None, min_length=1, description="v2: organisation name or id")
    bucket: str | None = Field(None, min_length=1, description="v2: bucket to write to")
    token: SecretStr | None = Field(None, description="v2: API token with write access to the bucket")
    # What is written
    measurement: str = Field("dte_readings", min_length=1, max_length=256)
    unit: Literal["tag", "field", "omit"] = Field(
        "tag", description="the reading's unit as a tag (when not empty), a string field, or not at all"
    )
    fields: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] | None = Field(
        None,
        min_length=1,
        description=(
            "write only these fields (value, estimate, std, innovation, nis, anomaly_score, the "
            "twin type's extra outputs, flags); unset = all. Fewer fields, less work for InfluxDB"
        ),
    )
    tags: list[Literal["channel", "twin_id", "twin_type", "unit"]] | None = Field(
        None,
        min_length=1,
        description="write only these tags; unset = all (unit as the unit setting says)",
    )
    escaping: Literal["portable", "spec"] = Field(
        "portable",
        description=(
            "portable: dead-letter ids with a backslash before ',', '=', ' ', '\\\\' or at the end, "
            "which InfluxDB and other servers read differently; spec: write them escaped as the "
            "line-protocol reference says (exact on VictoriaMetrics)"
        ),
    )
    # How it is written
    batch_size: int = Field(5000, ge=1, le=1_000_000, description="lines per write request")
    flush_interval: PositiveSeconds = Field(
        0.2,
        description=(
            "longest wait of a line for its batch to fill before it is sent (0.2 s keeps the p99 from "
            "reading to stored under 1 s; at rates that fill batch_size sooner it does not matter)"
        ),
    )
    max_buffer_lines: int | None = Field(
        None,
        ge=1,
        description=(
            "lines waiting per worker before it blocks; unset = 2 x batch_size (each epoch's end "
            "waits for what is buffered, so a long buffer stalls every epoch during a backlog)"
        ),
    )
    max_block: Seconds | None = Field(
        None,
        description=(
            "how long the server may fail while the buffer is full before the oldest lines are "
            "dropped (to the dead letters); unset (the default) = hold the dataflow until it answers, "
            "never drop"
        ),
    )
    retries: InfluxDBRetrySpec = Field(default_factory=InfluxDBRetrySpec)
    timeout: PositiveSeconds = Field(10.0, description="per write request")
    close_timeout: PositiveSeconds = Field(
        30.0, description="how long closing the dataflow waits for buffered lines to be written"
    )
    gzip: bool = Field(False, description="compress request bodies (saves bandwidth, costs CPU)")
    verify_tls: bool = Field(True, description="check the server's certificate (https)")
    ca_file: Path | None = Field(None, description="CA bundle (PEM) to check the server's certificate")
    dead_letters: Path | None = Field(
        None,
        description="JSON lines file for rejected points; unset = the dataflow's dead-letter file",
    )

    @model_validator(mode="before")
    @classmethod
    def _infer_api(cls, data: Any) -> Any:
        """Empty connection settings count as not given; then infer ``api`` when it is unset.

        So one spec can serve both APIs from the environment: ``org: "${DTE_INFLUXDB_ORG:-}"``
        is simply absent when the variable is not set.
        """
        if not isinstance(data, dict) or set(data) - set(cls.model_fields):
            return data  # unknown fields: SpecModel names them first
        data = {
            k: None if k in (*cls.V1_FIELDS, *cls.V2_FIELDS, "api") and v == "" else v
            for k, v in data.items()
        }
        if data.get("api") is None:
            has_v1 = [k for k in cls.V1_FIELDS if data.get(k) is not None]
            has_v2 = [k for k in cls.V2_FIELDS if data.get(k) is not None]
            if has_v1 and has_v2:
                raise ValueError(
                    f"{', '.join(has_v1)} (InfluxDB 1.x, api v1) and {', '.join(has_v2)} (InfluxDB 2.x, "
                    "api v2) exclude each other; set api: v1 or api: v2 and only its settings"
                )
            data["api"] = "v2" if has_v2 else "v1"
        if data["api"] == "v1" and data.get("database") is None:
            data["database"] = cls.DEFAULT_DATABASE
        return data

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        url = value.strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "credentials do not belong in the url; use username and password (v1) or token (v2)"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r} must not have a query or fragment; the sink adds its own")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as exc:
            raise ValueError(f"{url!r}: {exc}") from None
        return url

    @field_validator("measurement")
    @classmethod
    def _check_measurement(cls, value: str) -> str:
        if _CONTROL.search(value):
            raise ValueError(f"{value[:40]!r} contains a control character")
        if value.startswith("#"):
            raise ValueError("must not start with '#': line protocol reads such a line as a comment")
        if _AMBIGUOUS_BACKSLASH.search(value):
            raise ValueError(
                f"{value[:40]!r} has a backslash before ',', '=', ' ', '\\' or at its end, "
                "which InfluxDB servers read differently"
            )
        return value

    @field_validator("database", "retention_policy", "org", "bucket")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and (_CONTROL.search(value) or value != value.strip()):
            raise ValueError(f"{value[:40]!r} has control characters or surrounding spaces")
        return value

    @model_validator(mode="after")
    def _check_api_settings(self) -> InfluxDBSinkSpec:
        if self.api == "v1":
            given = [k for k in self.V2_FIELDS if getattr(self, k) is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)}: v2 settings, but api is v1; "
                    "use database, retention_policy, username and password"
                )
            if self.password is not None and self.username is None:
                raise ValueError("password: given without username")
        else:
            given = [k for k in self.V1_FIELDS if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: v1 settings, but api is v2; use org, bucket and token")
            missing = [k for k in ("org", "bucket") if getattr(self, k) is None]
            if missing:
                raise ValueError(
                    f"{' and '.join(missing)}: required with api v2 (InfluxDB 1.8 and "
                    "VictoriaMetrics ignore org: any value will do)"
                )
        if self.max_buffer_lines is not None and self.max_buffer_lines < self.batch_size:
            raise ValueError(
                f"max_buffer_lines: must be at least batch_size ({self.batch_size}), "
                f"got {self.max_buffer_lines}"
            )
        if self.tags is not None and not {"twin_id", "channel"} <= set(self.tags):
            raise ValueError(f"tags: must include twin_id and channel (a point per reading), got {self.tags}")
        if self.fields is not None and len(set(self.fields)) != len(self.fields):
            raise ValueError(f"fields: each field once, got {self.fields}")
        if self.ca_file is not None and not self.url.startswith("https://"):
            raise ValueError("ca_file: only used with an https:// url")
        return self

    @property
    def buffer_lines(self) -> int:
        """Lines a worker's buffer holds: ``max_buffer_lines``, or twice ``batch_size`` when unset.

        Twice a batch keeps the writer busy (one batch in flight, the next one filling) while
        the end of an epoch, which waits until the buffer is written, stays one or two write
        round trips long. A cluster's processes wait for each other there, and Bytewax keeps
        a waiting process's input polling at full speed (docs/benchmarks.md, issue 9).

        >>> InfluxDBSinkSpec(kind="influxdb", database="d").buffer_lines
        10000
        >>> InfluxDBSinkSpec(kind="influxdb", database="d", max_buffer_lines=200_000).buffer_lines
        200000
        """
        return self.max_buffer_lines if self.max_buffer_lines is not None else 2 * self.batch_size

    def target(self) -> str:
        """Where the points go, without secrets: for logs and messages."""
        if self.api == "v1":
            rp = f", retention policy {self.retention_policy!r}" if self.retention_policy else ""
            return f"InfluxDB at {self.url} (database {self.database!r}{rp})"
        return f"InfluxDB at {self.url} (org {self.org!r}, bucket {self.bucket!r})"
