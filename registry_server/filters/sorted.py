"""Sort indexes of the embedded store: every document of a collection in the order of one
sort specification, so that a sorted query with a limit walks the index and stops after
``limit`` hits instead of building and sorting every match.

``SortIndex(sort)`` keeps (keys, position, id, encoded document) entries in exactly the
order ``options.apply_options`` sorts documents in: by each field's ``sort_key`` (BSON
order; arrays by their smallest element ascending, their largest descending), the
fields in turn, each in its own direction, ties by insertion position. The entry
carries the document's encoded form as it was when indexed, so a copy of the list taken
under the store's lock is a consistent snapshot to walk without it.

Built on the first sorted query with a limit that uses it, then kept current by every
write (a binary search and a list insertion: microseconds at 100,000 documents). The
build sorts in slices merged by a generator, so it never holds the GIL (and the event
loop) for one long C call.
"""

from __future__ import annotations

from heapq import merge

from .values import sort_key, walker

__all__ = ["SortIndex", "sort_spec"]

_SLICE = 5_000  # ~2 ms of C sorting at a time

SortSpec = tuple[tuple[str, bool], ...]
"""((field, descending), ...): a sort option as a hashable key."""


def sort_spec(sort: dict) -> SortSpec:
    return tuple((field, direction == -1) for field, direction in sort.items())


class SortIndex:
    def __init__(self, spec: SortSpec) -> None:
        self.spec = spec
        self._fields = []
        for field, descending in spec:
            parts = tuple(field.split("."))
            self._fields.append((parts, walker(parts), descending))
        self.entries: list[tuple[tuple, int, str, bytes]] = []
        """(sort keys, insertion position, id, encoded document), in sorted order."""

    def keys(self, doc) -> tuple:
        return tuple(sort_key(doc, parts, walk, desc) for parts, walk, desc in self._fields)

    def collect(self, seq: int, doc_id: str, raw: bytes, doc) -> None:
        """Index one document of a build, given in insertion order (``finish`` sorts)."""
        self.entries.append((self.keys(doc), seq, doc_id, raw))

    def finish(self) -> None:
        entries = self.entries
        for i in reversed(range(len(self._fields))):  # stable: the last field first
            entries = _sort_in_slices(entries, _field_key(i), self._fields[i][2])
        self.entries = entries

    def _before(self, a: tuple, b: tuple) -> bool:
        """Whether entry ``a`` sorts before entry ``b``."""
        for ka, kb, (_, _, desc) in zip(a[0], b[0], self._fields, strict=True):
            if ka != kb:
                return (ka > kb) if desc else (ka < kb)
        return a[1] < b[1]

    def _position(self, entry: tuple) -> int:
        """The first position whose entry does not sort before ``entry``."""
        entries, lo, hi = self.entries, 0, len(self.entries)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._before(entries[mid], entry):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def add(self, seq: int, doc_id: str, raw: bytes, doc) -> None:
        entry = (self.keys(doc), seq, doc_id, raw)
        self.entries.insert(self._position(entry), entry)

    def remove(self, seq: int, doc) -> None:
        at = self._position((self.keys(doc), seq))
        if at < len(self.entries) and self.entries[at][1] == seq:
            del self.entries[at]


def _field_key(i: int):
    def key(entry: tuple):
        return entry[0][i]

    return key


def _sort_in_slices(entries: list, key, reverse: bool) -> list:
    """sorted(entries, key=key, reverse=reverse), stable, in slices of _SLICE merged by
    a Python-level generator (no single C call holds the GIL for the whole sort)."""
    if len(entries) <= _SLICE:
        entries.sort(key=key, reverse=reverse)
        return entries
    runs = [sorted(entries[i : i + _SLICE], key=key, reverse=reverse)
            for i in range(0, len(entries), _SLICE)]  # fmt: skip
    return list(merge(*runs, key=key, reverse=reverse))
