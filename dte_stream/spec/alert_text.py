"""The text an alert rule carries: message templates and safe condition expressions.

:func:`check_message` accepts a ``str.format`` template over :data:`MESSAGE_FIELDS` only;
:func:`parse_expression` accepts an expression over channel attributes
(:data:`EXPRESSION_ATTRIBUTES`: ``temperature.estimate > 90 and flow.value < 10``), with
arithmetic, comparisons, ``and``/``or``/``not`` and ``abs`` and nothing else, so that a spec
can never run code. Both are checked when a spec is loaded (:mod:`dte_stream.spec.alerts`).
"""

from __future__ import annotations

import ast
import re
import string

__all__ = [
    "EXPRESSION_ATTRIBUTES",
    "MESSAGE_FIELDS",
    "check_message",
    "expression_channels",
    "parse_expression",
]

#: Fields a message template may use. ``value`` is what the rule compared with its ``level``
#: (the reading, the estimate, the rate per second, the score, the NIS, the seconds of silence);
#: ``reading`` the raw reading, ``estimate`` the channel's estimate.
MESSAGE_FIELDS = (
    "twin_id",
    "twin_type",
    "rule",
    "severity",
    "channel",
    "value",
    "reading",
    "estimate",
    "level",
)
_TEXT_FIELDS = frozenset({"twin_id", "twin_type", "rule", "severity", "channel"})
#: What an expression may read of a channel (a bare channel name means ``.value``).
EXPRESSION_ATTRIBUTES = ("value", "estimate", "std", "anomaly_score")
_MAX_EXPRESSION = 2000


def check_message(template: str) -> str:
    """``template`` if it formats with :data:`MESSAGE_FIELDS` only; else ValueError naming the problem."""
    fields: list[str] = []
    try:
        for _text, name, spec, _conv in string.Formatter().parse(template):
            if name is None:
                continue
            if name == "" or name not in MESSAGE_FIELDS:
                shown = "{}" if name == "" else "{" + name + "}"
                raise ValueError(
                    f"message: unknown field {shown}; allowed: "
                    + ", ".join("{" + f + "}" for f in MESSAGE_FIELDS)
                )
            if spec and "{" in spec:
                raise ValueError(f"message: nested fields in the format of {{{name}}} are not allowed")
            fields.append(name)
    except ValueError as exc:
        if str(exc).startswith("message:"):
            raise
        raise ValueError(f"message: {exc} (write {{{{ and }}}} for literal braces)") from None
    sample: dict[str, object] = {f: ("x" if f in _TEXT_FIELDS else 1.5) for f in MESSAGE_FIELDS}
    try:
        template.format_map(sample)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"message: {exc}") from None
    return template


def parse_expression(text: str) -> ast.Expression:
    """Parse an alert expression, refusing everything but the small safe subset.

    Allowed: channel names (``temperature`` means ``temperature.value``), the attributes
    ``.value``, ``.estimate``, ``.std``, ``.anomaly_score``, numbers, comparisons, ``and``,
    ``or``, ``not``, ``+ - * /``, unary minus and ``abs()``. Anything else raises ValueError
    naming it.

    >>> sorted(expression_channels(parse_expression("abs(a.estimate - b) > 2 or not c.std < 1")))
    ['a', 'b', 'c']
    >>> parse_expression("__import__('os')")
    Traceback (most recent call last):
    ...
    ValueError: expression: calling __import__() is not allowed; the only function is abs()
    """
    if len(text) > _MAX_EXPRESSION:
        raise ValueError(f"expression: longer than {_MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"expression: not valid syntax ({exc.msg})") from None
    _check_node(tree.body)
    return tree


_BIN_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div)
_CMP_OPS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)


def _check_node(node: ast.expr) -> None:
    what = type(node).__name__
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check_node(value)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.Not | ast.USub | ast.UAdd):
            raise ValueError(f"expression: the operator {type(node.op).__name__} is not allowed")
        _check_node(node.operand)
    elif isinstance(node, ast.BinOp):
        if not isinstance(node.op, _BIN_OPS):
            raise ValueError(f"expression: the operator {type(node.op).__name__} is not allowed; use + - * /")
        _check_node(node.left)
        _check_node(node.right)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if not isinstance(op, _CMP_OPS):
                raise ValueError(
                    f"expression: the comparison {type(op).__name__} is not allowed; use < <= > >= == !="
                )
        _check_node(node.left)
        for right in node.comparators:
            _check_node(right)
    elif isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        if name != "abs":
            raise ValueError(f"expression: calling {name}() is not allowed; the only function is abs()")
        if len(node.args) != 1 or node.keywords or isinstance(node.args[0], ast.Starred):
            raise ValueError("expression: abs() takes exactly one argument")
        _check_node(node.args[0])
    elif isinstance(node, ast.Attribute):
        if node.attr not in EXPRESSION_ATTRIBUTES:
            raise ValueError(
                f"expression: the attribute .{node.attr} is not allowed; use "
                + ", ".join("." + a for a in EXPRESSION_ATTRIBUTES)
            )
        if not isinstance(node.value, ast.Name):
            raise ValueError(
                f"expression: .{node.attr} must follow a channel name, not {ast.unparse(node.value)!r}"
            )
        _check_name(node.value)
    elif isinstance(node, ast.Name):
        _check_name(node)
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ValueError(f"expression: the constant {node.value!r} is not allowed; only numbers")
    else:
        raise ValueError(f"expression: {what} is not allowed ({ast.unparse(node)[:60]!r})")


def _check_name(node: ast.Name) -> None:
    if node.id == "abs":
        raise ValueError("expression: abs must be called, as abs(...)")
    if node.id.startswith("_") or not re.match(r"^[a-z][a-z0-9_]*$", node.id):
        raise ValueError(f"expression: the name {node.id!r} is not a channel name")


def expression_channels(tree: ast.Expression) -> set[str]:
    """The channel names an expression reads."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id != "abs":
            out.add(node.id)
    return out
