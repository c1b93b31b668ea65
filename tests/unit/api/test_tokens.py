"""Tokens: hashed storage with 0600, scopes, revocation, and the ``dte-stream token`` commands."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dte_stream.api.tokens import TokenFile
from dte_stream.cli.main import main
from dte_stream.errors import ConfigError, StoreError


def test_file_keeps_only_hashes_with_owner_only_permissions(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path / "t.json")
    secret = tokens.create("ana", "read")
    text = (tmp_path / "t.json").read_text()
    assert secret not in text
    assert "sha256" in text
    assert stat.S_IMODE((tmp_path / "t.json").stat().st_mode) == 0o600
    assert tokens.check(secret + "x") is None
    assert tokens.check("not-a-token") is None
    with pytest.raises(ConfigError, match="exists already"):
        tokens.create("ana", "admin")
    with pytest.raises(ConfigError, match="unknown scope"):
        tokens.create("bob", "root")
    with pytest.raises(ConfigError, match="token name"):
        tokens.create("bad name\n", "read")
    (tmp_path / "t.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        tokens.check(secret)


def test_token_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "--name", "ops", "--scope", "admin", "--data-dir", str(tmp_path)]) == 0
    secret = capsys.readouterr().out.strip()
    info = TokenFile(tmp_path / "api_tokens.json").check(secret)
    assert info is not None
    assert info.allows("operate")
    assert main(["token", "list", "--data-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert "ops" in listing
    assert secret not in listing
    assert main(["token", "revoke", "ops", "--tokens", str(tmp_path / "api_tokens.json")]) == 0
    assert TokenFile(tmp_path / "api_tokens.json").check(secret) is None
    assert main(["token", "revoke", "ops", "--data-dir", str(tmp_path)]) == 2
    assert "no token named 'ops'" in capsys.readouterr().err
