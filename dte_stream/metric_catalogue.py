"""The metrics dte-stream records: their Prometheus names, help texts, labels and buckets.

:data:`CATALOGUE` maps the short names used in the code (``METRICS.add("readings_in", ...)``)
to how they are exported; :mod:`dte_stream.metrics` counts and exports them, and
``docs/operations.md`` lists them for operators. A name missing here is still exported
(``dte_<name>_total`` or ``dte_<name>``), so a connector's new counter is never lost.

>>> CATALOGUE["readings_in"].name
'dte_readings_in_total'
>>> CATALOGUE["twins"].key_labels("pump/0003")
{'twin_type': 'pump', 'shard': '0003'}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["CATALOGUE", "LAG_BUCKETS", "LATENCY_BUCKETS", "MetricInfo"]

#: Upper bounds (seconds) of the latency histograms: micro-batches take about a millisecond,
#: end-to-end lag is seconds (epochs, sink buffers), snapshots tens of milliseconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


@dataclass(frozen=True)
class MetricInfo:
    """How one dte-stream metric is exported: Prometheus name, help text, gauge key labels."""

    name: str
    help: str
    #: for gauges: the labels a part's key is split into (``"pump/0003"`` -> twin_type, shard)
    key_labels: Callable[[str], dict[str, str]] | None = None
    buckets: Sequence[float] = field(default=LATENCY_BUCKETS)


def _shard_labels(key: str) -> dict[str, str]:
    twin_type, _, shard = key.rpartition("/")
    return {"twin_type": twin_type, "shard": shard} if twin_type else {"part": key}


def _partition_labels(key: str) -> dict[str, str]:
    source, _, rest = key.partition(":")
    topic, _, partition = rest.rpartition("/")
    if not topic:
        return {"part": key}
    return {"source": source, "topic": topic, "partition": partition}


#: The metrics dte-stream records, by the short name used in the code.
CATALOGUE: dict[str, MetricInfo] = {
    # data path
    "payloads_in": MetricInfo(
        "dte_payloads_in_total", "Payloads (messages, records, lines) received per source"
    ),
    "readings_in": MetricInfo("dte_readings_in_total", "Readings decoded per source"),
    "readings_processed": MetricInfo("dte_readings_processed_total", "Readings applied to twin state"),
    "readings_from_other_processes": MetricInfo(
        "dte_readings_from_other_processes_total",
        "Readings a shard of this process got from another process of its cluster",
    ),
    "duplicate_readings": MetricInfo(
        "dte_duplicate_readings_total",
        "Readings not applied: the twin, channel and event time of one applied (kind copy or conflict)",
    ),
    "decode_errors": MetricInfo("dte_decode_errors_total", "Payloads or rows refused by a codec, by reason"),
    "dead_letters": MetricInfo("dte_dead_letters_total", "Dead letters by stage and reason"),
    "stale_sensors": MetricInfo("dte_stale_sensor_reports_total", "Sensors reported stale"),
    "twins_evicted": MetricInfo("dte_twins_evicted_total", "Twins evicted after their idle TTL"),
    "twins": MetricInfo("dte_twins_active", "Twins held in state, per twin type and shard", _shard_labels),
    "batch_seconds": MetricInfo("dte_batch_seconds", "Time to apply one micro-batch to a shard"),
    "end_to_end_lag_seconds": MetricInfo(
        "dte_end_to_end_lag_seconds",
        "Wall time at the sinks minus the newest event time of the batch",
        buckets=LAG_BUCKETS,
    ),
    "end_to_end_lag_last": MetricInfo(
        "dte_end_to_end_lag_last_seconds", "End-to-end lag of the latest batch", lambda key: {}
    ),
    "snapshot_seconds": MetricInfo("dte_snapshot_seconds", "Time to snapshot one shard's state"),
    "snapshot_bytes": MetricInfo(
        "dte_snapshot_bytes", "Size of the latest state snapshot per twin type and shard", _shard_labels
    ),
    # HTTP API
    "api_requests": MetricInfo(
        "dte_api_requests_total", "HTTP requests the API answered, by method, route and status"
    ),
    "api_request_seconds": MetricInfo(
        "dte_api_request_seconds", "Time from a request's arrival to the start of its answer, by route"
    ),
    # live reload
    "spec_reloads": MetricInfo(
        "dte_spec_reloads_total", "Spec reloads (SIGHUP or a changed file) by result: applied, refused"
    ),
    "spec_version": MetricInfo("dte_spec_version", "Version of the spec the process runs", lambda key: {}),
    # alerts
    "alerts_active": MetricInfo(
        "dte_alerts_active",
        "Alerts now pending, firing (not acknowledged) or acknowledged, per twin type and shard",
        _shard_labels,
    ),
    "alerts_sent": MetricInfo("dte_notifier_sent_total", "Alert events delivered per notifier"),
    "alerts_failed_attempts": MetricInfo(
        "dte_notifier_failed_attempts_total", "Notifier attempts that failed (each retry counts)"
    ),
    "alerts_dropped": MetricInfo("dte_notifier_dropped_total", "Alert events a notifier gave up on"),
    "alerts_queued": MetricInfo(
        "dte_notifier_queued", "Alert events waiting per notifier", lambda key: {"notifier": key}
    ),
    # Kafka
    "kafka_lag": MetricInfo(
        "dte_kafka_consumer_lag", "Records behind the partition's high watermark", _partition_labels
    ),
    "kafka_records_in": MetricInfo("dte_kafka_records_in_total", "Kafka records consumed"),
    "kafka_consumer_errors": MetricInfo("dte_kafka_consumer_errors_total", "Kafka consumer error events"),
    "kafka_records_out": MetricInfo("dte_kafka_records_out_total", "Kafka records produced"),
    "kafka_delivery_errors": MetricInfo("dte_kafka_delivery_errors_total", "Kafka records not delivered"),
    # twin view on Kafka
    "view_records_out": MetricInfo("dte_view_records_out_total", "Twin view records produced to Kafka"),
    "view_delivery_errors": MetricInfo(
        "dte_view_delivery_errors_total", "Twin view records Kafka did not take (sent again later)"
    ),
    "view_records_in": MetricInfo("dte_view_records_in_total", "Twin view records read from Kafka"),
    "view_records_rejected": MetricInfo(
        "dte_view_records_rejected_total",
        "Records on the twin view topic that are not view records, by reason",
    ),
    # InfluxDB
    "influxdb_points_written": MetricInfo("dte_influxdb_points_written_total", "Points InfluxDB stored"),
    "influxdb_stored_lag_seconds": MetricInfo(
        "dte_influxdb_stored_lag_seconds",
        "Per point: wall time when InfluxDB acknowledged its write minus the point's time",
        buckets=LAG_BUCKETS,
    ),
    "influxdb_retries": MetricInfo("dte_influxdb_retries_total", "InfluxDB write attempts repeated"),
    "influxdb_write_failures": MetricInfo(
        "dte_influxdb_write_failures_total", "InfluxDB write attempts that failed for want of a server"
    ),
    "influxdb_points_dropped": MetricInfo(
        "dte_influxdb_points_dropped_total", "Points lost by the InfluxDB sink's drop policy"
    ),
    "influxdb_buffer_lines": MetricInfo(
        "dte_influxdb_buffer_lines",
        "Lines waiting in the InfluxDB sink's buffer",
        lambda key: {"worker": key},
    ),
    # MQTT
    "mqtt_messages_in": MetricInfo("dte_mqtt_messages_in_total", "MQTT messages received"),
    "mqtt_buffer_full": MetricInfo(
        "dte_mqtt_buffer_full_total", "Times the MQTT source's buffer was full (the broker waits)"
    ),
    "mqtt_spooled": MetricInfo("dte_mqtt_spooled_total", "MQTT messages written to the disk spool"),
    "mqtt_spool_bytes": MetricInfo(
        "dte_mqtt_spool_bytes", "Bytes in the MQTT source's disk spool", lambda key: {"client": key}
    ),
    "mqtt_spool_full": MetricInfo(
        "dte_mqtt_spool_full_total", "Times the MQTT spool was full (acknowledgements stopped)"
    ),
    "mqtt_spool_write_errors": MetricInfo(
        "dte_mqtt_spool_write_errors_total", "Failed writes to the MQTT spool (disk full, I/O error)"
    ),
    "mqtt_spool_dropped": MetricInfo(
        "dte_mqtt_spool_dropped_total", "MQTT spool records that could not be read back (dead letters)"
    ),
}
