"""In-memory indexes of the embedded store, and the plan that uses them for a query.

Two kinds, both multikey (array elements indexed one by one, as MongoDB does) and both
built on the first query that can use them, then kept current by every write:

- ``EqualityIndex``: value -> ids, for a bare scalar, ``$eq`` or ``$in`` of strings and
  numbers. Keys are equal exactly when the matcher calls the values equal (1 == 1.0,
  true != 1, big ints compared exactly). Documents whose value at the path is an object
  (or an array holding one) are kept aside as "unsure": the index cannot judge them.
- ``RangeIndex``: sorted (value, id) pairs, numbers and strings apart, for ``$gt``,
  ``$gte``, ``$lt``, ``$lte`` on a number or a string. Only values of the operand's kind
  can satisfy such a condition (the matcher's rule), so the index is exact: no "unsure".

``index_clauses(spec)`` (run once, when a filter is compiled) lists the clauses an index
can answer; ``Indexes.plan(filter)`` -> (sure ids, unsure ids): a document matches the
filter if it is in ``sure`` and matches the residual (the filter without the clauses the
indexes answered: ``Filter.residual``), or it is in ``unsure`` and matches the whole
filter. None when no clause can use an index. Tests check indexed queries equal full
scans through writes.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from heapq import merge
from typing import Any

from .values import path_values, walker

__all__ = ["EqualityIndex", "IndexClause", "Indexes", "RangeIndex", "index_clauses"]

_RANGE_OPS = {"$gt", "$gte", "$lt", "$lte"}
_WORTH = 4


def _kind(value) -> str | None:
    """'s' or 'n' for an indexable scalar (bools, None, NaN, objects, arrays: None)."""
    t = type(value)
    if t is str:
        return "s"
    if t is int or (t is float and not math.isnan(value)):
        return "n"
    return None


def _scalars(doc: dict, path: tuple[str, ...], walk):
    """(value, kind) of every scalar at the path, array elements included; and whether
    some value there is an object or an array holding an array or object."""
    found = []
    odd = False
    for value in path_values(doc, path, walk):
        for item in value if type(value) is list else (value,):
            kind = _kind(item)
            if kind is not None:
                found.append((item, kind))
            elif isinstance(item, (list, dict)):
                odd = True
    return found, odd


class EqualityIndex:
    def __init__(self, path: tuple[str, ...]) -> None:
        self.path = path
        self.walk = walker(path)  # built once: a walker is a cycle of closures
        self.by_key: dict[tuple, set[str]] = {}
        self.unsure: set[str] = set()

    def build(self, docs: dict[str, dict]) -> None:
        for doc_id, doc in docs.items():
            self.add(doc_id, doc)

    def collect(self, doc_id: str, doc: dict) -> None:
        """Index one document of a build (``finish`` when all are collected)."""
        self.add(doc_id, doc)

    def finish(self) -> None:
        pass

    def add(self, doc_id: str, doc: dict) -> None:
        found, odd = _scalars(doc, self.path, self.walk)
        for value, kind in found:
            self.by_key.setdefault((kind, value), set()).add(doc_id)
        if odd:
            self.unsure.add(doc_id)

    def remove(self, doc_id: str, doc: dict) -> None:
        found, _ = _scalars(doc, self.path, self.walk)
        for value, kind in found:
            ids = self.by_key.get((kind, value))
            if ids is not None:
                ids.discard(doc_id)
                if not ids:
                    del self.by_key[(kind, value)]
        self.unsure.discard(doc_id)

    def lookup(self, values: list) -> tuple[set[str], set[str]]:
        """(ids holding one of the values, ids the index cannot judge): the index's own
        sets, not copies, when there is one value (callers never modify them)."""
        if len(values) == 1:
            return self.by_key.get((_kind(values[0]), values[0])) or set(), self.unsure
        sure: set[str] = set()
        for value in values:
            ids = self.by_key.get((_kind(value), value))
            if ids:
                sure |= ids
        return sure, self.unsure


class RangeIndex:
    def __init__(self, path: tuple[str, ...]) -> None:
        self.path = path
        self.walk = walker(path)  # built once: a walker is a cycle of closures
        self.sorted: dict[str, list[tuple]] = {"n": [], "s": []}

    def add(self, doc_id: str, doc: dict) -> None:
        found, _ = _scalars(doc, self.path, self.walk)
        for value, kind in set(found):
            insort(self.sorted[kind], (value, doc_id))

    def build(self, docs: dict[str, dict]) -> None:
        """Index every document at once: one sort, not an insertion per document
        (quadratic: seconds at 100,000 documents)."""
        for doc_id, doc in docs.items():
            self.collect(doc_id, doc)
        self.finish()

    def collect(self, doc_id: str, doc: dict) -> None:
        """Index one document of a build, unsorted (``finish`` sorts them all)."""
        found, _ = _scalars(doc, self.path, self.walk)
        for value, kind in set(found):
            self.sorted[kind].append((value, doc_id))

    def finish(self) -> None:
        for kind, entries in self.sorted.items():
            self.sorted[kind] = _sort_in_slices(entries)

    def remove(self, doc_id: str, doc: dict) -> None:
        found, _ = _scalars(doc, self.path, self.walk)
        for value, kind in set(found):
            entries = self.sorted[kind]
            at = bisect_left(entries, (value, doc_id))
            if at < len(entries) and entries[at] == (value, doc_id):
                del entries[at]

    def _bounds(self, op: str, arg) -> tuple[list, int, int]:
        entries = self.sorted[_kind(arg) or "n"]  # arg: a number or a string (_range_ops)
        if op == "$gt":
            return entries, _after(entries, arg), len(entries)
        if op == "$gte":
            return entries, _from(entries, arg), len(entries)
        if op == "$lt":
            return entries, 0, _from(entries, arg)
        return entries, 0, _after(entries, arg)  # $lte

    def estimate(self, ops: dict) -> int:
        """At most this many entries satisfy the operators (two bisections each)."""
        return min(hi - lo for _, lo, hi in (self._bounds(op, arg) for op, arg in ops.items()))

    def lookup(self, ops: dict) -> set[str]:
        """Ids with some value satisfying every operator (each on its own: MongoDB's
        rule for several operators on one path)."""
        result: set[str] | None = None
        for op, arg in ops.items():
            entries, lo, hi = self._bounds(op, arg)
            ids = {doc_id for _, doc_id in entries[lo:hi]}
            result = ids if result is None else result & ids
        return result or set()

    def candidates(self, ops: dict) -> set[str]:
        """Ids satisfying the operator with the fewest entries (a superset of
        ``lookup``'s, cheaper when another operator is wide)."""
        entries, lo, hi = min((self._bounds(op, arg) for op, arg in ops.items()),
                              key=lambda bounds: bounds[2] - bounds[1])  # fmt: skip
        return {doc_id for _, doc_id in entries[lo:hi]}


_SLICE = 5_000  # ~2 ms of C sorting at a time


def _sort_in_slices(entries: list) -> list:
    """sorted(entries), without one C call that holds the GIL for the whole sort (a
    query thread building an index must let the event loop run): slices sorted apart,
    then merged by a Python-level generator."""
    if len(entries) <= _SLICE:
        entries.sort()
        return entries
    runs = [sorted(entries[i : i + _SLICE]) for i in range(0, len(entries), _SLICE)]
    return list(merge(*runs))


def _from(entries: list[tuple], value) -> int:
    """First position whose value is >= value."""
    return bisect_left(entries, (value,))


def _after(entries: list[tuple], value) -> int:
    """First position whose value is > value."""
    return bisect_right(entries, (value, _TOP))


class _Top(str):
    """Sorts after every id string (for bisect_right over (value, id) pairs)."""

    def __lt__(self, other):
        return False

    def __gt__(self, other):
        return True


_TOP = _Top()


def _equality_values(cond) -> list | None:
    """The values of an equality condition the index can answer, or None."""
    if isinstance(cond, dict) and set(cond) == {"$eq"}:
        cond = cond["$eq"]
    if isinstance(cond, dict) and set(cond) == {"$in"} and isinstance(cond["$in"], list):
        values = cond["$in"]
    elif isinstance(cond, dict):
        return None
    else:
        values = [cond]
    if values and all(_kind(v) is not None for v in values):
        return values
    return None


def _range_ops(cond) -> dict | None:
    if (
        isinstance(cond, dict)
        and cond
        and set(cond) <= _RANGE_OPS
        and all(_kind(arg) is not None for arg in cond.values())
    ):
        return cond
    return None


IndexClause = tuple[str, tuple[str, ...], str, Any]
"""(key, path, "eq" or "range", the values (eq) or the operators (range)) of a clause."""


def index_clauses(spec: dict) -> tuple[IndexClause, ...]:
    """The top-level clauses of a (validated) filter that an index can answer exactly."""
    out: list[IndexClause] = []
    for key, cond in spec.items():
        if key.startswith("$"):
            continue
        path = tuple(key.split("."))
        values = _equality_values(cond)
        if values is not None:
            out.append((key, path, "eq", values))
            continue
        ops = _range_ops(cond)
        if ops is not None:
            out.append((key, path, "range", ops))
    return tuple(out)


class Indexes:
    """The indexes of one collection."""

    def __init__(self) -> None:
        self.all: dict[tuple, EqualityIndex | RangeIndex] = {}

    def add(self, doc_id: str, doc: dict) -> None:
        for index in self.all.values():
            index.add(doc_id, doc)

    def remove(self, doc_id: str, doc: dict) -> None:
        for index in self.all.values():
            index.remove(doc_id, doc)

    def missing(self, filter_) -> list:
        """New, empty indexes for the filter's index clauses that have none yet: the
        caller builds them together, in one pass over the documents (``collect`` each
        document, then ``finish``), and hands them to ``adopt``."""
        new = {}
        for _, path, how, _ in filter_.index_clauses:
            kind = EqualityIndex if how == "eq" else RangeIndex
            if (kind.__name__, path) not in self.all:
                new[(kind.__name__, path)] = kind(path)
        return list(new.values())

    def adopt(self, built: list) -> None:
        for index in built:
            self.all[(type(index).__name__, index.path)] = index

    def narrowest(self, filter_, wide: int):
        """(size, sure, unsure) for the index clause that leaves the fewest candidates:
        at most ``size`` documents can match the filter, and every one that may is in
        ``sure`` or ``unsure`` (for an equality clause the index's own sets: read them
        under the store's lock only). ``sure`` is None for a range clause of more than
        ``wide`` entries (its set would cost more than it saves). None when no clause
        can use an index (or none has been built)."""
        best: tuple | None = None  # (size, the equality sets or None, (index, operators))
        for _, path, how, arg in filter_.index_clauses:
            if how == "eq":
                eq = self.all.get(("EqualityIndex", path))
                if not isinstance(eq, EqualityIndex):
                    continue
                found = eq.lookup(arg)
                option: tuple = (len(found[0]) + len(found[1]), found, None)
            else:
                index = self.all.get(("RangeIndex", path))
                if not isinstance(index, RangeIndex):
                    continue
                option = (index.estimate(arg), None, (index, arg))
            if best is None or option[0] < best[0]:
                best = option
        if best is None:
            return None
        size, found, ranged = best
        if found is not None:
            return size, found[0], found[1]
        if size > wide:
            return size, None, None
        return size, ranged[0].candidates(ranged[1]), set()

    def plan(self, filter_):
        """(sure, unsure, the keys of the clauses answered) for a compiled ``Filter``
        (its ``index_clauses``), or None when no clause can use an index (see the module
        docstring). Clauses are taken most selective first; one that would keep more
        than _WORTH times the candidates so far is left to the matcher (materializing
        its ids would cost more than testing the few candidates)."""
        options = []  # (estimated size, key, lookup)
        for key, path, how, arg in filter_.index_clauses:
            index = self.all.get(("EqualityIndex" if how == "eq" else "RangeIndex", path))
            if index is None:  # not built (past what queries may cause): the matcher
                continue
            if isinstance(index, EqualityIndex):
                found = index.lookup(arg)
                options.append((len(found[0]) + len(found[1]), key, lambda f=found: f))
            else:
                options.append(
                    (index.estimate(arg), key, lambda i=index, a=arg: (i.lookup(a), set()))
                )
        if not options:
            return None
        options.sort(key=lambda o: o[0])
        size, key, lookup = options[0]
        sure, unsure = lookup()
        answered = [key]
        maybe = sure | unsure if unsure else sure
        for size, key, lookup in options[1:]:
            if not maybe or size > _WORTH * len(maybe):
                break
            other_sure, other_unsure = lookup()
            maybe = maybe & (other_sure | other_unsure if other_unsure else other_sure)
            sure = sure & other_sure
            answered.append(key)
        return sure & maybe, maybe - sure, frozenset(answered)
