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

from . import closures, codegen
from .closures import regex_budget
from .indexes import IndexClause, index_clauses

__all__ = ["Filter", "compile_filter", "regex_budget"]

_UNSET = object()


class Filter:
    """A validated, compiled filter. Build it with ``compile_filter``."""

    __slots__ = ("_clauses", "_residual", "closures", "index_clauses", "match", "spec")

    spec: dict
    """The filter as the client sent it (validated): what MongoDB is sent."""
    match: Callable[[Any], bool]
    """The generated matcher (the closures where a filter cannot be generated)."""
    closures: Callable[[Any], bool]
    """The closure form: the reference semantics."""
    index_clauses: tuple[IndexClause, ...]
    """The clauses an index can answer (``indexes.index_clauses``)."""

    def __init__(self, spec: dict) -> None:
        self._clauses = closures.compile_clauses(spec)  # validates: QueryError if bad
        self.spec = spec
        self.closures = closures.all_of(list(self._clauses.values()))
        self.match = codegen.generate(spec, self.closures)
        self.index_clauses = index_clauses(spec)
        self._residual: Any = _UNSET

    def __call__(self, doc: Any) -> bool:
        return self.match(doc)

    def __repr__(self) -> str:
        return f"Filter({self.spec!r})"

    @property
    def residual(self) -> Callable[[Any], bool] | None:
        """The matcher of the clauses the indexes do not answer (None: there are none),
        for documents the index planner found sure for all of ``index_clauses``. Built
        on first use from the clauses already validated and compiled here."""
        if self._residual is _UNSET:
            answered = {clause[0] for clause in self.index_clauses}
            rest = {k: v for k, v in self.spec.items() if k not in answered}
            if not rest:
                self._residual = None
            else:
                fallback = closures.all_of([self._clauses[k] for k in rest])
                self._residual = codegen.generate(rest, fallback)
        return self._residual


def compile_filter(spec: Any) -> Filter:
    """A MongoDB filter -> its ``Filter`` (a ``Filter`` is returned as it is). Raises
    QueryError for an invalid filter."""
    if isinstance(spec, Filter):
        return spec
    return Filter(spec)
