"""MongoDB-style filters, compiled once into Python closures.

``compile_filter(filter)`` checks the whole filter up front (unknown or code-executing
operators raise QueryError, so a bad filter is a 400 before any document is read) and
returns ``match(doc) -> bool``. Semantics follow MongoDB's for JSON documents:

- dotted paths reach into nested objects and through arrays (``a.b`` on a list of objects
  looks at every element's ``b``; a numeric part also indexes the array);
- a condition on a path holds if it holds for any value found there; for an array value,
  equality and comparisons also try each element;
- ``{"f": null}`` / ``$eq: null`` / ``$in: [null]`` match a missing field;
  ``$ne`` / ``$nin`` / ``$not`` are the negation of their positive form (so a missing
  field matches ``$ne: 5``);
- comparisons only compare values of the same kind (numbers with numbers, strings with
  strings...), and ``true`` is never equal to ``1``.

Operators: $eq $ne $gt $gte $lt $lte $in $nin $and $or $nor $not $exists $type $all
$elemMatch $size $regex (+ $options i m s x). $where, $function, $accumulator and $expr
are refused: they execute code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import QueryError

__all__ = ["compile_closures", "compile_filter", "path_values", "values_equal"]

Matcher = Callable[[Any], bool]
_MISSING = object()
_REFUSED = {"$where", "$function", "$accumulator", "$expr"}
_TYPE_ALIASES = {
    "double": "number", "int": "number", "long": "number", "decimal": "number",
    "number": "number", "string": "string", "object": "object", "array": "array",
    "bool": "bool", "null": "null",
    1: "number", 16: "number", 18: "number", 19: "number", 2: "string", 3: "object",
    4: "array", 8: "bool", 10: "null",
}  # fmt: skip


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def values_equal(a: Any, b: Any) -> bool:
    """JSON equality as MongoDB sees it: 1 == 1.0, but true != 1."""
    ka, kb = _kind(a), _kind(b)
    if ka != kb:
        return False
    if ka == "array":
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b, strict=True))
    if ka == "object":
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    return a == b


class _Found(list):
    """The values at a path; ``missing``: some object on the way lacked the next key (an
    array element without the field counts as null, as in MongoDB)."""

    __slots__ = ("missing",)


_NUMBER_TYPES = (int, float)


def path_values(doc: Any, parts: tuple[str, ...], walker=None) -> list:
    """Every value at a dotted path (arrays expanded as MongoDB does). ``walker``: the
    path's compiled ``_walker``, used when an array is met on the way."""
    value = doc
    for key in parts:  # fast path: objects all the way down
        if type(value) is not dict:
            return _walk(doc, parts, walker)
        if key not in value:
            found = _Found()
            found.missing = True
            return found
        value = value[key]
    return [value]


def _walker(parts: tuple[str, ...]) -> Callable[[Any, list], None]:
    """A function that appends every value at ``parts`` under a value to ``out`` (arrays
    expanded), built once per path as a chain of small closures: no per-call tuples."""

    def terminal(value: Any, out: list) -> None:
        out.append(value)

    step = terminal
    for key in reversed(parts):
        step = _path_step(key, step)
    return step


def array_index(key: str) -> int:
    """The array position a path part names, or -1 ("¹" is a digit to isdigit(), not one)."""
    return int(key) if key.isascii() and key.isdigit() else -1


def _path_step(key: str, next_step: Callable[[Any, list], None]) -> Callable[[Any, list], None]:
    index = array_index(key)

    def step(value: Any, out: list) -> None:
        t = type(value)
        if t is dict:
            if key in value:
                next_step(value[key], out)
            else:
                out.missing = True
        elif t is list:
            if 0 <= index < len(value):
                next_step(value[index], out)  # a position in the array
                return
            for element in value:
                if type(element) is dict:
                    step(element, out)

    return step


def _walk(doc: Any, parts: tuple[str, ...], walker=None) -> list:
    """The general case (arrays on the way)."""
    out = _Found()
    out.missing = False
    (walker or _walker(parts))(doc, out)
    return out


