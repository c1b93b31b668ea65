"""CPU time of one SnapshotLog part of a shard whose twins all changed (issue 9, item 3).

A shard of ``--twins`` twins of the Kafka spec's ``pump`` type (bench_snapshot.py's shard) gets
a base, then each round every twin reports once more and :meth:`SnapshotLog.snapshot` writes a
part of all of them (pickled, written, fsync'd), as at 100,000 twins in 4 shards while the twins
keep reporting. Prints the median CPU ms of the part, of making its pickles (``bank_snapshot``
of every twin, no file) and of the file's bytes; after the rounds, checks the restore (base +
parts) equals the shard's full snapshot. Run it from each tree's folder to compare trees.

    python benchmarks/bench_snapshot_part.py --twins 25000 --rounds 5
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from pathlib import Path

from bench_snapshot import feed, grown_shard, log_manifest, same

from dte_stream.twins import snapshot_log
from dte_stream.twins.snapshot_log import SnapshotLog, restore_snapshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--twins", type=int, default=25_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    shard, router, ids = grown_shard(args.twins)
    part_ms: list[float] = []
    make_ms: list[float] = []
    size = 0
    with tempfile.TemporaryDirectory() as tmp:
        log = SnapshotLog(Path(tmp))
        log.snapshot(shard)  # the base
        for r in range(args.rounds):
            feed(shard, router, ids, 3 + r, 100 + r)
            start = time.process_time()
            for part in log._part(shard):  # the pickles alone, not written
                pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
            make_ms.append((time.process_time() - start) * 1e3)
            start = time.process_time()
            log.snapshot(shard)
            part_ms.append((time.process_time() - start) * 1e3)
            size = log.last_written
        if not same(restore_snapshot(log.folder(), log_manifest(log, shard)), shard.snapshot()):
            raise SystemExit("the restore differs from the shard")
    tree = Path(snapshot_log.__file__).parents[2].name
    print(
        f"{tree}: part of {args.twins:,} twins, {size / 2**20:.1f} MiB: "
        f"snapshot {statistics.median(part_ms):.0f} ms CPU (range {min(part_ms):.0f}-{max(part_ms):.0f}), "
        f"pickles alone {statistics.median(make_ms):.0f} ms; restore equal"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
