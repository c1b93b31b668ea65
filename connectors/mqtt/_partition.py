"""One MQTT client of the source as a Bytewax partition: paho fills a queue, Bytewax drains it.

paho receives in its own thread and appends ``(topic, payload, receive time, message id, qos,
session)`` tuples to a deque; ``next_batch`` takes up to ``batch_size`` of them without ever
waiting, routes each topic (cached) and emits one :class:`~dte_stream.batches.RawBatch` per
subscription that had messages. Messages the source refuses before decoding (a topic that
does not fit its template, a payload over ``max_payload_bytes``) travel in
``RawBatch.errors`` as dead letters. With a spool (:mod:`._spooled`) the dataflow reads the
spool instead of the queue.

Acknowledgements (``ack``) and what they guarantee are described on
:class:`~dte_stream.connectors.mqtt.source.MqttSource`; the ledger that recognises repeats is
:mod:`._ledger`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from bytewax.inputs import StatefulSourcePartition

from dte_stream.batches import RawBatch
from dte_stream.connectors.mqtt._client import LOG, MqttConnection
from dte_stream.connectors.mqtt._ledger import (
    ACK_AGAIN,
    NEW,
    AckLedger,
    ResumeState,
    digest,
    pack_resume_state,
    unpack_resume_state,
)
from dte_stream.connectors.mqtt._routing import Ack, Message, MessageBatcher
from dte_stream.connectors.mqtt._spooled import SpooledInput, dropped_batch
from dte_stream.metrics import METRICS
from dte_stream.shutdown import stop_requested
from dte_stream.spec.mqtt import MqttSourceSpec

__all__ = ["MqttPartition"]

#: How often a stopping source looks again whether its last acknowledgements are due (s).
_STOP_POLL = 0.02
#: How long the network thread sleeps while the queue is full (s).
_FULL_WAIT = 0.005


class MqttPartition(StatefulSourcePartition[RawBatch, ResumeState | None]):
    """One MQTT client of a source. The broker's session holds the messages (with ``spool``,
    the spool too); the resume state names those of committed epochs that the broker may
    still deliver again (and the spool position of the first record not committed)."""

    def __init__(
        self,
        spec: MqttSourceSpec,
        client_id: str,
        resume_state: ResumeState | None = None,
        spool: tuple[Path, int] | None = None,
    ) -> None:
        self._spec = spec
        self._who = f"source {spec.name} (client {client_id})"
        self._ack_mode = spec.ack
        self._manual = spec.ack != "on_receive"
        self._batch_size = spec.batch_size
        self._latency = timedelta(seconds=spec.batch_latency)
        self._limit = spec.max_buffered_messages
        self._remaining = spec.stop_after_messages
        self._idle = spec.stop_after_idle
        self._last_message = time.monotonic()
        self._batcher = MessageBatcher(spec)
        self._queue: deque[Message] = deque()
        # with a spool, appends hold it: the spool thread copies the queue's head under it
        self._queue_lock = threading.Lock()
        # QoS 1 messages of the current session that the broker may send again: a repeat
        # after a reconnect is dropped (and acknowledged again if need be), never emitted twice.
        self._ledger = AckLedger()
        if resume_state is not None and self._manual:
            self._ledger.restore(unpack_resume_state(resume_state)[0])
        self._reack: deque[int] = deque()  # repeats to acknowledge again (network thread appends)
        # ack on_receive: a message is acknowledged and queued, or (closing) neither, atomically;
        # a PUBACK queued behind the DISCONNECT is never sent, so its message must not be emitted.
        self._gate = threading.Lock()
        self._closing = False
        self._unsealed: list[Ack] = []  # emitted in the current epoch (ack: after_epoch)
        self._due: list[Ack] = []  # to acknowledge as soon as the client is connected
        self._stopping = False
        self._stop_deadline = 0.0
        self._full_logged = False
        self._window = spec.receive_maximum if spec.protocol == "5" else None
        self._window_logged = False
        self._conn = MqttConnection(
            spec,
            client_id=client_id,
            who=self._who,
            clean_start=spec.clean_start,
            session_expiry=round(spec.session_expiry),
            receive_maximum=spec.receive_maximum,
            manual_ack=True,  # on_receive too: acknowledged in _on_message, see _closing
            subscriptions=[(s.topic, s.qos) for s in spec.subscriptions],
            on_new_session=self._on_new_session,
        )
        self._conn.client.on_message = self._on_message
        self._spooled: SpooledInput | None = None
        if spool is not None:
            self._spooled = SpooledInput(
                spool[0] / client_id,
                spool[1],
                unpack_resume_state(resume_state)[1] if resume_state is not None else None,
                self,
            )
        try:
            self._conn.start()
        except BaseException:
            if self._spooled is not None:
                self._spooled.close()
            raise
        if self._spooled is not None:
            self._spooled.start()
        if spec.protocol == "3.1.1" and spec.ack == "after_epoch" and spool is None:
            LOG.info(
                "%s: MQTT 3.1.1 has no receive maximum: the broker's own in-flight limit "
                "(Mosquitto: max_inflight_messages, default 20) caps the messages per epoch "
                "with ack: after_epoch; prefer protocol 5",
                self._who,
            )

    @property
    def client_id(self) -> str:
        return self._conn.client_id

    # -- network thread ---------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        qos = message.qos
        mid = message.mid
        if qos and self._manual:
            verdict = self._ledger.receive(
                mid, message.dup, digest(message._topic, message.payload), self._conn.client.socket_no
            )
            if verdict != NEW:
                METRICS.add("mqtt_repeats_dropped")
                if verdict == ACK_AGAIN:
                    self._reack.append(mid)
                return
        elif not self._manual:
            with self._gate:
                if self._closing:
                    return  # not acknowledged: the broker delivers it again to the next run
                self._enqueue(message)
                if qos:
                    client.ack(mid, 1)
            return
        self._enqueue(message)

    def _enqueue(self, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # brokers check UTF-8; keep the message as a dead letter
            topic = message._topic.decode("utf-8", "backslashreplace")
        queue = self._queue
        if len(queue) >= self._limit and self._conn.running:  # never block CONNACK/SUBACK handling
            self._wait_for_room()
        # paho decodes payloads with struct ("s"), which gives bytes; it types them bytes | bytearray.
        item: Message = (topic, message.payload, time.time_ns(), message.mid, message.qos, self._conn.session)  # type: ignore[assignment]
        if self._spooled is None:
            queue.append(item)
            return
        with self._queue_lock:
            queue.append(item)
        self._spooled.arrived.set()

    def _wait_for_room(self) -> None:
        """Block the network thread while the queue is full: TCP backpressure, nothing dropped.

        Blocking stops reading from the socket, so the broker holds further messages. It ends
        when the dataflow took messages, or when the source stops or closes.
        """
        if not self._full_logged:
            self._full_logged = True
            LOG.warning(
                "%s: %d messages wait for the dataflow; receiving pauses until it catches up (logged once)",
                self._who,
                self._limit,
            )
        METRICS.add("mqtt_buffer_full")
        conn = self._conn
        while len(self._queue) >= self._limit and not self._stopping and conn.running:
            time.sleep(_FULL_WAIT)

    def _on_new_session(self) -> None:
        # The broker forgot the old session: its message ids are void, nothing to redeliver.
        self._ledger.clear()
        self._reack.clear()

    # -- Bytewax thread ---------------------------------------------------------------------

    def next_batch(self) -> list[RawBatch]:
        self._conn.check()
        if self._spooled is not None:
            return self._next_from_spool(self._spooled)
        if self._due or self._reack:
            self._acknowledge()
        elif self._manual:
            self._confirm()
        if self._stopping or self._should_stop():
            return self._stop()
        count = min(len(self._queue), self._batch_size)
        if self._remaining is not None:
            count = min(count, self._remaining)
        if not count:
            return []
        return self._take(count)

    def _next_from_spool(self, spooled: SpooledInput) -> list[RawBatch]:
        """The next batch from the spool (whatever an fsync made durable), in spool order."""
        if self._stopping or self._should_stop():
            return self._stop()
        count = self._batch_size if self._remaining is None else min(self._batch_size, self._remaining)
        records, damaged = spooled.read(count)
        if not records and not damaged:
            return []
        queue = deque((r.topic, r.payload, r.received_ns, r.mid, r.qos, 0) for r in records)
        out = self._batcher.take(queue, len(records), None) if records else []
        if damaged:
            out.append(dropped_batch(self._spec, self._who, damaged))
        if self._remaining is not None:
            self._remaining -= len(records)
        self._last_message = time.monotonic()
        METRICS.add("mqtt_messages_in", len(records))
        return out

    def _take(self, count: int) -> list[RawBatch]:
        """Pop ``count`` messages into one RawBatch per subscription; note their acks."""
        acks = None if not self._manual else self._unsealed if self._ack_mode == "after_epoch" else self._due
        out = self._batcher.take(self._queue, count, acks)
        if self._ack_mode == "on_emit":
            self._acknowledge()
        elif self._window is not None and not self._window_logged and self._unacked() >= self._window:
            self._window_logged = True
            LOG.warning(
                "%s: receive_maximum=%d messages await the end of their epoch, so the broker holds "
                "further messages back until then; shorten engine.epoch_seconds or raise "
                "receive_maximum for more throughput (logged once)",
                self._who,
                self._window,
            )
        if self._remaining is not None:
            self._remaining -= count
        self._last_message = time.monotonic()
        METRICS.add("mqtt_messages_in", count)
        return out

    def _unacked(self) -> int:
        """Messages received and not yet acknowledged (what the receive maximum counts)."""
        return len(self._queue) + len(self._unsealed) + len(self._due)

    def _acknowledge(self) -> None:
        """Acknowledge the due messages (in the order received) and the repeats to ack again.

        Kept while disconnected or while paho replaces its socket; acks of an earlier session
        are dropped (that session is gone, and with it the need). A PINGREQ follows the PUBACKs:
        its PINGRESP confirms them, and the ledger forgets what is confirmed (:meth:`_confirm`).
        """
        conn = self._conn
        if not conn.connected:
            return
        client = conn.client
        if not client.ping_lock.acquire(blocking=False):
            return  # paho is reconnecting: the next call sends them on the new socket
        try:
            session = conn.session
            mids = [mid for mid, msg_session in self._due if msg_session == session]
            reack = self._reack
            while reack:
                mids.append(reack.popleft())
            if mids:
                # noted before the acks: the broker's repeat of one may arrive at once
                self._ledger.acknowledged(mids, client.socket_no, client.pings + 1)
                ack = client.ack
                for mid in mids:
                    ack(mid, 1)
                client.send_pingreq()
            self._due.clear()
        finally:
            client.ping_lock.release()

    def _confirm(self) -> None:
        """Forget the acknowledgements the broker confirmed (PINGRESPs on the current socket)."""
        client = self._conn.client
        if client.ping_lock.acquire(blocking=False):
            try:
                self._ledger.confirm(client.socket_no, client.pongs)
            finally:
                client.ping_lock.release()

    def _should_stop(self) -> bool:
        if stop_requested() or (self._remaining is not None and self._remaining <= 0):
            return True
        drained = not self._queue and (self._spooled is None or not self._spooled.unread())
        return self._idle is not None and drained and time.monotonic() - self._last_message >= self._idle

    def _stop(self) -> list[RawBatch]:
        """One step of a graceful stop: emit nothing new, settle acknowledgements, then end.

        ``on_receive``: paho acknowledged everything queued, so disconnect and emit the rest.
        ``after_epoch``: wait until the epoch of the last emitted messages is complete (the
        next snapshot) and acknowledge them. Messages still queued are not acknowledged:
        the broker delivers them again to the next run. ``stop_after_messages`` caps the
        manual modes exactly; with ``on_receive`` the queued rest is emitted as well.
        """
        if not self._stopping:
            self._stopping = True
            self._stop_deadline = time.monotonic() + self._spec.connect_timeout
            if not self._manual or self._spooled is not None:
                self._close()  # with a spool: what was not emitted stays there for the next run
        if self._spooled is not None:
            raise StopIteration
        if not self._manual:
            if self._queue:
                self._remaining = None
                return self._take(min(len(self._queue), self._batch_size))
            raise StopIteration
        if self._unsealed or self._due or self._reack:
            if self._conn.connected or time.monotonic() < self._stop_deadline:
                return []
            LOG.warning(
                "%s: %d messages were processed but cannot be acknowledged (not connected); "
                "the broker will deliver them again",
                self._who,
                len(self._unsealed) + len(self._due),
            )
        self._close()
        raise StopIteration

    def next_awake(self) -> datetime | None:
        if self._stopping:
            return datetime.now(UTC) + timedelta(seconds=_STOP_POLL)
        if self._spooled is not None and self._spooled.unread():
            return None
        if len(self._queue) >= self._batch_size:
            return None
        return datetime.now(UTC) + self._latency

    def snapshot(self) -> ResumeState | None:
        """End of an epoch: its messages are acknowledged at the next ``next_batch``.

        Bytewax calls ``next_batch`` of the next epoch only once every output step finished
        this one (its epoch backpressure), so those acks follow the sinks' writes. The resume
        state names the messages of this and earlier epochs that the broker may still send
        again (due, or acknowledged without confirmation): a process restarted from this
        snapshot drops them instead of applying them a second time.
        """
        if self._unsealed:
            self._due.extend(self._unsealed)
            self._unsealed = []
        if not self._manual:
            return None
        if self._spooled is not None:
            return pack_resume_state(self._ledger.resume_state(()), self._spooled.commit())
        session = self._conn.session
        return pack_resume_state(self._ledger.resume_state(mid for mid, s in self._due if s == session))

    def close(self) -> None:
        self._stopping = True
        self._close()

    def _close(self) -> None:
        with self._gate:
            self._closing = True
        if self._spooled is not None:
            self._spooled.close()  # its last acknowledgements go out before the DISCONNECT
        self._conn.close()
