"""Document storage for the registries.

``EmbeddedStore`` (the default): SQLite in WAL mode with ``synchronous=FULL``, one table
per registry holding each document's JSON under its id (PRIMARY KEY: the unique index),
plus every document in memory for queries. A write returns only after SQLite has
committed it to disk, so acknowledged writes survive kill -9; memory is updated after
the commit. Queries run the compiled filter over the in-memory documents.

One process owns a store file: it holds an exclusive lock (``flock``) on
``<file>.lock`` while open, so a second server on the same file stops at once with
StoreLocked instead of running beside the first and seeing only its own writes.

All methods are synchronous and thread-safe: the HTTP layer runs queries and writes in
a small thread pool (so an index build or a long scan never holds its event loop) and
reads by id inline. Writes and index builds take the store's lock; a query takes it
only to plan and to copy its candidates, then matches them outside it.

Queries take a compiled ``Filter`` (``registry_server.filters``) and use in-memory
indexes (``filters.indexes``: equality and range, built on the first query that can use
them, kept current by every write) to find candidates, then run its matcher over them.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from itertools import islice
from pathlib import Path

import msgspec

from .errors import Conflict, NotFound, Stale, StoreLocked
from .filters import Filter, compile_filter, regex_budget
from .filters.indexes import Indexes

__all__ = ["EmbeddedStore"]


def _lock_exclusively(lock_path: str) -> int:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLocked(
            f"the store {lock_path[: -len('.lock')]} is in use by another registry server "
            f"(lock {lock_path}); stop it or use another --db"
        ) from None
    return fd


def _first(pair: tuple) -> int:
    return pair[0]


class EmbeddedStore:
    def __init__(self, path: str | Path, collections: list[str]) -> None:
        self.path = str(path)
        self._lock_fd = _lock_exclusively(self.path + ".lock")
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._lock = threading.RLock()
        self._docs: dict[str, dict[str, dict]] = {}
        self._indexes: dict[str, Indexes] = {n: Indexes() for n in collections}
        self._seq: dict[str, dict[str, int]] = {}  # insertion order, for indexed queries
        self._next = 0
        self._revs: dict[str, dict[str, int]] = {n: {} for n in collections}  # per write
        self._next_rev = 0
        for name in collections:
            self._db.execute(
                f'CREATE TABLE IF NOT EXISTS "{name}" (id TEXT PRIMARY KEY, doc TEXT NOT NULL)'
            )
            rows = self._db.execute(f'SELECT id, doc FROM "{name}" ORDER BY rowid').fetchall()
            decode = msgspec.json.decode  # 2-3x json.loads; same values (big ints exact)
            self._docs[name] = {doc_id: decode(doc) for doc_id, doc in rows}
            del rows
            self._seq[name] = {}
            for doc_id in self._docs[name]:
                self._seq[name][doc_id] = self._next
                self._next += 1

    def close(self) -> None:
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

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
                self._bump(name, doc_id)
                self._docs[name][doc_id] = doc
                self._seq[name][doc_id] = self._next
                self._next += 1
                self._indexes[name].add(doc_id, doc)

    def insert(self, name: str, doc_id: str, doc: dict) -> None:
        with self._lock:
            try:
                self._db.execute(f'INSERT INTO "{name}" (id, doc) VALUES (?, ?)',
                                 (doc_id, json.dumps(doc)))  # fmt: skip
            except sqlite3.IntegrityError:
                raise Conflict(f"{name}: {doc_id!r} already exists") from None
            self._bump(name, doc_id)
            self._docs[name][doc_id] = doc
            self._seq[name][doc_id] = self._next
            self._next += 1
            self._indexes[name].add(doc_id, doc)

    def _bump(self, name: str, doc_id: str) -> None:
        self._next_rev += 1
        self._revs[name][doc_id] = self._next_rev

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
            self._bump(name, doc_id)
            self._indexes[name].remove(doc_id, old)
            self._indexes[name].add(doc_id, doc)

    def get_for_update(self, name: str, doc_id: str) -> tuple[dict, int]:
        """The document and its revision, for ``replace_if``."""
        doc = self.get(name, doc_id)
        return doc, self._revs[name].get(doc_id, -1)

    def replace_if(self, name: str, doc_id: str, doc: dict, rev: int, update=None) -> dict:
        """Replace the document if it is still at revision ``rev`` (Stale otherwise);
        returns the stored document. ``update`` (the operators that made ``doc``) is
        unused here: the MongoDB backend applies them itself."""
        with self._lock:
            if doc_id not in self._docs[name]:
                raise NotFound(f"{name}: no document {doc_id!r}")
            if self._revs[name].get(doc_id, -1) != rev:
                raise Stale(f"{name}: {doc_id!r} changed while it was being updated")
            self.replace(name, doc_id, doc)
        return doc

    def delete(self, name: str, doc_id: str) -> None:
        with self._lock:
            if doc_id not in self._docs[name]:
                raise NotFound(f"{name}: no document {doc_id!r}")
            self._db.execute(f'DELETE FROM "{name}" WHERE id = ?', (doc_id,))
            old = self._docs[name].pop(doc_id)
            del self._seq[name][doc_id]
            self._revs[name].pop(doc_id, None)
            self._indexes[name].remove(doc_id, old)

    def find(self, name: str, filter_: Filter | dict, first: int | None = None) -> list[dict]:
        """Matching documents, in insertion order (only the ``first`` n when given).
        ``filter_``: a compiled Filter (a plain dict is compiled here, for callers
        outside a request)."""
        return [doc for _, doc in self.find_unordered(name, filter_, first, ordered=True)]

    def find_unordered(
        self, name: str, filter_: Filter | dict, first: int | None = None, ordered: bool = False
    ) -> list[tuple[int, dict]]:
        """(insertion position, document) of every match, in no particular order unless
        ``ordered`` (a caller that sorts anyway breaks ties by the position)."""
        filter_ = compile_filter(filter_)
        match = filter_.match
        docs = self._docs[name]
        with self._lock:  # an index built now must not miss a concurrent write
            plan = self._indexes[name].plan(filter_, docs)
            seq = self._seq[name]
            if plan is None:
                if not filter_.spec and first is not None:
                    ids = islice(docs, first)  # a page of everything
                    return [(seq[i], docs[i]) for i in ids]
                candidates = list(docs.items())  # a snapshot: writers may go on
            else:
                sure, unsure, answered = plan
                sure = [(seq[i], docs[i]) for i in sure]
                unsure = [(seq[i], docs[i]) for i in unsure]
                if ordered or first is not None:
                    sure.sort(key=_first)
                    unsure.sort(key=_first)
        with regex_budget():  # all of this query's $regex searches share one budget
            if plan is None:
                hits = ((i, doc) for i, doc in candidates if match(doc))
                return [(seq.get(i, -1), doc) for i, doc in islice(hits, first)]
            rest = filter_.residual(answered)
            hits = sure if rest is None else [(n, d) for n, d in sure if rest(d)]
            if unsure:
                hits = hits + [(n, d) for n, d in unsure if match(d)]
                if ordered or first is not None:
                    hits.sort(key=_first)
        return hits if first is None else hits[:first]

    def count(self, name: str) -> int:
        return len(self._docs[name])
