"""Spec models of the twin state view: where shards publish the twins that changed.

``view: {kind: sqlite}`` (the default) is the SQLite file in the data directory that every
process on one host writes; ``view: {kind: kafka, bootstrap_servers, topic}`` is a compacted
Kafka topic keyed by twin id, for an API on other hosts (``dte-stream serve --view
kafka://HOST:PORT/TOPIC``). See docs/api.md for the choice and its limits.

>>> ViewSpecAdapter.validate_python({"kind": "kafka", "bootstrap_servers": "k:9092"}).topic
'dte.twin_view'
>>> parse_view_url("kafka://k1:9092,k2:9092/plant.view").bootstrap_servers
'k1:9092,k2:9092'
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qsl, unquote

from pydantic import Field, TypeAdapter, ValidationError

from dte_stream.errors import ConfigError
from dte_stream.spec.base import SpecModel
from dte_stream.spec.interpolate import interpolate
from dte_stream.spec.kafka import KafkaProducerSpec, Topic, is_secret_setting

__all__ = ["KafkaViewSpec", "SqliteViewSpec", "ViewSpec", "ViewSpecAdapter", "parse_view_url"]


class SqliteViewSpec(SpecModel):
    """The view as one SQLite file (WAL mode) in the data directory: every process on this host
    writes it, ``run --http`` and ``serve`` on this host read it."""

    kind: Literal["sqlite"] = "sqlite"


class KafkaViewSpec(KafkaProducerSpec):
    """The view as a compacted Kafka topic: key = twin id, value = the twin's view record (JSON).

    Each process publishes the twins its shards changed, at the pace of the SQLite view.
    ``create_topic`` creates the topic with ``cleanup.policy=compact`` when it is missing;
    ``local`` also writes the SQLite view of this host (for an API beside the dataflow).
    Delivery failures are counted (``dte_view_delivery_errors_total``), logged once per outage,
    and the twins concerned are published again with the next change set.
    """

    kind: Literal["kafka"]
    topic: Topic = "dte.twin_view"
    local: bool = Field(False, description="also write the SQLite view in the data directory")


#: An environment reference in a setting's value (``${NAME}``, ``${NAME:-default}``).
_REFERENCE = re.compile(r"\$\{[^}]+\}")

ViewSpec = Annotated[SqliteViewSpec | KafkaViewSpec, Field(discriminator="kind")]
ViewSpecAdapter: TypeAdapter[SqliteViewSpec | KafkaViewSpec] = TypeAdapter(ViewSpec)


def parse_view_url(url: str, env: Mapping[str, str] | None = None) -> KafkaViewSpec:
    """``kafka://HOST:PORT[,HOST:PORT...]/TOPIC[?SETTING=VALUE&...]`` -> :class:`KafkaViewSpec`.

    The query holds librdkafka settings, the same a Kafka source's or sink's ``settings`` take
    (``security.protocol``, ``sasl.mechanism``, ``sasl.username``, ``ssl.ca.location``, ...) and
    checked alike. Values may hold ``${ENV_VAR}`` references (``env``: default ``os.environ``);
    a secret (``sasl.password``, ``ssl.key.password``, ...) must be one, never the secret itself,
    which would show in ``ps`` and the shell's history. Files named by a ``*.location`` setting
    must exist. Errors name the setting.

    >>> spec = parse_view_url("kafka://k:9093/v?security.protocol=SASL_SSL&sasl.username=api"
    ...                       "&sasl.password=${PW}", env={"PW": "hunter2"})
    >>> spec.masked_config()["sasl.password"], spec.client_config()["sasl.password"]
    ('**********', 'hunter2')
    >>> parse_view_url("kafka://k:9093/v?sasl.password=hunter2")
    Traceback (most recent call last):
    ...
    dte_stream.errors.ConfigError: --view: sasl.password is a secret: give it as sasl.password=${ENV_VAR} ...
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "kafka":
        raise ConfigError(
            f"--view {_shown(url)!r}: expected kafka://HOST:PORT/TOPIC[?SETTING=VALUE&...] "
            "(or a spec's view section)"
        )
    main, _, query = rest.partition("?")
    servers, _, topic = main.partition("/")
    settings = _url_settings(query, os.environ if env is None else env)
    try:
        return KafkaViewSpec(
            kind="kafka",
            bootstrap_servers=servers,
            topic=unquote(topic) or "dte.twin_view",
            settings=settings,  # the model holds the secrets as SecretStr
        )
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"--view {_shown(url)!r}: {reasons}") from None


def _shown(url: str) -> str:
    """``url`` without its query (which may hold settings): safe to print."""
    return url.partition("?")[0] + ("?..." if "?" in url else "")


def _url_settings(query: str, env: Mapping[str, str]) -> dict[str, str]:
    if not query:
        return {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ConfigError(
            "--view: the settings after '?' must be SETTING=VALUE pairs joined by '&' "
            "(for example ?security.protocol=SSL&ssl.ca.location=/etc/kafka/ca.pem)"
        ) from None
    settings: dict[str, str] = {}
    for key, raw in pairs:
        if key in settings:
            raise ConfigError(f"--view: {key} is given twice")
        if is_secret_setting(key) and not _REFERENCE.search(raw):
            raise ConfigError(
                f"--view: {key} is a secret: give it as {key}=${{ENV_VAR}} (in single quotes, with the "
                "variable set), never its value on the command line"
            )
        problems: list[str] = []
        value = str(interpolate(raw, env, key, problems))
        if problems:
            raise ConfigError(f"--view: {problems[0]}")
        if key.endswith(".location") and value != "probe" and not Path(value).exists():
            raise ConfigError(f"--view: {key}: {value} does not exist")
        settings[key] = value
    return settings