def _any_value(pred: Callable[[Any], bool]) -> Callable[[list], bool]:
    """A test over a path's values: pred holds for a value, or for an element of one."""

    def test(values: list) -> bool:
        for v in values:
            if pred(v):
                return True
            if type(v) is list:
                for e in v:
                    if pred(e):
                        return True
        return False

    return test


def _compare(op: str, arg: Any) -> Callable[[Any], bool]:
    kind = _kind(arg)
    if kind not in ("number", "string", "bool", "null"):
        raise QueryError(f"{op} needs a number, string, boolean or null, not {kind}")
    test = {
        "$gt": lambda v: v > arg,
        "$gte": lambda v: v >= arg,
        "$lt": lambda v: v < arg,
        "$lte": lambda v: v <= arg,
    }[op]
    if kind == "null":  # null sorts equal only to null: $gte/$lte null match null/missing
        inclusive = op in ("$gte", "$lte")
        return lambda v: inclusive and v is None
    if kind == "bool":
        return lambda v: isinstance(v, bool) and test(v)
    types = (str,) if kind == "string" else _NUMBER_TYPES
    return lambda v: type(v) in types and test(v)


def _regex(pattern: Any, options: Any = "") -> re.Pattern:
    if not isinstance(pattern, str):
        raise QueryError("$regex needs a string pattern")
    if not isinstance(options, str) or set(options) - set("imsx"):
        raise QueryError("$options may only contain i, m, s, x")
    flags = 0
    for ch, flag in (("i", re.I), ("m", re.M), ("s", re.S), ("x", re.X)):
        if ch in options:
            flags |= flag
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise QueryError(f"bad $regex {pattern!r}: {exc}") from None


def _field_conditions(spec: dict) -> Callable[[list], bool]:
    """An operator object ({"$gt": 1, "$lt": 5}) -> test over a path's values."""
    tests: list[Callable[[list], bool]] = []
    if "$options" in spec and "$regex" not in spec:
        raise QueryError("$options without $regex")
    for op, arg in spec.items():
        if op in _REFUSED:
            raise QueryError(f"{op} is not allowed: it executes code")
        if op == "$options":
            continue
        tests.append(_operator(op, arg, spec))
    return _all_of(tests)


def _any_test(tests: list) -> Callable:
    if len(tests) == 1:
        return tests[0]

    def test(x) -> bool:
        for t in tests:
            if t(x):
                return True
        return False

    return test


def _all_of(tests: list) -> Callable:
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda x: first(x) and second(x)

    def test(x) -> bool:
        for t in tests:
            if not t(x):
                return False
        return True

    return test


def _scalar_eq(arg: Any) -> Callable[[list], bool]:
    """Equality to a string or a number, without the general machinery (the hot case)."""
    types = (str,) if isinstance(arg, str) else _NUMBER_TYPES

    def test(values: list) -> bool:
        for v in values:
            t = type(v)
            if t in types:
                if v == arg:
                    return True
            elif t is list:
                for e in v:
                    if type(e) in types and e == arg:
                        return True
        return False

    return test


def _eq_test(arg: Any) -> Callable[[list], bool]:
    if type(arg) in (str, int, float):
        return _scalar_eq(arg)
    if arg is None:
        any_none = _any_value(lambda v: v is None)
        return lambda values: not values or getattr(values, "missing", False) or any_none(values)
    return _any_value(lambda v: values_equal(v, arg))


