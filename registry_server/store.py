"""Document storage for the registries.

``EmbeddedStore`` (the default): SQLite in WAL mode with ``synchronous=FULL``, one table
per registry holding each document's JSON under its id (PRIMARY KEY: the unique index),
plus every document's JSON in memory (bytes, decoded when a query or a read needs the
document: a Python dict costs ~7 times its JSON, so 100,000 seed-shaped clusters take
~180 MB rather than ~860 MB, and start in about a second). A write returns only
after SQLite has committed it to disk, so acknowledged writes survive kill -9; memory
is updated after the commit.

One process owns a store file: it holds an exclusive lock (``flock``) on the database
file itself while open (the resolved file, so a symlink or a hard link to it meets the
same lock), and a second server on the same file stops at once with StoreLocked instead
of running beside the first and seeing only its own writes. A file that is not a
registry database, is damaged, or holds documents whose JSON is broken is refused with
StoreUnusable (one line, with a count); a refused start removes the files it created.
A write the disk cannot take raises StoreFull (507) and changes nothing.

All methods are synchronous and thread-safe: the HTTP layer runs queries and writes in
a small thread pool (so an index build or a long scan never holds its event loop) and
reads by id inline. Writes and index builds take the store's lock; a query takes it
only to plan and to copy its candidates, then matches them outside it.

Queries take a compiled ``Filter`` (``registry_server.filters``) and use in-memory
indexes (``filters.indexes``: equality and range, built on the first query that can use
them, all of a query's in one pass over the documents, kept current by every write) to
find candidates, then decode them and run its matcher. A sorted query with a limit
walks a sort index instead (``filters.sorted``: every document in the sort's order)
and stops at the limit, unless an index leaves few candidates (``find_sorted``).
"""

from __future__ import annotations

import errno
import fcntl
import gc
import heapq
import json
import os
import sqlite3
import threading
from collections.abc import Iterable
from contextlib import contextmanager, suppress
from itertools import chain, islice
from pathlib import Path
from typing import Any

import msgspec

from .errors import (
    Conflict,
    NotFound,
    QueryError,
    RegistryError,
    Stale,
    StoreFailed,
    StoreFull,
    StoreLocked,
    StoreUnusable,
)
from .filters import Filter, compile_filter, regex_budget
from .filters.indexes import Indexes
from .filters.sorted import SortIndex, SortSpec, sort_spec

__all__ = [
    "DECODED_CACHE_MB",
    "MAX_AUTO_INDEXES",
    "MAX_AUTO_SORT_INDEXES",
    "EmbeddedStore",
    "index_keys",
]

DECODED_CACHE_MB = 16.0
"""Decoded documents are kept (as well as their JSON) while the store's JSON is at most
this many MB: a small registry answers from Python objects (~7x its JSON: ~110 MB at
most by default), a large one decodes what each query reads."""

MAX_AUTO_INDEXES = 8
"""Equality and range indexes queries may cause per collection (each a few MB at 100,000
documents); past them a query uses the indexes there are. Declared indexes
(``declare_index``, an admin's) do not count."""
_COPY_OVER = 2_048  # candidates past which a query copies the documents' map to build
QUICK_CANDIDATES = 32
"""An indexed query left with at most this many candidates runs on the event loop."""
MAX_AUTO_SORT_INDEXES = 4
"""Sort indexes queries may cause per collection (each ~30 MB at 100,000 documents),
kept (never evicted: no thrash); a sorted query with a limit and no sort index takes a
top-k pass instead. Declared sort indexes do not count."""
_fast_decode = msgspec.json.decode  # 2-3x json.loads; same values (big ints exact)


def _decode(raw: bytes) -> dict:
    """A stored document's JSON -> the document. json.loads takes what msgspec refuses:
    NaN and Infinity, which only Python callers can store (HTTP refuses them)."""
    try:
        return _fast_decode(raw)
    except msgspec.DecodeError:
        return json.loads(raw)


