"""Environment references in spec values: ``${NAME}`` and ``${NAME:-default}``.

Interpolation runs on the parsed YAML's string scalars (never on the raw text), so a value
such as a password containing ``#`` or ``:`` cannot change the document's structure.

>>> interpolate({"url": "mqtt://${HOST:-127.0.0.1}:1883"}, env={})
{'url': 'mqtt://127.0.0.1:1883'}
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["interpolate"]

_REF = re.compile(r"\$\{([^}]*)\}|\$\$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _substitute(text: str, env: Mapping[str, str], path: str, problems: list[str]) -> str:
    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        body = m.group(1)
        name, sep, default = body.partition(":-")
        if not _NAME.match(name):
            problems.append(
                f"{path}: '${{{body}}}' is not a valid reference; use ${{NAME}} or ${{NAME:-default}}"
            )
            return m.group(0)
        value = env.get(name)
        if value is None or (sep and value == ""):
            if sep:
                return default
            problems.append(
                f"{path}: environment variable {name} is not set "
                f"(write ${{{name}:-default}} to give a default)"
            )
            return m.group(0)
        return value

    return _REF.sub(replace, text)


def interpolate(
    node: object, env: Mapping[str, str], path: str = "", problems: list[str] | None = None
) -> object:
    """Return ``node`` with environment references in string values substituted.

    Unresolvable references are appended to ``problems`` (path and variable name) when given;
    ``$$`` stands for a literal ``$``.
    """
    sink: list[str] = [] if problems is None else problems
    if isinstance(node, str):
        return _substitute(node, env, path or "<root>", sink)
    if isinstance(node, list):
        return [interpolate(v, env, f"{path}[{i}]", sink) for i, v in enumerate(node)]
    if isinstance(node, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else str(k), sink) for k, v in node.items()}
    return node
