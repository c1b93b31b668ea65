"""A dataflow as a cluster of processes on Bytewax's own cluster mode.

Bytewax runs a cluster as N processes, each told every process's address and its own index
(``-a host:port;... -i I``); the processes connect to each other and the dataflow's work is
spread over every worker of every process: Kafka partitions and the shards' keyed state
(partitioned sources and state are assigned by key across all workers), one MQTT shared
subscription member per process. dte-stream takes the same two forms:

- ``dte-stream run SPEC --processes N`` on one host: this process picks N free loopback ports,
  starts N children ``dte-stream run SPEC --addresses ... --process-id I`` and waits for them.
  SIGINT/SIGTERM are passed on to every child (each drains gracefully), and SIGHUP (each
  reloads the spec, :mod:`dte_stream.reload`). The children have process groups of their own,
  so a signal to the launcher's group reaches each of them once (a second copy would mean
  "stop at once"); a service manager should signal the launcher alone (systemd:
  ``KillMode=mixed``). If one child fails,
  the others get SIGTERM, and SIGKILL after ``STOP_GRACE_S`` (a cluster that lost a process
  cannot drain). The exit code is the first non-zero code of a child, else 0; restart the
  cluster with the same ``--recovery-dir`` to resume.
- ``dte-stream run SPEC --addresses h0:p0,h1:p1,... --process-id I`` on each of several hosts
  (same spec, same addresses everywhere, I = this host's index): the multi-host form.

Recovery in a cluster (``--recovery-dir D``): process I keeps its own recovery partition in
``D/process-I/part-I.sqlite3`` (one partition per process, N in all; see
:func:`cluster_recovery_dir`). On one host all of them live under the same ``D``; across hosts
each host has its own ``D`` holding its own process's folder. A restart must use the same
number of processes (a different one is refused with the count the folder was made for).

>>> addresses = loopback_addresses([7101, 7102])
>>> addresses
['127.0.0.1:7101', '127.0.0.1:7102']
>>> child_argv(["run", "flow.yaml", "--processes", "2", "--quiet"], addresses, 1)[3:]
['run', 'flow.yaml', '--quiet', '--addresses', '127.0.0.1:7101,127.0.0.1:7102', '--process-id', '1']
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from dte_stream.errors import ConfigError
from dte_stream.shutdown import stop_requested

__all__ = [
    "await_lower_processes",
    "check_cluster",
    "check_recovery_layout",
    "child_argv",
    "cluster_recovery_dir",
    "free_ports",
    "loopback_addresses",
    "one_host_cluster",
    "parse_addresses",
    "quick_cluster",
    "record_shard_keys",
    "recorded_shard_keys",
    "run_cluster",
]


#: The file in a cluster's recovery folder that records the cluster size ("processes N"), on
#: its second line that the shards' keys are placed (:mod:`dte_stream.placement`), and on a
#: third ("shard-keys: K0 K1 ...") the keys the shards' state is kept under: a restart keeps
#: them even if the Kafka partitions that chose them changed. A folder without that line was
#: made with evenly placed keys (shard ``i`` on worker ``i % workers``).
_MARKER = "cluster.txt"
_PLACED = "shard-keys placed"
_KEYS = "shard-keys:"

#: Seconds the other processes get to stop once one process of the cluster failed.
STOP_GRACE_S = 10.0

#: The longest wait of a process for the lower processes of a one-host cluster to listen.
LISTEN_WAIT_S = 120.0


def free_ports(count: int, low: int = 20_000, high: int = 32_000) -> list[int]:
    """``count`` TCP ports free on 127.0.0.1 right now, below the usual ephemeral range.

    Ports the OS hands out for outgoing connections (32768 and up) could be taken by another
    connection between this check and the cluster's own bind; these are not.
    """
    found: list[int] = []
    for port in random.sample(range(low, high), high - low):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise ConfigError(f"no {count} free TCP ports on 127.0.0.1 between {low} and {high}")


def loopback_addresses(ports: list[int]) -> list[str]:
    return [f"127.0.0.1:{port}" for port in ports]


def parse_addresses(text: str) -> list[str]:
    """``host:port,host:port,...`` (commas or semicolons) as a list; refuses a malformed entry.

    >>> parse_addresses("a:1;b:2")
    ['a:1', 'b:2']
    """
    out = [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]
    for address in out:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--addresses: {address!r} is not host:port")
    if len(set(out)) != len(out):
        raise ConfigError(f"--addresses: an address is given twice in {text!r}")
    if not out:
        raise ConfigError("--addresses: no address given")
    return out


def one_host_cluster(addresses: list[str]) -> bool:
    """True when every process of the cluster runs on one host (as ``--processes N`` starts them).

    Then process I serves ``--http`` on port + I (on several hosts, Kubernetes, every process
    keeps the port its probes expect), and the processes share one recovery folder, so shards
    snapshot incrementally (:mod:`dte_stream.twins.snapshot_log`).

    >>> one_host_cluster(["127.0.0.1:7101", "127.0.0.1:7102"])
    True
    >>> one_host_cluster(["dte-0.c:2101", "dte-1.c:2101"])
    False
    """
    return len({address.rpartition(":")[0] for address in addresses}) == 1


def listening_ports(tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")) -> set[int] | None:
    """The TCP ports some socket of this host listens on (Linux ``/proc/net``); None if unreadable.

    >>> import tempfile, pathlib
    >>> table = pathlib.Path(tempfile.mkdtemp()) / "tcp"
    >>> _ = table.write_text(
    ...     "  sl  local_address rem_address   st\\n"
    ...     "   0: 0100007F:1B9D 00000000:0000 0A\\n"  # 127.0.0.1:7069, LISTEN
    ...     "   1: 0100007F:1B9E 0100007F:9C40 01\\n"  # 127.0.0.1:7070, ESTABLISHED
    ... )
    >>> listening_ports((str(table),))
    {7069}
    """
    ports: set[int] = set()
    read = False
    for table in tables:
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        read = True
        for row in rows:
            fields = row.split()
            if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports if read else None


def await_lower_processes(
    addresses: list[str],
    process_id: int,
    timeout: float = LISTEN_WAIT_S,
    ports: Callable[[], set[int] | None] = listening_ports,
) -> float:
    """On one host, wait until every process below ``process_id`` listens; the seconds waited.

    Bytewax's cluster (timely) has process I connect to processes 0..I-1, and a connection
    that is refused is tried again only after a whole second: a process that is ready before
    the ones below it would cost the cluster a second of start-up, often. So it waits here
    for their ports (``/proc/net/tcp``, read only: a test connection would be taken for a
    peer). Anything else (several hosts, no ``/proc``, ``timeout`` passed, a stop requested)
    goes ahead, and timely retries as before.

    >>> await_lower_processes(["127.0.0.1:7101", "127.0.0.1:7102"], 1, ports=lambda: {7101}) < 0.01
    True
    >>> await_lower_processes(["127.0.0.1:7101", "127.0.0.1:7102"], 1, timeout=0.05, ports=lambda: set()) > 0
    True
    """
    if process_id == 0 or not one_host_cluster(addresses):
        return 0.0
    wanted = {int(address.rpartition(":")[2]) for address in addresses[:process_id]}
    started = time.monotonic()
    while True:
        listening = ports()
        waited = time.monotonic() - started
        if listening is None or wanted <= listening or waited > timeout or stop_requested():
            return waited
        time.sleep(0.01)


def check_cluster(addresses: list[str] | None, process_id: int | None) -> None:
    """Both or neither of --addresses and --process-id, and the id in range."""
    if (addresses is None) != (process_id is None):
        raise ConfigError("--addresses and --process-id go together: give both, or neither")
    if addresses is not None and process_id is not None and not 0 <= process_id < len(addresses):
        raise ConfigError(
            f"--process-id must be 0..{len(addresses) - 1} for {len(addresses)} addresses, got {process_id}"
        )


def check_recovery_layout(recovery_dir: Path, processes: int) -> None:
    """Refuse a recovery folder made for another cluster size (Bytewax needs the same partitions)."""
    if any(recovery_dir.glob("part-*.sqlite3")):
        raise ConfigError(
            f"--recovery-dir {recovery_dir} holds the state of a one-process run; "
            "run it with one process, or use a fresh --recovery-dir"
        )
    marker = recovery_dir / _MARKER
    if marker.exists():
        first, *rest = marker.read_text().splitlines() or [""]
        made_for = first.split()
        if made_for != ["processes", str(processes)]:
            count = " ".join(made_for[1:]) or "another number of"
            raise ConfigError(
                f"--recovery-dir {recovery_dir} was made for {count} processes, not {processes}; "
                "run with that many, or use a fresh --recovery-dir"
            )
        if _PLACED not in rest:
            raise ConfigError(
                f"--recovery-dir {recovery_dir} was made by an older dte-stream that named a cluster's "
                "shards differently; finish it with that version, or use a fresh --recovery-dir"
            )


def recorded_shard_keys(recovery_dir: Path) -> list[str] | None:
    """The shard keys a cluster folder records; None for a fresh folder.

    A folder of an earlier release (``shard-keys placed`` without the keys) gets the evenly
    placed keys it was made with: :func:`dte_stream.placement.balanced_shard_keys`.
    """
    marker = recovery_dir / _MARKER
    if not marker.exists():
        return None
    for line in marker.read_text().splitlines():
        if line.startswith(_KEYS):
            return line.removeprefix(_KEYS).split()
    return []  # placed evenly: the caller derives the keys


def _write_marker(recovery_dir: Path, processes: int, keys: list[str] | None) -> None:
    """Write ``cluster.txt`` at once (the processes of a cluster read it while others start)."""
    text = f"processes {processes}\n{_PLACED}\n" + (f"{_KEYS} {' '.join(keys)}\n" if keys else "")
    scratch = recovery_dir / f".{_MARKER}.{os.getpid()}"
    scratch.write_text(text)
    os.replace(scratch, recovery_dir / _MARKER)


def record_shard_keys(recovery_dir: Path, processes: int, keys: list[str]) -> None:
    """Record the keys the shards' state is kept under, unless the folder already holds some.

    Every process of a cluster computes the same keys from the same Kafka metadata, so a
    second writer writes what the first wrote.
    """
    recovery_dir.mkdir(parents=True, exist_ok=True)
    check_recovery_layout(recovery_dir, processes)
    if not recorded_shard_keys(recovery_dir):
        _write_marker(recovery_dir, processes, keys)


def cluster_recovery_dir(recovery_dir: Path, process_id: int, processes: int) -> Path:
    """The recovery folder of process ``process_id`` of ``processes`` (created with its partition).

    Refuses a folder made for another number of processes (:func:`check_recovery_layout`).
    """
    from bytewax.recovery import init_db_dir

    recovery_dir.mkdir(parents=True, exist_ok=True)
    check_recovery_layout(recovery_dir, processes)
    _write_marker(recovery_dir, processes, recorded_shard_keys(recovery_dir))
    own = recovery_dir / f"process-{process_id}"
    part = own / f"part-{process_id}.sqlite3"
    if not part.exists():
        scratch = recovery_dir / f".init-{process_id}-{os.getpid()}"
        scratch.mkdir()
        init_db_dir(scratch, processes)  # type: ignore[no-untyped-call]  # untyped in bytewax's stub
        own.mkdir(exist_ok=True)
        (scratch / part.name).rename(part)
        for leftover in scratch.iterdir():
            leftover.unlink()
        scratch.rmdir()
    return own


def quick_cluster(argv: list[str]) -> tuple[int, Path, Path | None] | None:
    """``[--debug] run SPEC ... --processes N`` (N > 1): N, SPEC and ``--recovery-dir``; else None.

    Such a command only checks the spec and the recovery folder and starts its children, so
    the entry point does that without loading the rest of the CLI (about a second of imports,
    several on a busy machine, before the children even start). Any other form, and ``--help``,
    ``--addresses`` or ``--process-id``, go through the full parser (None).

    >>> quick_cluster(["run", "f.yaml", "--processes", "2", "--recovery-dir", "r"])
    (2, PosixPath('f.yaml'), PosixPath('r'))
    >>> quick_cluster(["run", "f.yaml", "--processes=1"]), quick_cluster(["run", "--quiet", "f.yaml"])
    (None, None)
    """
    head = argv[: argv.index("run")] if "run" in argv else ["?"]
    rest = argv[len(head) + 1 :]
    if any(a != "--debug" for a in head) or not rest or rest[0].startswith("-"):
        return None
    values: dict[str, str] = {}
    for i, arg in enumerate(rest):
        name, eq, value = arg.partition("=")
        if name in ("-h", "--help", "--addresses", "--process-id"):
            return None
        if name in ("--processes", "--recovery-dir"):
            values[name] = value if eq else (rest[i + 1] if i + 1 < len(rest) else "")
    processes = values.get("--processes", "")
    if not processes.isdigit() or int(processes) < 2:
        return None
    recovery = values.get("--recovery-dir")
    return int(processes), Path(rest[0]), Path(recovery) if recovery else None


def child_argv(argv: list[str], addresses: list[str], process_id: int) -> list[str]:
    """The command line of one child: this one without ``--processes N``, plus its place in the cluster."""
    args: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--processes":
            skip = True
            continue
        if arg.startswith("--processes="):
            continue
        args.append(arg)
    return [
        sys.executable, "-m", "dte_stream", *args,
        "--addresses", ",".join(addresses), "--process-id", str(process_id),
    ]  # fmt: skip


def _new_failures(children: list[subprocess.Popen[bytes]], reported: set[int]) -> list[tuple[int, int]]:
    """The children that exited with a failure since the last call, as ``(index, returncode)``.

    A child killed by a signal comes first: when one process dies, its peers fail a moment
    later (their connections to it break), and two exits can fall between two polls; the
    killed one is the cause.
    """
    found = []
    for i, child in enumerate(children):
        rc = child.poll()
        if rc not in (None, 0) and i not in reported:
            reported.add(i)
            found.append((i, rc))
    return sorted(found, key=lambda f: (f[1] >= 0, f[0]))


def run_cluster(argv: list[str], processes: int, check: Callable[[], None] | None = None) -> int:
    """Start ``processes`` children of this command on loopback ports, pass signals on, wait for all.

    ``check`` runs once the children are started; if it raises, they are killed (they have not
    read anything yet) and its exception goes to the caller.
    """
    addresses = loopback_addresses(free_ports(processes))
    print(f"dte-stream: starting {processes} processes ({', '.join(addresses)})", file=sys.stderr)
    # Each child in a process group of its own: a signal sent to the launcher's group (Ctrl-C in a
    # terminal, ``kill -TERM -PGID``) reaches the children once, through ``forward``; had it reached
    # them directly as well, the second copy would read as "stop at once" instead of "drain".
    children = [subprocess.Popen(child_argv(argv, addresses, i), process_group=0) for i in range(processes)]
    if check is not None:
        try:
            check()
        except BaseException:
            for child in children:
                child.kill()
                child.wait()
            raise

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    code = 0
    failed_at: float | None = None
    reported: set[int] = set()
    try:
        while any(child.poll() is None for child in children):
            failures = _new_failures(children, reported)
            if failures and code == 0:
                i, rc = failures[0]
                code = rc if rc > 0 else 128 - rc
                print(f"dte-stream: process {i} exited with {rc}; stopping the others", file=sys.stderr)
                forward(signal.SIGTERM, None)
                failed_at = time.monotonic()
                failures = failures[1:]
            for i, rc in failures:
                print(f"dte-stream: process {i} exited with {rc}", file=sys.stderr)
            if failed_at is not None and time.monotonic() - failed_at > STOP_GRACE_S:
                break  # a cluster that lost a process cannot drain: the finally kills the rest
            time.sleep(0.1)
        for i, rc in _new_failures(children, reported):
            print(f"dte-stream: process {i} exited with {rc}", file=sys.stderr)
            if code == 0:
                code = rc if rc > 0 else 128 - rc
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    return code
