"""Query options: sort, skip, limit and projection, as MongoDB's find takes them."""

from __future__ import annotations

import copy
import heapq
from collections.abc import Callable
from typing import Any

from .errors import QueryError
from .filters.values import sort_key, walker

__all__ = ["MAX_LIMIT", "apply_options", "check_options"]

MAX_LIMIT = 10_000
MAX_SKIP = 2**63 - 1
"""The most documents one answer holds, on every list and query route (a query without a
limit, or with MongoDB's limit 0, gets this many at most, and a ``next`` page)."""


def check_options(options: Any) -> dict:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise QueryError("options must be an object")
    unknown = set(options) - {"sort", "skip", "limit", "projection"}
    if unknown:
        raise QueryError(f"unknown option(s): {', '.join(sorted(unknown))}")
    for key in ("skip", "limit"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):  # fmt: skip
            raise QueryError(f"{key} must be a non-negative integer")
    if (options.get("skip") or 0) > MAX_SKIP:
        raise QueryError(f"skip must be at most {MAX_SKIP} (a 64-bit integer, as MongoDB's)")
    if (options.get("limit") or 0) > MAX_LIMIT:
        raise QueryError(f"limit must be at most {MAX_LIMIT}")
    sort = options.get("sort")
    if sort is not None:
        if not isinstance(sort, dict) or not all(v in (1, -1) for v in sort.values()):
            raise QueryError("sort must be an object of field: 1 or -1")
    projection = options.get("projection")
    if projection == {}:  # MongoDB: no projection, every field
        options = {k: v for k, v in options.items() if k != "projection"}
    elif projection is not None:
        if not isinstance(projection, dict):
            raise QueryError("projection must be an object of field: 0 or 1")
        values = list(projection.values())
        if not all(v in (0, 1) for v in values) or len({bool(v) for v in values}) != 1:
            raise QueryError("projection must be all inclusions (1) or all exclusions (0)")
        if not all(isinstance(p, str) and p and "" not in p.split(".") for p in projection):
            raise QueryError("projection paths must be non-empty dotted field names")
        projection_tree(projection)
    return options


def _top(docs: list, sort: dict, k: int, positioned: bool = False) -> list[dict]:
    """The first k documents of the sorted order (the same ones, in the same order, as a
    full stable sort gives) without sorting everything: the first sort field's key for
    every document, its k-th best value as a threshold (heapq), then a full sort of the
    few documents at or before it (ties on the first field included)."""
    (first, direction), *_ = sort.items()
    parts = tuple(first.split("."))
    walk = walker(parts)
    desc = direction == -1
    keys = [sort_key(d[1] if positioned else d, parts, walk, desc) for d in docs]
    if desc:
        threshold = heapq.nlargest(k, keys)[-1]
        few = [d for d, key in zip(docs, keys, strict=True) if key >= threshold]
    else:
        threshold = heapq.nsmallest(k, keys)[-1]
        few = [d for d, key in zip(docs, keys, strict=True) if key <= threshold]
    if positioned:  # ties keep insertion order
        few.sort(key=lambda pair: pair[0])
        few = [doc for _, doc in few]
    for field, direction in reversed(sort.items()):  # stable: the last key first
        parts = tuple(field.split("."))
        walk = walker(parts)
        desc = direction == -1
        few.sort(key=_sorter(parts, walk, desc), reverse=desc)
    return few[:k]


def _sorter(parts: tuple[str, ...], walk, descending: bool) -> Callable[[Any], tuple]:
    """The sort key function of one field of a sort."""
    return lambda doc: sort_key(doc, parts, walk, descending)


def projection_tree(projection: dict) -> dict:
    """{"a.b": 1, "c": 1} -> {"a": {"b": True}, "c": True}; QueryError when one path is
    the prefix of another (MongoDB's "path collision")."""
    tree: dict = {}
    for path in projection:
        node = tree
        parts = path.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if child is True:
                raise QueryError(f"projection: {path!r} collides with a shorter path")
            node = child
        if parts[-1] in node:
            raise QueryError(f"projection: {path!r} collides with another path")
        node[parts[-1]] = True
    return tree


def _include(value: Any, tree: dict) -> Any:
    """Only the fields the tree names, in the document's own order; through arrays,
    element by element (elements that are not documents are dropped, as MongoDB does)."""
    if type(value) is list:
        return [_include(e, tree) for e in value if type(e) in (dict, list)]
    out = {}
    for key, item in value.items():
        sub = tree.get(key)
        if sub is True:
            out[key] = copy.deepcopy(item)
        elif sub is not None and type(item) in (dict, list):
            out[key] = _include(item, sub)
    return out


def _exclude(value: Any, tree: dict) -> Any:
    """Everything but the fields the tree names; through arrays, element by element."""
    if type(value) is list:
        return [_exclude(e, tree) if type(e) in (dict, list) else e for e in value]
    out = {}
    for key, item in value.items():
        sub = tree.get(key)
        if sub is True:
            continue
        if sub is not None and type(item) in (dict, list):
            out[key] = _exclude(item, sub)
        else:
            out[key] = copy.deepcopy(item)
    return out


def apply_options(docs: list, options: dict, positioned: bool = False) -> list[dict]:
    """Sort, skip, limit, then project (options already checked). ``positioned``: docs
    are (insertion position, document) pairs in any order (ties sort by position)."""
    sort = options.get("sort")
    skip = options.get("skip") or 0
    limit = options.get("limit")
    if sort and limit and skip + limit < len(docs) // 4:  # top k: no full sort
        docs = _top(docs, sort, skip + limit, positioned)
    else:
        if positioned:
            docs = [doc for _, doc in sorted(docs, key=lambda pair: pair[0])]
        if sort:
            docs = list(docs)
            for field, direction in reversed(sort.items()):  # stable: the last key first
                parts = tuple(field.split("."))
                walk = walker(parts)
                desc = direction == -1
                docs.sort(key=_sorter(parts, walk, desc), reverse=desc)
    docs = docs[skip : skip + limit] if limit else docs[skip:]
    projection = options.get("projection")
    if projection:
        tree = projection_tree(projection)
        project = _include if any(projection.values()) else _exclude
        docs = [project(doc, tree) for doc in docs]
    return docs
