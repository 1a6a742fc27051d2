"""The seeds' filter query language, evaluated over documents in memory.

A simple condition ``{"variable": "a.b", "operator": OP, "value": V}`` with OP one of
``==``, ``!=``, ``IN``, ``>``, ``>=``, ``<``, ``<=``, ``LIKE`` (``*`` wildcards); a
logical one ``{"logicalOperator": "AND" | "OR", "conditions": [...]}``, nested freely.
``variable`` is a dotted path; a list on the way matches when any of its items does
(as MongoDB reads ``tags`` or ``gpus.memory``). A missing field or a value of another
type matches nothing (never an error).

``compile_condition`` checks a condition once and returns a predicate; a malformed one
raises ``FilterError`` naming what is wrong.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

from ..errors import AiosFastError

__all__ = ["OPERATORS", "FilterError", "compile_condition"]

OPERATORS = ("==", "!=", "IN", ">", ">=", "<", "<=", "LIKE")
_MISSING = object()

Predicate = Callable[[Any], bool]


class FilterError(AiosFastError, ValueError):
    """A filter condition that is not the seeds' form."""


def _values(doc: Any, path: list[str]) -> list[Any]:
    """Every value at ``path`` in doc, descending through lists."""
    if not path:
        return doc if isinstance(doc, list) and doc else [doc]
    if isinstance(doc, list):
        found: list[Any] = []
        for item in doc:
            found += _values(item, path)
        return found
    if isinstance(doc, dict) and path[0] in doc:
        return _values(doc[path[0]], path[1:])
    return []


def _compare(op: str, value: Any) -> Callable[[Any], bool]:
    if op == "==":
        return lambda v: v == value
    if op == "!=":
        return lambda v: v != value
    if op == "IN":
        if not isinstance(value, list):
            raise FilterError(f"operator IN needs a list value, not {value!r}")
        return lambda v: _hashable_in(v, value)
    if op == "LIKE":
        if not isinstance(value, str):
            raise FilterError(f"operator LIKE needs a string pattern, not {value!r}")
        pattern = re.compile(".*".join(map(re.escape, value.split("*"))) + r"\Z", re.S)
        return lambda v: isinstance(v, str) and pattern.match(v) is not None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise FilterError(f"operator {op} needs a number or a string, not {value!r}")
    kind = str if isinstance(value, str) else (int, float)
    order = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}[op]
    bound: Any = value

    def ordered(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, kind):
            return False
        return bool(order(v, bound))

    return ordered


def _hashable_in(v: Any, options: list) -> bool:
    return any(v == o for o in options)


def compile_condition(cond: Any, where: str = "filter") -> Predicate:
    """A predicate over documents for a seeds' condition (simple or logical)."""
    if not isinstance(cond, dict):
        raise FilterError(f"{where}: a condition must be an object, not {cond!r}")
    if "logicalOperator" in cond:
        op = cond["logicalOperator"]
        subs = cond.get("conditions")
        if op not in ("AND", "OR"):
            raise FilterError(f"{where}: logicalOperator must be AND or OR, not {op!r}")
        if not isinstance(subs, list) or not subs:
            raise FilterError(f"{where}: logicalOperator {op} needs a non-empty conditions list")
        preds = [compile_condition(c, where) for c in subs]
        if op == "AND":
            return lambda doc: all(p(doc) for p in preds)
        return lambda doc: any(p(doc) for p in preds)
    variable, op = cond.get("variable"), cond.get("operator")
    if not isinstance(variable, str) or not variable:
        raise FilterError(f"{where}: a condition needs a 'variable' (dotted field path)")
    if op not in OPERATORS:
        raise FilterError(f"{where}: operator {op!r} is not one of {', '.join(OPERATORS)}")
    if "value" not in cond:
        raise FilterError(f"{where}: condition on {variable!r} has no 'value'")
    test = _compare(op, cond["value"])
    path = variable.split(".")
    if op == "!=":  # no value at the path differs: all must differ
        return lambda doc: all(test(v) for v in _values(doc, path))
    return lambda doc: any(test(v) for v in _values(doc, path))
