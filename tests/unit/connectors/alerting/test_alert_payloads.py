"""Alert integrations without services: specs, exact payloads, HMAC signatures, and the
dispatcher's retries, ordering, isolation and counting with fake notifiers."""

from __future__ import annotations

import doctest
import hashlib
import hmac
import importlib
import random
import threading
import time
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from dte_stream.batches import AlertEvent
from dte_stream.connectors.alerting import (
    AlertDispatcher,
    DeliveryError,
    alert_record,
    alert_topic,
    alertmanager_alert,
    backoff_delay,
    metric_name,
    signature,
    slack_payload,
    verify_signature,
    webhook_body,
)
from dte_stream.connectors.alerting import alertmanager as am_module
from dte_stream.connectors.alerting.alertmanager import AlertmanagerNotifier
from dte_stream.connectors.alerting.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookNotifier
from dte_stream.metrics import METRICS
from dte_stream.spec.notify import NOTIFIERS, AlertmanagerNotifierSpec, NotifierRetrySpec, WebhookNotifierSpec

T0 = 1_767_323_045_000_000_000  # 2026-01-02T03:04:05Z
S = 1_000_000_000


def event(state: str = "firing", seq: int = 0, alert: str = "pump-1/overheat", **kw: Any) -> AlertEvent:
    twin, _, rule = alert.rpartition("/")
    fields: dict[str, Any] = {
        "starts_ns": T0,
        "time_ns": T0 + seq * S,
        "message": "temperature 97.5 > 95",
        "labels": {"site": "north"},
        "value": 97.5,
        "sequence": seq,
    }
    if state == "resolved":
        fields["ends_ns"] = T0 + seq * S
    fields.update(kw)
    return AlertEvent(alert, twin, "pump", rule, state, "critical", **fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


def test_specs_by_kind_with_defaults() -> None:
    specs = NOTIFIERS.validate_python(
        [
            {"kind": "alertmanager", "url": "http://127.0.0.1:9093/"},
            {"kind": "webhook", "url": "https://h.example.com/x"},
            {"kind": "slack", "url": "https://hooks.slack.com/services/T/B/X"},
            {"kind": "mqtt", "url": "mqtt://127.0.0.1"},
            {"kind": "kafka", "bootstrap_servers": "127.0.0.1:9092"},
        ]
    )
    assert [s.name for s in specs] == ["alertmanager", "webhook", "slack", "mqtt", "kafka"]
    assert specs[0].url == "http://127.0.0.1:9093"  # type: ignore[union-attr]
    assert specs[0].wanted_states() == {"firing", "resolved"}
    assert specs[1].wanted_states() == {"firing", "resolved", "acknowledged"}
    assert specs[2].wanted_states() == {"firing", "resolved"}
    assert specs[3].topic == "dte/alerts/{twin_id}/{rule}"  # type: ignore[union-attr]
    assert specs[4].topic == "dte.alerts"  # type: ignore[union-attr]
    assert specs[1].retries.max_attempts is None


def test_secrets_never_printed_or_echoed() -> None:
    specs = NOTIFIERS.validate_python(
        [
            {
                "kind": "webhook",
                "url": "https://h.example.com/x",
                "secret": "hunter2-secret",
                "headers": {"Authorization": "Bearer tok3n-secret"},
            },
            {"kind": "slack", "url": "https://hooks.slack.com/services/T/B/xoxb-secret"},
            {"kind": "mqtt", "url": "mqtt://h", "username": "u", "password": "mqtt-secret"},
            {"kind": "kafka", "bootstrap_servers": "h:9092", "settings": {"sasl.password": "kafka-secret"}},
        ]
    )
    text = repr(specs) + str(specs)
    assert "secret" not in text.replace("secret=", "").replace("'sasl.password'", "")
    with pytest.raises(ValidationError) as info:
        NOTIFIERS.validate_python(
            [{"kind": "webhook", "url": "https://u:pw-secret@h/x", "secret": "hunter2-secret", "timeout": -1}]
        )
    assert "secret" not in str(info.value).replace("secret=", "")
    assert "credentials" in str(info.value)


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ({"kind": "pagerduty", "url": "http://x"}, "pagerduty"),
        ({"kind": "webhook", "url": "ftp://x"}, "http:// or https://"),
        ({"kind": "webhook", "url": "http://x", "headers": {"X-DTE-Signature": "a"}}, "set by the notifier"),
        ({"kind": "webhook", "url": "http://x", "states": ["firing", "firing"]}, "unique"),
        ({"kind": "webhook", "url": "http://x", "states": ["open"]}, "firing"),
        ({"kind": "mqtt", "url": "mqtt://h", "topic": "a/{alert}"}, "unknown placeholder"),
        ({"kind": "alertmanager", "url": "http://x", "resend_interval": 60, "firing_ttl": 90}, "twice"),
        ({"kind": "alertmanager", "url": "http://x", "labels": {"bad-name": "v"}}, "label name"),
        ({"kind": "webhook", "url": "http://x", "retries": {"backoff": 5, "max_backoff": 1}}, "max_backoff"),
    ],
)
def test_invalid_specs_name_the_problem(item: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        NOTIFIERS.validate_python([item])


def test_notifier_names_must_be_unique() -> None:
    with pytest.raises(ValidationError, match="unique"):
        NOTIFIERS.validate_python(
            [{"kind": "webhook", "url": "http://a"}, {"kind": "webhook", "url": "http://b"}]
        )


# --------------------------------------------------------------------------------------------
# Payloads
# --------------------------------------------------------------------------------------------

LABELS = {
    "site": "north",
    "alertname": "overheat",
    "twin_id": "pump-1",
    "twin_type": "pump",
    "severity": "critical",
}


def test_webhook_body_is_the_event_json() -> None:
    body = orjson.loads(webhook_body(event("resolved", seq=3)))
    assert body == {
        "alert_id": "pump-1/overheat",
        "state": "resolved",
        "rule": "overheat",
        "twin_id": "pump-1",
        "twin_type": "pump",
        "severity": "critical",
        "channel": None,
        "message": "temperature 97.5 > 95",
        "value": 97.5,
        "labels": LABELS,
        "starts_at": "2026-01-02T03:04:05.000000000Z",
        "ends_at": "2026-01-02T03:04:08.000000000Z",
        "time": "2026-01-02T03:04:08.000000000Z",
        "time_ns": T0 + 3 * S,
        "renotify": False,
        "acked_by": None,
        "sequence": 3,
    }


def test_alertmanager_firing_and_resolved() -> None:
    now = T0 + 10 * S
    firing = alertmanager_alert(
        event(), extra_labels={"env": "prod", "site": "x"}, now_ns=now, firing_ttl=300
    )
    assert firing == {
        "labels": {**LABELS, "env": "prod"},  # the event's site wins over the extra label
        "annotations": {"alert_id": "pump-1/overheat", "message": "temperature 97.5 > 95", "value": "97.5"},
        "startsAt": "2026-01-02T03:04:05.000000000Z",
        "endsAt": "2026-01-02T03:09:15.000000000Z",  # now + 300 s
    }
    resolved = alertmanager_alert(event("resolved", seq=5), now_ns=now, firing_ttl=300)
    assert resolved["endsAt"] == "2026-01-02T03:04:10.000000000Z"
    assert resolved["labels"] == LABELS  # same label set: the same alert for Alertmanager


def test_alertmanager_label_names_fixed_and_ack_annotated() -> None:
    e = event("acknowledged", labels={"site-name": "n", "empty": ""}, acked_by="ann", channel="temp")
    a = alertmanager_alert(e, now_ns=T0, firing_ttl=60)
    assert a["labels"] == {
        **{k: v for k, v in LABELS.items() if k != "site"},
        "site_name": "n",
        "channel": "temp",
    }
    assert a["annotations"]["acked_by"] == "ann"  # type: ignore[index]
    # An end before the start (clock skew in the input) is moved to the start.
    bad = alertmanager_alert(event("resolved", ends_ns=T0 - S), now_ns=T0, firing_ttl=60)
    assert bad["endsAt"] == bad["startsAt"]


def test_slack_payload_exact() -> None:
    assert slack_payload(event(message="a <b> & c")) == {
        "text": ":red_circle: [FIRING] overheat on pump-1 (critical): a &lt;b&gt; &amp; c",
        "attachments": [
            {
                "color": "#e01e5a",
                "fallback": ":red_circle: [FIRING] overheat on pump-1 (critical): a &lt;b&gt; &amp; c",
                "blocks": [
                    {
                        "type": "section",
                        "text": {
                            "type": "mrkdwn",
                            "text": "*:red_circle: [FIRING] overheat on pump-1*\na &lt;b&gt; &amp; c",
                        },
                    },
                    {
                        "type": "section",
                        "fields": [
                            {"type": "mrkdwn", "text": "*Twin:* pump-1 (pump)"},
                            {"type": "mrkdwn", "text": "*Severity:* critical"},
                            {"type": "mrkdwn", "text": "*Since:* 2026-01-02T03:04:05Z"},
                            {"type": "mrkdwn", "text": "*Value:* 97.5"},
                        ],
                    },
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": "alert `pump-1/overheat`"}]},
                ],
            }
        ],
    }


@pytest.mark.parametrize(
    ("state", "severity", "colour"),
    [("firing", "critical", "#e01e5a"), ("firing", "warning", "#ecb22e"), ("firing", "info", "#36c5f0"),
     ("resolved", "critical", "#2eb67d"), ("acknowledged", "critical", "#9e9e9e")],
)  # fmt: skip
def test_slack_colour_by_state_and_severity(state: str, severity: str, colour: str) -> None:
    e = AlertEvent("a/r", "a", "t", "r", state, severity, T0, T0)  # type: ignore[arg-type]
    assert slack_payload(e)["attachments"][0]["color"] == colour  # type: ignore[index]


def test_mqtt_topic_and_kafka_record() -> None:
    e = event(alert="p/1+#/hot")
    assert (
        alert_topic("dte/alerts/{twin_type}/{twin_id}/{rule}/{state}", e)
        == "dte/alerts/pump/p%2F1%2B%23/hot/firing"
    )
    key, value = alert_record(e)
    assert key == b"p/1+#/hot"
    assert orjson.loads(value) == e.to_json_dict()


# --------------------------------------------------------------------------------------------
# HMAC signatures
# --------------------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = webhook_body(event())
    expected = hmac.new(b"k3y", b"1767323045." + body, hashlib.sha256).hexdigest()
    assert signature("k3y", "1767323045", body) == f"sha256={expected}"


def test_webhook_headers_verify_and_tampering_fails() -> None:
    spec = WebhookNotifierSpec(
        kind="webhook", url="http://x", secret="k3y", headers={"Authorization": "Bearer t"}
    )
    body = webhook_body(event())
    headers = WebhookNotifier(spec).request_headers(body)
    assert headers["Authorization"] == "Bearer t"
    ts, sig = headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
    assert abs(int(ts) - time.time()) < 5
    assert verify_signature("k3y", body, ts, sig)
    assert not verify_signature("k3y", body + b" ", ts, sig)  # body changed
    assert not verify_signature("other", body, ts, sig)  # wrong secret
    assert not verify_signature("k3y", body, str(int(ts) + 1), sig)  # timestamp changed
    assert not verify_signature("k3y", body, ts, sig, now=int(ts) + 301)  # replayed later
    assert not verify_signature("k3y", body, None, sig)
    assert TIMESTAMP_HEADER not in WebhookNotifier(
        WebhookNotifierSpec(kind="webhook", url="http://x")
    ).request_headers(body)


@given(st.binary(max_size=200), st.text(min_size=1, max_size=20), st.integers(0, 2**40))
def test_any_signed_body_verifies(body: bytes, secret: str, ts: int) -> None:
    assert verify_signature(secret, body, str(ts), signature(secret, str(ts), body), now=ts)


# --------------------------------------------------------------------------------------------
# Backoff
# --------------------------------------------------------------------------------------------


@given(st.integers(1, 200), st.floats(0.01, 10), st.floats(1, 100), st.integers(0, 1000))
def test_backoff_is_exponential_capped_and_jittered(
    attempt: int, backoff: float, cap: float, seed: int
) -> None:
    retries = NotifierRetrySpec(backoff=backoff, max_backoff=max(cap, backoff))
    base = min(retries.max_backoff, backoff * 2 ** (attempt - 1))
    delay = backoff_delay(attempt, retries, random.Random(seed))
    assert 0.5 * base <= delay <= base


# --------------------------------------------------------------------------------------------
# Dispatcher with fake notifiers
# --------------------------------------------------------------------------------------------


class FakeNotifier:
    """Fails ``fail_first`` attempts (each event), or forever; records what it delivered."""

    refresh_interval: float | None = None

    def __init__(
        self, fail_first: int = 0, *, forever: bool = False, retryable: bool = True, hang: float = 0
    ) -> None:
        self.fail_first = fail_first
        self.forever = forever
        self.retryable = retryable
        self.hang = hang
        self.attempts: list[tuple[str, int]] = []
        self.delivered: list[AlertEvent] = []
        self.closed = False
        self._failures: dict[tuple[str, int], int] = {}

    def deliver(self, e: AlertEvent) -> None:
        key = (e.alert_id, e.sequence)
        self.attempts.append(key)
        if self.hang:
            time.sleep(self.hang)
        done = self._failures.get(key, 0)
        if self.forever or done < self.fail_first:
            self._failures[key] = done + 1
            raise DeliveryError("fake: 503", retryable=self.retryable)
        self.delivered.append(e)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def specs(*names: str, **kw: Any) -> list[Any]:
    retries = {"backoff": 0.01, "max_backoff": 0.05, **kw.pop("retries", {})}
    return NOTIFIERS.validate_python(
        [{"kind": "webhook", "name": n, "url": "http://127.0.0.1:9", "retries": retries, **kw} for n in names]
    )


def counts(name: str) -> tuple[int, int, int]:
    return (
        METRICS.get(metric_name("alerts_sent", name)),
        METRICS.get(metric_name("alerts_failed_attempts", name)),
        METRICS.get(metric_name("alerts_dropped", name)),
    )


def unique(prefix: str) -> str:
    return f"{prefix}_{random.getrandbits(40):x}"


def test_fails_n_times_then_delivers_once_and_counts_n_failures() -> None:
    name = unique("flaky")
    fake = FakeNotifier(fail_first=3)
    with AlertDispatcher(specs(name), factory=lambda _s: fake) as dispatcher:
        dispatcher.send([event()])
        assert dispatcher.flush(5.0)
    assert [e.sequence for e in fake.delivered] == [0]
    assert len(fake.attempts) == 4
    assert counts(name) == (1, 3, 0)
    assert fake.closed


def test_order_kept_per_alert_through_retries() -> None:
    name = unique("ordered")
    fake = FakeNotifier(fail_first=2)
    events = [event(state, seq=i, alert=alert) for i, (state, alert) in enumerate(
        [("firing", "a/r"), ("firing", "b/r"), ("resolved", "a/r"), ("firing", "a/r"), ("resolved", "b/r")]
    )]  # fmt: skip
    with AlertDispatcher(specs(name), factory=lambda _s: fake) as dispatcher:
        dispatcher.send(events[:2])
        dispatcher.send(events[2:])
        assert dispatcher.flush(10.0)
    assert fake.delivered == events
    assert counts(name) == (5, 10, 0)


def test_gives_up_after_max_attempts_and_refusals_are_not_retried() -> None:
    a, b = unique("limited"), unique("refused")
    fakes = {a: FakeNotifier(forever=True), b: FakeNotifier(forever=True, retryable=False)}
    with AlertDispatcher(
        specs(a, b, retries={"max_attempts": 3}), factory=lambda s: fakes[s.name]
    ) as dispatcher:
        dispatcher.send([event(seq=0), event(seq=1)])
        assert dispatcher.flush(5.0)
    assert counts(a) == (0, 6, 2)
    assert counts(b) == (0, 2, 2)
    assert len(fakes[b].attempts) == 2


def test_a_dead_notifier_does_not_delay_the_others() -> None:
    dead, alive = unique("dead"), unique("alive")
    fakes = {dead: FakeNotifier(forever=True, hang=0.2), alive: FakeNotifier()}
    dispatcher = AlertDispatcher(specs(dead, alive), factory=lambda s: fakes[s.name])
    try:
        start = time.monotonic()
        for i in range(50):
            dispatcher.send([event(seq=i)])
        assert time.monotonic() - start < 0.5  # send only queues
        deadline = time.monotonic() + 5
        while len(fakes[alive].delivered) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(fakes[alive].delivered) == 50
        assert time.monotonic() - start < 2.0
        assert not dispatcher.flush(0.1)  # the dead one still retries its first event
    finally:
        assert not dispatcher.close(timeout=0.3)
    assert fakes[dead].delivered == []
    assert counts(alive) == (50, 0, 0)
    sent, failed, dropped = counts(dead)
    assert sent == 0
    assert failed >= 1
    assert dropped == 50  # the one being retried and 49 queued
    assert fakes[dead].closed


def test_full_queue_drops_new_events_and_counts_them() -> None:
    name = unique("small")
    gate = threading.Event()

    class Blocked(FakeNotifier):
        def deliver(self, e: AlertEvent) -> None:
            gate.wait(5)
            super().deliver(e)

    fake = Blocked()
    with AlertDispatcher(specs(name, queue_size=3), factory=lambda _s: fake) as dispatcher:
        dispatcher.send([event(seq=i) for i in range(10)])
        gate.set()
        assert dispatcher.flush(5.0)
    assert [e.sequence for e in fake.delivered] == [0, 1, 2]
    assert counts(name) == (3, 0, 7)


def test_states_filter_and_send_after_close() -> None:
    name = unique("resolved_only")
    fake = FakeNotifier()
    dispatcher = AlertDispatcher(specs(name, states=["resolved"]), factory=lambda _s: fake)
    dispatcher.send([event("firing", seq=0), event("acknowledged", seq=1), event("resolved", seq=2)])
    assert dispatcher.flush(5.0)
    assert [e.state for e in fake.delivered] == ["resolved"]
    assert dispatcher.close(1.0)
    dispatcher.send([event("resolved", seq=3)])  # never raises into the dataflow
    assert counts(name) == (1, 0, 1)


def test_unexpected_exceptions_are_retried_not_raised() -> None:
    name = unique("buggy")

    class Buggy(FakeNotifier):
        def deliver(self, e: AlertEvent) -> None:
            self.attempts.append((e.alert_id, e.sequence))
            if len(self.attempts) == 1:
                raise KeyError("boom")
            self.delivered.append(e)

    fake = Buggy()
    with AlertDispatcher(specs(name), factory=lambda _s: fake) as dispatcher:
        dispatcher.send([event()])
        assert dispatcher.flush(5.0)
    assert counts(name) == (1, 1, 0)


def test_alertmanager_keeps_firing_alerts_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    posts: list[list[dict[str, Any]]] = []
    monkeypatch.setattr(am_module, "post_json", lambda url, body, **kw: posts.append(orjson.loads(body)))
    spec = AlertmanagerNotifierSpec(
        kind="alertmanager", url="http://am:9093", resend_interval=1, firing_ttl=2
    )
    notifier = AlertmanagerNotifier(spec)
    notifier.deliver(event(alert="a/r"))
    notifier.deliver(event(alert="b/r"))
    notifier.deliver(event("resolved", seq=1, alert="a/r"))
    notifier.refresh()
    assert [[a["labels"]["twin_id"] for a in p] for p in posts] == [["a"], ["b"], ["a"], ["b"]]
    assert posts[2][0]["endsAt"] == "2026-01-02T03:04:06.000000000Z"
    assert list(notifier.active) == ["b/r"]


@pytest.mark.parametrize(
    "module",
    [
        "dte_stream.spec.notify",
        "dte_stream.connectors.alerting.dispatcher",
        "dte_stream.connectors.alerting.webhook",
        "dte_stream.connectors.alerting.alertmanager",
        "dte_stream.connectors.alerting.slack",
        "dte_stream.connectors.alerting.messaging",
    ],
)
def test_docstring_examples_run(module: str) -> None:
    failed, attempted = doctest.testmod(importlib.import_module(module))
    assert attempted > 0
    assert failed == 0
