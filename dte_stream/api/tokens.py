"""API bearer tokens with scopes, stored hashed in a tokens file.

A token is ``dte_`` plus 32 random bytes (URL-safe base64); it is shown once, when created,
and the file keeps only its SHA-256 (a token has 256 bits of entropy, so a slow password hash
adds nothing). Scopes are ordered: ``read`` (look at twins, history, alerts, live updates),
``operate`` (also acknowledge alerts and run simulations), ``admin`` (everything, including
the metrics). The file (JSON, mode 0600) lives by default in the data directory
(:data:`TOKENS_FILE`); ``dte-stream token create/list/revoke`` manage it and the API reads it
again whenever it changes, so a revoked token stops working at once.

>>> import tempfile, pathlib
>>> tmp = tempfile.TemporaryDirectory()
>>> tokens = TokenFile(pathlib.Path(tmp.name) / "tokens.json")
>>> secret = tokens.create("ana", "operate")
>>> tokens.check(secret).name, tokens.check(secret).allows("read"), tokens.check(secret).allows("admin")
('ana', True, False)
>>> tokens.revoke("ana"); tokens.check(secret) is None
True
>>> tmp.cleanup()
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from dte_stream.errors import ConfigError, StoreError
from dte_stream.times import now_ns

__all__ = ["SCOPES", "TOKENS_FILE", "Scope", "TokenFile", "TokenInfo", "default_tokens_path"]

Scope = Literal["read", "operate", "admin"]
#: The scopes, weakest first: each includes the ones before it.
SCOPES: tuple[Scope, ...] = ("read", "operate", "admin")
#: The tokens file's name in the data directory.
TOKENS_FILE = "api_tokens.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_PREFIX = "dte_"


def default_tokens_path(data_dir: Path) -> Path:
    """Where the tokens file lives when ``--tokens`` is not given."""
    return data_dir / TOKENS_FILE


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as the file keeps it (its hash, never the token)."""

    name: str
    scope: Scope
    created_ns: int
    digest: str

    def allows(self, needed: Scope) -> bool:
        """Whether this token's scope includes ``needed``."""
        return SCOPES.index(self.scope) >= SCOPES.index(needed)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenFile:
    """The tokens file: create, list, revoke, and check a presented token (thread-safe, cached)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._cache: tuple[tuple[int, int, int], list[TokenInfo]] | None = None

    # -- reading -------------------------------------------------------------------------------

    def tokens(self) -> list[TokenInfo]:
        """Every token in the file (empty when there is no file); re-read when the file changes."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot read the tokens file {self.path}: {exc.strerror or exc}") from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if self._cache is not None and self._cache[0] == stamp:
                return self._cache[1]
            parsed = self._parse(self._read())
            self._cache = (stamp, parsed)
            return parsed

    def _read(self) -> dict[str, Any]:
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {"tokens": []}
        except orjson.JSONDecodeError as exc:
            raise StoreError(
                f"the tokens file {self.path} is not valid JSON ({exc}); fix or remove it"
            ) from None
        except OSError as exc:
            raise StoreError(f"cannot read the tokens file {self.path}: {exc.strerror or exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise StoreError(f"the tokens file {self.path} has no 'tokens' list; fix or remove it")
        return data

    def _parse(self, data: dict[str, Any]) -> list[TokenInfo]:
        out = []
        for i, item in enumerate(data["tokens"]):
            try:
                scope = item["scope"]
                if scope not in SCOPES:
                    raise ValueError(scope)
                out.append(TokenInfo(str(item["name"]), scope, int(item["created_ns"]), str(item["sha256"])))
            except (KeyError, TypeError, ValueError):
                raise StoreError(
                    f"the tokens file {self.path}: entry {i} is not a token "
                    "(name, scope read/operate/admin, created_ns, sha256)"
                ) from None
        return out

    def check(self, token: str) -> TokenInfo | None:
        """The token's entry when ``token`` is a valid, unrevoked token; else None."""
        if not token.startswith(_PREFIX) or len(token) > 100:
            return None
        digest = _digest(token)
        found = None
        for info in self.tokens():  # compare every entry in constant time
            if hmac.compare_digest(info.digest, digest):
                found = info
        return found

    # -- changing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self._read()
            yield data
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(out, orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
                os.fsync(out)
            finally:
                os.close(out)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise StoreError(f"cannot write the tokens file {self.path}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)

    def create(self, name: str, scope: str) -> str:
        """Add a token called ``name`` with ``scope``; returns the token (the only time it is shown)."""
        if not _NAME.match(name):
            raise ConfigError(
                f"token name {name!r}: use 1 to 64 letters, digits, '_', '.', '@' or '-', starting "
                "with a letter or digit"
            )
        if scope not in SCOPES:
            raise ConfigError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
        token = _PREFIX + secrets.token_urlsafe(32)
        with self._locked() as data:
            if any(item.get("name") == name for item in data["tokens"]):
                raise ConfigError(
                    f"a token named {name!r} exists already; revoke it first or pick another name"
                )
            data["tokens"].append(
                {"name": name, "scope": scope, "created_ns": now_ns(), "sha256": _digest(token)}
            )
        return token

    def revoke(self, name: str) -> None:
        """Remove the token called ``name``; ConfigError naming the known names if there is none."""
        with self._locked() as data:
            names = [str(item.get("name")) for item in data["tokens"]]
            if name not in names:
                known = ", ".join(names) if names else "none"
                raise ConfigError(f"no token named {name!r} in {self.path} (tokens: {known})")
            data["tokens"] = [item for item in data["tokens"] if item.get("name") != name]
