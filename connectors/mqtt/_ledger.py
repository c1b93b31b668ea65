"""Which QoS 1 messages the broker may deliver again, so that none is emitted twice.

After a reconnect the broker sends again, with the DUP flag and the same message id, every
QoS 1 message whose PUBACK it has not received: those the source still holds (not yet
acknowledged because their epoch is not complete) and those whose PUBACK was lost with the
old connection, or sent on the new connection after the broker had already resent them. All
of them were emitted already; emitting them again applies readings twice.

:class:`AckLedger` remembers, per message id of the current session, a digest of the message
(topic and payload, CRC-32) and the connection its acknowledgement was sent on. A message with
DUP set whose id and digest match an entry is a repeat: it is dropped, and acknowledged again
if its earlier acknowledgement went out on an earlier connection (that one may be lost).
Anything else is a new message. The broker reuses an id only after it received the PUBACK of
the previous message with it, and such a message arrives with DUP clear (a first delivery) and
replaces the entry; so the ledger needs no expiry and holds at most 65,535 entries.

>>> ledger = AckLedger()
>>> ledger.receive(7, False, 0xABC, connection=1)  # first delivery
'new'
>>> ledger.receive(7, True, 0xABC, connection=2)  # resent after a reconnect, still held
'repeat'
>>> ledger.acknowledged([7], connection=2)  # acked on connection 2
>>> ledger.receive(7, True, 0xABC, connection=3)  # resent again: that ack may be lost
'ack again'
>>> ledger.receive(7, True, 0xDEF, connection=3)  # same id, another message
'new'
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable
from typing import Literal

__all__ = ["ACK_AGAIN", "NEW", "REPEAT", "AckLedger", "digest"]

NEW: Literal["new"] = "new"
REPEAT: Literal["repeat"] = "repeat"
ACK_AGAIN: Literal["ack again"] = "ack again"
Verdict = Literal["new", "repeat", "ack again"]


def digest(topic: bytes, payload: bytes | bytearray) -> int:
    """What tells two messages with the same id apart: CRC-32 of topic, NUL, payload.

    (MQTT topics cannot contain NUL, so the boundary between topic and payload counts.)
    """
    return zlib.crc32(payload, zlib.crc32(b"\0", zlib.crc32(topic)))


class AckLedger:
    """Message id -> (digest, connection its ack was sent on, 0 while not acknowledged).

    Thread-safe: paho's network thread calls :meth:`receive`, the dataflow thread
    :meth:`acknowledged` and :meth:`clear`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def receive(self, mid: int, dup: bool, crc: int, connection: int) -> Verdict:
        """Classify a received QoS 1 message: ``new``, ``repeat`` (drop) or ``ack again`` (drop, ack)."""
        with self._lock:
            entry = self._entries.get(mid)
            if dup and entry is not None and entry[0] == crc:
                acked_on = entry[1]
                if acked_on and acked_on != connection:
                    self._entries[mid] = (crc, connection)
                    return ACK_AGAIN
                return REPEAT
            self._entries[mid] = (crc, 0)
            return NEW

    def acknowledged(self, mids: Iterable[int], connection: int) -> None:
        """Note that the acknowledgements of ``mids`` are sent on ``connection``."""
        with self._lock:
            entries = self._entries
            for mid in mids:
                entry = entries.get(mid)
                if entry is not None:
                    entries[mid] = (entry[0], connection)

    def clear(self) -> None:
        """The broker started a fresh session: the old message ids mean nothing any more."""
        with self._lock:
            self._entries.clear()
