"""MongoDB-style update documents applied to JSON documents.

``apply_update(doc, update)`` returns a new document (the input is not modified).
Operators: $set $unset $inc $mul $min $max (any two values, in BSON comparison order)
$rename $push (with $each, $position, $sort, $slice) $addToSet (with $each) $pop $pull
(a value, or a condition as in a filter). A document with no operator keys means $set of
those keys (never a $set nested in a $set). Paths are dotted; $set creates missing
intermediate objects, and a position past the end of an array pads it with nulls (as
MongoDB does). Errors (unknown operator, a number expected, a path through
a non-object, one path changed by two operators) raise UpdateError.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from typing import Any

from .errors import UpdateError
from .filters import compile_filter
from .filters.values import array_index, bson_key, kind, values_equal

__all__ = ["apply_update", "normalize_update"]

_MISSING = object()
_OPERATORS = {"$set", "$unset", "$inc", "$mul", "$min", "$max", "$rename", "$push",
              "$addToSet", "$pull", "$pop"}  # fmt: skip
_PUSH_MODIFIERS = {"$each", "$position", "$sort", "$slice"}
MAX_INT_DIGITS = 4_300
"""Integers an update may produce have at most this many digits (Python's own limit for
turning an integer into text, so the result could not be stored or answered)."""
_INT_LIMIT = 10**MAX_INT_DIGITS


def normalize_update(update: Any) -> dict:
    """Validate an update; a bare document becomes {"$set": document}."""
    if not isinstance(update, dict) or not update:
        raise UpdateError("an update must be a non-empty object")
    ops = [k for k in update if isinstance(k, str) and k.startswith("$")]
    if not ops:
        return {"$set": update}
    if len(ops) != len(update):
        raise UpdateError("do not mix update operators and plain fields")
    seen: set[str] = set()
    for op, fields in update.items():
        if op not in _OPERATORS:
            raise UpdateError(f"unknown update operator {op}")
        if not isinstance(fields, dict) or not fields:
            raise UpdateError(f"{op} needs a non-empty object of paths")
        for path in fields:
            if not isinstance(path, str) or not path or path.startswith("$"):
                raise UpdateError(f"{op}: bad path {path!r}")
            if "\x00" in path or (op == "$rename" and "\x00" in str(fields[path])):
                raise UpdateError(f"{op}: field names cannot contain NUL ({path!r})")
            for named in (path, fields[path]) if op == "$rename" else (path,):
                if isinstance(named, str) and any(p.startswith("$") for p in named.split(".")):
                    raise UpdateError(
                        f"{op} {named!r}: positional operators ($, $[], $[<id>]) are not "
                        "supported; name the array position (a.0.b)"
                    )
            targets = [path, fields[path]] if op == "$rename" else [path]
            for target in targets:
                if not isinstance(target, str) or not target:
                    raise UpdateError("$rename target must be a non-empty string")
                for other in seen:
                    if (
                        other == target
                        or other.startswith(target + ".")
                        or target.startswith(other + ".")
                    ):
                        raise UpdateError(f"conflicting updates to {target!r} and {other!r}")
                seen.add(target)
    return update


def _parent(doc: dict, path: str, create: bool):
    parts = path.split(".")
    node: Any = doc
    for part in parts[:-1]:
        if isinstance(node, dict):
            if part not in node:
                if not create:
                    return None, parts[-1]
                node[part] = {}
            node = node[part]
        elif isinstance(node, list) and array_index(part) >= 0:
            index = array_index(part)
            if index >= len(node):
                if not create:
                    return None, parts[-1]
                node.extend([None] * (index - len(node)))  # MongoDB pads with nulls
                node.append({})
            node = node[index]
        else:
            if not create:
                return None, parts[-1]
            raise UpdateError(f"{path}: cannot create a field inside a {kind(node)}")
    return node, parts[-1]


def _get(parent: Any, key: str) -> Any:
    if isinstance(parent, dict):
        return parent.get(key, _MISSING)
    if isinstance(parent, list) and 0 <= array_index(key) < len(parent):
        return parent[array_index(key)]
    return _MISSING


def _put(parent: Any, key: str, value: Any, path: str) -> None:
    if isinstance(parent, dict):
        parent[key] = value
    elif isinstance(parent, list) and array_index(key) >= 0:
        index = array_index(key)
        while len(parent) <= index:
            parent.append(None)
        parent[index] = value
    else:
        raise UpdateError(f"{path}: cannot set a field inside a {kind(parent)}")


def _number(value: Any, op: str, path: str) -> Any:
    if kind(value) != "number":
        raise UpdateError(f"{op} {path}: needs a number, not {kind(value)}")
    return value


def _each(arg: Any, op: str) -> tuple[list, dict]:
    """(the values to add, the modifiers) of a $push or $addToSet argument."""
    if isinstance(arg, dict) and "$each" in arg:
        allowed = _PUSH_MODIFIERS if op == "$push" else {"$each"}
        unknown = set(arg) - allowed
        if unknown:
            raise UpdateError(f"{op}: unknown modifier(s) {', '.join(sorted(unknown))}")
        if not isinstance(arg["$each"], list):
            raise UpdateError("$each needs an array")
        return list(arg["$each"]), arg
    if isinstance(arg, dict) and set(arg) & _PUSH_MODIFIERS:
        raise UpdateError(f"{op}: $position, $sort and $slice need $each")
    return [arg], {}


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise UpdateError(f"{what} needs an integer")
    return int(value)


def _push_sort_key(spec: Any) -> list[tuple[tuple[str, ...], bool]]:
    """(path, descending) per sort field of a $push $sort: 1/-1 sorts whole elements,
    {field: 1/-1, ...} sorts documents by those fields (BSON comparison order)."""
    if spec in (1, -1) and not isinstance(spec, bool):
        return [((), spec == -1)]
    if (
        isinstance(spec, dict)
        and spec
        and all(v in (1, -1) and not isinstance(v, bool) for v in spec.values())
    ):
        return [(tuple(f.split(".")), v == -1) for f, v in spec.items()]
    raise UpdateError("$sort needs 1, -1 or an object of field: 1 or -1")


def _field_key(value: Any, parts: tuple[str, ...]) -> tuple:
    for part in parts:
        if not isinstance(value, dict) or part not in value:
            return (1,)  # missing: null
        value = value[part]
    return bson_key(value)


def _push(current: list, items: list, modifiers: dict) -> None:
    """$push with its modifiers, in MongoDB's order: insert ($position), $sort, $slice."""
    slice_n = _integer(modifiers["$slice"], "$slice") if "$slice" in modifiers else None
    sort = _push_sort_key(modifiers["$sort"]) if "$sort" in modifiers else None
    if "$position" in modifiers:
        position = _integer(modifiers["$position"], "$position")
        if position < 0:
            position = max(len(current) + position, 0)
        current[position:position] = items
    else:
        current.extend(items)
    if sort is not None:
        for parts, descending in reversed(sort):
            current.sort(key=functools.partial(_field_key, parts=parts), reverse=descending)
    if slice_n is not None:
        current[:] = current[:slice_n] if slice_n >= 0 else current[slice_n:]


