"""``dte-stream serve``: the HTTP API and dashboard over an existing data directory, no dataflow.

Examples::

    dte-stream serve --http 127.0.0.1:8080 --data-dir ./data
    dte-stream serve --http 0.0.0.0:8080 --data-dir /var/lib/dte --tokens /etc/dte/tokens.json
    dte-stream serve --http 0.0.0.0:8080 --data-dir ./api --view kafka://kafka-1:9092/dte.twin_view

It reads what the dataflows wrote there: the twin view, the local store and the alert log;
acknowledgements reach a running dataflow through the data directory. With ``--view
kafka://HOST:PORT/TOPIC`` (or ``--spec`` whose ``view`` is kafka) the twins come from the
compacted view topic the dataflows publish, so the API may run on any host. TLS belongs to a
reverse proxy in front (see docs/api.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dte_stream.api.server import add_http_argument, serve_forever
from dte_stream.cli.query import add_data_dir_argument
from dte_stream.cli.token import add_tokens_argument, tokens_path
from dte_stream.errors import ConfigError
from dte_stream.logs import add_logging_arguments, configure
from dte_stream.spec import DataflowSpec, load_spec
from dte_stream.spec.view import KafkaViewSpec, SqliteViewSpec, parse_view_url

__all__ = ["add_cors_argument", "add_parser"]


def add_cors_argument(parser: argparse.ArgumentParser) -> None:
    """``--cors-origin`` (repeatable): browser origins allowed to call the API; none by default."""
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow a browser page from ORIGIN (e.g. https://ops.example.org) to call the API; repeatable",
    )


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="serve the HTTP API and dashboard over a data directory (no dataflow)",
        description=__doc__.split("\n\n")[0],
    )
    add_http_argument(parser)
    add_data_dir_argument(parser, "the data directory the dataflows write")
    parser.add_argument(
        "--spec",
        type=Path,
        default=None,
        metavar="SPEC",
        help="the dataflow's spec: history from its InfluxDB sink when the data dir has no local store",
    )
    parser.add_argument(
        "--view",
        default=None,
        metavar="URL",
        help="the twin view to read: sqlite (the data directory's, the default) or "
        "'kafka://HOST:PORT[,HOST:PORT]/TOPIC[?SETTING=VALUE&...]' (the compacted topic of view: "
        "kafka; librdkafka settings such as security.protocol, sasl.username, ssl.ca.location; "
        "secrets only as ${ENV_VAR}, see docs/api.md); default: the view of --spec",
    )
    add_tokens_argument(parser)
    add_cors_argument(parser)
    add_logging_arguments(parser)
    parser.set_defaults(handler=_serve)


def _view_option(url: str | None, spec: DataflowSpec | None) -> KafkaViewSpec | SqliteViewSpec | None:
    """``--view`` as a view spec; without it the spec's Kafka view (``serve`` may run on any host)."""
    if url is None:
        kind = spec.view if spec is not None else None
        return kind if isinstance(kind, KafkaViewSpec) else None
    if url == "sqlite":
        return SqliteViewSpec()
    return parse_view_url(url)


def _serve(args: argparse.Namespace) -> int:
    from dte_stream.api.app import ApiContext, create_app

    configure(args.log_level, args.log_format)
    if args.http is None:
        raise ConfigError("serve needs --http HOST:PORT, for example --http 127.0.0.1:8080")
    spec = load_spec(args.spec) if args.spec is not None else None
    view = _view_option(args.view, spec)
    if not args.data_dir.is_dir():
        if not isinstance(view, KafkaViewSpec):
            raise ConfigError(
                f"no data directory {args.data_dir}: point --data-dir at the directory a dataflow writes to"
            )
        args.data_dir.mkdir(parents=True)  # the API's own: tokens, rejected view records
    tokens = tokens_path(args.tokens, args.data_dir)
    options: dict[str, object] = {"cors_origins": args.cors_origin, "view": view}
    context = ApiContext(spec=spec, data_dir=args.data_dir, tokens_file=tokens, options=options)
    host, port = args.http
    if isinstance(view, KafkaViewSpec):
        what = f"the twin view topic {view.topic!r} of Kafka {view.bootstrap_servers}"
    else:
        what = str(args.data_dir)
    print(f"dte-stream: serving {what} on http://{host}:{port}/ (API: /api/v1/docs)", file=sys.stderr)
    if not tokens.exists():
        print(
            f"dte-stream: no tokens yet in {tokens}: dte-stream token create --name NAME --scope read",
            file=sys.stderr,
        )
    serve_forever(create_app(context), host, port)
    return 0
