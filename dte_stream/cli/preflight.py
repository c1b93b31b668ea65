"""The start-up check of ``dte-stream run``: every service answers before the dataflow starts.

Inside the engine a service that cannot be used shows up late and wrapped (a panic, a
traceback, or a sink that retries for ever); checked here, before Bytewax starts, each
problem is one :class:`~dte_stream.errors.ConnectorError` line with its cause and fix:

========================= =====================================================================
Kafka (sources, sinks,    no broker answers; credentials refused (SASL); TLS handshake failed;
dead-letter sinks, the    a topic does not exist (created when ``create_topic`` says how; the
twin view topic)          view topic with ``cleanup.policy=compact``)
InfluxDB                  not reachable (refused, no such host, TLS); credentials refused;
                          no such database or bucket; no permission to write
MQTT                      checked when its client connects (the source or sink's build), with
                          the same one-line errors (refused, TLS, bad credentials)
========================= =====================================================================
"""

from __future__ import annotations

from dte_stream.spec import DataflowSpec
from dte_stream.spec.influxdb import InfluxDBSinkSpec
from dte_stream.spec.kafka import KafkaDeadLetterSinkSpec, KafkaSinkSpec, KafkaSourceSpec
from dte_stream.spec.view import KafkaViewSpec

__all__ = ["preflight"]


def preflight(spec: DataflowSpec) -> None:
    """Check every Kafka and InfluxDB endpoint of ``spec``; raise the first problem found."""
    from dte_stream.connectors.influxdb import InfluxDBSink
    from dte_stream.connectors.kafka.client import check_cluster

    for source in spec.sources:
        if isinstance(source, KafkaSourceSpec):
            check_cluster(source, f"source {source.name}", list(source.topics))
    for sink in spec.sinks:
        if isinstance(sink, KafkaSinkSpec):
            check_cluster(sink, f"sink {sink.name}", [sink.topic])
        elif isinstance(sink, InfluxDBSinkSpec):
            InfluxDBSink(sink).preflight()
    for target in spec.dead_letters.sinks:
        if isinstance(target, KafkaDeadLetterSinkSpec):
            check_cluster(target, "dead letters", [target.topic])
    if isinstance(spec.view, KafkaViewSpec):
        from dte_stream.connectors.kafka.view import VIEW_TOPIC_CONFIG

        check_cluster(spec.view, "twin view", [spec.view.topic], VIEW_TOPIC_CONFIG)
