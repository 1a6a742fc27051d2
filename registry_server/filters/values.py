"""What filters, indexes, options and updates share: the kind of a JSON value, MongoDB's
equality, and the values found at a dotted path.

Every other module of the registry imports these from here (none of them imports the
module that imports it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "MISSING",
    "NULL_KEY",
    "NUMBER_TYPES",
    "REFUSED",
    "TYPE_ALIASES",
    "UNDEFINED_KEY",
    "Found",
    "Pinned",
    "array_index",
    "bson_key",
    "kind",
    "path_values",
    "sort_key",
    "values_equal",
    "walker",
]

MISSING = object()
"""No value here (a missing field), distinct from JSON null."""

REFUSED = frozenset({"$where", "$function", "$accumulator", "$expr"})
"""Operators refused everywhere: they execute code."""

TYPE_ALIASES = {
    "double": "number", "int": "number", "long": "number", "decimal": "number",
    "number": "number", "string": "string", "object": "object", "array": "array",
    "bool": "bool", "null": "null",
    1: "number", 16: "number", 18: "number", 19: "number", 2: "string", 3: "object",
    4: "array", 8: "bool", 10: "null",
}  # fmt: skip
"""``$type`` names and BSON type numbers -> the kind ``kind()`` gives."""

NUMBER_TYPES = (int, float)


def kind(value: Any) -> str:
    """The JSON kind of a value: null, bool, number, string, object or array."""
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
    """JSON equality as MongoDB sees it: 1 == 1.0, but true != 1; embedded documents are
    equal only with the same fields in the same order ({"a": 1, "b": 2} is not
    {"b": 2, "a": 1}: BSON documents are ordered, and MongoDB compares them so)."""
    ka, kb = kind(a), kind(b)
    if ka != kb:
        return False
    if ka == "array":
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b, strict=True))
    if ka == "object":
        return len(a) == len(b) and all(
            ka == kb and values_equal(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    return a == b


def bson_key(value: Any) -> tuple:
    """A key that orders JSON values as MongoDB's BSON comparison order does: null <
    numbers < strings < objects < arrays < booleans (numbers compared by value whatever
    their type; strings by code point, which is UTF-8 byte order). Objects compare pair
    by pair in their own key order: the value's type, then the field name, then the
    value; a prefix is less. Arrays compare element by element. NaN sorts below every
    number, as in MongoDB."""
    t = type(value)
    if t is str:
        return (3, value)
    if t is int:
        return (2, value)
    if t is float:
        return (2, value) if value == value else (2,)
    if value is None:
        return (1,)
    if t is bool:
        return (8, value)
    if t is dict:
        pairs = []
        for k, v in value.items():
            key = bson_key(v)
            pairs.append((key[0], k, key))
        return (4, tuple(pairs))
    if t is list or t is Pinned:
        return (5, tuple(bson_key(v) for v in value))
    return (20, repr(value))  # not JSON (only from Python callers)


UNDEFINED_KEY = (0,)
"""The sort key of an empty array met by a sort: below null (MongoDB's "undefined")."""
NULL_KEY = (1,)


class Pinned(list):
    """An array reached by a position at the end of a path (``u.1`` on ``{"u": ["x",
    ["y"]]}``): a value of its own, whose elements conditions do not try one by one
    (MongoDB does not traverse an array reached through an array offset)."""

    __slots__ = ()


class Found(list):
    """The values at a path; ``missing``: some object on the way lacked the next key (an
    array element without the field counts as null, as in MongoDB)."""

    __slots__ = ("missing",)
    missing: bool


def array_index(key: str) -> int:
    """The array position a path part names, or -1 ("¹" is a digit to isdigit(), not one)."""
    return int(key) if key.isascii() and key.isdigit() else -1


def path_values(doc: Any, parts: tuple[str, ...], walk=None) -> list:
    """Every value at a dotted path (arrays expanded as MongoDB does). ``walk``: the
    path's compiled ``walker``, used when an array is met on the way."""
    value = doc
    for key in parts:  # fast path: objects all the way down
        if type(value) is not dict:
            out = Found()
            out.missing = False
            (walk or walker(parts))(doc, out)
            return out
        if key not in value:
            found = Found()
            found.missing = True
            return found
        value = value[key]
    return [value]


def walker(parts: tuple[str, ...]) -> Callable[[Any, Found], None]:
    """A function that appends every value at ``parts`` under a value to ``out`` (arrays
    expanded), built once per path as a chain of small closures: no per-call tuples."""

    def terminal(value: Any, out: Found) -> None:
        out.append(value)

    step: Callable[[Any, Found], None] = terminal
    for i, key in enumerate(reversed(parts)):
        step = _path_step(key, step, i == 0)
    return step


def _path_step(
    key: str, next_step: Callable[[Any, Found], None], last: bool
) -> Callable[[Any, Found], None]:
    """One part of a path, as MongoDB walks it: an object's field (missing: the path is
    missing); an array's position, or its object elements one by one (elements that
    are not objects hold nothing there: neither a value nor a missing field); a scalar
    on the way: the path is missing (``{"a.b": null}`` matches ``{"a": 5}``)."""
    index = array_index(key)

    def step(value: Any, out: Found) -> None:
        t = type(value)
        if t is dict:
            if key in value:
                next_step(value[key], out)
            else:
                out.missing = True
        elif t is list or t is Pinned:
            if 0 <= index < len(value):  # a position in the array
                element = value[index]
                if last and type(element) is list:
                    element = Pinned(element)
                next_step(element, out)
                return
            for element in value:
                if type(element) is dict:
                    step(element, out)
        else:
            out.missing = True

    return step


def sort_key(doc: Any, parts: tuple[str, ...], walk, descending: bool) -> tuple:
    """The key MongoDB sorts a document by for one field: every value at the path
    (arrays expanded: their elements count, an empty array counts as "undefined", below
    null; a missing field or an array element without it counts as null), the smallest
    for an ascending sort, the largest for a descending one, in BSON comparison order."""
    if len(parts) == 1 and type(doc) is dict:  # the usual case: a top-level scalar
        value = doc.get(parts[0], NULL_KEY)
        t = type(value)
        if t is str:
            return (3, value)
        if t is int or (t is float and value == value):
            return (2, value)
        if value is NULL_KEY or value is None:
            return NULL_KEY
    values = path_values(doc, parts, walk)
    keys = []
    for value in values:
        if type(value) is list:
            if value:
                keys += [bson_key(e) for e in value]
            else:
                keys.append(UNDEFINED_KEY)
        else:
            keys.append(bson_key(value))
    if not keys or getattr(values, "missing", False):
        keys.append(NULL_KEY)
    if len(keys) == 1:
        return keys[0]
    return max(keys) if descending else min(keys)
