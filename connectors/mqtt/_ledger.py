"""Which QoS 1 messages the broker may deliver again, so that none is applied twice.

After a reconnect the broker sends again, with the DUP flag and the same message id, every
QoS 1 message whose PUBACK it has not received: those the source still holds (not yet
acknowledged because their epoch is not complete) and those whose PUBACK was lost with the
old connection, or sent on the new connection after the broker had already resent them. All
of them were emitted already; emitting them again applies readings twice. After a crash the
same holds for the messages of epochs that the recovery store committed but whose PUBACKs did
not reach the broker.

:class:`AckLedger` remembers, per message id of the current session, a digest of the message
(topic and payload, CRC-32) and the connection its acknowledgement was sent on. A message with
DUP set whose id and digest match an entry is a repeat: it is dropped, and acknowledged again
if its earlier acknowledgement went out on an earlier connection (or an earlier process). A
first delivery (DUP clear) is always new: the broker reuses an id only after it received the
PUBACK of the previous message with it.

An entry is forgotten once the broker has confirmed its PUBACK: each batch of PUBACKs is
followed by a PINGREQ on the same connection, and the broker handles a connection's packets in
order, so its PINGRESP means that every PUBACK before it arrived. What is left (acknowledged but
not confirmed, and due for acknowledgement) is small, and it is the source's resume state in
the recovery store (:meth:`resume_state`, :meth:`restore`).

>>> ledger = AckLedger()
>>> ledger.receive(7, False, 0xABC, connection=1)  # first delivery
'new'
>>> ledger.receive(7, True, 0xABC, connection=2)  # resent after a reconnect, still held
'repeat'
>>> ledger.acknowledged([7], connection=2, ping=1)  # acked on connection 2, then PINGREQ 1
>>> ledger.receive(7, True, 0xABC, connection=3)  # resent again: that ack may be lost
'ack again'
>>> ledger.resume_state(due=[])  # until confirmed, a restarted process must not apply it
[(7, 2748)]
>>> ledger.acknowledged([7], connection=3, ping=1)
>>> ledger.confirm(connection=3, pongs=1)  # PINGRESP 1 on connection 3: the broker has the ack
>>> len(ledger)
0
"""

from __future__ import annotations

import threading
import zlib
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Literal

__all__ = [
    "ACK_AGAIN",
    "NEW",
    "REPEAT",
    "AckLedger",
    "ResumeState",
    "digest",
    "pack_resume_state",
    "unpack_resume_state",
]

NEW: Literal["new"] = "new"
REPEAT: Literal["repeat"] = "repeat"
ACK_AGAIN: Literal["ack again"] = "ack again"
Verdict = Literal["new", "repeat", "ack again"]
#: ``acked_on`` of an entry not acknowledged yet (queued, emitted, or due).
HELD = 0
#: ``acked_on`` of an entry restored from the recovery store: applied by an earlier process.
EARLIER_PROCESS = -1
#: ``acked_on`` of a repeat whose acknowledgement is to be sent again.
ACK_QUEUED = -2
#: ``acked_on`` of a message written to the source's disk spool, its acknowledgement to come.
SPOOLED = -3


def digest(topic: bytes, payload: bytes | bytearray) -> int:
    """What tells two messages with the same id apart: CRC-32 of topic, NUL, payload.

    (MQTT topics cannot contain NUL, so the boundary between topic and payload counts.)
    """
    return zlib.crc32(payload, zlib.crc32(b"\0", zlib.crc32(topic)))


