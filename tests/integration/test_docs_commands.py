"""Every shell command in README.md and docs/quickstart.md runs as written.

A new user copies the commands of the README and the quickstart line by line; each fenced
``sh`` block runs here as one bash script (``set -euo pipefail``), in order, in a fresh copy of
the repository's tracked files whose ``.venv`` is the one this suite runs from. The services a
block starts (``devservices.py start ...``) are its own, in a cache folder of its own, so they
never touch the servers of the other integration tests.

What a person does by hand that a script cannot, the runner does for them, and only that:

- a command that runs until stopped (its comment says ``Ctrl-C to stop``) gets ``SIGINT``
  after a few seconds, as a person would press Ctrl-C; it must stop cleanly;
- ``make ci`` is not run: it is the command that runs this test.
- a block whose commands repeat an earlier block's word for word runs once.

A block that fails prints its script, its output and the line that failed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = ("README.md", "docs/quickstart.md")
#: Seconds a "Ctrl-C to stop" command runs before the runner presses Ctrl-C.
RUN_UNTIL_INTERRUPT_S = 12
BLOCK_TIMEOUT_S = 420

pytestmark = pytest.mark.slow


def shell_blocks(document: str) -> list[tuple[int, str]]:
    """The ``sh`` code blocks of a Markdown file, with the line each starts on."""
    text = (REPO / document).read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"^```(?:sh|bash|console)\n(.*?)^```", text, flags=re.M | re.S):
        line = text.count("\n", 0, match.start()) + 1
        blocks.append((line, match.group(1)))
    return blocks


def runnable(block: str) -> str | None:
    """The block as the runner runs it (see the module docstring), or None to leave it out."""
    lines = []
    for line in block.splitlines():
        command = line.split("#", 1)[0].strip()
        if command == "make ci":
            return None
        if "Ctrl-C to stop" in line:
            # run it, press Ctrl-C after a while; 124 is timeout's "it was still running"
            lines.append(
                f"timeout -s INT {RUN_UNTIL_INTERRUPT_S} {command} "
                '|| { rc=$?; [ "$rc" -eq 124 ] || exit "$rc"; }'
            )
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def _cases() -> list[Any]:
    """Every runnable block once: a block repeated word for word (``make demo`` opens both the
    README and the quickstart) runs where it first appears."""
    seen: set[str] = set()
    cases = []
    for doc in DOCUMENTS:
        for line, block in shell_blocks(doc):
            commands = "\n".join(filter(None, (text.split("#", 1)[0].strip() for text in block.splitlines())))
            if runnable(block) is None or commands in seen:
                continue
            seen.add(commands)
            cases.append(pytest.param(doc, line, block, id=f"{doc}:{line}"))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tracked files (as a fresh clone has them), with this suite's .venv."""
    root = tmp_path_factory.mktemp("clone")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout.split(
        b"\0"
    )
    for name in filter(None, files):
        source = REPO / name.decode()
        if source.is_symlink():
            target = root / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(os.readlink(source))
        elif source.is_file():
            target = root / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    venv = Path(sys.prefix)
    (root / ".venv").symlink_to(venv)
    # as in a fresh clone, the venv was built from these files: older than the venv, so make
    # sees it up to date (a pyproject.toml edited after this .venv would otherwise rebuild it)
    built = (venv / "bin" / "dte-stream").stat().st_mtime - 60
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and ".venv" not in path.parts:
            os.utime(path, (built, built))
    # the block's own services live here; Kafka's jars are the ones deploy/services/install.sh resolved
    cache = root / ".cache"
    cache.mkdir()
    jars = Path(os.environ.get("DTE_CACHE_DIR") or REPO / ".cache") / "kafka"
    if jars.exists():
        (cache / "kafka").symlink_to(jars)
    return root


@pytest.mark.parametrize(("document", "line", "block"), CASES)
def test_command_block_runs_as_written(checkout: Path, document: str, line: int, block: str) -> None:
    script = runnable(block)
    assert script is not None
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DTE_", "VIRTUAL_ENV", "PYTHON")) and k != "MAKEFLAGS"
    }
    env["PATH"] = f"{checkout / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    env["DTE_CACHE_DIR"] = str(checkout / ".cache")
    try:
        done = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + script],
            check=False,
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    finally:
        # whatever the block started and did not stop
        subprocess.run(
            [sys.executable, "deploy/services/devservices.py", "stop", "all"],
            check=False,
            cwd=checkout,
            env=env,
            capture_output=True,
            timeout=120,
        )
    assert done.returncode == 0, (
        f"{document}:{line}: the block failed with exit code {done.returncode}\n"
        f"--- script\n{script}--- stdout\n{done.stdout[-4000:]}--- stderr\n{done.stderr[-4000:]}"
    )
