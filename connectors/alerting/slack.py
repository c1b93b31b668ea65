"""The Slack-compatible incoming-webhook notifier (Slack, Mattermost, Rocket.Chat, ...).

One message per event (:func:`slack_payload`): a ``text`` line (what notifications and
clients without attachments show) and one attachment coloured by state and severity, with
the message and the alert's facts as Block Kit blocks. Text from events is escaped for
Slack's mrkdwn (``&``, ``<``, ``>``), so an alert message cannot ping ``<!channel>``.
"""

from __future__ import annotations

import orjson

from dte_stream.batches import AlertEvent
from dte_stream.connectors.alerting.webhook import post_json
from dte_stream.spec.notify import SlackNotifierSpec
from dte_stream.times import format_time_ns

__all__ = ["SEVERITY_COLOURS", "SlackNotifier", "slack_escape", "slack_payload"]

#: Attachment colour of a firing alert by severity; other severities get ``"#e01e5a"``.
SEVERITY_COLOURS = {
    "critical": "#e01e5a",
    "error": "#e01e5a",
    "warning": "#ecb22e",
    "info": "#36c5f0",
}
_RESOLVED_COLOUR = "#2eb67d"
_ACKNOWLEDGED_COLOUR = "#9e9e9e"
_DEFAULT_COLOUR = "#e01e5a"
_ICONS = {"firing": ":red_circle:", "resolved": ":large_green_circle:", "acknowledged": ":eyes:"}


def slack_escape(text: str) -> str:
    """Escape ``&``, ``<`` and ``>`` for Slack mrkdwn.

    >>> slack_escape("a < b & <!channel>")
    'a &lt; b &amp; &lt;!channel&gt;'
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _colour(event: AlertEvent) -> str:
    if event.state == "resolved":
        return _RESOLVED_COLOUR
    if event.state == "acknowledged":
        return _ACKNOWLEDGED_COLOUR
    return SEVERITY_COLOURS.get(event.severity.lower(), _DEFAULT_COLOUR)


def slack_payload(event: AlertEvent) -> dict[str, object]:
    """The JSON body for an incoming webhook.

    >>> e = AlertEvent("p-1/hot", "p-1", "pump", "hot", "firing", "warning", 0, 0, message="97 > 95")
    >>> p = slack_payload(e)
    >>> p["text"], p["attachments"][0]["color"]
    (':red_circle: [FIRING] hot on p-1 (warning): 97 &gt; 95', '#ecb22e')
    """
    state = event.state.upper()
    if event.renotify and event.state == "firing":
        state += ", STILL"
    head = (
        f"{_ICONS.get(event.state, '')} [{state}] {slack_escape(event.rule)} on {slack_escape(event.twin_id)}"
    )
    text = f"{head} ({slack_escape(event.severity)})"
    if event.message:
        text += f": {slack_escape(event.message)}"
    facts = [
        f"*Twin:* {slack_escape(event.twin_id)} ({slack_escape(event.twin_type)})",
        f"*Severity:* {slack_escape(event.severity)}",
        f"*Since:* {format_time_ns(event.starts_ns)[:19]}Z",
    ]
    if event.channel:
        facts.append(f"*Channel:* {slack_escape(event.channel)}")
    if event.value is not None:
        facts.append(f"*Value:* {event.value!r}")
    if event.ends_ns is not None:
        facts.append(f"*Ended:* {format_time_ns(event.ends_ns)[:19]}Z")
    if event.acked_by:
        facts.append(f"*Acknowledged by:* {slack_escape(event.acked_by)}")
    blocks: list[dict[str, object]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{head}*\n{slack_escape(event.message)}"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in facts]},
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"alert `{slack_escape(event.alert_id)}`"}],
        },
    ]
    return {"text": text, "attachments": [{"color": _colour(event), "fallback": text, "blocks": blocks}]}


class SlackNotifier:
    """POSTs :func:`slack_payload` to the incoming-webhook URL (a secret: never printed)."""

    refresh_interval: float | None = None

    def __init__(self, spec: SlackNotifierSpec) -> None:
        self.spec = spec
        self.who = f"notifier {spec.name}"

    def deliver(self, event: AlertEvent) -> None:
        body = orjson.dumps(slack_payload(event))
        post_json(self.spec.url.get_secret_value(), body, timeout=self.spec.timeout, who=self.who)

    def refresh(self) -> None:
        """Nothing to resend."""

    def close(self) -> None:
        """No connection is kept between requests."""
