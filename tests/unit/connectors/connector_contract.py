"""The connector contract: checks every source and sink must pass, whatever its technology.

Like river's ``yield_checks``: a connector is described once by a case (how to build it over a
fresh target, how to read back what it wrote, how to feed it a refused input), and
:func:`source_checks` / :func:`sink_checks` yield the checks to run on it. A new connector
gets its case and is tested without new test code. Cases that need no service live in
``test_connector_contract.py``; those with a broker or a database in
``tests/integration/test_connector_contract_services.py`` (same checks, real services).

Source checks:

* **parts**: ``list_parts`` gives unique string keys, and every part builds without resume state;
* **resume**: reading every part to its end in one go gives the same items as reading some
  batches, taking ``snapshot()``, closing, and building the part again from that (pickled) state:
  nothing lost, nothing repeated;
* **close**: ``close()`` after the end, and after a partial read, raises nothing;
* **refused input**: the case's bad input comes out of the source and its decoder as a dead
  letter carrying the bad bytes (sources without external input have none).

Sink checks:

* **write and read back**: items written (with an empty batch among them) and closed are all
  in the target, once;
* **snapshot**: a stateful partition's snapshot is picklable;
* **refused input**: the case's bad item becomes a dead letter in the sink's dead-letter output
  or a :class:`~dte_stream.errors.DteStreamError` naming the problem; never a partial write.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dte_stream.batches import RawBatch, SourceBatch
from dte_stream.codecs import get_codec
from dte_stream.errors import DteStreamError
from dte_stream.readings import DeadLetter

#: Stop reading a part after this many empty polls in a row (a live source with nothing left).
MAX_IDLE_POLLS = 200


@dataclass
class SourceCase:
    """How to test one source: ``build()`` makes it over a target holding the case's input.

    ``expected`` is how many payloads or readings all parts give in total; ``bad`` is the raw
    bytes of an input that must become a dead letter (None: the source takes no external input).
    ``wait`` is called between empty polls of a live source.
    """

    name: str
    build: Callable[[], Any]
    expected: int
    bad: bytes | None = None
    wait: Callable[[], None] = lambda: None


@dataclass
class SinkCase:
    """How to test one sink: ``build()`` makes it; ``good`` are items to write; ``read_back()``
    gives what the target holds (comparable keys, one per written row); ``bad`` is an item it
    must refuse and ``dead_letters()`` what it dead-lettered (None: it refuses by raising)."""

    name: str
    build: Callable[[], Any]
    good: list[Any]
    expected_keys: Callable[[], list[Any]]
    read_back: Callable[[], list[Any]]
    bad: Any
    dead_letters: Callable[[], list[DeadLetter]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# sources
# ------------------------------------------------------------------------------------------


def _keys(item: Any) -> tuple[list[Any], list[DeadLetter]]:
    """Comparable keys of what a source item carries, and its dead letters (decoded)."""
    if isinstance(item, RawBatch):
        result = get_codec(item.codec).decode_many(item.payloads)
        readings = result.readings
        errors = [*item.errors, *result.errors]
    elif isinstance(item, SourceBatch):
        readings, errors = item.readings, []
    else:  # pragma: no cover - a new item type needs a line here
        raise TypeError(f"unknown source item {type(item).__name__}")
    rows = list(
        zip(
            readings.twin_id.tolist(),
            readings.channel.tolist(),
            readings.time_ns.tolist(),
            readings.value.tolist(),
            strict=True,
        )
    )
    return rows, errors


def _read(part: Any, case: SourceCase, limit: int | None = None) -> tuple[list[Any], list[DeadLetter], bool]:
    """Read ``part`` (at most ``limit`` non-empty batches); the keys, dead letters, and whether it ended."""
    keys: list[Any] = []
    letters: list[DeadLetter] = []
    batches = idle = 0
    while limit is None or batches < limit:
        try:
            items = part.next_batch()
        except StopIteration:
            return keys, letters, True
        if not items:
            idle += 1
            if idle > MAX_IDLE_POLLS:
                return keys, letters, True  # a live source with nothing more to give
            case.wait()
            continue
        idle = 0
        batches += 1
        for item in items:
            k, d = _keys(item)
            keys += k
            letters += d
    return keys, letters, False


def check_parts(source: Any, case: SourceCase) -> None:
    parts = source.list_parts()
    assert parts, f"{case.name}: list_parts gave no part"
    assert all(isinstance(p, str) for p in parts), parts
    assert len(set(parts)) == len(parts), f"{case.name}: duplicate part keys {parts}"


def check_resume(source: Any, case: SourceCase) -> None:
    """Whole read == partial read + snapshot + rebuild + the rest (per part)."""
    whole: list[Any] = []
    resumed: list[Any] = []
    for part_key in source.list_parts():
        part = source.build_part("contract", part_key, None)
        keys, _, _ = _read(part, case)
        part.close()
        whole += keys
    fresh = case.build()
    for part_key in fresh.list_parts():
        part = fresh.build_part("contract", part_key, None)
        first, _, ended = _read(part, case, limit=1)
        state = pickle.loads(pickle.dumps(part.snapshot()))
        part.close()  # after a partial read
        rest: list[Any] = []
        if not ended:
            again = fresh.build_part("contract", part_key, state)
            rest, _, _ = _read(again, case)
            again.close()
        resumed += first + rest
    assert len(whole) == case.expected, f"{case.name}: read {len(whole)} readings, expected {case.expected}"
    assert sorted(resumed) == sorted(whole), f"{case.name}: a resumed read differs from a whole one"


def check_refused_input(source: Any, case: SourceCase) -> None:
    if case.bad is None:
        return
    letters: list[DeadLetter] = []
    for part_key in source.list_parts():
        part = source.build_part("contract", part_key, None)
        _, found, _ = _read(part, case)
        part.close()
        letters += found
    assert letters, f"{case.name}: the refused input did not become a dead letter"
    assert any(case.bad in d.raw or d.raw in case.bad for d in letters if d.raw), [d.raw for d in letters]
    assert all(d.reason and d.source for d in letters), letters


def source_checks() -> Iterator[Callable[[Any, SourceCase], None]]:
    """Every check a source must pass (each gets a fresh source built by the case)."""
    yield check_parts
    yield check_resume
    yield check_refused_input


# ------------------------------------------------------------------------------------------
# sinks
# ------------------------------------------------------------------------------------------


def _partition(sink: Any) -> Any:
    if hasattr(sink, "list_parts"):  # a fixed-partitioned sink: its first part
        return sink.build_part("contract", sink.list_parts()[0], None)
    return sink.build("contract", 0, 1)


def check_write_and_read_back(sink: Any, case: SinkCase) -> None:
    part = _partition(sink)
    part.write_batch([])
    half = len(case.good) // 2
    part.write_batch(case.good[:half])
    part.write_batch(case.good[half:])
    if hasattr(part, "snapshot"):
        pickle.loads(pickle.dumps(part.snapshot()))
    part.close()
    assert sorted(case.read_back()) == sorted(case.expected_keys()), f"{case.name}: written != read back"


def check_refused_item(sink: Any, case: SinkCase) -> None:
    part = _partition(sink)
    before = case.read_back()
    refusal = ""
    try:
        part.write_batch([case.bad])
    except DteStreamError as exc:
        refusal = str(exc) or f"{type(exc).__name__} without a message"
    finally:
        part.close()
    refused_by_error = bool(refusal)
    assert "without a message" not in refusal, f"{case.name}: the refusal says nothing"
    if not refused_by_error:
        assert case.dead_letters is not None, (
            f"{case.name}: the bad item was neither refused nor dead-lettered"
        )
        letters = case.dead_letters()
        assert letters, f"{case.name}: no dead letter for the bad item"
        assert all(d.reason for d in letters), f"{case.name}: a dead letter without a reason"
    assert sorted(case.read_back()) == sorted(before), f"{case.name}: the bad item was (partly) written"


def sink_checks() -> Iterator[Callable[[Any, SinkCase], None]]:
    """Every check a sink must pass (each gets a fresh sink and target built by the case)."""
    yield check_write_and_read_back
    yield check_refused_item
