"""MongoDB-style filters as Python closures: the reference semantics.

``compile_closures(filter)`` checks the whole filter up front (unknown or code-executing
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
  strings, objects and arrays in BSON order...), and ``true`` is never equal to ``1``;
  ``$gte``/``$lte`` null mean ``$eq`` null, ``$gt``/``$lt`` null match nothing.

Operators: $eq $ne $gt $gte $lt $lte $in $nin $and $or $nor $not $exists $type $all
$elemMatch $size $regex (+ $options i m s x). $where, $function, $accumulator and $expr
are refused: they execute code.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import monotonic
from typing import Any

import regex  # no stubs published (pyproject: ignore_missing_imports)

from ..errors import QueryError
from .values import (
    NUMBER_TYPES,
    REFUSED,
    TYPE_ALIASES,
    bson_key,
    kind,
    path_values,
    values_equal,
    walker,
)

__all__ = [
    "all_of",
    "clause_matcher",
    "compile_clauses",
    "compile_closures",
    "compile_regex",
    "eq_test",
    "field_conditions",
    "regex_budget",
]

Matcher = Callable[[Any], bool]


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
    arg_kind = kind(arg)
    if arg_kind in ("object", "array"):  # BSON order within the type (type bracketing)
        want, key = (dict if arg_kind == "object" else list), bson_key(arg)
        by_key = {
            "$gt": lambda v: bson_key(v) > key,
            "$gte": lambda v: bson_key(v) >= key,
            "$lt": lambda v: bson_key(v) < key,
            "$lte": lambda v: bson_key(v) <= key,
        }[op]
        return lambda v: type(v) is want and by_key(v)
    if arg_kind not in ("number", "string", "bool", "null"):
        raise QueryError(f"{op} needs a JSON value, not {arg_kind}")
    test = {
        "$gt": lambda v: v > arg,
        "$gte": lambda v: v >= arg,
        "$lt": lambda v: v < arg,
        "$lte": lambda v: v <= arg,
    }[op]
    if arg_kind == "null":  # null sorts equal only to null: $gte/$lte null match null/missing
        inclusive = op in ("$gte", "$lte")
        return lambda v: inclusive and v is None
    if arg_kind == "bool":
        return lambda v: isinstance(v, bool) and test(v)
    types = (str,) if arg_kind == "string" else NUMBER_TYPES
    return lambda v: type(v) in types and test(v)


REGEX_SEARCH_S = 0.05
"""Seconds one $regex search may take (against one string)."""
REGEX_BUDGET_S = 1.0
"""Seconds of regex matching one request may spend (all its $regex searches together)."""

_budget = threading.local()  # .left: the open budget's seconds left, per thread


@contextmanager
def regex_budget(seconds: float | None = None) -> Iterator[None]:
    """Every $regex search inside shares ``seconds`` (and each gets REGEX_SEARCH_S at
    most); past them a search raises QueryError (a 400) instead of holding the event
    loop (patterns such as (a|aa)+$ take time doubling with each character). Outside
    any budget, each search gets REGEX_SEARCH_S."""
    outer = getattr(_budget, "left", None)
    _budget.left = [REGEX_BUDGET_S if seconds is None else seconds]
    try:
        yield
    finally:
        _budget.left = outer


def _budget_spent(pattern: str) -> QueryError:
    return QueryError(
        f"$regex {pattern!r} took more than its time budget ({REGEX_SEARCH_S:g} s a string, "
        f"{REGEX_BUDGET_S:g} s a request): simplify it (nested repetition such as (a|aa)+ "
        "backtracks exponentially)"
    )


def compile_regex(pattern: Any, options: Any = "") -> Callable[[str], Any]:
    """``search(string) -> match or None`` for a $regex, on the ``regex`` engine with a
    time budget (``regex_budget``)."""
    if not isinstance(pattern, str):
        raise QueryError("$regex needs a string pattern")
    if not isinstance(options, str) or set(options) - set("imsx"):
        raise QueryError("$options may only contain i, m, s, x")
    flags = 0
    for ch, flag in (("i", regex.I), ("m", regex.M), ("s", regex.S), ("x", regex.X)):
        if ch in options:
            flags |= flag
    try:
        search = regex.compile(pattern, flags).search
    except (regex.error, OverflowError, RecursionError) as exc:
        raise QueryError(f"bad $regex {pattern!r}: {exc}") from None

    def budgeted(value: str):
        # Every search is timed (no pattern is trusted to be cheap: one unbounded
        # quantifier followed by bounded ones took 100 us a string) and lets the GIL go
        # while it runs (concurrent: strings are immutable), so other requests' threads
        # and the event loop go on meanwhile.
        left = getattr(_budget, "left", None)
        if left is None:
            try:
                return search(value, timeout=REGEX_SEARCH_S, concurrent=True)
            except TimeoutError:
                raise _budget_spent(pattern) from None
        if left[0] <= 0:
            raise _budget_spent(pattern)
        start = monotonic()
        try:
            return search(value, timeout=min(left[0], REGEX_SEARCH_S), concurrent=True)
        except TimeoutError:
            raise _budget_spent(pattern) from None
        finally:
            left[0] -= monotonic() - start

    return budgeted


def field_conditions(spec: dict, expand: bool = True) -> Callable[[list], bool]:
    """An operator object ({"$gt": 1, "$lt": 5}) -> test over a path's values.
    ``expand``: equality, comparisons, $in, $regex and $type also try each element of
    an array value (a path's rule); not for $elemMatch's value form, which tests each
    element as it is (an element that is an array is not looked inside)."""
    tests: list[Callable[[list], bool]] = []
    if "$options" in spec and "$regex" not in spec:
        raise QueryError("$options without $regex")
    for op, arg in spec.items():
        if op in REFUSED:
            raise QueryError(f"{op} is not allowed: it executes code")
        if op == "$options":
            continue
        tests.append(_operator(op, arg, spec, expand))
    return all_of(tests)


def _each_value(pred: Callable[[Any], bool]) -> Callable[[list], bool]:
    """A test over values: pred holds for one of them (arrays not looked inside)."""
    return lambda values: any(pred(v) for v in values)


def _plain_eq(arg: Any) -> Callable[[Any], bool]:
    """Equality of one value, as it is (no array elements tried)."""
    if arg is None:
        return lambda v: v is None
    return lambda v: values_equal(v, arg)


def _mod(arg: Any) -> Callable[[Any], bool]:
    """$mod: [divisor, remainder]: numbers (doubles truncated toward zero, as MongoDB
    does for the field's value and both operands) whose remainder, with the dividend's
    sign (C's %), is the remainder."""
    if not isinstance(arg, list) or len(arg) != 2:
        raise QueryError("$mod needs an array of 2 numbers: [divisor, remainder]")
    for x in arg:
        if type(x) not in NUMBER_TYPES or (type(x) is float and not math.isfinite(x)):
            raise QueryError("$mod needs an array of 2 numbers: [divisor, remainder]")
    divisor, remainder = int(arg[0]), int(arg[1])
    if divisor == 0:
        raise QueryError("$mod: the divisor cannot be 0")

    def test(v: Any) -> bool:
        t = type(v)
        if t is float:
            if not math.isfinite(v):
                return False
            v = int(v)
        elif t is not int:
            return False
        r = abs(v) % abs(divisor)
        return (r if v >= 0 else -r) == remainder

    return test


def _any_test(tests: list) -> Callable:
    if len(tests) == 1:
        return tests[0]

    def test(x) -> bool:
        for t in tests:
            if t(x):
                return True
        return False

    return test


def all_of(tests: list) -> Callable:
    """A test that holds when every one of ``tests`` holds (the first failing stops)."""
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
    types = (str,) if isinstance(arg, str) else NUMBER_TYPES

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


def eq_test(arg: Any) -> Callable[[list], bool]:
    if type(arg) in (str, int, float):
        return _scalar_eq(arg)
    if arg is None:  # null, or a missing field (not an array with nothing there)
        any_none = _any_value(lambda v: v is None)
        return lambda values: getattr(values, "missing", False) or any_none(values)
    return _any_value(lambda v: values_equal(v, arg))


def _in_test(arg: list) -> Callable[[list], bool]:
    """$in: strings and numbers looked up in sets (one closure, not one per member: a
    100,000-member $in stays small), other members (null, booleans, documents, arrays)
    by their own equality tests."""
    strings = frozenset(a for a in arg if type(a) is str)
    numbers = frozenset(a for a in arg if type(a) is int or type(a) is float)
    others = [eq_test(a) for a in arg if type(a) not in (str, int, float)]

    def scalar(v) -> bool:
        t = type(v)
        return (t is str and v in strings) or ((t is int or t is float) and v in numbers)

    def test(values: list) -> bool:
        for v in values:
            if scalar(v):
                return True
            if type(v) is list:
                for e in v:
                    if scalar(e):
                        return True
        return False

    tests = ([test] if strings or numbers else []) + others
    return _any_test(tests) if tests else lambda values: False


def _operator(op: str, arg: Any, spec: dict, expand: bool = True) -> Callable[[list], bool]:
    some = _any_value if expand else _each_value
    if op in ("$eq", "$ne"):
        eq = eq_test(arg) if expand else _each_value(_plain_eq(arg))
        return eq if op == "$eq" else lambda values: not eq(values)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        if arg is None:  # null equals only null (and missing): $gte/$lte null are $eq null
            if op in ("$gte", "$lte"):
                return eq_test(None) if expand else _each_value(_plain_eq(None))
            return lambda values: False
        return some(_compare(op, arg))
    if op == "$mod":
        return some(_mod(arg))
    if op in ("$in", "$nin"):
        if not isinstance(arg, list):
            raise QueryError(f"{op} needs an array")
        if not expand:
            members = [_plain_eq(a) for a in arg]
            any_of = _each_value(lambda v: any(m(v) for m in members))
        else:
            any_of = _in_test(arg)
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
            if name not in TYPE_ALIASES:
                raise QueryError(f"unknown $type {name!r}")
            kinds.add(TYPE_ALIASES[name])
        return some(lambda v: kind(v) in kinds)
    if op == "$size":
        if isinstance(arg, bool) or not isinstance(arg, int) or arg < 0:
            raise QueryError("$size needs a non-negative integer")
        return lambda values: any(isinstance(v, list) and len(v) == arg for v in values)
    if op == "$all":
        return _all(arg, expand)
    if op == "$elemMatch":
        if not isinstance(arg, dict):
            raise QueryError("$elemMatch needs an object")
        if is_value_form(arg):
            cond = field_conditions(arg, expand=False)
            return lambda values: any(
                isinstance(v, list) and any(cond([e]) for e in v) for v in values
            )
        sub = compile_closures(arg)

        def elem_match(values: list) -> bool:
            for v in values:
                if isinstance(v, list):
                    for e in v:
                        if type(e) is dict and sub(e):
                            return True
            return False

        return elem_match
    if op == "$regex":
        search = compile_regex(arg, spec.get("$options", ""))
        return some(lambda v: type(v) is str and search(v) is not None)
    if op == "$not":
        if isinstance(arg, dict) and arg and all(k.startswith("$") for k in arg):
            inner = field_conditions(arg, expand)
        elif isinstance(arg, str):  # a bare pattern
            inner = _operator("$regex", arg, {}, expand)
        else:
            raise QueryError("$not needs an operator object or a regex")
        return lambda values: not inner(values)
    raise QueryError(f"unknown operator {op}")


_LOGICAL = ("$and", "$or", "$nor")


def is_value_form(arg: dict) -> bool:
    """Whether an $elemMatch object is its value form ({"$gt": 5}: conditions on each
    element) rather than a filter on each element (fields, or $and/$or/$nor of them)."""
    return bool(arg) and all(k.startswith("$") and k not in _LOGICAL for k in arg)


def _all(arg: Any, expand: bool) -> Callable[[list], bool]:
    """$all: every member equal to the value or one of its elements (an $and of
    equalities); or, when the members are {"$elemMatch": ...}, every one matching an
    element. Other operator objects are refused (MongoDB: "no $ expressions in $all"),
    and so is a mix of both forms."""
    if not isinstance(arg, list):
        raise QueryError("$all needs an array")
    forms = {
        "elemMatch" if isinstance(a, dict) and list(a) == ["$elemMatch"] else
        "operator" if isinstance(a, dict) and any(str(k).startswith("$") for k in a) else
        "value" for a in arg
    }  # fmt: skip
    if "operator" in forms:
        raise QueryError("$all: no $ expressions in its members (only $elemMatch)")
    if forms == {"elemMatch", "value"}:
        raise QueryError("$all: its members are all $elemMatch objects or none")
    if forms == {"elemMatch"}:
        tests = [_operator("$elemMatch", a["$elemMatch"], a, expand) for a in arg]
    else:
        tests = [eq_test(a) if expand else _each_value(_plain_eq(a)) for a in arg]
    return lambda values: bool(tests) and all(t(values) for t in tests)


def _logical(op: str, arg: Any) -> Matcher:
    if not isinstance(arg, list) or not arg:
        raise QueryError(f"{op} needs a non-empty array of filters")
    subs = [compile_closures(f) for f in arg]
    if op == "$and":
        return all_of(subs)

    def any_of(doc) -> bool:
        for sub in subs:
            if sub(doc):
                return True
        return False

    if op == "$or":
        return any_of
    return lambda doc: not any_of(doc)  # $nor


def clause_matcher(parts: tuple[str, ...], test: Callable[[list], bool]) -> Matcher:
    walk = walker(parts)
    if len(parts) == 1:  # the most common case: a top-level field
        key = parts[0]

        def top(doc) -> bool:
            if type(doc) is dict and key in doc:
                return test([doc[key]])
            return test(path_values(doc, parts, walk))

        return top
    return lambda doc: test(path_values(doc, parts, walk))


def compile_closures(filter_: Any) -> Matcher:
    """The closure form of a filter (the reference semantics); QueryError if invalid."""
    return all_of(list(compile_clauses(filter_).values()))


def compile_clauses(filter_: Any) -> dict[str, Matcher]:
    """Validate a filter and compile each of its top-level clauses: {key: matcher}."""
    if not isinstance(filter_, dict):
        raise QueryError(f"a filter must be an object, not {kind(filter_)}")
    clauses: dict[str, Matcher] = {}
    for key, cond in filter_.items():
        if not isinstance(key, str) or not key:
            raise QueryError("filter keys must be non-empty strings")
        if key in REFUSED:
            raise QueryError(f"{key} is not allowed: it executes code")
        if key in _LOGICAL:
            clauses[key] = _logical(key, cond)
            continue
        if key == "$comment":  # a note for the logs: matches everything
            if not isinstance(cond, str):
                raise QueryError("$comment needs a string")
            continue
        if key.startswith("$"):
            raise QueryError(f"unknown top-level operator {key}")
        parts = tuple(key.split("."))
        if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
            test = field_conditions(cond)
        else:
            if isinstance(cond, dict) and any(k.startswith("$") for k in cond):
                raise QueryError(f"{key}: do not mix operators and fields in one object")
            test = eq_test(cond)
        clauses[key] = clause_matcher(parts, test)
    return clauses
