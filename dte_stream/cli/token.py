"""``dte-stream token``: create, list and revoke the HTTP API's bearer tokens.

Examples::

    dte-stream token create --name ana --scope operate --data-dir ./data   # prints the token once
    dte-stream token list --data-dir ./data
    dte-stream token revoke ana --data-dir ./data

The tokens file is ``DATA_DIR/api_tokens.json`` unless ``--tokens FILE`` names another; it keeps
only each token's SHA-256. Scopes: ``read``, ``operate`` (acknowledge, simulate), ``admin``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dte_stream.api.tokens import SCOPES, TokenFile, default_tokens_path
from dte_stream.cli.query import DEFAULT_DATA_DIR, add_data_dir_argument
from dte_stream.times import format_time_ns

__all__ = ["add_parser", "add_tokens_argument", "tokens_path"]


def add_tokens_argument(parser: argparse.ArgumentParser) -> None:
    """``--tokens FILE`` (shared by serve, run, demo and token)."""
    parser.add_argument(
        "--tokens",
        type=Path,
        default=None,
        metavar="FILE",
        help="the API tokens file (default: DATA_DIR/api_tokens.json)",
    )


def tokens_path(tokens: Path | None, data_dir: Path | None) -> Path:
    """``--tokens`` if given, else the default file in the data directory."""
    if tokens is not None:
        return tokens
    return default_tokens_path(data_dir if data_dir is not None else Path(DEFAULT_DATA_DIR))


def _common(parser: argparse.ArgumentParser) -> None:
    add_tokens_argument(parser)
    add_data_dir_argument(parser, "data directory holding the default tokens file")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``token`` subcommand (``create``, ``list``, ``revoke``)."""
    parser = subparsers.add_parser(
        "token", help="manage the HTTP API's bearer tokens", description=__doc__.split("\n\n")[0]
    )
    actions = parser.add_subparsers(dest="token_command", metavar="ACTION")
    actions.required = True
    create = actions.add_parser("create", help="create a token and print it (once)")
    create.add_argument("--name", required=True, help="who or what uses it (recorded with acknowledgements)")
    create.add_argument("--scope", required=True, choices=SCOPES, help="read, operate or admin")
    _common(create)
    create.set_defaults(handler=_create)
    listing = actions.add_parser("list", help="the tokens (names, scopes, creation times; never the tokens)")
    _common(listing)
    listing.set_defaults(handler=_list)
    revoke = actions.add_parser("revoke", help="remove a token: it stops working at once")
    revoke.add_argument("name", help="the token's name")
    _common(revoke)
    revoke.set_defaults(handler=_revoke)


def _file(args: argparse.Namespace) -> TokenFile:
    return TokenFile(tokens_path(args.tokens, args.data_dir))


def _create(args: argparse.Namespace) -> int:
    tokens = _file(args)
    token = tokens.create(args.name, args.scope)
    print(token)
    print(
        f"dte-stream: token {args.name!r} ({args.scope}) added to {tokens.path}; it is shown only now: "
        "send it as 'Authorization: Bearer TOKEN'",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    tokens = _file(args).tokens()
    if not tokens:
        print(f"dte-stream: no tokens in {_file(args).path}", file=sys.stderr)
        return 0
    width = max(len(t.name) for t in tokens)
    print(f"{'name':<{width}}  scope    created")
    for t in tokens:
        print(f"{t.name:<{width}}  {t.scope:<7}  {format_time_ns(t.created_ns)}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    tokens = _file(args)
    tokens.revoke(args.name)
    print(f"dte-stream: token {args.name!r} revoked in {tokens.path}", file=sys.stderr)
    return 0
