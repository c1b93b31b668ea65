"""Reading a dataflow spec: YAML, environment references, validation, readable errors."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dte_stream.errors import SpecError
from dte_stream.spec.interpolate import interpolate
from dte_stream.spec.model import DataflowSpec

__all__ = ["format_validation_error", "load_spec", "parse_spec"]

_MAX_SPEC_BYTES = 1 << 20
#: The ``kind`` tags pydantic inserts in error locations of tagged unions (left out of paths).
_KIND_TAGS = {"simulator", "file", "local_store", "kafka", "mqtt", "influxdb"}
_PATH_FIRST = re.compile(r"^[a-z_]+(\[\d+\])?(\.[a-z_]+(\[\d+\])?)*: ")


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in _KIND_TAGS and parts and parts[-1].startswith("["):
            continue  # the discriminator tag pydantic inserts for tagged unions
        elif item.startswith(("function-", "json-or-python")):
            continue
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "<root>"


def format_validation_error(exc: ValidationError) -> list[str]:
    """One line per problem: the field path, then what is wrong and what is allowed."""
    lines = []
    for err in exc.errors(include_url=False):
        path = _loc_to_path(tuple(err["loc"]))
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "union_tag_invalid":
            ctx = err.get("ctx", {})
            msg = f"kind {ctx.get('tag')!r} is not known; allowed: {ctx.get('expected_tags')}"
        elif err["type"] == "union_tag_not_found":
            msg = "missing 'kind'; every source and sink says which kind it is"
        elif err["type"] == "missing":
            msg = "required field is missing"
        if path == "<root>" and _PATH_FIRST.match(msg):
            lines.append(msg)  # a cross-field check that already names its field
        else:
            lines.append(f"{path}: {msg}")
    return lines


def parse_spec(document: Any, source: str = "<spec>", env: Mapping[str, str] | None = None) -> DataflowSpec:
    """Validate an already parsed YAML document, after substituting environment references."""
    problems: list[str] = []
    resolved = interpolate(document, os.environ if env is None else env, problems=problems)
    if problems:
        raise SpecError(source, problems)
    if not isinstance(resolved, dict):
        raise SpecError(source, [f"<root>: expected a mapping of settings, got {type(resolved).__name__}"])
    try:
        return DataflowSpec.model_validate(resolved)
    except ValidationError as exc:
        raise SpecError(source, format_validation_error(exc)) from None


def load_spec(path: str | Path, env: Mapping[str, str] | None = None) -> DataflowSpec:
    """Read, interpolate and validate the spec at ``path``; every problem is a :class:`SpecError`."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise SpecError(str(p), ["file not found"]) from None
    except OSError as exc:
        raise SpecError(str(p), [f"cannot read: {exc.strerror}"]) from None
    if len(data) > _MAX_SPEC_BYTES:
        raise SpecError(str(p), [f"file is {len(data)} bytes; a spec may be at most {_MAX_SPEC_BYTES}"])
    try:
        document = yaml.safe_load(data)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise SpecError(str(p), [f"not valid YAML at {where}: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise SpecError(str(p), [f"not valid YAML: {exc}"]) from None
    if document is None:
        raise SpecError(str(p), ["the file is empty"])
    return parse_spec(document, str(p), env)