class AckLedger:
    """Message id -> (digest, ``acked_on``, PINGREQ number sent after its ack).

    ``acked_on`` is the connection (paho socket number, from 1) its PUBACK went out on, or
    :data:`HELD`, :data:`SPOOLED`, :data:`EARLIER_PROCESS`, :data:`ACK_QUEUED`.

    Thread-safe: paho's network thread calls :meth:`receive`, the dataflow thread the rest.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[int, int, int]] = {}
        self._unconfirmed: deque[tuple[int, int, list[int]]] = deque()  # (connection, ping, mids)

    def __len__(self) -> int:
        return len(self._entries)

    def receive(self, mid: int, dup: bool, crc: int, connection: int) -> Verdict:
        """Classify a received QoS 1 message: ``new``, ``repeat`` (drop) or ``ack again`` (drop, ack)."""
        with self._lock:
            entry = self._entries.get(mid)
            if dup and entry is not None and entry[0] == crc:
                acked_on = entry[1]
                if acked_on in (HELD, ACK_QUEUED, SPOOLED, connection):
                    return REPEAT  # its acknowledgement is still to come on this connection
                # acknowledged on an earlier connection or by an earlier process: maybe lost
                self._entries[mid] = (crc, ACK_QUEUED, 0)
                return ACK_AGAIN
            self._entries[mid] = (crc, HELD, 0)
            return NEW

    def spooled(self, mids: Iterable[int]) -> None:
        """``mids`` are durable in the disk spool: a restarted process must not apply them again."""
        with self._lock:
            entries = self._entries
            for mid in mids:
                entry = entries.get(mid)
                if entry is not None and entry[1] == HELD:
                    entries[mid] = (entry[0], SPOOLED, 0)

    def acknowledged(self, mids: Sequence[int], connection: int, ping: int) -> None:
        """The PUBACKs of ``mids`` go out on ``connection``, followed by PINGREQ number ``ping``."""
        with self._lock:
            entries = self._entries
            for mid in mids:
                entry = entries.get(mid)
                if entry is not None:
                    entries[mid] = (entry[0], connection, ping)
            if mids:
                self._unconfirmed.append((connection, ping, list(mids)))

    def confirm(self, connection: int, pongs: int) -> None:
        """``pongs`` PINGRESPs arrived on ``connection``: forget the acks they confirm."""
        with self._lock:
            batches, entries = self._unconfirmed, self._entries
            while batches:
                conn, ping, mids = batches[0]
                if conn == connection and ping > pongs:
                    break  # not answered yet; later batches even less
                batches.popleft()
                if conn != connection:
                    continue  # that connection broke: whatever it did not confirm stays
                for mid in mids:
                    entry = entries.get(mid)
                    if entry is not None and entry[1] == conn and entry[2] == ping:
                        del entries[mid]

    def resume_state(self, due: Iterable[int]) -> list[tuple[int, int]]:
        """``(mid, digest)`` of what a restarted process must not apply again.

        The messages ``due`` for acknowledgement (their epoch is complete) and those
        acknowledged without confirmation (or to be acknowledged again): the broker may send
        any of them again. Messages held but not due (not emitted, or their epoch is not
        complete) are left out: a restarted process must apply them.
        """
        with self._lock:
            entries = self._entries
            out = {mid: entries[mid][0] for mid in due if mid in entries}
            out.update((mid, e[0]) for mid, e in entries.items() if e[1] != HELD)
            return sorted(out.items())

    def restore(self, state: Iterable[tuple[int, int]]) -> None:
        """Take back :meth:`resume_state` of an earlier process (before connecting)."""
        with self._lock:
            for mid, crc in state:
                self._entries[mid] = (crc, EARLIER_PROCESS, 0)

    def clear(self) -> None:
        """The broker started a fresh session: the old message ids mean nothing any more."""
        with self._lock:
            self._entries.clear()
            self._unconfirmed.clear()


#: Resume state of a client: the message ids and digests (``array('H')``/``array('I')`` bytes)
#: of messages already applied that the broker may deliver again (see :mod:`._ledger`); with a
#: spool also the spool position (segment, offset) of the first record not yet committed.
ResumeState = tuple[bytes, bytes] | tuple[bytes, bytes, int, int]


def pack_resume_state(pairs: list[tuple[int, int]], position: tuple[int, int] | None = None) -> ResumeState:
    """The resume state of :meth:`AckLedger.resume_state` pairs (and a spool position), compact.

    >>> unpack_resume_state(pack_resume_state([(7, 2748)], (3, 120)))
    ([(7, 2748)], (3, 120))
    """
    mids, crcs = array("H", [m for m, _ in pairs]).tobytes(), array("I", [c for _, c in pairs]).tobytes()
    return (mids, crcs) if position is None else (mids, crcs, position[0], position[1])


def unpack_resume_state(state: ResumeState) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    mids, crcs = array("H"), array("I")
    mids.frombytes(state[0])
    crcs.frombytes(state[1])
    position = (state[2], state[3]) if len(state) == 4 else None
    return list(zip(mids, crcs, strict=True)), position