def _lock_exclusively(path: str) -> int:
    """An exclusive flock on the database file itself (created if missing), whatever
    name reached it: a symlink, a hard link or another relative path to the same file
    meets the same lock. (flock and SQLite's own fcntl locks are independent.)"""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLocked(
            f"the store {path} is in use by another registry server; stop it or use another --db"
        ) from None
    return fd


def _write_error(exc: Exception) -> RegistryError:
    """A failed SQLite write -> the API's error: 507 when the disk (or the store's size
    limit) is full, 503 otherwise; the write was not made either way."""
    full = getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or (
        isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    )
    if full:
        return StoreFull(
            "the registry's disk is full: the write was not made (free space and retry)"
        )
    return StoreFailed(f"the registry could not write to its store: {exc}")


@contextmanager
def _writing(db: sqlite3.Connection):
    """One write: SQLite errors become the API's (``_write_error``); an open transaction
    is rolled back."""
    try:
        yield
    except (sqlite3.OperationalError, sqlite3.DatabaseError, OSError) as exc:
        if isinstance(exc, sqlite3.IntegrityError):
            raise
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise _write_error(exc) from None


def _python_object(raw: bytes) -> bool:
    """Whether JSON that SQLite calls invalid is an object Python wrote (NaN, Infinity:
    only Python callers can store them)."""
    try:
        return type(json.loads(raw)) is dict
    except (ValueError, RecursionError):
        return False


def _first(pair: tuple) -> int:
    return pair[0]


_gc_lock = threading.Lock()
_gc_pauses = [0, False, False]  # builds under way, collector enabled before, to freeze
_FREEZE_AFTER = 10_000  # documents indexed by a build that freezes what is alive


@contextmanager
def _collector_paused(documents: int = 0):
    """No cyclic garbage collection while an index is built. A build decodes every
    document (millions of short-lived, acyclic objects: reference counting frees them);
    each of the thousands of collections they would trigger holds the GIL, and so the
    event loop, and the later ones walk the growing index (stalls of 40-70 ms measured
    at 100,000 documents). A build must not make reference cycles (they would pile up
    until the pause ends). After a build of _FREEZE_AFTER documents or more what is
    alive is frozen (gc.freeze, as the server does after loading): the new index's
    hundreds of thousands of objects are long-lived, and the first collection after
    the pause would otherwise walk them all at once (120 ms at 100,000 documents).
    Process-wide, so counted: the last build to end restores the collector as it
    was."""
    with _gc_lock:
        if _gc_pauses[0] == 0:
            _gc_pauses[1] = gc.isenabled()
            _gc_pauses[2] = False
            gc.disable()
        _gc_pauses[0] += 1
        _gc_pauses[2] = _gc_pauses[2] or documents >= _FREEZE_AFTER
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses[0] -= 1
            if _gc_pauses[0] == 0:
                if _gc_pauses[2]:
                    gc.freeze()
                if _gc_pauses[1]:
                    gc.enable()


def _decoder(cache: dict | None):
    """load(id, raw) -> the document: decoded now, or from ``cache`` ({id: (raw,
    document)}; an entry counts only for the very bytes object it was decoded from, so
    one left behind by a race with a write is never used) and put there."""
    if cache is None:
        return lambda doc_id, raw: _decode(raw)

    def load(doc_id: str, raw: bytes) -> dict:
        entry = cache.get(doc_id)
        if entry is not None and entry[0] is raw:
            return entry[1]
        doc = _decode(raw)
        cache[doc_id] = (raw, doc)
        return doc

    return load


