"""Document storage for the registries.

``EmbeddedStore`` (the default): SQLite in WAL mode with ``synchronous=FULL``, one table
per registry holding each document's JSON under its id (PRIMARY KEY: the unique index),
plus every document in memory for queries. A write returns only after SQLite has
committed it to disk, so acknowledged writes survive kill -9; memory is updated after
the commit. Queries run the compiled filter over the in-memory documents.

All methods are synchronous and fast; the HTTP layer calls them on its event loop.

Equality indexes prune queries: the first query with an equality on a path (a bare
scalar, ``$eq`` or ``$in`` of strings/numbers, at the filter's top level) builds a hash
index value -> ids for that path (array elements indexed one by one, as a multikey
index), kept up to date by every later write. A query then runs its compiled filter only
over the smallest candidate set (the ids with that value, plus documents where the path
holds an object, which the index does not split);
the filter still decides, so the index can only make a query cheaper, never different.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from .errors import Conflict, NotFound
from .query import compile_filter, path_values

_SCALARS = (str, int, float)


def _index_key(value):
    """Hashable key for an indexable scalar (1 and 1.0 share one; bools are not indexed)."""
    if type(value) is str:
        return ("s", value)
    if type(value) in (int, float):
        return ("n", float(value))
    return None


class _Index:
    """path -> {key: ids} for scalar values, and ids whose value there is not a scalar."""

    def __init__(self, path: tuple[str, ...]) -> None:
        self.path = path
        self.by_key: dict[tuple, set[str]] = {}
        self.other: set[str] = set()

    def _keys(self, doc: dict) -> tuple[set, bool]:
        """Index keys of a document's values at the path (array elements too: a scalar
        equals an array when one element does), and whether some value escapes the index
        (an object, or an array holding one): such documents are always candidates."""
        keys: set = set()
        unindexed = False
        for value in path_values(doc, self.path):
            for item in value if type(value) is list else (value,):
                key = _index_key(item)
                if key is not None:
                    keys.add(key)
                elif isinstance(item, (list, dict)):
                    unindexed = True
        return keys, unindexed

    def add(self, doc_id: str, doc: dict) -> None:
        keys, unindexed = self._keys(doc)
        for key in keys:
            self.by_key.setdefault(key, set()).add(doc_id)
        if unindexed:
            self.other.add(doc_id)

    def remove(self, doc_id: str, doc: dict) -> None:
        keys, _ = self._keys(doc)
        for key in keys:
            ids = self.by_key.get(key)
            if ids is not None:
                ids.discard(doc_id)
                if not ids:
                    del self.by_key[key]
        self.other.discard(doc_id)

    def candidates(self, values: list) -> set[str]:
        out = set(self.other)
        for value in values:
            out |= self.by_key.get(_index_key(value), set())
        return out


def _equality_terms(filter_: dict) -> list[tuple[tuple[str, ...], list]]:
    """(path, values) for top-level equality conditions the indexes can answer."""
    terms = []
    for key, cond in filter_.items():
        if key.startswith("$"):
            continue
        if isinstance(cond, dict) and set(cond) == {"$eq"}:
            cond = cond["$eq"]
        if isinstance(cond, dict) and set(cond) == {"$in"} and isinstance(cond["$in"], list):
            values = cond["$in"]
        else:
            values = [cond]
        if values and all(type(v) in _SCALARS for v in values):
            terms.append((tuple(key.split(".")), values))
    return terms


__all__ = ["EmbeddedStore"]


class EmbeddedStore:
    def __init__(self, path: str | Path, collections: list[str]) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._lock = threading.Lock()
        self._docs: dict[str, dict[str, dict]] = {}
        self._indexes: dict[str, dict[tuple[str, ...], _Index]] = {n: {} for n in collections}
        self._seq: dict[str, dict[str, int]] = {}  # insertion order, for indexed queries
        self._next = 0
        for name in collections:
            self._db.execute(
                f'CREATE TABLE IF NOT EXISTS "{name}" (id TEXT PRIMARY KEY, doc TEXT NOT NULL)'
            )
            rows = self._db.execute(f'SELECT id, doc FROM "{name}" ORDER BY rowid').fetchall()
            self._docs[name] = {doc_id: json.loads(doc) for doc_id, doc in rows}
            self._seq[name] = {}
            for doc_id in self._docs[name]:
                self._seq[name][doc_id] = self._next
                self._next += 1

    def close(self) -> None:
        self._db.close()

    def insert_many(self, name: str, docs: dict[str, dict]) -> None:
        """Insert {id: doc} in one transaction (bulk loads); a duplicate id inserts none."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.executemany(f'INSERT INTO "{name}" (id, doc) VALUES (?, ?)',
                                     [(i, json.dumps(d)) for i, d in docs.items()])  # fmt: skip
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                raise Conflict(f"{name}: a document id already exists") from None
            for doc_id, doc in docs.items():
                self._docs[name][doc_id] = doc
                self._seq[name][doc_id] = self._next
                self._next += 1
                for index in self._indexes[name].values():
                    index.add(doc_id, doc)

    def insert(self, name: str, doc_id: str, doc: dict) -> None:
        with self._lock:
            try:
                self._db.execute(f'INSERT INTO "{name}" (id, doc) VALUES (?, ?)',
                                 (doc_id, json.dumps(doc)))  # fmt: skip
            except sqlite3.IntegrityError:
                raise Conflict(f"{name}: {doc_id!r} already exists") from None
            self._docs[name][doc_id] = doc
            self._seq[name][doc_id] = self._next
            self._next += 1
            for index in self._indexes[name].values():
                index.add(doc_id, doc)

    def get(self, name: str, doc_id: str) -> dict:
        doc = self._docs[name].get(doc_id)
        if doc is None:
            raise NotFound(f"{name}: no document {doc_id!r}")
        return doc

    def replace(self, name: str, doc_id: str, doc: dict) -> None:
        with self._lock:
            if doc_id not in self._docs[name]:
                raise NotFound(f"{name}: no document {doc_id!r}")
            self._db.execute(f'UPDATE "{name}" SET doc = ? WHERE id = ?',
                             (json.dumps(doc), doc_id))  # fmt: skip
            old = self._docs[name][doc_id]
            self._docs[name][doc_id] = doc
            for index in self._indexes[name].values():
                index.remove(doc_id, old)
                index.add(doc_id, doc)

    def delete(self, name: str, doc_id: str) -> None:
        with self._lock:
            if doc_id not in self._docs[name]:
                raise NotFound(f"{name}: no document {doc_id!r}")
            self._db.execute(f'DELETE FROM "{name}" WHERE id = ?', (doc_id,))
            old = self._docs[name].pop(doc_id)
            del self._seq[name][doc_id]
            for index in self._indexes[name].values():
                index.remove(doc_id, old)

    def _index(self, name: str, path: tuple[str, ...]) -> _Index:
        index = self._indexes[name].get(path)
        if index is None:
            with self._lock:
                index = _Index(path)
                for doc_id, doc in self._docs[name].items():
                    index.add(doc_id, doc)
                self._indexes[name][path] = index
        return index

    def find(self, name: str, filter_: dict) -> list[dict]:
        """Matching documents, in insertion order."""
        match = compile_filter(filter_)
        docs = self._docs[name]
        best: set[str] | None = None
        for path, values in _equality_terms(filter_):
            ids = self._index(name, path).candidates(values)
            if best is None or len(ids) < len(best):
                best = ids
        if best is None:
            return [doc for doc in docs.values() if match(doc)]
        seq = self._seq[name]
        return [docs[i] for i in sorted(best, key=seq.__getitem__) if match(docs[i])]

    def count(self, name: str) -> int:
        return len(self._docs[name])