def _operator(op: str, arg: Any, spec: dict) -> Callable[[list], bool]:
    if op == "$eq":
        return _eq_test(arg)
    if op == "$ne":
        eq = _eq_test(arg)
        return lambda values: not eq(values)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        cmp = _any_value(_compare(op, arg))
        if arg is None:
            return lambda values: (not values and op in ("$gte", "$lte")) or cmp(values)
        return cmp
    if op in ("$in", "$nin"):
        if not isinstance(arg, list):
            raise QueryError(f"{op} needs an array")
        any_of = _any_test([_eq_test(a) for a in arg])
        if op == "$in":
            return any_of
        return lambda values: not any_of(values)
    if op == "$exists":
        want = bool(arg)
        return lambda values: bool(values) == want
    if op == "$type":
        names = arg if isinstance(arg, list) else [arg]
        kinds = set()
        for name in names:
            if name not in _TYPE_ALIASES:
                raise QueryError(f"unknown $type {name!r}")
            kinds.add(_TYPE_ALIASES[name])
        return _any_value(lambda v: _kind(v) in kinds)
    if op == "$size":
        if isinstance(arg, bool) or not isinstance(arg, int) or arg < 0:
            raise QueryError("$size needs a non-negative integer")
        return lambda values: any(isinstance(v, list) and len(v) == arg for v in values)
    if op == "$all":
        if not isinstance(arg, list):
            raise QueryError("$all needs an array")
        tests = [_eq_test(a) for a in arg]
        return lambda values: bool(arg) and all(t(values) for t in tests)
    if op == "$elemMatch":
        if not isinstance(arg, dict):
            raise QueryError("$elemMatch needs an object")
        if arg and all(k.startswith("$") for k in arg):
            cond = _field_conditions(arg)
            return lambda values: any(
                isinstance(v, list) and any(cond([e]) for e in v) for v in values
            )
        sub = compile_closures(arg)

        def elem_match(values: list) -> bool:
            for v in values:
                if type(v) is list:
                    for e in v:
                        if type(e) is dict and sub(e):
                            return True
            return False

        return elem_match
    if op == "$regex":
        search = _regex(arg, spec.get("$options", "")).search
        return _any_value(lambda v: type(v) is str and search(v) is not None)
    if op == "$not":
        if isinstance(arg, dict) and arg and all(k.startswith("$") for k in arg):
            inner = _field_conditions(arg)
        elif isinstance(arg, str):  # a bare pattern
            inner = _operator("$regex", arg, {})
        else:
            raise QueryError("$not needs an operator object or a regex")
        return lambda values: not inner(values)
    raise QueryError(f"unknown operator {op}")


def _logical(op: str, arg: Any) -> Matcher:
    if not isinstance(arg, list) or not arg:
        raise QueryError(f"{op} needs a non-empty array of filters")
    subs = [compile_closures(f) for f in arg]
    if op == "$and":
        return _all_of(subs)

    def any_of(doc) -> bool:
        for sub in subs:
            if sub(doc):
                return True
        return False

    if op == "$or":
        return any_of
    return lambda doc: not any_of(doc)  # $nor


def _clause(parts: tuple[str, ...], test: Callable[[list], bool]) -> Matcher:
    walker = _walker(parts)
    if len(parts) == 1:  # the most common case: a top-level field
        key = parts[0]

        def top(doc) -> bool:
            if type(doc) is dict and key in doc:
                return test([doc[key]])
            return test(path_values(doc, parts, walker))

        return top
    return lambda doc: test(path_values(doc, parts, walker))


def compile_filter(filter_: Any) -> Matcher:
    """A MongoDB filter -> ``match(doc)``. Raises QueryError for an invalid filter.

    The matcher is generated Python source (``query_gen``) calling the closures below
    for the conditions it has no generated form for; same behaviour, faster on paths
    through arrays and on several clauses."""
    from .query_gen import generate  # imported here: query_gen builds on this module

    return generate(filter_)


def compile_closures(filter_: Any) -> Matcher:
    """The closure form of ``compile_filter`` (the reference semantics)."""
    if not isinstance(filter_, dict):
        raise QueryError(f"a filter must be an object, not {_kind(filter_)}")
    clauses: list[Matcher] = []
    for key, cond in filter_.items():
        if not isinstance(key, str) or not key:
            raise QueryError("filter keys must be non-empty strings")
        if key in _REFUSED:
            raise QueryError(f"{key} is not allowed: it executes code")
        if key in ("$and", "$or", "$nor"):
            clauses.append(_logical(key, cond))
            continue
        if key.startswith("$"):
            raise QueryError(f"unknown top-level operator {key}")
        parts = tuple(key.split("."))
        if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
            test = _field_conditions(cond)
        else:
            if isinstance(cond, dict) and any(k.startswith("$") for k in cond):
                raise QueryError(f"{key}: do not mix operators and fields in one object")
            test = _eq_test(cond)
        clauses.append(_clause(parts, test))
    return _all_of(clauses)
