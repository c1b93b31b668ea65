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

from typing import Annotated, Literal
from urllib.parse import unquote

from pydantic import Field, TypeAdapter, ValidationError

from dte_stream.errors import ConfigError
from dte_stream.spec.base import SpecModel
from dte_stream.spec.kafka import KafkaProducerSpec, Topic

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


ViewSpec = Annotated[SqliteViewSpec | KafkaViewSpec, Field(discriminator="kind")]
ViewSpecAdapter: TypeAdapter[SqliteViewSpec | KafkaViewSpec] = TypeAdapter(ViewSpec)


def parse_view_url(url: str) -> KafkaViewSpec:
    """``kafka://HOST:PORT[,HOST:PORT...]/TOPIC`` -> :class:`KafkaViewSpec` (no settings).

    Brokers that need TLS or SASL are configured in a spec's ``view`` section (``serve --spec``).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "kafka":
        raise ConfigError(f"--view {url!r}: expected kafka://HOST:PORT/TOPIC (or a spec's view section)")
    servers, _, topic = rest.partition("/")
    try:
        return KafkaViewSpec(kind="kafka", bootstrap_servers=servers, topic=unquote(topic) or "dte.twin_view")
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"--view {url!r}: {reasons}") from None
