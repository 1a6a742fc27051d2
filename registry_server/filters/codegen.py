"""Filters compiled to Python source: the fast form of a compiled ``Filter``.

``closures.py`` defines the semantics as closures (``compile_closures``). Here a filter
becomes the source of one function per clause, executed once: a dotted path is walked by
nested ``for`` loops over the values found at each level (objects by key, arrays by
position or element by element, exactly as ``values.walker``), and the condition is
an inline expression tested on each value (and on each element of an array value) with
an early return on the first hit. No lists of values are built and no closure is
called per level or per value, which is where the closure form spends its time on
paths through arrays of objects.

Only conditions that hold when *some* value satisfies a predicate are generated
($eq/$gt/$gte/$lt/$lte on numbers and strings, $in of those, $regex, $exists, $size,
$type, $elemMatch) and their negations ($ne, $nin, $not, $exists: false, which hold when
*no* value does). Anything else (null, booleans, objects or arrays as operands, $all)
is a call to the closure built by ``closures.py`` for that clause, so every filter has the
closures' behaviour; tests check both forms agree on random filters.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .closures import clause_matcher, compile_regex, eq_test, field_conditions, is_value_form
from .values import MISSING, TYPE_ALIASES, array_index, kind

__all__ = ["generate"]


_MAX_DEPTH = 12  # path parts generated inline; longer paths use the closures


class _Unsupported(Exception):
    """This condition has no generated form: the clause uses the closure form."""


class _Pred:
    """A per-value condition: ``code(x)`` is an expression over the variable named x;
    ``expand``: also tried on each element of an array value (MongoDB's rule for
    equality and comparisons; not for $size, $elemMatch, $exists)."""

    __slots__ = ("code", "expand")

    def __init__(self, code: Callable[[str], str], expand: bool = True) -> None:
        self.code = code
        self.expand = expand


def _number_or_str(arg: Any) -> str | None:
    t = type(arg)
    if t is str:
        return "str"
    if t is int or t is float:
        return "number"
    return None  # bool, None, dict, list: closures


class _Source:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.env: dict[str, Any] = {"_M": MISSING, "_kind": kind}
        self._names = 0

    def name(self, prefix: str) -> str:
        self._names += 1
        return f"{prefix}{self._names}"

    def const(self, value: Any) -> str:
        name = self.name("_k")
        self.env[name] = value
        return name

    # ------------------------------------------------------------------ predicates

    def _typed(self, kind: str, x: str, test: str) -> str:
        if kind == "str":
            return f"(type({x}) is str and {test})"
        return f"((type({x}) is int or type({x}) is float) and {test})"

    def eq(self, arg: Any) -> _Pred:
        kind = _number_or_str(arg)
        if kind is None:
            raise _Unsupported
        k = self.const(arg)
        return _Pred(lambda x: self._typed(kind, x, f"{x} == {k}"))

    def compare(self, op: str, arg: Any) -> _Pred:
        kind = _number_or_str(arg)
        if kind is None:
            raise _Unsupported
        k = self.const(arg)
        sym = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
        return _Pred(lambda x: self._typed(kind, x, f"{x} {sym} {k}"))

    def in_(self, arg: Any) -> _Pred:
        if not isinstance(arg, list) or not arg:
            raise _Unsupported
        kinds = [_number_or_str(a) for a in arg]
        if None in kinds:
            raise _Unsupported
        parts = []
        for want in ("str", "number"):
            members = frozenset(a for a, k in zip(arg, kinds, strict=True) if k == want)
            if members:
                k = self.const(members)
                parts.append((want, k))
        return _Pred(
            lambda x: (
                "(" + " or ".join(self._typed(kind, x, f"{x} in {k}") for kind, k in parts) + ")"
            )
        )

    def elem_match(self, arg: dict) -> _Pred:
        helper = self.name("_e")
        if is_value_form(arg):  # each element as it is (arrays not looked inside)
            c = self.const(field_conditions(arg, expand=False))
            self.lines += [
                f"def {helper}(lst):",
                "    for e in lst:",
                f"        if {c}([e]): return True",
                "    return False",
            ]
        else:  # the sub-filter inlined in the loop over the elements
            body = self.body(arg, "        ", "continue")
            self.lines += [
                f"def {helper}(lst):",
                "    for doc in lst:",
                "        if type(doc) is not dict: continue",
                *body,
                "        return True",
                "    return False",
            ]
        return _Pred(lambda x: f"(type({x}) is list and {helper}({x}))", expand=False)

    def operator(self, op: str, arg: Any, spec: dict) -> tuple[_Pred, bool]:
        """(predicate, negated) for one operator of a field condition."""
        if op == "$eq":
            return self.eq(arg), False
        if op == "$ne":
            return self.eq(arg), True
        if op in ("$gt", "$gte", "$lt", "$lte"):
            return self.compare(op, arg), False
        if op == "$in":
            return self.in_(arg), False
        if op == "$nin":
            return self.in_(arg), True
        if op == "$regex":
            search = self.const(compile_regex(arg, spec.get("$options", "")))
            return _Pred(lambda x: f"(type({x}) is str and {search}({x}) is not None)"), False
        if op == "$exists":
            return _Pred(lambda x: "True", expand=False), not bool(arg)
        if op == "$size":
            n = self.const(arg)
            return _Pred(lambda x: f"(type({x}) is list and len({x}) == {n})", expand=False), False
        if op == "$type":
            names = arg if isinstance(arg, list) else [arg]
            kinds = self.const(frozenset(TYPE_ALIASES[n] for n in names))
            return _Pred(lambda x: f"(_kind({x}) in {kinds})"), False
        if op == "$elemMatch":
            return self.elem_match(arg), False
        if op == "$not":
            if isinstance(arg, str):
                pred, negated = self.operator("$regex", arg, {})
                return pred, not negated
            inner = [k for k in arg if k != "$options"]
            if len(inner) != 1:
                raise _Unsupported
            pred, negated = self.operator(inner[0], arg[inner[0]], arg)
            return pred, not negated
        raise _Unsupported  # $all and anything the closures handle alone

    # ------------------------------------------------------------------ path walks

    def _terminal(self, var: str, pred: _Pred, indent: str) -> list[str]:
        """Return True when pred holds for var (or, expanding, for an element of it)."""
        lines = [f"{indent}if {pred.code(var)}: return True"]
        if pred.expand:
            lines += [
                f"{indent}if type({var}) is list:",
                f"{indent}    for x in {var}:",
                f"{indent}        if {pred.code('x')}: return True",
            ]
        return lines

    def _general(self, parts: tuple[str, ...], start: int, pred: _Pred) -> str:
        """A function(v) -> bool, v being the value at parts[:start] (any type): the
        rest of the path by nested loops over the values found at each level."""
        name = self.name("_g")
        lines = [f"def {name}(v{start - 1}):"]
        indent = "    "
        for level in range(start, len(parts)):
            v, nxt, key = f"v{level - 1}", f"v{level}", parts[level]
            k = repr(key)
            elements = f"[e[{k}] for e in {v} if type(e) is dict and {k} in e]"
            index = array_index(key)
            if index >= 0:
                elements = f"(({v}[{index}],) if len({v}) > {index} else {elements})"
            lines.append(
                f"{indent}for {nxt} in ((({v}[{k}],) if {k} in {v} else ()) "
                f"if type({v}) is dict else {elements} if type({v}) is list else ()):"
            )
            indent += "    "
        lines += self._terminal(f"v{len(parts) - 1}", pred, indent)
        lines.append("    return False")
        self.lines += lines
        return name

    def walk(
        self, parts: tuple[str, ...], pred: _Pred, negated: bool, indent: str, fail: str
    ) -> list[str]:
        """Lines, inline in a matcher's body, that run ``fail`` unless the clause holds
        (pred holds for some value at the path; for a negated one, for none). Straight
        if/else while the path goes through objects (the usual case); at the first array
        or scalar on the way, a call to ``_general`` for the rest."""
        lines = []
        var = self.name("v")
        lines.append(f"{indent}{var} = doc.get({parts[0]!r}, _M)")
        missing = "pass" if negated else fail
        for level in range(1, len(parts)):
            general = self._general(parts, level, pred)
            call = f"{general}({var})"
            lines += [
                f"{indent}if {var} is _M: {missing}",
                f"{indent}elif type({var}) is not dict:",
                f"{indent}    if {'' if negated else 'not '}{call}: {fail}",
                f"{indent}else:",
            ]
            indent += "    "
            nxt = self.name("v")
            lines.append(f"{indent}{nxt} = {var}.get({parts[level]!r}, _M)")
            var = nxt
        holds = pred.code(var)
        if pred.expand:
            holds += f" or (type({var}) is list and {self.any_element(pred)}({var}))"
        lines += [
            f"{indent}if {var} is _M: {missing}",
            f"{indent}elif {holds}: {fail}" if negated else f"{indent}elif not ({holds}): {fail}",
        ]
        return lines

    # ------------------------------------------------------------------ filters

    def clause(self, key: str, cond: Any, indent: str, fail: str) -> list[str]:
        """Lines (in a matcher's body) that run ``fail`` unless the clause holds."""
        parts = tuple(key.split("."))
        is_ops = isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond)
        ops = (
            [(op, arg) for op, arg in cond.items() if op != "$options"]
            if is_ops
            else [("$eq", cond)]
        )
        try:
            if len(parts) > _MAX_DEPTH:  # Python limits nested blocks
                raise _Unsupported
            if array_index(parts[-1]) >= 0:  # a position last: values.Pinned's rule
                raise _Unsupported
            tests = [self.operator(op, arg, cond if is_ops else {}) for op, arg in ops]
        except _Unsupported:  # the closure form of the clause
            test = field_conditions(cond) if is_ops else eq_test(cond)
            return [f"{indent}if not {self.const(clause_matcher(parts, test))}(doc): {fail}"]
        out = []
        for pred, negated in tests:
            out += self.walk(parts, pred, negated, indent, fail)
        return out

    def body(self, filter_: dict, indent: str, fail: str) -> list[str]:
        """Lines that run ``fail`` unless ``doc`` (a dict) matches the filter."""
        out: list[str] = []
        for key, cond in filter_.items():
            if key == "$comment":
                continue
            if key in ("$and", "$or", "$nor"):
                calls = [f"{self.matcher(sub)}(doc)" for sub in cond]
                if key == "$and":
                    out += [f"{indent}if not {c}: {fail}" for c in calls]
                elif key == "$or":
                    out.append(f"{indent}if not ({' or '.join(calls)}): {fail}")
                else:
                    out.append(f"{indent}if {' or '.join(calls)}: {fail}")
            else:
                out += self.clause(key, cond, indent, fail)
        return out

    def any_element(self, pred: _Pred) -> str:
        """A function(list) -> True when pred holds for an element."""
        name = self.name("_l")
        self.lines += [
            f"def {name}(lst):",
            "    for x in lst:",
            f"        if {pred.code('x')}: return True",
            "    return False",
        ]
        return name

    def matcher(self, filter_: dict, fallback: str | None = None) -> str:
        """A function(doc) -> bool for a (validated) filter. Only the outermost one is
        ever called with something other than a dict (sub-filters of $and/$or/$nor get
        the same document): it hands such input to ``fallback``."""
        body = self.body(filter_, "    ", "return False")
        name = self.name("_m")
        self.lines.append(f"def {name}(doc):")
        if fallback is not None:
            self.lines.append(f"    if type(doc) is not dict: return {fallback}(doc)")
        self.lines += [*body, "    return True"]
        return name


