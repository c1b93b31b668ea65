"""Process-wide counters, gauges and histograms, exported in Prometheus' text format.

Everything that runs in a dataflow counts here: the progress line and the summary read
:data:`METRICS` directly, and ``/metrics`` (:mod:`dte_stream.api.health`) serves it through
prometheus-client with :data:`REGISTRY`. Updates are made once per batch, never per reading,
so one lock is cheap; the Prometheus names and labels are worked out only when scraped.

A metric is named by a short snake_case name (``readings_in``) and optional labels, given as
keyword arguments (``METRICS.add("readings_in", 5, source="plant")``) or written into the
name (``'alerts_sent{notifier="ops"}'``). :data:`~dte_stream.metric_catalogue.CATALOGUE` maps
the names dte-stream uses to their Prometheus names and help texts; a name missing from it is
still exported, as ``dte_<name>_total`` (counters) or ``dte_<name>`` (gauges), so a connector's
new counter is never lost.

>>> m = Metrics()
>>> m.add("readings_in", 5, source="a"); m.add("readings_in", 2, source="b"); m.get("readings_in")
7
>>> m.get("readings_in", source="b")
2
>>> m.set_gauge("twins", "pump/0001", 40); m.set_gauge("twins", "pump/0002", 2); m.gauge("twins")
42
>>> m.observe("batch_seconds", 0.002)
>>> m.observe_many("end_to_end_lag_seconds", np.array([0.2, 0.5, 3.0]))
>>> text = exposition(m).decode()
>>> 'dte_readings_in_total{source="a"} 5.0' in text
True
>>> 'dte_twins_active{shard="0001",twin_type="pump"} 40.0' in text
True
>>> 'dte_end_to_end_lag_seconds_bucket{le="0.5"} 2.0' in text
True
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from dte_stream.metric_catalogue import CATALOGUE, LATENCY_BUCKETS, MetricInfo

__all__ = [
    "CATALOGUE",
    "METRICS",
    "REGISTRY",
    "MetricInfo",
    "Metrics",
    "exposition",
    "merged_exposition",
    "reason_class",
    "set_alert_gauges",
]

Labels = tuple[tuple[str, str], ...]

#: At most this many reason classes per metric; more are counted as ``other``.
MAX_REASONS = 64


_ALERT_STATE = re.compile(r"^alerts_(pending|firing|resolved|acknowledged|renotified|[a-z_]+)$")
_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_LABELLED = re.compile(r"^([a-zA-Z_][a-zA-Z0-9_]*)\{(.*)\}$")
_ESCAPED = re.compile(r"\\(.)")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def _key(name: str, labels: Mapping[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unescape(value: str) -> str:
    return _ESCAPED.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _split(key: str) -> tuple[str, dict[str, str]]:
    """``'alerts_sent{notifier="ops"}'`` -> ``("alerts_sent", {"notifier": "ops"})``."""
    match = _LABELLED.match(key)
    if match is None:
        return key, {}
    return match.group(1), {m.group(1): _unescape(m.group(2)) for m in _LABEL.finditer(match.group(2))}


def reason_class(reason: str) -> str:
    """The label value of a free-text reason: its stem, without the values that vary.

    Dead-letter reasons carry the offending value (``"not JSON: unexpected character at 5"``);
    a label must not, or every payload makes a new series. The stem is the text before the
    first colon, quote or digit, lower case, at most 48 characters.

    >>> reason_class("row 12: 'temp' is not a number")
    'row'
    >>> reason_class("not JSON: unexpected character at 5")
    'not json'
    >>> reason_class("twin 'pump-1' is not declared")
    'twin'
    """
    stem = re.split(r"[:'\"0-9(\[{]", reason, maxsplit=1)[0].strip().lower()
    return stem[:48] or "other"


class _Histogram:
    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def observe_many(self, values: npt.NDArray[np.float64]) -> None:
        # searchsorted "left" is bisect_left: a value equal to a bound counts in that bucket (le)
        counts = np.bincount(np.searchsorted(self.bounds, values), minlength=len(self.counts))
        self.counts = [a + int(b) for a, b in zip(self.counts, counts, strict=True)]
        self.count += len(values)
        self.total += float(values.sum())


class Metrics:
    """Named counters, gauges (summed over parts) and histograms, safe across worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {}
        self._gauges: dict[tuple[str, str], float] = {}
        self._histograms: dict[str, _Histogram] = {}
        self._reasons: dict[str, set[str]] = {}

    def add(self, name: str, amount: int = 1, **labels: str) -> None:
        """Add ``amount`` to a counter (labels as keyword arguments, or written into ``name``)."""
        key = _key(name, labels)
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + amount

    def add_reasons(self, name: str, reasons: Iterable[str], **labels: str) -> None:
        """Count one event per reason, labelled by :func:`reason_class` (at most :data:`MAX_REASONS`)."""
        counts: dict[str, int] = {}
        for reason in reasons:
            stem = reason_class(reason)
            counts[stem] = counts.get(stem, 0) + 1
        with self._lock:
            known = self._reasons.setdefault(name, set())
            for stem, n in counts.items():
                label = stem
                if stem not in known:
                    if len(known) >= MAX_REASONS:
                        label = "other"
                    known.add(label)
                key = _key(name, {**labels, "reason": label})
                self._counters[key] = self._counters.get(key, 0) + n

    def get(self, name: str, **labels: str) -> int:
        """A counter's value: the sum over every label set that has ``labels``."""
        prefix = name + "{"
        with self._lock:
            total = 0 if labels else self._counters.get(name, 0)
            for key, value in self._counters.items():
                if key.startswith(prefix) and _has(key, labels):
                    total += value
            return total

    def set_gauge(self, name: str, key: str, value: float) -> None:
        """Set one part of a gauge (for example the twin count of one shard)."""
        with self._lock:
            self._gauges[(name, key)] = value

    def drop_gauge(self, name: str, key: str) -> None:
        """Forget one part of a gauge (a shard that closed, a partition no longer read)."""
        with self._lock:
            self._gauges.pop((name, key), None)

    def gauge(self, name: str) -> int:
        """The sum of a gauge's parts."""
        with self._lock:
            return int(sum(v for (n, _), v in self._gauges.items() if n == name))

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation (seconds) in a histogram (labels as for :meth:`add`)."""
        key = _key(name, labels) if labels else name
        with self._lock:
            hist = self._histograms.get(key)
            if hist is None:
                info = CATALOGUE.get(_split(key)[0])
                hist = self._histograms[key] = _Histogram(info.buckets if info else LATENCY_BUCKETS)
            hist.observe(value)

    def observe_many(self, name: str, values: npt.NDArray[np.float64]) -> None:
        """Record many observations at once (one lock, one vectorised bucket count)."""
        if not len(values):
            return
        with self._lock:
            hist = self._histograms.get(name)
            if hist is None:
                info = CATALOGUE.get(name)
                hist = self._histograms[name] = _Histogram(info.buckets if info else LATENCY_BUCKETS)
            hist.observe_many(values)

    def counters(self) -> Mapping[str, int]:
        with self._lock:
            return dict(self._counters)

    def reset(self) -> None:
        with self._lock:
            self._counters.clear()
            self._gauges.clear()
            self._histograms.clear()
            self._reasons.clear()

    def families(self) -> Iterator[Metric]:
        """The Prometheus metric families of everything recorded so far."""
        with self._lock:
            counters = dict(self._counters)
            gauges = dict(self._gauges)
            histograms = {
                name: (h.bounds, list(h.counts), h.count, h.total) for name, h in self._histograms.items()
            }
        yield from _counter_families(counters)
        yield from _gauge_families(gauges)
        yield from _histogram_families(histograms)


def _has(key: str, labels: Mapping[str, str]) -> bool:
    if not labels:
        return True
    _, have = _split(key)
    return all(have.get(k) == v for k, v in labels.items())


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def _sanitise(name: str) -> str:
    return _NAME_CHARS.sub("_", name)


def _counter_families(counters: Mapping[str, int]) -> Iterator[Metric]:
    series: dict[str, dict[Labels, float]] = {}
    helps: dict[str, str] = {}
    for key, value in counters.items():
        name, labels = _split(key)
        state = _ALERT_STATE.match(name)
        info = CATALOGUE.get(name)
        if info is not None:
            prom, help_text = info.name, info.help
        elif state is not None and state.group(1) not in ("sent", "failed_attempts", "dropped", "queued"):
            prom, help_text = "dte_alert_events_total", "Alert state changes, by the state entered"
            labels = {**labels, "state": state.group(1)}
        else:
            base = _sanitise(name)
            prom = f"dte_{base}" if base.endswith("_total") else f"dte_{base}_total"
            help_text = f"dte-stream counter {name}"
        helps[prom] = help_text
        label_key = tuple(sorted(labels.items()))
        bucket = series.setdefault(prom, {})
        bucket[label_key] = bucket.get(label_key, 0.0) + float(value)
    for prom in sorted(series):
        # CounterMetricFamily adds the _total suffix itself
        yield _family(CounterMetricFamily, prom.removesuffix("_total"), helps[prom], series[prom])


def _gauge_families(gauges: Mapping[tuple[str, str], float]) -> Iterator[Metric]:
    series: dict[str, dict[Labels, float]] = {}
    helps: dict[str, str] = {}
    for (key_name, part), value in gauges.items():
        name, labels = _split(key_name)
        info = CATALOGUE.get(name)
        if info is not None:
            prom, help_text = info.name, info.help
            labels = {**labels, **(info.key_labels(part) if info.key_labels else {"part": part})}
        else:
            prom, help_text = f"dte_{_sanitise(name)}", f"dte-stream gauge {name}"
            labels = {**labels, "part": part}
        helps[prom] = help_text
        label_key = tuple(sorted(labels.items()))
        bucket = series.setdefault(prom, {})
        bucket[label_key] = bucket.get(label_key, 0.0) + float(value)
    for prom in sorted(series):
        yield _family(GaugeMetricFamily, prom, helps[prom], series[prom])


def _histogram_families(
    histograms: Mapping[str, tuple[tuple[float, ...], list[int], int, float]],
) -> Iterator[Metric]:
    series: dict[str, list[tuple[dict[str, str], tuple[float, ...], list[int], float]]] = {}
    helps: dict[str, str] = {}
    for key, (bounds, counts, _count, total) in histograms.items():
        name, labels = _split(key)
        info = CATALOGUE.get(name)
        prom = info.name if info else f"dte_{_sanitise(name)}"
        helps[prom] = info.help if info else f"dte-stream histogram {name}"
        series.setdefault(prom, []).append((labels, bounds, counts, total))
    for prom in sorted(series):
        names = sorted({k for labels, *_ in series[prom] for k in labels})
        family = HistogramMetricFamily(prom, helps[prom], labels=names)
        for labels, bounds, counts, total in sorted(series[prom], key=lambda s: sorted(s[0].items())):
            cumulative, running = [], 0
            for bound, n in zip((*bounds, float("inf")), counts, strict=True):
                running += n
                cumulative.append((_bound(bound), float(running)))
            family.add_metric([labels.get(n, "") for n in names], cumulative, total)
        yield family


def _family(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    help_text: str,
    values: Mapping[Labels, float],
) -> Metric:
    names = sorted({k for labels in values for k, _ in labels})
    family = kind(name, help_text, labels=names)
    for labels, value in sorted(values.items()):
        have = dict(labels)
        family.add_metric([have.get(n, "") for n in names], value)
    return family


class _Exporter(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self.metrics.families())


#: The metrics of this process.
METRICS = Metrics()

#: The states of ``dte_alerts_active`` (resolved alerts are not active).
ALERT_GAUGE_STATES = ("pending", "firing", "acknowledged")


def set_alert_gauges(part: str, counts: Mapping[str, int] | None, metrics: Metrics | None = None) -> None:
    """Set ``dte_alerts_active{state}`` of one part (``"pump/0003"``) from an alert engine's counts.

    The counts are the engine's current state (:meth:`~dte_stream.alerts.rules.AlertEngine.counts`),
    not a tally of events, so the gauge is right after a restart; None (no alert rules) drops the part.

    >>> m = Metrics()
    >>> set_alert_gauges("pump/0001", {"firing": 2, "acknowledged": 1}, m)
    >>> set_alert_gauges("pump/0002", {"firing": 1}, m)
    >>> m.gauge('alerts_active{state="firing"}'), m.gauge('alerts_active{state="pending"}')
    (3, 0)
    >>> set_alert_gauges("pump/0002", None, m); m.gauge('alerts_active{state="firing"}')
    2
    """
    target = METRICS if metrics is None else metrics
    for state in ALERT_GAUGE_STATES:
        name = _key("alerts_active", {"state": state})
        if counts is None:
            target.drop_gauge(name, part)
        else:
            target.set_gauge(name, part, counts.get(state, 0))


#: What ``/metrics`` serves: :data:`METRICS` and the process' CPU, memory and file descriptors.
REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(_Exporter(METRICS))
ProcessCollector(registry=REGISTRY)


def exposition(metrics: Metrics | None = None) -> bytes:
    """The Prometheus text exposition of ``metrics`` (default: this process, with process metrics)."""
    if metrics is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Exporter(metrics))
    return generate_latest(registry)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def merged_exposition(other: str, metrics: Metrics | None = None, *, process: str = "api") -> bytes:
    """Another process's exposition (``other``, in the text format) with this process's metrics
    added: ``/metrics`` of the API process beside a dataflow (the dataflow's, then the API's own).

    A family that both have (the process collector's ``process_*``, a ``dte_*`` counter both count)
    keeps the other's samples and gets this process's with the label ``process`` (``"api"``).

    >>> m = Metrics(); m.add("api_requests", 3, route="/healthz")
    >>> text = merged_exposition('dte_readings_in_total{source="a"} 5.0\\n', m).decode()
    >>> 'dte_readings_in_total{source="a"} 5.0' in text
    True
    >>> 'dte_api_requests_total{route="/healthz"} 3.0' in text
    True
    """
    families = {f.name: f for f in text_string_to_metric_families(other)}
    own = REGISTRY.collect() if metrics is None else _Exporter(metrics).collect()
    for family in own:
        there = families.get(family.name)
        if there is None:
            families[family.name] = family
        elif there.type == family.type:
            there.samples.extend(
                sample._replace(labels={**sample.labels, "process": process}) for sample in family.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)