class EmbeddedStore:
    def __init__(
        self, path: str | Path, collections: list[str], cache_mb: float = DECODED_CACHE_MB
    ) -> None:
        self.path = str(path)
        real = os.path.realpath(self.path)
        created = [p for p in (real, real + "-wal", real + "-shm") if not os.path.exists(p)]
        self._lock_fd: int | None = _lock_exclusively(real)
        try:
            self._open(real, collections, cache_mb)
        except BaseException as exc:
            self.close()
            for made in created:  # a refused start leaves nothing behind
                with suppress(FileNotFoundError):
                    os.unlink(made)
            if isinstance(exc, sqlite3.DatabaseError):
                raise StoreUnusable(f"the store {self.path} is not a registry database or is "
                                    f"damaged ({exc})") from None  # fmt: skip
            raise

    def _open(self, real: str, collections: list[str], cache_mb: float) -> None:
        self._db: sqlite3.Connection = sqlite3.connect(
            real, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._lock = threading.RLock()
        self._docs: dict[str, dict[str, bytes]] = {}  # id -> the document's JSON
        self._indexes: dict[str, Indexes] = {n: Indexes() for n in collections}
        self._sorts: dict[str, dict[SortSpec, SortIndex]] = {n: {} for n in collections}
        self._seq: dict[str, dict[str, int]] = {}  # insertion order, for indexed queries
        self._next = 0
        self._revs: dict[str, dict[str, int]] = {n: {} for n in collections}  # per write
        self._next_rev = 0
        self._cache: dict[str, dict[str, tuple[bytes, dict]]] = {n: {} for n in collections}
        self._cache_limit = cache_mb * 1e6
        self._json_bytes = 0  # of every document in the store
        self._logs: dict[str, list[set[str]]] = {n: [] for n in collections}  # builds'
        self._building: dict[str, set] = {n: set() for n in collections}  # index keys
        self._declared: dict[str, set] = {n: set() for n in collections}
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS _registry_indexes (registry TEXT NOT NULL, "
            "key TEXT NOT NULL, PRIMARY KEY (registry, key))"
        )
        for registry, key in self._db.execute("SELECT registry, key FROM _registry_indexes"):
            if registry in self._declared:
                self._declared[registry].update(index_keys(json.loads(key)))
        broken: list[tuple[str, str]] = []
        for name in collections:
            self._db.execute(
                f'CREATE TABLE IF NOT EXISTS "{name}" (id TEXT PRIMARY KEY, doc TEXT NOT NULL)'
            )
            docs: dict[str, bytes] = {}
            seq: dict[str, int] = {}
            rows = self._db.execute(
                "SELECT id, CAST(doc AS BLOB), "
                "CASE WHEN json_valid(doc) THEN json_type(doc) = 'object' END "
                f'FROM "{name}" ORDER BY rowid'
            )
            for doc_id, raw, valid in rows:  # kept encoded: decoded when a query reads them
                if not valid and not _python_object(raw):
                    broken.append((name, doc_id))
                    continue
                docs[doc_id] = raw
                self._json_bytes += len(raw)
                seq[doc_id] = self._next
                self._next += 1
            self._docs[name] = docs
            self._seq[name] = seq
        if broken:
            shown = ", ".join(f"{name} {doc_id!r}" for name, doc_id in broken[:5])
            raise StoreUnusable(
                f"the store {self.path} holds {len(broken)} document(s) whose JSON is broken "
                f"({shown}{', ...' if len(broken) > 5 else ''}); repair or delete them, "
                f'e.g. sqlite3 {self.path} "DELETE FROM <registry> WHERE NOT json_valid(doc)"'
            )

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def insert_many(self, name: str, docs: dict[str, dict]) -> None:
        """Insert {id: doc} in one transaction (bulk loads); a duplicate id inserts none."""
        with self._lock:
            texts = [(i, json.dumps(d)) for i, d in docs.items()]
            try:
                with _writing(self._db):
                    self._db.execute("BEGIN")
                    self._db.executemany(f'INSERT INTO "{name}" (id, doc) VALUES (?, ?)', texts)
                    self._db.execute("COMMIT")
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                raise Conflict(f"{name}: a document id already exists") from None
            for (doc_id, text), doc in zip(texts, docs.values(), strict=True):
                self._added(name, doc_id, text.encode(), doc)

    def insert(self, name: str, doc_id: str, doc: dict) -> None:
        with self._lock:
            text = json.dumps(doc)
            try:
                with _writing(self._db):
                    self._db.execute(f'INSERT INTO "{name}" (id, doc) VALUES (?, ?)',
                                     (doc_id, text))  # fmt: skip
            except sqlite3.IntegrityError:
                raise Conflict(f"{name}: {doc_id!r} already exists") from None
            self._added(name, doc_id, text.encode(), doc)

    def _added(self, name: str, doc_id: str, raw: bytes, doc: dict) -> None:
        """Memory after a committed insert: the encoded document, its position, indexes."""
        self._bump(name, doc_id)
        self._docs[name][doc_id] = raw
        self._resized(len(raw))
        seq = self._seq[name][doc_id] = self._next
        self._next += 1
        self._indexes[name].add(doc_id, doc)
        for index in self._sorts[name].values():
            index.add(seq, doc_id, raw, doc)

    def _loader(self, name: str):
        """The collection's load(id, raw) (``_decoder``), through its cache while the
        store's JSON is within the cache's limit."""
        return _decoder(self._cache[name] if self._json_bytes <= self._cache_limit else None)

    def _resized(self, change: int) -> None:
        """The store's JSON grew or shrank by ``change`` bytes (the cache is emptied once
        it is over the limit)."""
        self._json_bytes += change
        if self._json_bytes > self._cache_limit and change > 0:
            for cache in self._cache.values():
                cache.clear()

    def _unindex(self, name: str, doc_id: str, raw: bytes) -> None:
        """Take a document's old version out of the indexes (decoded only if any) and
        out of the cache."""
        entry = self._cache[name].pop(doc_id, None)
        sorts = self._sorts[name].values()
        if not (self._indexes[name].all or sorts):
            return
        old = entry[1] if entry is not None and entry[0] is raw else _decode(raw)
        self._indexes[name].remove(doc_id, old)
        seq = self._seq[name][doc_id]
        for index in sorts:
            index.remove(seq, old)

    def _bump(self, name: str, doc_id: str) -> None:
        self._next_rev += 1
        self._revs[name][doc_id] = self._next_rev
        self._changed(name, doc_id)

    def _changed(self, name: str, doc_id: str) -> None:
        """Tell the index builds under way (``_build``) that a document changed."""
        for log in self._logs[name]:
            log.add(doc_id)

    def get(self, name: str, doc_id: str) -> dict:
        """The document (a fresh copy, decoded now: callers may modify it; the
        documents queries return are shared: callers must not)."""
        raw = self._docs[name].get(doc_id)
        if raw is None:
            raise NotFound(f"{name}: no document {doc_id!r}")
        return _decode(raw)

    def replace(self, name: str, doc_id: str, doc: dict) -> None:
        with self._lock:
            if doc_id not in self._docs[name]:
                raise NotFound(f"{name}: no document {doc_id!r}")
            text = json.dumps(doc)
            with _writing(self._db):
                self._db.execute(f'UPDATE "{name}" SET doc = ? WHERE id = ?', (text, doc_id))
            raw = text.encode()
            old = self._docs[name][doc_id]
            self._unindex(name, doc_id, old)
            self._docs[name][doc_id] = raw
            self._resized(len(raw) - len(old))
            self._bump(name, doc_id)
            self._indexes[name].add(doc_id, doc)
            seq = self._seq[name][doc_id]
            for index in self._sorts[name].values():
                index.add(seq, doc_id, raw, doc)

    def get_for_update(self, name: str, doc_id: str) -> tuple[dict, int]:
        """The document and its revision, for ``replace_if``."""
        with self._lock:  # the two together
            return self.get(name, doc_id), self._revs[name].get(doc_id, -1)

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
            with _writing(self._db):
                self._db.execute(f'DELETE FROM "{name}" WHERE id = ?', (doc_id,))
            old = self._docs[name].pop(doc_id)
            self._unindex(name, doc_id, old)
            self._resized(-len(old))
            del self._seq[name][doc_id]
            self._revs[name].pop(doc_id, None)
            self._changed(name, doc_id)

    def find(self, name: str, filter_: Filter | dict, first: int | None = None) -> list[dict]:
        """Matching documents, in insertion order (only the ``first`` n when given).
        ``filter_``: a compiled Filter (a plain dict is compiled here, for callers
        outside a request)."""
        return [doc for _, doc in self.find_unordered(name, filter_, first, ordered=True)]

    def find_quick(self, name: str, filter_: Filter) -> list[tuple[int, dict]] | None:
        """(position, document) of every match, in order, when the filter's built
        indexes leave at most QUICK_CANDIDATES candidates and it holds no $regex; None
        (at once) otherwise. Cheap enough for the event loop, and takes no lock: an
        indexed lookup never waits behind slow queries. The index's sets are copied in
        one C call each (atomic under the GIL), every candidate is tested with the whole
        filter on its current JSON, and a write is in the indexes before it is
        acknowledged, so what a client was told is written is found."""
        if filter_.regex or not filter_.index_clauses:
            return None
        try:
            narrow = self._indexes[name].narrowest(filter_, QUICK_CANDIDATES)
            if narrow is None or narrow[0] > QUICK_CANDIDATES or narrow[1] is None:
                return None
            ids = set(narrow[1]) | set(narrow[2])
        except RuntimeError:  # an index changed under the look-up: the usual path
            return None
        docs, seq, match = self._docs[name], self._seq[name], filter_.match
        work = []
        for doc_id in ids:
            raw, n = docs.get(doc_id), seq.get(doc_id)
            if raw is not None and n is not None:
                work.append((n, doc_id, raw, match))
        work.sort(key=_first)
        return _matches(work, None, self._loader(name))

    def find_encoded(self, name: str, filter_: Filter | dict, first: int | None) -> list[bytes]:
        """``find``'s documents as their stored JSON (what an answer without projection
        or sort sends): each decoded only to be tested, then dropped, so a long answer
        holds no decoded document (memory in its JSON; no garbage-collector passes over
        millions of young objects)."""
        filter_ = compile_filter(filter_)
        self._ensure(name, filter_)
        with self._lock:
            load = self._loader(name)
            plan = self._indexes[name].plan(filter_)
            build = self._candidates(name, filter_, plan, first, True)
        return [raw for _, raw in _matches(build(), first, load, encoded=True)]

    def find_unordered(
        self, name: str, filter_: Filter | dict, first: int | None = None, ordered: bool = False
    ) -> list[tuple[int, dict]]:
        """(insertion position, document) of every match, in no particular order unless
        ``ordered`` (a caller that sorts anyway breaks ties by the position)."""
        filter_ = compile_filter(filter_)
        self._ensure(name, filter_)
        with self._lock:
            load = self._loader(name)
            plan = self._indexes[name].plan(filter_)
            build = self._candidates(name, filter_, plan, first, ordered)
        return _matches(build(), first, load)

    def find_sorted(
        self, name: str, filter_: Filter | dict, sort: dict, k: int, skip: int = 0
    ) -> tuple[list[tuple[int, dict]], int]:
        """(pairs, skipped) for a query sorted by ``sort`` (a checked sort option) that
        wants the first ``k`` matches of that order, the first ``skip`` of them left
        out (skip <= k): ``pairs`` are the (insertion position, document) of matches
        skip+1 to k in order, and ``skipped`` is skip, so ``apply_options(pairs, options
        with skip - skipped, positioned=True)`` gives the answer.

        With a sort index the query walks it (tests documents in the sort's order until
        k match, skipping those the narrowest index clause rules out), unless an equality
        or range index leaves few candidates (at most a 64th of the collection, or k);
        otherwise it takes a top-k pass over the candidates: only the best k kept, as
        keys and stored JSON (memory in k, never a decoded document per match), the
        answer's documents decoded at the end. Nothing is matched under the store's lock:
        it is held only to copy what the query reads (a regex or a long walk never holds
        writers)."""
        filter_ = compile_filter(filter_)
        spec = sort_spec(sort)
        self._ensure(name, filter_, spec)
        docs = self._docs[name]
        sure = unsure = None
        entries: list = []
        with regex_budget():  # one budget for the whole query
            with self._lock:
                load = self._loader(name)
                index = self._sorts[name].get(spec)
                indexes = self._indexes[name]
                narrow = indexes.narrowest(filter_, len(docs) // 8)
                few = narrow is not None and narrow[0] <= max(k, len(docs) // 64)
                build = list
                if few or index is None:
                    build = self._candidates(name, filter_, indexes.plan(filter_), None, False)
                else:
                    entries = index.entries[:]  # a copy: writes change the list
                    if narrow is not None and narrow[1] is not None:
                        sure, unsure = set(narrow[1]), set(narrow[2])
            if few or index is None:
                return _top_k(build(), SortIndex(spec), k, skip, load), skip
            walk = _Walk(filter_.match, k, skip, load)
            walk.run(entries, sure, unsure)
        return walk.hits, skip

    def _ensure(self, name: str, filter_: Filter, spec: SortSpec | None = None) -> None:
        """Build the indexes the filter's clauses (and the sort, when given) can use and
        the collection lacks, within what a query may cause (declared ones always; others
        up to MAX_AUTO_INDEXES and MAX_AUTO_SORT_INDEXES), all in one pass. An index
        another query is building is left to it (this one goes on without)."""
        with self._lock:
            declared, building = self._declared[name], self._building[name]
            autos = [k for k in (*self._indexes[name].all, *building) if k not in declared]
            auto = sum(1 for k in autos if not _is_sort(k))
            new = []
            for index in self._indexes[name].missing(filter_):
                key = (type(index).__name__, index.path)
                if key in building or (key not in declared and auto >= MAX_AUTO_INDEXES):
                    continue
                auto += key not in declared
                new.append(index)
            sort = None
            if spec is not None and spec not in self._sorts[name] and spec not in building:
                sorts = sum(1 for s in (*self._sorts[name], *autos) if s not in declared
                            and _is_sort(s))  # fmt: skip
                if spec in declared or sorts < MAX_AUTO_SORT_INDEXES:
                    sort = SortIndex(spec)
            if not (new or sort):
                return
            keys = [(type(i).__name__, i.path) for i in new] + ([spec] if sort else [])
            building.update(keys)
        try:
            self._build(name, new, sort)
        finally:
            with self._lock:
                building.difference_update(keys)

    def _build(self, name: str, new: list, sort: SortIndex | None) -> None:
        """Build indexes without holding writers: from a snapshot of the collection
        taken under the lock, outside it; then, under the lock again, the documents
        written meanwhile (logged by ``_changed``) are taken out as they were and put
        back as they are, and the indexes adopted."""
        with self._lock:
            snapshot, seqs = dict(self._docs[name]), dict(self._seq[name])
            log: set[str] = set()
            self._logs[name].append(log)
            load = self._loader(name)
        done = False
        try:
            with _collector_paused(len(snapshot)):
                for doc_id, raw in snapshot.items():
                    doc = load(doc_id, raw)
                    for built in new:
                        built.collect(doc_id, doc)
                    if sort is not None:
                        sort.collect(seqs[doc_id], doc_id, raw, doc)
                for built in new:
                    built.finish()
                if sort is not None:
                    sort.finish()
            done = True
        finally:
            with self._lock:
                self._logs[name].remove(log)
                if done:
                    self._catch_up(name, new, sort, log, snapshot, seqs)

    def _catch_up(self, name, new, sort, log, snapshot, seqs) -> None:
        """Under the lock: bring freshly built indexes to the present, then adopt them."""
        docs, seq = self._docs[name], self._seq[name]
        for doc_id in log:
            old = snapshot.get(doc_id)
            if old is not None:
                doc = _decode(old)
                for built in new:
                    built.remove(doc_id, doc)
                if sort is not None:
                    sort.remove(seqs[doc_id], doc)
            raw = docs.get(doc_id)
            if raw is not None:
                doc = _decode(raw)
                for built in new:
                    built.add(doc_id, doc)
                if sort is not None:
                    sort.add(seq[doc_id], doc_id, raw, doc)
        self._indexes[name].adopt(new)
        if sort is not None:
            self._sorts[name][sort.spec] = sort

    def declare_index(self, name: str, spec: Any) -> list[str]:
        """An admin's index: ``{"field": "a.b"}`` (equality and range) or ``{"sort":
        {"a": 1, "b": -1}}``; kept in the store (built again after a restart, on first
        use), never counted against what queries may cause. Built now, without holding
        writers. Returns the collection's declared indexes."""
        keys = index_keys(spec)
        text = json.dumps(spec)  # as given: a sort's field order matters
        with self._lock:
            with _writing(self._db):
                self._db.execute("INSERT OR IGNORE INTO _registry_indexes VALUES (?, ?)",
                                 (name, text))  # fmt: skip
            self._declared[name].update(keys)
        if "sort" in spec:
            self._ensure(name, compile_filter({}), keys[0])
        else:
            self._ensure(name, compile_filter({spec["field"]: 0}))
            self._ensure(name, compile_filter({spec["field"]: {"$gte": 0}}))
        return self.indexes(name)["declared"]

    def drop_index(self, name: str, spec: Any) -> list[str]:
        """Forget an admin's index (as declared) and drop what it built; NotFound if it
        was not declared. Returns the collection's declared indexes."""
        keys = index_keys(spec)
        with self._lock:
            with _writing(self._db):
                gone = self._db.execute(
                    "DELETE FROM _registry_indexes WHERE registry = ? AND key = ?",
                    (name, json.dumps(spec)),
                ).rowcount
            if not gone:
                raise NotFound(f"{name}: no declared index {json.dumps(spec)}")
            for key in keys:
                self._declared[name].discard(key)
                self._indexes[name].all.pop(key, None)
                self._sorts[name].pop(key, None)
        return self.indexes(name)["declared"]

    def indexes(self, name: str) -> dict:
        """The collection's indexes: declared (by an admin) and built (either way)."""
        with self._lock:
            built = [_key_text(k) for k in (*self._indexes[name].all, *self._sorts[name])]
            declared = sorted({_key_text(k) for k in self._declared[name]})
        return {"declared": declared, "built": sorted(built)}

    def _candidates(self, name, filter_: Filter, plan, first, ordered):
        """build() -> (position, id, encoded document, test) of the documents to test
        (test None: a match already), in insertion order when ``ordered`` or ``first`` is
        given. Called under the lock, which it holds only to copy what the query reads
        (C-level copies of lists and maps, no tuple per document: a few ms at 100,000
        documents); build() runs after the lock is let go and yields the items one at a
        time where it can (no list of 100,000 tuples for the collector to walk)."""
        docs, seq = self._docs[name], self._seq[name]
        if plan is None:
            if not filter_.spec and first is not None:  # a page of everything
                page = [(seq[i], i, docs[i], None) for i in islice(docs, first)]
                return lambda: page
            ids, raws, seqs, match = list(docs), list(docs.values()), seq.copy(), filter_.match
            return lambda: ((seqs[i], i, raw, match) for i, raw in zip(ids, raws, strict=True))
        sure, unsure, answered = plan
        rest, match = filter_.residual(answered), filter_.match
        if len(sure) + len(unsure) > _COPY_OVER:
            docs, seq = docs.copy(), seq.copy()

        def build():
            work = ((seq[i], i, docs[i], rest) for i in sure)
            more = ((seq[i], i, docs[i], match) for i in unsure)
            if ordered or first is not None:
                return sorted(chain(work, more), key=_first)
            return chain(work, more)

        if docs is self._docs[name]:  # few: built now, under the lock
            work = list(build())
            return lambda: work
        return build

    def count(self, name: str) -> int:
        return len(self._docs[name])


def _matches(work: Iterable[tuple], first: int | None, load, encoded: bool = False) -> list:
    """(position, document) of the work items whose test passes (the first n only);
    (position, its JSON) when ``encoded`` (a document with no test is not decoded)."""
    hits: list = []
    with regex_budget():  # all of this query's $regex searches share one budget
        for n, doc_id, raw, test in work:
            if test is None and encoded:
                hits.append((n, raw))
            else:
                doc = load(doc_id, raw)
                if test is None or test(doc):
                    hits.append((n, raw if encoded else doc))
            if first is not None and len(hits) >= first:
                break
    return hits


class _Walk:
    """A sorted query's walk along a sort index: matches counted until k, the
    (position, document) of those past ``skip`` kept in ``hits``."""

    def __init__(self, match, k: int, skip: int, load) -> None:
        self.match, self.k, self.skip, self.load = match, k, skip, load
        self.found = 0
        self.hits: list[tuple[int, dict]] = []

    def run(self, entries: list, sure, unsure) -> None:
        """Test the entries in order until k match; those whose id is in neither
        ``sure`` nor ``unsure`` (when given) are skipped undecoded."""
        match, hits, load = self.match, self.hits, self.load
        for _, n, doc_id, raw in entries:
            if sure is not None and doc_id not in sure and doc_id not in unsure:
                continue
            doc = load(doc_id, raw)
            if match(doc):
                self.found += 1
                if self.found > self.skip:
                    hits.append((n, doc))
                if self.found >= self.k:
                    return


class _Desc:
    """A sort key in a descending field of a mixed-direction sort (compares reversed)."""

    __slots__ = ("key",)

    def __init__(self, key) -> None:
        self.key = key

    def __lt__(self, other: _Desc) -> bool:
        return other.key < self.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.key == other.key

    __hash__ = None  # type: ignore[assignment]


def _top_k(work: Iterable[tuple], index: SortIndex, k: int, skip: int, load) -> list:
    """(position, document) of matches skip+1 to k in the sort's order (ties by
    position), from the work items (``_candidates``): every candidate decoded and tested
    in turn, only the best k kept (their keys and encoded form: memory in k, not in the
    matches), the answer's documents decoded at the end."""
    fields = [desc for _, _, desc in index._fields]
    uniform = all(fields) or not any(fields)
    descending = all(fields)

    def keyed():
        for n, doc_id, raw, test in work:
            doc = load(doc_id, raw)
            if test is None or test(doc):
                keys = index.keys(doc)
                if not uniform:
                    keys = tuple(_Desc(x) if d else x for x, d in zip(keys, fields, strict=True))
                yield (keys, -n if descending else n, doc_id, raw)

    pick = heapq.nlargest if descending else heapq.nsmallest
    best = pick(k, keyed(), key=_first2)
    return [(abs(n), load(doc_id, raw)) for _, n, doc_id, raw in best[skip:]]


def _first2(entry: tuple) -> tuple:
    return entry[0], entry[1]


def _is_sort(key: tuple) -> bool:
    """Whether an index key is a sort index's (a SortSpec) rather than ("kind", path)."""
    return not isinstance(key[0], str)


def index_keys(spec: Any) -> list:
    """The index keys an index declaration names (QueryError if malformed)."""
    if isinstance(spec, dict) and set(spec) == {"field"}:
        field = spec["field"]
        if not isinstance(field, str) or not field or "" in field.split(".") or "$" in field:
            raise QueryError("an index's field must be a dotted field name")
        path = tuple(field.split("."))
        return [("EqualityIndex", path), ("RangeIndex", path)]
    if isinstance(spec, dict) and set(spec) == {"sort"}:
        sort = spec["sort"]
        if not isinstance(sort, dict) or not sort or not all(
            isinstance(f, str) and f and "" not in f.split(".") and d in (1, -1)
            and not isinstance(d, bool) for f, d in sort.items()
        ):  # fmt: skip
            raise QueryError("an index's sort must be an object of field: 1 or -1")
        return [sort_spec(sort)]
    raise QueryError('an index is {"field": "a.b"} or {"sort": {"a": 1, "b": -1}}')


def _key_text(key: tuple) -> str:
    """An index key as the API shows it: "field a.b (equality)", "sort a:1,b:-1"."""
    if _is_sort(key):
        return "sort " + ",".join(f"{f}:{-1 if d else 1}" for f, d in key)
    kind = "equality" if key[0] == "EqualityIndex" else "range"
    return f"field {'.'.join(key[1])} ({kind})"