CACHE_ENTRIES = 512
CACHE_BYTES = 1 << 20
"""The cache of generated matchers holds at most CACHE_ENTRIES filters whose JSON
adds up to CACHE_BYTES (a compiled filter takes tens of times its JSON's size)."""
CACHE_MAX_KEY = 16 << 10
"""A filter whose JSON is longer is compiled for its request only, never cached."""

_cache: OrderedDict[str, Callable[[Any], bool]] = OrderedDict()
_cache_bytes = 0


def cache_stats() -> tuple[int, int]:
    """(entries, bytes of JSON) in the cache of generated matchers."""
    return len(_cache), _cache_bytes


def _generate(filter_: dict, fallback: Callable[[Any], bool]) -> Callable[[Any], bool] | None:
    source = _Source()
    try:
        name = source.matcher(filter_, source.const(fallback))
        code = compile("\n".join(source.lines), "<registry filter>", "exec")
    except (SyntaxError, RecursionError, MemoryError):  # absurdly deep filters or paths
        return None
    exec(code, source.env)
    return source.env[name]


def generate(filter_: dict, fallback: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """``match(doc)`` for a filter already validated by ``closures.compile_closures``
    (``fallback``, its closure form: the answer for non-object documents, and for filters
    too deep to generate). Generated functions are cached per filter (its JSON)."""
    try:
        key = json.dumps(filter_, allow_nan=False)
    except (TypeError, ValueError):  # not JSON (only possible from Python callers)
        return fallback
    match = _cache.get(key)
    if match is not None:
        _cache.move_to_end(key)
        return match
    match = _generate(filter_, fallback) or fallback
    if len(key) <= CACHE_MAX_KEY:
        global _cache_bytes
        _cache[key] = match
        _cache_bytes += len(key)
        while len(_cache) > CACHE_ENTRIES or _cache_bytes > CACHE_BYTES:
            old, _ = _cache.popitem(last=False)
            _cache_bytes -= len(old)
    return match