def _path_order(path: str) -> tuple:
    """MongoDB 5+'s order for applying an update's paths (so new fields are added in it):
    field names lexicographically, numbers in them by value ("a.9" before "a.10")."""
    return tuple(
        tuple((0, int(run), "") if run.isascii() and run.isdigit() else (1, 0, run)
              for run in _RUNS.findall(part)) or ((1, 0, ""),)
        for part in path.split(".")
    )  # fmt: skip


_RUNS = re.compile(r"\d+|\D+", re.ASCII)


def apply_update(doc: dict, update: Any) -> dict:
    """A new document with the update applied: every operator's paths in MongoDB 5+'s
    order (``_path_order``), whatever the request's order."""
    update = normalize_update(update)
    out = copy.deepcopy(doc)
    steps = [(op, path, arg) for op, fields in update.items() for path, arg in fields.items()]
    steps.sort(key=lambda step: _path_order(step[1]))
    for op, path, arg in steps:
        _apply(out, op, path, copy.deepcopy(arg))
    return out


def _not_viable(op: str, path: str, part: str, node: Any) -> UpdateError:
    return UpdateError(
        f"{op} {path}: cannot use the part {part!r} to traverse the element ({kind(node)}): "
        "PathNotViable"
    )


def _rename(doc: dict, path: str, target: str) -> None:
    """$rename, as MongoDB: a missing source is a no-op; a source or a target through a
    value that is not an object (a scalar, an array) is PathNotViable."""
    node: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        if type(node) is not dict:
            raise _not_viable("$rename", path, part, node)
        if part not in node:
            return
        node = node[part]
    if type(node) is not dict:
        raise _not_viable("$rename", path, parts[-1], node)
    if parts[-1] not in node:
        return
    value = node.pop(parts[-1])
    node = doc
    parts = target.split(".")
    for part in parts[:-1]:
        if type(node) is not dict:
            raise _not_viable("$rename", target, part, node)
        node = node.setdefault(part, {})
    if type(node) is not dict:
        raise _not_viable("$rename", target, parts[-1], node)
    node[parts[-1]] = value


