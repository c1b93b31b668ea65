"""The metrics registry and its Prometheus exposition."""

from __future__ import annotations

import threading

from prometheus_client.parser import text_string_to_metric_families

from dte_stream.metrics import MAX_REASONS, Metrics, exposition, reason_class


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(exposition(m).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_labels_given_as_arguments_or_in_the_name_are_the_same_series() -> None:
    m = Metrics()
    m.add("alerts_sent", 2, notifier="ops")
    m.add('alerts_sent{notifier="ops"}')
    m.add('alerts_sent{notifier="night"}', 5)
    assert m.get("alerts_sent", notifier="ops") == 3
    assert m.get("alerts_sent") == 8
    samples = _samples(m)
    assert samples[("dte_notifier_sent_total", (("notifier", "ops"),))] == 3
    assert samples[("dte_notifier_sent_total", (("notifier", "night"),))] == 5


def test_alert_state_counters_become_one_family_labelled_by_state() -> None:
    m = Metrics()
    m.add("alerts_firing", 3)
    m.add("alerts_resolved")
    samples = _samples(m)
    assert samples[("dte_alert_events_total", (("state", "firing"),))] == 3
    assert samples[("dte_alert_events_total", (("state", "resolved"),))] == 1


def test_reasons_are_reduced_to_their_stem_and_capped() -> None:
    m = Metrics()
    m.add_reasons(
        "dead_letters", ["not JSON: byte 3", "not JSON: byte 9", "row 4: 'x' missing"], stage="decode"
    )
    assert m.get("dead_letters", reason="not json") == 2
    assert m.get("dead_letters", stage="decode") == 3
    m.add_reasons(
        "dead_letters",
        [f"reason {chr(97 + i % 26)}{chr(97 + i // 26)}: y" for i in range(200)],
        stage="route",
    )
    reasons = {dict(labels)["reason"] for (name, labels) in _samples(m) if name == "dte_dead_letters_total"}
    assert len(reasons) <= MAX_REASONS + 1
    assert "other" in reasons
    assert m.get("dead_letters") == 203


def test_reason_class_drops_the_values_that_vary() -> None:
    assert reason_class("value 'abc' is not a number") == "value"
    assert reason_class("unknown channel 'x' of twin type 'pump'") == "unknown channel"
    assert reason_class("") == "other"


def test_gauge_keys_become_labels() -> None:
    m = Metrics()
    m.set_gauge("twins", "pump/0001", 10)
    m.set_gauge("twins", "pump/0002", 12)
    m.set_gauge("kafka_lag", "plant:readings/3", 40)
    m.set_gauge("influxdb_buffer_lines", "influx/0", 5)
    m.set_gauge("something_new", "x", 1.5)
    assert m.gauge("twins") == 22
    samples = _samples(m)
    assert samples[("dte_twins_active", (("shard", "0002"), ("twin_type", "pump")))] == 12
    assert (
        samples[("dte_kafka_consumer_lag", (("partition", "3"), ("source", "plant"), ("topic", "readings")))]
        == 40
    )
    assert samples[("dte_influxdb_buffer_lines", (("worker", "influx/0"),))] == 5
    assert samples[("dte_something_new", (("part", "x"),))] == 1.5
    m.drop_gauge("twins", "pump/0001")
    assert m.gauge("twins") == 12


def test_histograms_are_cumulative_with_sum_and_count() -> None:
    m = Metrics()
    for value in (0.0004, 0.003, 0.003, 7.0):
        m.observe("batch_seconds", value)
    samples = _samples(m)
    assert samples[("dte_batch_seconds_bucket", (("le", "0.0005"),))] == 1
    assert samples[("dte_batch_seconds_bucket", (("le", "0.005"),))] == 3
    assert samples[("dte_batch_seconds_bucket", (("le", "5.0"),))] == 3
    assert samples[("dte_batch_seconds_bucket", (("le", "+Inf"),))] == 4
    assert samples[("dte_batch_seconds_count", ())] == 4
    assert abs(samples[("dte_batch_seconds_sum", ())] - 7.0064) < 1e-9


def test_unknown_names_are_exported_with_a_dte_prefix_and_label_values_escaped() -> None:
    m = Metrics()
    m.add("my.connector-thing", 4)
    m.add("readings_in", 1, source='we"ird\\name')
    samples = _samples(m)
    assert samples[("dte_my_connector_thing_total", ())] == 4
    assert samples[("dte_readings_in_total", (("source", 'we"ird\\name'),))] == 1


def test_counts_from_many_threads_add_up() -> None:
    m = Metrics()

    def work() -> None:
        for _ in range(1000):
            m.add("readings_in", 2, source="s")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.get("readings_in") == 8000
    m.reset()
    assert m.get("readings_in") == 0
