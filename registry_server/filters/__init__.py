"""MongoDB-style filters, validated and compiled once per request into a ``Filter``.

``compile_filter(spec)`` checks the whole filter up front (unknown or code-executing
operators raise QueryError, so a bad filter is a 400 before any document is read) and
returns a ``Filter``: the validated spec (what the MongoDB backend sends), the matcher
(``match(doc) -> bool``; a ``Filter`` is also callable), and the clauses the embedded
store's indexes can answer. The app compiles a request's filter once and hands the
``Filter`` to the store, its index planner and the MongoDB backend; none of them
compiles it again.

The modules: ``values`` (kinds, equality, values at a path: shared by everything),
``closures`` (the semantics as closures, the reference form), ``codegen`` (the same
filter as generated Python source, the fast form; conditions it has no inline form for
call the closures), ``indexes`` (equality and range indexes, and the plan that uses
them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import QueryError
from . import closures, codegen
from .closures import regex_budget
from .indexes import IndexClause, index_clauses

__all__ = ["MAX_FILTER_DEPTH", "MAX_FILTER_NODES", "Filter", "check_size", "compile_filter",
           "regex_budget"]  # fmt: skip

MAX_FILTER_DEPTH = 64
"""Objects and arrays nested in a filter, at most (deeper: 400 "nested too deeply")."""
MAX_FILTER_NODES = 100_000
"""Keys and array members in a filter, at most (more: 400 "too complex")."""


def check_size(spec: Any) -> None:
    """QueryError unless the filter is within MAX_FILTER_DEPTH and MAX_FILTER_NODES
    (checked before anything is compiled: compiling costs time and memory in proportion)."""
    nodes = 0
    stack = [(spec, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_FILTER_DEPTH:
            raise QueryError(f"the filter is nested too deeply (at most {MAX_FILTER_DEPTH} levels)")
        if isinstance(value, dict):
            nodes += len(value)
            stack += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            nodes += len(value)
            stack += [(v, depth + 1) for v in value]
        if nodes > MAX_FILTER_NODES:
            raise QueryError(
                f"the filter is too complex (more than {MAX_FILTER_NODES} keys and array members)"
            )


class Filter:
    """A validated, compiled filter. Build it with ``compile_filter``."""

    __slots__ = ("_clauses", "_residual", "closures", "index_clauses", "match", "regex", "spec")

    spec: dict
    """The filter as the client sent it (validated): what MongoDB is sent."""
    match: Callable[[Any], bool]
    """The generated matcher (the closures where a filter cannot be generated)."""
    closures: Callable[[Any], bool]
    """The closure form: the reference semantics."""
    index_clauses: tuple[IndexClause, ...]
    """The clauses an index can answer (``indexes.index_clauses``)."""
    regex: bool
    """Whether the filter holds a $regex (or a bare pattern under $not): its searches
    may take up to the request's budget."""

    def __init__(self, spec: dict) -> None:
        check_size(spec)
        self._clauses = closures.compile_clauses(spec)  # validates: QueryError if bad
        self.spec = spec
        self.closures = closures.all_of(list(self._clauses.values()))
        self.match = codegen.generate(spec, self.closures)
        self.index_clauses = index_clauses(spec)
        self.regex = _has_regex(spec)
        self._residual: dict[frozenset[str], Callable[[Any], bool] | None] = {}

    def __call__(self, doc: Any) -> bool:
        return self.match(doc)

    def __repr__(self) -> str:
        return f"Filter({self.spec!r})"

    def residual(self, answered: frozenset[str]) -> Callable[[Any], bool] | None:
        """The matcher of the clauses not in ``answered`` (None: there are none), for
        documents the index planner found sure for the answered clauses. Built on first
        use from the clauses already validated and compiled here."""
        if answered not in self._residual:
            rest = {k: v for k, v in self.spec.items() if k not in answered and k != "$comment"}
            if not rest:
                self._residual[answered] = None
            else:
                fallback = closures.all_of([self._clauses[k] for k in rest])
                self._residual[answered] = codegen.generate(rest, fallback)
        return self._residual[answered]


def _has_regex(spec: Any) -> bool:
    stack = [spec]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if "$regex" in value or isinstance(value.get("$not"), str):
                return True
            stack += value.values()
        elif isinstance(value, list):
            stack += value
    return False


def compile_filter(spec: Any) -> Filter:
    """A MongoDB filter -> its ``Filter`` (a ``Filter`` is returned as it is). Raises
    QueryError for an invalid filter."""
    if isinstance(spec, Filter):
        return spec
    return Filter(spec)
