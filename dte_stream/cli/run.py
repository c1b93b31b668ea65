"""``dte-stream run SPEC`` and ``dte-stream demo``: run a dataflow with live progress."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dte_stream.api.server import add_http_argument
from dte_stream.cli.cluster import (
    check_cluster,
    check_recovery_layout,
    one_host_cluster,
    parse_addresses,
    run_cluster,
)
from dte_stream.cli.failures import one_line
from dte_stream.cli.preflight import preflight
from dte_stream.cli.progress import Progress
from dte_stream.cli.token import add_tokens_argument
from dte_stream.cli.validate import summary
from dte_stream.demo import demo_spec
from dte_stream.errors import ConfigError
from dte_stream.logs import add_logging_arguments, configure, json_logs
from dte_stream.metrics import METRICS
from dte_stream.readiness import DEFAULT_MAX_LAG, READINESS
from dte_stream.reload import LiveSpec, SpecWatcher
from dte_stream.shutdown import STOP, install_signal_handlers
from dte_stream.spec import DataflowSpec, load_spec
from dte_stream.spec.mqtt import MqttSourceSpec

if TYPE_CHECKING:
    from bytewax.dataflow import Dataflow

__all__ = ["add_cluster_arguments", "add_parsers", "execute", "non_negative_float", "positive_int"]

log = logging.getLogger("dte_stream.run")


def _say(text: str) -> None:
    """One line for the person running it: on stderr, or a log record when logs are JSON."""
    if json_logs():
        log.info(text.replace("%", "%%"))
    else:
        sys.stderr.write(f"dte-stream: {text}\n")  # one write: a cluster's processes share stderr
        sys.stderr.flush()


def execute(
    spec: DataflowSpec,
    *,
    quiet: bool = False,
    recovery_dir: Path | None = None,
    http: tuple[str, int] | None = None,
    tokens: Path | None = None,
    addresses: list[str] | None = None,
    process_id: int | None = None,
    spec_path: Path | None = None,
    load: Callable[[Path], DataflowSpec] | None = None,
) -> int:
    """Build and run ``spec``'s dataflow with progress on stderr; print a summary at the end.

    With ``http`` (host, port), the HTTP surface (:mod:`dte_stream.api`) is served meanwhile,
    with the API tokens of ``tokens`` (default: the tokens file in the data directory).
    With ``addresses`` and ``process_id`` this process is one of a Bytewax cluster
    (:mod:`dte_stream.cli.cluster`); only process 0 shows progress, each prints its summary,
    and process I serves HTTP on port + I. With ``spec_path`` (and ``load``, which reads it
    as at start), SIGHUP and changes of the file reload the spec live (:mod:`dte_stream.reload`).
    """
    from dte_stream.dataflow import build_flow

    preflight(spec)  # every service answers, or one line says which does not and why
    live = LiveSpec(spec)
    processes = len(addresses) if addresses is not None else 1
    one_host = addresses is None or one_host_cluster(addresses)
    flow = build_flow(spec, processes=processes, one_host=one_host, live=live, recovery_dir=recovery_dir)
    if http is not None and process_id and addresses is not None and one_host:
        http = (http[0], http[1] + process_id)  # processes that share a host share no port
    with _http_server(spec, http, tokens), _spec_watcher(live, spec_path, load):
        return _execute(
            spec, flow, quiet=quiet, recovery_dir=recovery_dir, addresses=addresses, process_id=process_id
        )


@contextlib.contextmanager
def _spec_watcher(
    live: LiveSpec, path: Path | None, load: Callable[[Path], DataflowSpec] | None
) -> Iterator[None]:
    """Reload ``path`` on SIGHUP and when it changes, while the dataflow runs.

    Without a spec file (``demo``) SIGHUP is ignored (Python would end the process on it).
    """
    if path is None or load is None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        yield
        return
    with SpecWatcher(path, live, load) as watcher:
        watcher.install_sighup()
        yield


@contextlib.contextmanager
def _http_server(spec: DataflowSpec, http: tuple[str, int] | None, tokens: Path | None) -> Iterator[None]:
    """Serve the HTTP surface beside the dataflow (nothing when ``http`` is None)."""
    READINESS.reset(max_lag=None if spec.engine.clock == "event" else DEFAULT_MAX_LAG)
    # Not ready until Bytewax has built the dataflow (its probe sink reports "running"): the
    # server starts first, and an empty set of checks would answer ready in between.
    READINESS.expect("dataflow", "starting")
    if http is None:
        yield
        return
    from dte_stream.api.process import ApiProcess

    config = {"spec": spec, "data_dir": spec.data_dir(), "tokens_file": tokens}  # pickled: secrets intact
    with ApiProcess(config, *http) as server:  # in a process of its own: no GIL shared with the shards
        _say(f"serving {server.url}/healthz, /readyz, /metrics, /api/v1/docs")
        _say(f"dashboard at {server.url}/ (dte-stream token create gives a token)")
        yield


#: Containers allocated (less those freed) between two young collections, instead of Python's 700.
YOUNG_THRESHOLD = 10_000


def _freeze_heap() -> None:
    """Leave the objects of start-up out of the cyclic GC, and collect the young less often.

    The dataflow allocates a container per decoded record (orjson's dicts), so the collector
    runs every few hundred records, and its older generations walked every object imported at
    start-up each time: about 1.5 s of CPU per million readings at 1,000 twins (measured
    2026-12-07), some 10 % of the process. ``gc.freeze`` after one last collection moves them
    to a generation that is never walked; what the dataflow itself allocates is collected as
    before.

    A consumed batch still holds its 5,000 decoded records at once, so with Python's default
    threshold (700) each batch ran about 7 young collections, which promoted the records to
    the older generations and brought on their collections too: 4,000 young, 360 middle and 33
    full collections per million readings, 0.5 s of CPU. With :data:`YOUNG_THRESHOLD` the
    records are freed before a collection finds them: 120, 10 and 1 collections, 0.25 s, and
    the process used 0.4-0.6 s less CPU per million (docs/benchmarks.md, "The collector"). At
    most some 10,000 young objects of cyclic garbage wait a little longer: a few MB at most.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _execute(
    spec: DataflowSpec,
    flow: Dataflow,
    *,
    quiet: bool,
    recovery_dir: Path | None,
    addresses: list[str] | None,
    process_id: int | None,
) -> int:
    from dte_stream.dataflow import run_flow

    processes = len(addresses) if addresses is not None else 1
    who = "" if addresses is None else f"[process {process_id} of {processes}]: "
    if not quiet and not process_id:
        _say(f"running {summary(spec)}")
        for line in _spool_notes(spec, recovery_dir):
            _say(line)
        _say("press Ctrl-C to stop")
    METRICS.reset()
    METRICS.set_gauge("spec_version", "", spec.version)
    install_signal_handlers()
    started = time.monotonic()
    interrupted = False  # stopped at once (second signal): exit 130
    progress = Progress() if not quiet and not json_logs() and not process_id else None
    _freeze_heap()
    try:
        if progress is not None:
            with progress:
                run_flow(spec, flow, recovery_dir, addresses=addresses, process_id=process_id)
        else:
            run_flow(spec, flow, recovery_dir, addresses=addresses, process_id=process_id)
    except KeyboardInterrupt:
        interrupted = True
    except Exception as exc:  # a sink that gave up waiting during a stop ends the dataflow
        if not STOP.is_set():
            raise
        interrupted = True
        _say(f"{who}stopped at once: {one_line(exc)}")
    drained = STOP.is_set() and not interrupted
    elapsed = time.monotonic() - started
    n = METRICS.get("readings_processed")
    dropped = METRICS.get("influxdb_points_dropped") + METRICS.get("mqtt_spool_dropped")
    _say(
        f"{who}{'stopped' if interrupted or drained else 'finished'} after {elapsed:.1f} s: "
        f"{n:,} readings processed ({n / max(elapsed, 1e-9):,.0f} readings/s), "
        f"{METRICS.gauge('twins'):,} twins, {METRICS.get('dead_letters'):,} dead letters"
        + (f" ({dropped:,} of them dropped points or spooled messages)" if dropped else "")
        + (f", {METRICS.get('readings_from_other_processes'):,} readings from other processes" if who else "")
    )
    data_dir = spec.data_dir()
    if data_dir is not None and not quiet and not process_id:
        _say(f"data in {data_dir}; dead letters in {spec.dead_letter_path()}")
        _say(f"try  dte-stream query --data-dir {data_dir} --limit 10")
    return 130 if interrupted else 0


def _spool_notes(spec: DataflowSpec, recovery_dir: Path | None) -> list[str]:
    """What the MQTT sources' disk spools do in this run, one line per source that needs saying.

    With a recovery directory the spool is on unless the spec turns it off; without one an
    ``ack: after_epoch`` source has none, and while a sink is down only the broker's bounded
    queue keeps new readings (docs/reliability.md, "The MQTT disk spool").
    """
    notes = []
    for source in spec.sources:
        if not isinstance(source, MqttSourceSpec) or source.ack != "after_epoch":
            continue
        spool = source.spool_settings(recovery_dir)
        if spool is not None:
            folder = spool.path or (recovery_dir / "spool" if recovery_dir is not None else None)
            notes.append(
                f"source {source.name}: disk spool in {folder}, up to {spool.max_bytes:,} bytes per client"
            )
        elif source.spool is None:
            notes.append(
                f"source {source.name}: no disk spool without --recovery-dir: while a sink is down only the "
                "broker's queue keeps new readings, and it drops past its limit (docs/reliability.md)"
            )
    return notes


def _run(args: argparse.Namespace) -> int:
    configure(args.log_level, args.log_format)

    def load(path: Path) -> DataflowSpec:
        """The spec at ``path`` with the command line's overrides (at start, and for reloads)."""
        spec = load_spec(path)
        if args.workers is not None:
            engine = spec.engine.model_copy(update={"workers": args.workers})
            spec = spec.model_copy(update={"engine": engine})
        return spec

    return _launch(args, load(Path(args.spec)), args.recovery_dir, load)


def _launch(
    args: argparse.Namespace,
    spec: DataflowSpec,
    recovery_dir: Path | None,
    load: Callable[[Path], DataflowSpec] | None = None,
) -> int:
    """Run ``spec`` alone, as one process of a cluster, or start a cluster (``--processes``)."""
    addresses = parse_addresses(args.addresses) if args.addresses is not None else None
    check_cluster(addresses, args.process_id)
    if args.processes > 1:
        if addresses is not None:
            raise ConfigError("--processes starts a cluster on this host; --addresses joins one: not both")
        if recovery_dir is not None:
            check_recovery_layout(recovery_dir, args.processes)
        return run_cluster(list(getattr(args, "argv", sys.argv[1:])), args.processes)
    return execute(
        spec,
        quiet=args.quiet,
        recovery_dir=recovery_dir,
        http=args.http,
        tokens=args.tokens,
        addresses=addresses,
        process_id=args.process_id,
        spec_path=Path(args.spec) if load is not None else None,
        load=load,
    )


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """``--processes`` (a cluster on this host), ``--addresses``/``--process-id`` (one of several hosts)."""
    p.add_argument(
        "--processes",
        type=positive_int,
        default=1,
        help="run as a Bytewax cluster of this many processes on this host (default 1)",
    )
    p.add_argument(
        "--addresses",
        metavar="HOST:PORT,...",
        help="every process of a multi-host cluster, in order (with --process-id)",
    )
    p.add_argument(
        "--process-id",
        type=int,
        metavar="I",
        help="this process's index in --addresses (0-based)",
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _demo(args: argparse.Namespace) -> int:
    configure(args.log_level, args.log_format)
    if args.duration is not None and args.duration <= 0:
        raise ConfigError(f"--duration must be > 0 seconds, got {args.duration}")
    spec = demo_spec(
        twins=args.twins,
        rate=args.rate,
        duration=args.duration,
        data_dir=Path(args.data_dir),
        seed=args.seed,
        workers=args.workers,
    )
    return _launch(args, spec, None)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run a dataflow spec", description="Run the dataflow of a spec.")
    p.add_argument("spec", help="path of the YAML spec")
    p.add_argument("--workers", type=positive_int, help="worker threads (overrides engine.workers)")
    p.add_argument("--quiet", action="store_true", help="no progress, only the summary")
    p.add_argument(
        "--recovery-dir",
        type=Path,
        help="snapshot state and source positions here; a restart with it resumes where it stopped",
    )
    add_http_argument(p)
    add_logging_arguments(p)
    add_tokens_argument(p)
    add_cluster_arguments(p)
    p.set_defaults(handler=_run)

    d = sub.add_parser(
        "demo",
        help="run the demo: simulated pumps -> twin bank -> local store",
        description=(
            "Simulated pumps (with injected faults) feed the twin bank; readings and estimates go "
            "to the local Parquet store. Same graph as dataflows/demo.yaml."
        ),
    )
    d.add_argument("--twins", type=positive_int, default=100, help="simulated twins (default 100)")
    d.add_argument(
        "--rate",
        type=non_negative_float,
        default=None,
        help="readings per second; 0 = as fast as possible (default: real time, 1 reading/s per sensor)",
    )
    d.add_argument(
        "--duration",
        type=non_negative_float,
        help="stop after this many seconds (default: Ctrl-C)",
    )
    d.add_argument("--data-dir", default="dte-data", help="local store folder (default ./dte-data)")
    d.add_argument("--seed", type=int, default=42, help="simulator seed (default 42)")
    d.add_argument("--workers", type=positive_int, default=1, help="worker threads (default 1)")
    d.add_argument("--quiet", action="store_true", help="no progress, only the summary")
    add_http_argument(d)
    add_logging_arguments(d)
    add_tokens_argument(d)
    add_cluster_arguments(d)
    d.set_defaults(handler=_demo)
