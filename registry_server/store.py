"""Document storage for the registries.

``EmbeddedStore`` (the default): SQLite in WAL mode with ``synchronous=FULL``, one table
per registry holding each document's JSON under its id (PRIMARY KEY: the unique index),
plus every document in memory for queries. A write returns only after SQLite has
committed it to disk, so acknowledged writes survive kill -9; memory is updated after
the commit. Queries run the compiled filter over the in-memory documents.

All methods are synchronous and fast; the HTTP layer calls them on its event loop.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from .errors import Conflict, NotFound
from .query import compile_filter

__all__ = ["EmbeddedStore"]


class EmbeddedStore:
    def __init__(self, path: str | Path, collections: list[str]) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._lock = threading.Lock()
        self._docs: dict[str, dict[str, dict]] = {}
        for name in collections:
            self._db.execute(
                f'CREATE TABLE IF NOT EXISTS "{name}" (id TEXT PRIMARY KEY, doc TEXT NOT NULL)'
            )
            rows = self._db.execute(f'SELECT id, doc FROM "{name}" ORDER BY rowid').fetchall()
            self._docs[name] = {doc_id: json.loads(doc) for doc_id, doc in rows}

    def close(self) -> None:
        self._db.close()

    def insert(self, name: str, doc_id: str, doc: dict) -> None:
        with self._lock:
            try:
                self._db.execute(f'INSERT INTO "{name}" (id, doc) VALUES (?, ?)',
                                 (doc_id, json.dumps(doc)))  # fmt: skip
            except sqlite3.IntegrityError:
                raise Conflict(f"{name}: {doc_id!r} already exists") from None
            self._docs[name][doc_id] = doc

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
            self._docs[name][doc_id] = doc

    def delete(self, name: str, doc_id: str) -> None:
        with self._lock:
            if doc_id not in self._docs[name]:
                raise NotFound(f"{name}: no document {doc_id!r}")
            self._db.execute(f'DELETE FROM "{name}" WHERE id = ?', (doc_id,))
            del self._docs[name][doc_id]

    def find(self, name: str, filter_: dict) -> list[dict]:
        match = compile_filter(filter_)
        return [doc for doc in self._docs[name].values() if match(doc)]

    def count(self, name: str) -> int:
        return len(self._docs[name])