def _apply(doc: dict, op: str, path: str, arg: Any) -> None:
    if op == "$unset":
        parent, key = _parent(doc, path, create=False)
        if isinstance(parent, dict):
            parent.pop(key, None)
        elif isinstance(parent, list) and 0 <= array_index(key) < len(parent):
            parent[array_index(key)] = None
        return
    if op == "$rename":
        _rename(doc, path, arg)
        return
    if op == "$pop":
        if arg not in (1, -1) or isinstance(arg, bool):
            raise UpdateError(f"$pop {path}: needs 1 (last element) or -1 (first)")
        parent, key = _parent(doc, path, create=False)
        current = _get(parent, key) if parent is not None else _MISSING
        if current is _MISSING:
            return
        if not isinstance(current, list):
            raise UpdateError(f"$pop {path}: the field is a {kind(current)}, not an array")
        if current:
            current.pop(-1 if arg == 1 else 0)
        return
    if op == "$pull":
        parent, key = _parent(doc, path, create=False)
        _pull(_get(parent, key) if parent is not None else _MISSING, arg, path)
        return
    parent, key = _parent(doc, path, create=True)
    current = _get(parent, key)
    if op == "$set":
        _put(parent, key, arg, path)
    elif op in ("$inc", "$mul"):
        _number(arg, op, path)
        if current is _MISSING:
            _put(parent, key, arg if op == "$inc" else 0 * arg, path)
        else:
            _number(current, op, path)
            result = current + arg if op == "$inc" else current * arg
            if isinstance(result, float) and not math.isfinite(result):
                raise UpdateError(f"{op} {path}: the result is not a finite number")
            if type(result) is int and not -_INT_LIMIT < result < _INT_LIMIT:
                raise UpdateError(f"{op} {path}: the result has more than {MAX_INT_DIGITS} digits")
            _put(parent, key, result, path)
    elif op in ("$min", "$max"):
        if current is _MISSING:
            _put(parent, key, arg, path)
        else:  # any two values compare, in BSON comparison order
            new, old = bson_key(arg), bson_key(current)
            if (new < old) if op == "$min" else (new > old):
                _put(parent, key, arg, path)
    elif op in ("$push", "$addToSet"):
        if current is _MISSING:
            current = []
            _put(parent, key, current, path)
        if not isinstance(current, list):
            raise UpdateError(f"{op} {path}: the field is a {kind(current)}, not an array")
        items, modifiers = _each(arg, op)
        if op == "$push":
            _push(current, items, modifiers)
        else:
            for item in items:
                if not any(values_equal(item, x) for x in current):
                    current.append(item)


def _pull(current: Any, arg: Any, path: str) -> None:
    """Remove the elements equal to arg, or matching it when arg is a condition."""
    if current is _MISSING:
        return
    if not isinstance(current, list):
        raise UpdateError(f"$pull {path}: the field is a {kind(current)}, not an array")
    if isinstance(arg, dict) and arg:
        if all(k.startswith("$") for k in arg):
            match = compile_filter({"v": arg})
            keep = [x for x in current if not match({"v": x})]
        else:
            match = compile_filter(arg)
            keep = [x for x in current if not (isinstance(x, dict) and match(x))]
    else:
        keep = [x for x in current if not values_equal(x, arg)]
    current[:] = keep
