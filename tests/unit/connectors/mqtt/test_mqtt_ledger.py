"""The ack ledger: a message the broker sends again after a reconnect or a crash is never
emitted twice, is acknowledged again exactly when its earlier acknowledgement may have been
lost, and is forgotten once the broker confirmed its acknowledgement."""

from __future__ import annotations

import threading
import zlib

from dte_stream.connectors.mqtt._ledger import ACK_AGAIN, NEW, REPEAT, AckLedger, digest


def test_a_repeat_of_a_held_message_is_dropped_without_a_second_ack() -> None:
    ledger = AckLedger()
    crc = digest(b"plant/p-1", b'{"value": 1}')
    assert ledger.receive(1, False, crc, connection=1) == NEW
    # reconnected before its epoch completed: the broker sends it again; the pending ack covers it
    assert ledger.receive(1, True, crc, connection=2) == REPEAT
    assert ledger.receive(1, True, crc, connection=3) == REPEAT


def test_an_ack_sent_on_an_earlier_connection_is_sent_again() -> None:
    ledger = AckLedger()
    crc = digest(b"plant/p-1", b"1")
    assert ledger.receive(1, False, crc, connection=1) == NEW
    ledger.acknowledged([1], connection=1, ping=1)
    # the ack went out on connection 1, which broke: the broker resends; ack again, emit nothing
    assert ledger.receive(1, True, crc, connection=2) == ACK_AGAIN
    # now acked on connection 2: a repeat on connection 2 was sent before that ack arrived
    assert ledger.receive(1, True, crc, connection=2) == REPEAT


def test_an_ack_sent_on_the_current_connection_is_not_sent_twice() -> None:
    ledger = AckLedger()
    crc = digest(b"t", b"x")
    ledger.receive(5, False, crc, connection=1)
    # reconnected (connection 2); the dataflow acked before the broker's repeat arrived
    ledger.acknowledged([5], connection=2, ping=1)
    assert ledger.receive(5, True, crc, connection=2) == REPEAT


def test_a_reused_id_is_a_new_message() -> None:
    ledger = AckLedger()
    first, second = digest(b"t", b"1"), digest(b"t", b"2")
    ledger.receive(9, False, first, connection=1)
    ledger.acknowledged([9], connection=1, ping=1)
    # the broker got the ack and reused the id: a first delivery (no DUP) is always new ...
    assert ledger.receive(9, False, first, connection=1) == NEW
    ledger.acknowledged([9], connection=1, ping=1)
    # ... and a DUP with another topic or payload is another message whose first send was lost
    assert ledger.receive(9, True, second, connection=2) == NEW
    assert ledger.receive(9, True, digest(b"u", b"2"), connection=2) == NEW
    assert ledger.receive(9, True, digest(b"u", b"2"), connection=3) == REPEAT


def test_a_dup_flag_on_an_unknown_id_is_new_and_a_new_session_forgets() -> None:
    ledger = AckLedger()
    crc = digest(b"t", b"1")
    assert ledger.receive(3, True, crc, connection=1) == NEW  # its first send was lost
    ledger.clear()
    assert len(ledger) == 0
    assert ledger.receive(3, True, crc, connection=2) == NEW


def test_acknowledging_unknown_ids_is_harmless_and_the_digest_is_stable() -> None:
    ledger = AckLedger()
    ledger.acknowledged([1, 2, 3], connection=1, ping=1)
    assert len(ledger) == 0
    # CRC-32 of topic, NUL, payload: the same on every run (unlike hash()), boundary included
    assert digest(b"plant/p-1", b"20.5") == zlib.crc32(b"plant/p-1\x0020.5")
    assert digest(b"a", b"bc") != digest(b"ab", b"c")


def test_the_network_and_dataflow_threads_can_use_it_at_once() -> None:
    ledger = AckLedger()
    n = 20_000
    crcs = [digest(b"t", str(i).encode()) for i in range(n)]

    def network() -> None:
        for i in range(n):
            ledger.receive(i % 65535 + 1, False, crcs[i], connection=1)

    thread = threading.Thread(target=network)
    thread.start()
    for _ in range(50):
        ledger.acknowledged(list(range(1, 1000)), connection=1, ping=1)
    thread.join()
    assert len(ledger) == n
    assert all(ledger.receive(i + 1, True, crcs[i], connection=1) == REPEAT for i in range(1000, n))


def test_a_confirmed_ack_is_forgotten_and_an_unconfirmed_one_is_kept() -> None:
    ledger = AckLedger()
    crcs = {mid: digest(b"t", bytes([mid])) for mid in range(1, 7)}
    for mid, crc in crcs.items():
        ledger.receive(mid, False, crc, connection=1)
    ledger.acknowledged([1, 2], connection=1, ping=1)
    ledger.acknowledged([3], connection=1, ping=2)
    ledger.confirm(connection=1, pongs=1)  # PINGRESP 1: acks of 1 and 2 arrived
    assert len(ledger) == 4
    # a DUP with a forgotten id is another message (the broker had the ack, it never resends)
    assert ledger.receive(1, True, crcs[1], connection=1) == NEW
    # connection 1 breaks before PINGRESP 2: 3's ack stays unconfirmed, a later pong does not count
    ledger.acknowledged([4], connection=2, ping=1)
    ledger.confirm(connection=2, pongs=1)
    assert ledger.receive(3, True, crcs[3], connection=2) == ACK_AGAIN
    assert ledger.receive(4, True, crcs[4], connection=2) == NEW  # confirmed and forgotten


def test_resume_state_names_what_a_restarted_process_must_not_apply_again() -> None:
    ledger = AckLedger()
    crcs = {mid: digest(b"t", bytes([mid])) for mid in range(1, 6)}
    for mid, crc in crcs.items():
        ledger.receive(mid, False, crc, connection=1)
    ledger.acknowledged([1], connection=1, ping=1)  # acked, not confirmed
    ledger.acknowledged([2], connection=1, ping=2)
    ledger.confirm(connection=1, pongs=2)  # 1 and 2 confirmed
    ledger.acknowledged([3], connection=1, ping=3)  # acked, not confirmed
    # 4 is due (its epoch is complete), 5 is held (not emitted, or its epoch is still open)
    state = ledger.resume_state(due=[4])
    assert state == [(3, crcs[3]), (4, crcs[4])]

    restarted = AckLedger()
    restarted.restore(state)
    assert restarted.resume_state(due=[]) == state  # kept until confirmed, across restarts too
    # the broker sends 3 and 4 again (it has no PUBACK for them): drop and acknowledge them
    assert restarted.receive(3, True, crcs[3], connection=1) == ACK_AGAIN
    assert restarted.receive(4, True, crcs[4], connection=1) == ACK_AGAIN
    assert restarted.receive(4, True, crcs[4], connection=1) == REPEAT  # the re-ack is queued
    # 5 was never applied: it is new to the restarted process
    assert restarted.receive(5, True, crcs[5], connection=1) == NEW
    restarted.acknowledged([3, 4], connection=1, ping=1)
    restarted.confirm(connection=1, pongs=1)
    assert restarted.resume_state(due=[]) == []
