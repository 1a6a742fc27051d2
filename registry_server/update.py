"""MongoDB-style update documents applied to JSON documents.

``apply_update(doc, update)`` returns a new document (the input is not modified).
Operators: $set $unset $inc $mul $min $max $rename $push (with $each) $addToSet (with
$each) $pull (a value, or a condition as in a filter). A document with no operator keys
means $set of those keys (never a $set nested in a $set). Paths are dotted; $set creates
missing intermediate objects. Errors (unknown operator, a number expected, a path through
a non-object, one path changed by two operators) raise UpdateError.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import UpdateError
from .filters import compile_filter
from .filters.values import array_index, kind, values_equal

__all__ = ["apply_update", "normalize_update"]

_MISSING = object()
_OPERATORS = {"$set", "$unset", "$inc", "$mul", "$min", "$max", "$rename", "$push",
              "$addToSet", "$pull"}  # fmt: skip


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
                raise UpdateError(f"{path}: index {index} past the end of the array")
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


def _each(arg: Any) -> list:
    if isinstance(arg, dict) and "$each" in arg:
        if set(arg) != {"$each"} or not isinstance(arg["$each"], list):
            raise UpdateError("$each needs an array (and no other modifiers)")
        return list(arg["$each"])
    return [arg]


def apply_update(doc: dict, update: Any) -> dict:
    """A new document with the update applied."""
    update = normalize_update(update)
    out = copy.deepcopy(doc)
    for op, fields in update.items():
        for path, arg in fields.items():
            _apply(out, op, path, copy.deepcopy(arg))
    return out


def _apply(doc: dict, op: str, path: str, arg: Any) -> None:
    if op == "$unset":
        parent, key = _parent(doc, path, create=False)
        if isinstance(parent, dict):
            parent.pop(key, None)
        elif isinstance(parent, list) and 0 <= array_index(key) < len(parent):
            parent[array_index(key)] = None
        return
    if op == "$rename":
        parent, key = _parent(doc, path, create=False)
        value = _get(parent, key) if parent is not None else _MISSING
        if value is _MISSING:
            return
        if not isinstance(parent, dict):
            raise UpdateError(f"$rename {path}: source must be an object field")
        del parent[key]
        target_parent, target_key = _parent(doc, arg, create=True)
        _put(target_parent, target_key, value, arg)
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
            _put(parent, key, current + arg if op == "$inc" else current * arg, path)
    elif op in ("$min", "$max"):
        if current is _MISSING:
            _put(parent, key, arg, path)
        elif kind(current) == kind(arg) and kind(arg) in ("number", "string"):
            better = arg < current if op == "$min" else arg > current
            if better:
                _put(parent, key, arg, path)
        else:
            raise UpdateError(f"{op} {path}: cannot compare {kind(current)} with {kind(arg)}")
    elif op in ("$push", "$addToSet"):
        if current is _MISSING:
            current = []
            _put(parent, key, current, path)
        if not isinstance(current, list):
            raise UpdateError(f"{op} {path}: the field is a {kind(current)}, not an array")
        for item in _each(arg):
            if op == "$push" or not any(values_equal(item, x) for x in current):
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
